"""A device-independent proxy of each 2-d norm's cost: the ATen ops one training step dispatches,
relative to BatchNorm2d's, and the device syncs it makes (target: none).

For every registered 2-d norm, one training step (the protocol's forward, the loss, the backward;
one untimed step first) of a model with the norm at its norm positions runs under a dispatch mode
(:func:`harness.testing.census`) that counts:

* ``ops``: every ATen op that computes, forward and backward (views and allocations left out);
  on a GPU in eager mode each is at least one kernel launch;
* ``large``: the ops that read or write an activation-sized tensor (at least ``--large``
  elements): the passes over memory a GPU pays for;
* ``syncs``: device-to-host copies (``aten::_local_scalar_dense``, ``aten::item``: ``.item()``,
  ``float(t)``, a Python branch on a tensor's value), each of which stalls a GPU;
* ``f64``: ops that produced a float64 tensor.

Any machine runs it (default: torchvision's ResNet-18, ImageNet stem with max-pool, 64x64 input,
batch 8, on the CPU). The exit status is 1 when any norm syncs or makes float64 tensors, so it
can be a CI check.

    .venv/bin/python benchmarks/norm_ops.py [--only rbn iebn] [--model resnet50 --size 64]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from norm_cost import MODELS, build  # noqa: E402

from harness.plugins import load_registry  # noqa: E402
from harness.protocol import NormProtocol  # noqa: E402
from harness.testing import Census, census  # noqa: E402

REFERENCE = "torch.nn.BatchNorm2d"


def step_census(norm_layer: object, protocol: NormProtocol | None, model: str = "resnet18", size: int = 64,
                batch: int = 8, large: int = 1 << 14, channels_last: bool = False) -> Census:
    """The census of one training step (forward, loss, backward) of ``model`` with ``norm_layer``
    at its norm positions and ``protocol`` set up, after one step outside the census."""
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(4 * batch, 3, size, size, generator=g), torch.arange(4 * batch) % 10)
    net, protocol = build(norm_layer, protocol, data, model, "cpu", channels_last)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, size, size, generator=g).contiguous(memory_format=layout)
    y = torch.arange(batch) % 10
    context = SimpleNamespace(train_size=len(data))  # what extra_loss reads (Bayesian scale: KL / |D|)

    def step() -> None:
        net.zero_grad(set_to_none=True)
        loss = F.cross_entropy(protocol.train_forward(net, x), y)
        extra = protocol.extra_loss(net, context)
        (loss if extra is None else loss + extra).backward()

    step()
    return census(step, large=large)[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="norm names (default: every 2-d norm)")
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet18")
    parser.add_argument("--size", type=int, default=64, help="input size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--large", type=int, default=1 << 14, help="elements that make a tensor activation-sized")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registry = load_registry()
    names = args.only or sorted(n for n, norm in registry.norms.items() if "2d" in norm.dims)
    options = dict(model=args.model, size=args.size, batch=args.batch, large=args.large,
                   channels_last=args.channels_last)
    bn = step_census(nn.BatchNorm2d, None, **options)
    print(f"{args.model}, batch {args.batch}, {args.size}x{args.size}"
          f"{', channels_last' if args.channels_last else ''}: ATen ops of one training step (forward + "
          f"backward), ratio to BatchNorm2d ({bn.ops} ops, {bn.large} large)")
    print(f"{'norm':20} {'ops':>6} {'ratio':>6} {'large':>6} {'ratio':>6} {'syncs':>6} {'f64':>5}")
    results: dict[str, dict[str, float]] = {}
    bad: list[str] = []
    for name in names:
        norm = registry.norms[name]
        try:
            found = step_census(norm.layer(), norm.make_protocol(), **options)
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"{name:20} failed: {type(exc).__name__}: {exc}")
            bad.append(name)
            continue
        results[name] = {"ops": found.ops, "ops_ratio": round(found.ops / bn.ops, 3), "large": found.large,
                         "large_ratio": round(found.large / bn.large, 3), "syncs": found.syncs,
                         "float64": found.float64}
        flag = ""
        if found.syncs or found.float64:
            bad.append(name)
            flag = f"  <- {', '.join(sorted(set(found.sync_names + found.float64_names)))}"
        print(f"{name:20} {found.ops:6d} {found.ops / bn.ops:6.2f} {found.large:6d} {found.large / bn.large:6.2f} "
              f"{found.syncs:6d} {found.float64:5d}{flag}")
    print(f"{len(bad)} norms with device syncs, float64 tensors or failures" + (f": {', '.join(bad)}" if bad else ""))
    print(json.dumps({"bench": "norm_ops", "model": args.model, "size": args.size, "batch": args.batch,
                      "reference": REFERENCE, "reference_ops": bn.ops, "reference_large": bn.large,
                      "norms": results, "bad": bad}))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
