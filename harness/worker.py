"""A worker: claims the suite's trials from storage one at a time and runs each in a child process.

The child is forked from a parent that has imported torch and mmengine but run no tensor
operation, so a trial starts in milliseconds, has its own peak memory, cannot leak global state
into the next one, and a crash (even a signal) is recorded as that trial's failure. Only the
parent talks to the storage.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .plan import StudyPlan
from .storage import Claim, TrialBook

POLL_SECONDS = 2.0
Progress = Callable[[str, dict[str, Any]], None]


@dataclass
class WorkerOptions:
    runs_dir: Path
    data_root: Path
    suite_path: Path  # multi-process trials rebuild themselves from it
    threads: int | None = None
    retry_failed: bool = False
    smoke: bool = False


@dataclass
class Outcome:
    ok: bool
    kind: str = ""
    reason: str = ""


def work(book: TrialBook, options: WorkerOptions, progress: Progress = lambda kind, info: None) -> int:
    """Run trials until none is waiting or running anywhere; return how many this worker ran."""
    book.sync(options.retry_failed)
    ran = 0
    while True:
        claim = book.claim()
        if claim is not None and ran == 0:
            _warm_up(book.plans)
        if claim is None:
            in_flight = book.in_flight()
            if in_flight == 0:
                return ran
            progress("waiting", {"in_flight": in_flight})
            time.sleep(POLL_SECONDS)
            book.sync()  # retry_failed applies once, at the start: a trial failing again stays failed
            continue
        progress("start", {"plan": claim.plan, "seed": claim.seed})
        outcome = run_claim(book, claim, options, progress)
        ran += 1
        progress("end", {"plan": claim.plan, "seed": claim.seed, "outcome": outcome})


def _warm_up(plans: list[StudyPlan]) -> None:
    """Import torch, mmengine and the tasks' run-time modules once, before the first fork."""
    from . import engine  # noqa: F401

    for task in {id(p.task): p.task for p in plans}.values():
        task.factory()


def trial_dir(runs_dir: Path, plan: StudyPlan, seed: int) -> Path:
    return runs_dir / plan.suite / plan.slug / f"seed-{seed}"


def run_claim(book: TrialBook, claim: Claim, options: WorkerOptions, progress: Progress) -> Outcome:
    """Run a claimed trial in a child process and store its result or its failure."""
    from .engine import TrialRequest

    plan = claim.plan
    work_dir = trial_dir(options.runs_dir, plan, claim.seed)
    if not claim.resume and work_dir.exists():
        _clear(work_dir)  # a fresh attempt must not resume from an earlier, different run
    work_dir.mkdir(parents=True, exist_ok=True)
    log = work_dir / "trial.log"
    request = TrialRequest(
        task=plan.task, config=plan.variant.config, norm=plan.norm.norm, norm_params=plan.norm.params,
        seed=claim.seed, work_dir=work_dir, data_root=options.data_root, resume=claim.resume,
        threads=options.threads,
    )
    where = {"work_dir": str(work_dir), "log": str(log)}
    try:
        with book.heartbeat(claim):
            if plan.variant.config.devices > 1:
                final, code = _run_distributed(claim, options, work_dir, log)
            else:
                final, code = _run_forked(request, log, lambda m: progress("event", {"plan": plan, "seed": claim.seed,
                                                                                   **m}))
    except KeyboardInterrupt:
        book.fail(claim, "interrupted", "stopped by the user; the next run resumes it", where)
        raise
    if final is None:
        why = f"killed by signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
        book.fail(claim, "crash", f"the trial process ended without a result ({why}); see {log}", where)
        return Outcome(False, "crash", why)
    if final["event"] == "error":
        book.fail(claim, final["kind"], final["reason"], {**where, "traceback": final["traceback"]})
        return Outcome(False, final["kind"], final["reason"])
    result = final["result"]
    value = result["metrics"].get(plan.metric)
    if value is None:
        reason = f"the task reported no {plan.metric!r} (it reported {sorted(result['metrics'])})"
        book.fail(claim, "error", reason, where)
        return Outcome(False, "error", reason)
    book.complete(claim, value, {**result, **where})
    return Outcome(True)


def _run_forked(request: Any, log: Path, events: Callable[[dict[str, Any]], None]) -> tuple[dict | None, int | None]:
    """The trial in a forked child; its progress events are passed on as they come."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(request, send, log), name="harness-trial")
    child.start()
    send.close()
    final = None
    try:
        while True:
            if receive.poll(0.2):
                try:
                    message = receive.recv()
                except EOFError:
                    break
                if message["event"] in ("done", "error"):
                    final = message
                else:
                    events(message)
            elif not child.is_alive():
                break
        child.join()
    except KeyboardInterrupt:
        _stop(child)
        raise
    return final, child.exitcode


def _run_distributed(claim: Claim, options: WorkerOptions, work_dir: Path, log: Path,
                     ) -> tuple[dict | None, int | None]:
    """The trial as ``devices`` processes under torchrun (see :mod:`harness.distributed`)."""
    import json
    import subprocess
    import sys

    from .distributed import RESULT_FILE

    plan = claim.plan
    result = work_dir / RESULT_FILE
    result.unlink(missing_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={plan.variant.config.devices}", "-m", "harness.distributed",
               "--suite", str(options.suite_path), "--study", plan.name, "--seed", str(claim.seed),
               "--work-dir", str(work_dir), "--data-root", str(options.data_root)]
    if options.smoke:
        command += ["--smoke-data", str(options.data_root)]
    if claim.resume:
        command.append("--resume")
    if options.threads:
        command += ["--threads", str(max(1, options.threads // plan.variant.config.devices))]
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            code = process.wait()
        except KeyboardInterrupt:
            process.terminate()
            process.wait()
            raise
    return (json.loads(result.read_text()) if result.is_file() else None), code


def _child(request: Any, send: Any, log: Path) -> None:
    """The trial process: output to the trial's log, one final message to the parent."""
    from .engine import run_trial

    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends the trial at once; the parent records it
    _die_with_parent()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        result = run_trial(request, events=send.send)
    except FloatingPointError as exc:
        send.send({"event": "error", "kind": "diverged", "reason": str(exc), "traceback": traceback.format_exc()})
    except Exception as exc:  # noqa: BLE001 - every failure of a trial is recorded, the suite goes on
        send.send({"event": "error", "kind": "error", "reason": f"{type(exc).__name__}: {exc}",
                   "traceback": traceback.format_exc()[-4000:]})
    else:
        send.send({"event": "done", "result": asdict(result)})
    finally:
        send.close()


def _die_with_parent() -> None:
    """A trial whose worker was killed must not go on writing into the run directory that the
    next worker resumes from (Linux; elsewhere the orphan ends at its next message)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


def _stop(child: Any) -> None:
    if child.is_alive():
        child.terminate()
    child.join(timeout=10)
    if child.is_alive():
        child.kill()
        child.join()


def _clear(path: Path) -> None:
    import shutil

    shutil.rmtree(path)
