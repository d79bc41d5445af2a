"""A trial rebuilt in a fresh process from a small address, and one rank of a multi-process trial
as ``torchrun`` starts it (``python -m harness.distributed``).

A trial request holds plugin objects (a suite may load local plugin files, whose classes cannot
be pickled by module name), so no trial process receives one: it gets a :class:`TrialAddress`
(the suite file, the study's name, the seed, the directories) and rebuilds the request from the
suite file, loading its plugins as the worker did. The worker's trial processes (started by a
fork server) and torchrun's ranks do the same.

With ``devices > 1``, torchrun starts one process per device, and mmengine's ``pytorch``
launcher joins them into one DDP run. Rank 0 writes the result (or the failure) as JSON for the
worker that started torchrun.

This module imports nothing heavy at its top: the worker imports it before any trial runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_text
from .events import TrialEvent

RESULT_FILE = "result.json"


@dataclass(frozen=True)
class TrialAddress:
    """Where a trial is found: enough to rebuild its request in another process."""

    suite: Path  # the suite file
    study: str  # the study's name in the plan
    seed: int
    work_dir: Path
    data_root: Path
    smoke_data: Path | None = None  # the data root of a --smoke run
    resume: bool = False
    threads: int | None = None
    params: dict[str, Any] = field(default_factory=dict)  # a search's point, or the tuned setting
    search: bool = False  # a search trial (its epochs are the search's)

    def argv(self) -> list[str]:
        """The command-line form (:meth:`parse` reads it back)."""
        args = ["--suite", str(self.suite), "--study", self.study, "--seed", str(self.seed),
                "--work-dir", str(self.work_dir), "--data-root", str(self.data_root)]
        if self.smoke_data is not None:
            args += ["--smoke-data", str(self.smoke_data)]
        if self.resume:
            args.append("--resume")
        if self.threads:
            args += ["--threads", str(self.threads)]
        if self.params:
            args += ["--params", json.dumps(self.params)]
        if self.search:
            args.append("--search")
        return args

    @classmethod
    def parse(cls, argv: list[str] | None = None) -> TrialAddress:
        parser = argparse.ArgumentParser(prog="python -m harness.distributed")
        parser.add_argument("--suite", type=Path, required=True)
        parser.add_argument("--smoke-data", type=Path, help="the data root of a --smoke run")
        parser.add_argument("--study", required=True, help="the study's name in the plan")
        parser.add_argument("--seed", type=int, required=True)
        parser.add_argument("--work-dir", type=Path, required=True)
        parser.add_argument("--data-root", type=Path, required=True)
        parser.add_argument("--resume", action="store_true")
        parser.add_argument("--threads", type=int)
        parser.add_argument("--params", type=json.loads, default={}, help="JSON: dotted key -> value")
        parser.add_argument("--search", action="store_true")
        args = parser.parse_args(argv)
        return cls(suite=args.suite, study=args.study, seed=args.seed, work_dir=args.work_dir,
                   data_root=args.data_root, smoke_data=args.smoke_data, resume=args.resume, threads=args.threads,
                   params=args.params, search=args.search)

    def request(self) -> Any:
        """The :class:`~harness.engine.TrialRequest`, rebuilt from the suite file."""
        from .engine import TrialRequest
        from .plan import make_plan
        from .plugins import load_registry
        from .suite import load_suite

        suite = load_suite(self.suite, load_registry())
        if self.smoke_data is not None:
            suite = suite.smoke(self.smoke_data)
        plan = next((p for p in make_plan(suite) if p.name == self.study), None)
        if plan is None:
            raise LookupError(f"{self.suite} no longer plans the study {self.study!r} (was the suite file edited "
                              "during the run?)")
        config, norm_config = plan.configs(self.params, self.search)
        return TrialRequest(task=plan.task, config=config, norm=plan.norm.norm,
                            norm_config=norm_config, seed=self.seed, work_dir=self.work_dir,
                            data_root=self.data_root, resume=self.resume, threads=self.threads)


def run_address(address: TrialAddress, on_epoch: Callable[[TrialEvent], None] = lambda event: None,
                ) -> dict[str, Any]:
    """Rebuild and run the trial; its result or its failure as the worker's final message."""
    try:
        from .engine import run_trial

        return {"event": "done", "result": asdict(run_trial(address.request(), on_epoch=on_epoch))}
    except FloatingPointError as exc:
        return {"event": "error", "kind": "diverged", "reason": str(exc), "traceback": traceback.format_exc()}
    except Exception as exc:  # noqa: BLE001 - every failure of a trial is recorded, the suite goes on
        return {"event": "error", "kind": "error", "reason": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()[-4000:]}


def main(argv: list[str] | None = None) -> int:
    address = TrialAddress.parse(argv)
    from .engine import distributed_rank

    _, rank = distributed_rank()
    result = run_address(address)
    if rank == 0:
        write_text(address.work_dir / RESULT_FILE, json.dumps(result))
    return 0 if result["event"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
