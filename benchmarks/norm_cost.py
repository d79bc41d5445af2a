"""Cost of every registered 2-d norm in a ResNet-18 training step on 32x32 inputs, relative to
torch's BatchNorm2d measured in the same run (target: at most 1.5x).

Default (``--mode layers``): the norm's own forward and backward, summed over the 20 norm
positions of a CIFAR ResNet-18 with their exact input shapes (batch 32), against BatchNorm2d on
the same shapes: the cost the target is about, measured quickly enough for a CPU.
``--mode step``: the whole training step (protocol forward, loss, backward) of the ResNet-18
with the norm in it, which includes work a protocol does around its layers (analytic moment
propagation); on a CPU this takes seconds per step.
Norms and the reference are timed in alternation, several rounds, and medians are reported.
Batch composition (extra unlabeled or normalization-batch samples) is left out: it is the
method's data cost, not the norm's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset
from torchvision.models import resnet18

from harness.plugins import load_registry
from harness.protocol import LABELS, UNLABELED, NormProtocol, TrialContext
from harness.task import Splits, TaskConfig

REFERENCE = "torch.nn.BatchNorm2d"


def build(norm_layer: object, protocol: NormProtocol | None, data: TensorDataset) -> tuple[nn.Module, NormProtocol]:
    torch.manual_seed(0)
    net = resnet18(num_classes=10, norm_layer=norm_layer)
    # The CIFAR stem (3x3 stride-1 convolution, no max-pool) keeps 4x4 maps in the last stage, as
    # CIFAR ResNets do; per-sample spatial statistics (instance norm) need more than one position.
    net.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
    net.maxpool = nn.Identity()
    protocol = protocol or NormProtocol()
    ctx = TrialContext(net=net, splits=Splits(train=data, test=data, unlabeled=TensorDataset(data.tensors[0])),
                       config=TaskConfig(batch_size=32), seed=0, provides=frozenset({LABELS, UNLABELED}),
                       generator=torch.Generator().manual_seed(0))
    protocol.setup(ctx)
    net.train()
    return net, protocol


def step_seconds(net: nn.Module, protocol: NormProtocol, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Median seconds of one forward+backward over ``steps`` timed steps (after one warm-up)."""
    times = []
    for i in range(steps + 1):
        net.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss = F.cross_entropy(protocol.train_forward(net, x), y)
        loss.backward()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def norm_shapes() -> list[tuple[int, ...]]:
    """Input shapes of the norms of a CIFAR ResNet-18 at batch 32, in order."""
    shapes: list[tuple[int, ...]] = []

    def record(num_features: int, **kwargs: object) -> nn.Module:
        layer = nn.BatchNorm2d(num_features)
        layer.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
        return layer

    net = build(record, None, TensorDataset(torch.zeros(1, 3, 32, 32), torch.zeros(1)))[0]
    with torch.no_grad():
        net(torch.zeros(32, 3, 32, 32))
    return shapes


def layers_seconds(make: object, shapes: list[tuple[int, ...]], inputs: list[torch.Tensor], steps: int) -> float:
    """Median over ``steps`` of the summed forward+backward time of one layer per shape."""
    layers = [make(shape[1]).train() for shape in shapes]
    grads = [torch.randn(shape) for shape in shapes]
    times = []
    for i in range(steps + 1):
        total = 0.0
        for layer, x, g in zip(layers, inputs, grads, strict=True):
            x.grad = None
            start = time.perf_counter()
            layer(x).backward(g)
            total += time.perf_counter() - start
        if i:
            times.append(total)
    return statistics.median(times)


def depthwise_conv(num_features: int, **kwargs: object) -> nn.Module:
    """A depthwise 3×3 convolution with bias, as bnet's affine."""
    return nn.Conv2d(num_features, num_features, 3, padding=1, groups=num_features)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="norm names to measure (default: every 2-d norm)")
    parser.add_argument("--mode", choices=["layers", "step"], default="layers")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    registry = load_registry()
    names = args.only or sorted(n for n, norm in registry.norms.items() if "2d" in norm.dims)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (32,), generator=g)
    data = TensorDataset(torch.randn(128, 3, 32, 32, generator=g), torch.arange(128) % 10)
    shapes = norm_shapes()
    inputs = [torch.randn(shape, generator=g).requires_grad_() for shape in shapes]
    if args.mode == "step":
        reference = build(nn.BatchNorm2d, None, data)

        def timed(norm_layer: object, protocol: NormProtocol | None) -> float:
            net, built = (reference if norm_layer is None else build(norm_layer, protocol, data))
            return step_seconds(net, built, x, y, args.steps)
    else:
        def timed(norm_layer: object, protocol: NormProtocol | None) -> float:
            return layers_seconds(norm_layer or nn.BatchNorm2d, shapes, inputs, args.steps)

    def ratio_to_bn(norm_layer: object, protocol: NormProtocol | None) -> tuple[float, float, float]:
        """(ours ms, BN ms, median ratio) over alternating rounds."""
        ours, theirs = [], []
        for _ in range(args.rounds):
            theirs.append(timed(None, None))
            ours.append(timed(norm_layer, protocol))
        ratio = statistics.median(o / t for o, t in zip(ours, theirs, strict=True))
        return statistics.median(ours) * 1e3, statistics.median(theirs) * 1e3, ratio

    results: dict[str, float] = {}
    what = ("whole training step" if args.mode == "step"
            else f"the norm's forward+backward at its {len(shapes)} positions")
    print(f"CIFAR ResNet-18, batch 32, {what}, {args.threads} threads; median of {args.rounds} rounds")
    print(f"{'norm':24} {'ms':>9} {'BN ms':>8} {'ratio':>7}")
    for name in names:
        norm = registry.norms[name]
        try:
            ours_ms, bn_ms, ratio = ratio_to_bn(norm.layer(), norm.make_protocol())
        except Exception as exc:  # noqa: BLE001 - report and go on to the next norm
            print(f"{name:24} failed: {type(exc).__name__}: {exc}")
            continue
        results[name] = round(ratio, 3)
        flag = "" if ratio <= 1.5 else "  > 1.5x"
        print(f"{name:24} {ours_ms:9.1f} {bn_ms:8.1f} {ratio:7.2f}{flag}")
    over = sorted(n for n, r in results.items() if r > 1.5)
    print(f"{len(results) - len(over)} of {len(results)} norms within 1.5x of BatchNorm2d" +
          (f"; over: {', '.join(over)}" if over else ""))
    # Context for norms whose affine is a depthwise convolution (bnet, unified_bn): the
    # convolution alone, torch's own kernel, measured against BN the same way.
    floor = None
    if args.mode == "layers":
        floor = round(ratio_to_bn(depthwise_conv, None)[2], 3)
        print(f"for comparison, torch's depthwise 3x3 convolution alone (the affine of bnet and unified_bn): "
              f"{floor:.2f}x BatchNorm2d")
    print(json.dumps({"bench": "norm_cost", "mode": args.mode, "reference": REFERENCE, "ratios": results,
                      "over_target": over, "depthwise_conv_alone": floor}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
