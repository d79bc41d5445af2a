"""One rank of a multi-process trial, as ``torchrun`` starts it (``python -m harness.distributed``).

A trial with ``devices > 1`` cannot be forked: torchrun starts one process per device, each
rebuilds the trial from the suite file (so local plugin files load as in the worker), and
mmengine's ``pytorch`` launcher joins them into one DDP run. Rank 0 writes the result (or the
failure) as JSON for the worker that started torchrun.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

RESULT_FILE = "result.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.distributed")
    parser.add_argument("--suite", type=Path, required=True)
    parser.add_argument("--smoke-data", type=Path, help="the data root of a --smoke run")
    parser.add_argument("--study", required=True, help="the study's name in the plan")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)

    from .engine import TrialRequest, distributed_rank, run_trial
    from .plan import make_plan
    from .plugins import load_registry
    from .suite import load_suite

    _, rank = distributed_rank()
    suite = load_suite(args.suite, load_registry())
    if args.smoke_data:
        suite = suite.smoke(args.smoke_data)
    plan = next(p for p in make_plan(suite) if p.name == args.study)
    request = TrialRequest(task=plan.task, config=plan.variant.config, norm=plan.norm.norm,
                           norm_params=plan.norm.params, seed=args.seed, work_dir=args.work_dir,
                           data_root=args.data_root, resume=args.resume, threads=args.threads)
    try:
        result = {"event": "done", "result": asdict(run_trial(request))}
    except FloatingPointError as exc:
        result = {"event": "error", "kind": "diverged", "reason": str(exc), "traceback": traceback.format_exc()}
    except Exception as exc:  # noqa: BLE001 - recorded as the trial's failure by the worker
        result = {"event": "error", "kind": "error", "reason": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()[-4000:]}
    if rank == 0:
        path = args.work_dir / RESULT_FILE
        path.with_suffix(".tmp").write_text(json.dumps(result))
        path.with_suffix(".tmp").replace(path)
    return 0 if result["event"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
