"""The fully convolutional network of §A.2: k×k convolutions (paper: eleven 9×9, 64 64 32 32 16 16
8 8 8 4 4 channels), each followed by the norm under test and an activation, a 3×3 average pooling
after the 2nd, 4th, 6th, 9th and 11th, and a 1×1 convolution to the 2 classes, about 670k
parameters (the paper: "about 600k").

**[R]** Reconstructed where the paper is silent or garbled: padding k // 2 and pooling with stride 1
(padding 1, the border's average over its pixels inside the image), so that the output stays dense,
of the input's size; the activation is leaky ReLU 0.01, as in the paper's CIFAR network (its text
says "Softmax", which between convolutions is no activation). The network returns class scores
(logits); the paper's final LogSoftmax is in the loss and the metrics, so that analytic
normalization can propagate moments through every layer of the network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

SLOPE = 0.01


class FCN(nn.Sequential):
    """Convolution, norm, leaky ReLU for each of ``channels``, a dense 3×3 average pooling after
    the convolutions numbered in ``pool_after`` (from 1), and a 1×1 convolution to ``classes``.
    Every convolution before a norm keeps its bias: the model stays whole where the norm is an
    identity."""

    def __init__(self, norm_layer: Callable[[int], nn.Module], channels: Sequence[int], pool_after: Sequence[int],
                 kernel_size: int = 9, in_channels: int = 1, classes: int = 2) -> None:
        layers: list[nn.Module] = []
        width = in_channels
        for number, out in enumerate(channels, start=1):
            layers += [nn.Conv2d(width, out, kernel_size, padding=kernel_size // 2), norm_layer(out),
                       nn.LeakyReLU(SLOPE)]
            if number in pool_after:
                layers.append(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False))
            width = out
        layers.append(nn.Conv2d(width, classes, 1))
        super().__init__(*layers)


__all__ = ["FCN"]
