"""Cost of every registered 2-d norm inside a ResNet-18 training step, relative to torch's
BatchNorm2d measured in the same run (target: at most 1.5x).

Each norm goes into torchvision's ResNet-18 through its ``norm_layer`` argument, with the norm's
protocol set up as in a trial. One step is the protocol's training forward, the loss (with any
extra loss term) and the backward pass, on a 32x3x32x32 batch. Norms and the reference are
timed in alternation, several rounds, and the median is reported, so that machine noise does not
favour either. Batch composition (extra unlabeled or normalization-batch samples) is left out:
it is the method's data cost, not the layer's.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="norm names to measure (default: every 2-d norm)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    registry = load_registry()
    names = args.only or sorted(n for n, norm in registry.norms.items() if "2d" in norm.dims)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (32,), generator=g)
    data = TensorDataset(torch.randn(128, 3, 32, 32, generator=g), torch.arange(128) % 10)
    reference = build(nn.BatchNorm2d, None, data)

    results: dict[str, float] = {}
    print(f"ResNet-18, batch 32x3x32x32, forward+backward, {args.threads} threads; median of {args.rounds} rounds")
    print(f"{'norm':24} {'ms/step':>9} {'BN ms':>8} {'ratio':>7}")
    for name in names:
        norm = registry.norms[name]
        try:
            net, protocol = build(norm.layer(), norm.make_protocol(), data)
        except Exception as exc:  # noqa: BLE001 - report and go on to the next norm
            print(f"{name:24} could not be built: {type(exc).__name__}: {exc}")
            continue
        ours, theirs = [], []
        try:
            for _ in range(args.rounds):
                theirs.append(step_seconds(*reference, x, y, args.steps))
                ours.append(step_seconds(net, protocol, x, y, args.steps))
        except Exception as exc:  # noqa: BLE001
            print(f"{name:24} failed in a training step: {type(exc).__name__}: {exc}")
            continue
        ratio = statistics.median(o / t for o, t in zip(ours, theirs, strict=True))
        results[name] = round(ratio, 3)
        flag = "" if ratio <= 1.5 else "  > 1.5x"
        print(f"{name:24} {statistics.median(ours) * 1e3:9.1f} {statistics.median(theirs) * 1e3:8.1f} "
              f"{ratio:7.2f}{flag}")
    over = sorted(n for n, r in results.items() if r > 1.5)
    print(f"{len(results) - len(over)} of {len(results)} norms within 1.5x of BatchNorm2d" +
          (f"; over: {', '.join(over)}" if over else ""))
    print(json.dumps({"bench": "norm_cost", "reference": REFERENCE, "ratios": results, "over_target": over}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
