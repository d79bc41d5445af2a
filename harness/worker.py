"""A worker: claims the suite's trials from storage one at a time and runs each in a child process.

Trial processes come from a fork server (multiprocessing's ``forkserver`` start method): a fresh
process, started once per worker, that imports torch, mmengine, the engine and the built-in
tasks' modules and never initializes CUDA. Each trial is forked from it, so it starts warm and
without a CUDA context (a process forked after CUDA started cannot use CUDA), has its own peak
memory, cannot leak global state into the next trial, and a crash (even a signal) is recorded as
that trial's failure. The worker itself needs no torch. A trial process receives a small
:class:`~harness.distributed.TrialAddress` and rebuilds its request from the suite file, as a
``torchrun`` rank of a multi-device trial does. Only the worker talks to the storage.

On a machine with GPUs each trial runs on GPUs it leases (:mod:`harness.devices`): its processes
see only those (``CUDA_VISIBLE_DEVICES``), and the device is recorded on the trial.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .devices import Gpu, GpuPool, Lease, lock_dir
from .distributed import TrialAddress
from .events import EpochEnd, RunEvents, Validated
from .plan import StudyPlan
from .storage import Claim, TrialBook

POLL_SECONDS = 0.5  # how often an idle worker looks again (finals waiting for a search, trials of others)
START_METHOD = "forkserver"
#: Imported once by the fork server, so that no trial imports them again. Nothing here touches
#: CUDA (see :func:`trial_processes`); the rest is what a trial's first steps import lazily.
PRELOAD = ("torch", "torch._inductor.config", "torchvision", "setuptools",
           "distutils.ccompiler", "mmengine.runner", "mmengine.visualization", "matplotlib.figure",
           "matplotlib.backends.backend_agg", "PIL.ImageDraw", "torch.utils.tensorboard", "harness.engine",
           "harness.plugins", "harness.suite", "harness.plan", "harness.distributed", "harness.worker")


@dataclass
class WorkerOptions:
    runs_dir: Path
    data_root: Path
    suite_path: Path  # every trial process rebuilds its trial from it
    threads: int | None = None
    retry_failed: bool = False
    smoke: bool = False
    gpus: list[Gpu] = field(default_factory=list)  # the GPUs this run may use; none: CPU
    home: int = 0  # this worker's number: its own GPU is tried first


@dataclass
class Outcome:
    ok: bool
    kind: str = ""
    reason: str = ""


def work(book: TrialBook, options: WorkerOptions, events: RunEvents | None = None) -> int:
    """Run trials until none is waiting or running anywhere; return how many this worker ran."""
    events = events or RunEvents()
    book.sync(options.retry_failed)
    pool = GpuPool(options.gpus, lock_dir(options.runs_dir), options.home)
    ran = 0
    while True:
        claim = book.claim()
        if claim is None:
            book.sync()  # a search that has just finished enqueues its comparison's finals
            claim = book.claim()
        if claim is not None and ran == 0:
            trial_processes(book.plans, start=True)
        if claim is None:
            in_flight = book.in_flight()
            if in_flight == 0:
                return ran
            events.waiting_for_workers(in_flight)
            time.sleep(POLL_SECONDS)
            book.sync()  # retry_failed applies once, at the start: a trial failing again stays failed
            continue
        events.trial_started(claim.plan, claim.label)
        outcome = run_claim(book, claim, options, events, pool)
        ran += 1
        events.trial_ended(claim.plan, claim.label, outcome)


def trial_processes(plans: Iterable[StudyPlan] = (), start: bool = False) -> Any:
    """The multiprocessing context trials start from, its fork server preloading the heavy modules
    and the built-in tasks' run-time modules of ``plans`` (only until it has started).

    mmengine asks ``torch.cuda.is_available()`` when it is imported, which by default starts the
    CUDA driver and leaves every process forked afterwards unable to use CUDA; with
    ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` torch answers from NVML instead and CUDA stays untouched.
    The fork server takes the variable from this process's environment when it starts.
    """
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    ctx = multiprocessing.get_context(START_METHOD)
    tasks = [_module(p.task.make) for p in plans]
    # Only the built-ins: the fork server stops on a module that fails with more than an ImportError.
    modules = [*PRELOAD, *(m for m in tasks if m and m.startswith("harness_plugins."))]
    ctx.set_forkserver_preload(list(dict.fromkeys(modules)))
    if start:
        from multiprocessing import forkserver

        forkserver.ensure_running()  # imports in the background while the worker gets ready
    return ctx


def _module(make: Any) -> str | None:
    return make.partition(":")[0] if isinstance(make, str) else getattr(make, "__module__", None)


def trial_dir(runs_dir: Path, claim: Claim) -> Path:
    name = f"search-{claim.trial.user_attrs['slot']}" if claim.search else f"seed-{claim.seed}"
    return runs_dir / claim.plan.suite / claim.plan.slug / name


def run_claim(book: TrialBook, claim: Claim, options: WorkerOptions, events: RunEvents,
              pool: GpuPool | None = None) -> Outcome:
    """Run a claimed trial in a child process (on GPUs it leases, where there are GPUs) and store
    its result or its failure."""
    plan = claim.plan
    devices = plan.variant.config.devices
    work_dir = trial_dir(options.runs_dir, claim)
    if not claim.resume and work_dir.exists():
        _clear(work_dir)  # a fresh attempt must not resume from an earlier, different run
    work_dir.mkdir(parents=True, exist_ok=True)
    log = work_dir / "trial.log"
    threads = max(1, options.threads // devices) if options.threads else None
    address = TrialAddress(suite=options.suite_path, study=plan.name, seed=claim.seed, work_dir=work_dir,
                           data_root=options.data_root, smoke_data=options.data_root if options.smoke else None,
                           resume=claim.resume, threads=threads, params=claim.params, search=claim.search)
    where = {"work_dir": str(work_dir), "log": str(log)}
    if options.gpus and devices > len(options.gpus):
        reason = f"devices = {devices}, but this run has {len(options.gpus)} GPU(s)"
        book.fail(claim, "error", reason, where)
        return Outcome(False, "error", reason)
    pool = pool or GpuPool(options.gpus, lock_dir(options.runs_dir), options.home)
    lease: Lease | None = None
    try:
        with book.heartbeat(claim):
            if options.gpus:
                lease = pool.acquire(devices, waiting=lambda: events.waiting_for_gpus(plan, claim.label, devices))
            where["device"] = lease.label if lease else "cpu"
            book.set_attr(claim, "device", where["device"])
            events.device_chosen(plan, claim.label, where["device"])
            if devices > 1:
                final, code = _run_distributed(address, devices, log, lease)
            else:
                final, code = _run_process(address, log, lambda end: events.epoch_ended(plan, claim.label, end),
                                           lease.visible if lease else None, _pruning(book, claim))
    except KeyboardInterrupt:
        book.fail(claim, "interrupted", "stopped by the user; the next run resumes it", where)
        raise
    finally:
        if lease is not None:
            lease.release()
    if final is not None and final["event"] == "pruned":
        book.prune(claim, {**where, "pruned_after_epoch": final["epoch"]})
        return Outcome(True, "pruned", f"after epoch {final['epoch']}")
    if final is None:
        why = f"killed by signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
        book.fail(claim, "crash", f"the trial process ended without a result ({why}); see {log}", where)
        return Outcome(False, "crash", why)
    if final["event"] == "error":
        book.fail(claim, final["kind"], final["reason"], {**where, "traceback": final["traceback"]})
        return Outcome(False, final["kind"], final["reason"])
    result = final["result"]
    # A search is scored on the validation split (its last validation), never on the test split.
    value = (result["curves"].get(f"val_{plan.metric}") or [None])[-1] if claim.search \
        else result["metrics"].get(plan.metric)
    if value is None:
        reason = f"the task reported no {plan.metric!r} (it reported {sorted(result['metrics'])})"
        book.fail(claim, "error", reason, where)
        return Outcome(False, "error", reason)
    book.complete(claim, value, {**result, **where})
    return Outcome(True)


def _pruning(book: TrialBook, claim: Claim) -> Callable[[Validated], bool] | None:
    """For a search trial: report each validation to its pruner; True when it says stop. The
    last validation is reported too, but a trial that has trained all its epochs completes."""
    if not claim.search:
        return None
    metric = claim.plan.metric

    def stop(validated: Validated) -> bool:
        if metric not in validated.metrics:
            return False
        prune = book.report(claim, validated.epoch, validated.metrics[metric])
        return prune and validated.epoch < validated.epochs

    return stop


def _run_process(address: TrialAddress, log: Path, on_epoch: Callable[[EpochEnd], None],
                 visible: str | None, prune: Callable[[Validated], bool] | None = None,
                 ) -> tuple[dict | None, int | None]:
    """The trial in a process from the fork server; its epochs are passed on as they end. A
    search trial that its pruner stops ends with ``{"event": "pruned", "epoch": ...}``."""
    ctx = trial_processes()
    receive, send = ctx.Pipe(duplex=False)
    ignore_sigint = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    child = ctx.Process(target=_child, args=(address, send, log, visible, ignore_sigint), name="harness-trial")
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
                if isinstance(message, EpochEnd):
                    on_epoch(message)
                elif isinstance(message, Validated):
                    if prune is not None and prune(message):
                        _stop(child)
                        final = {"event": "pruned", "epoch": message.epoch}
                        break
                else:
                    final = message
            elif not child.is_alive():
                break
        child.join()
    except KeyboardInterrupt:
        _stop(child)
        raise
    finally:
        receive.close()
    return final, child.exitcode


def _run_distributed(address: TrialAddress, devices: int, log: Path, lease: Lease | None,
                     ) -> tuple[dict | None, int | None]:
    """The trial as ``devices`` processes under torchrun (see :mod:`harness.distributed`)."""
    import json
    import subprocess
    import sys

    from .distributed import RESULT_FILE

    result = address.work_dir / RESULT_FILE
    result.unlink(missing_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}",
               "-m", "harness.distributed", *address.argv()]
    env = dict(os.environ)
    if lease is not None:
        env["CUDA_VISIBLE_DEVICES"] = lease.visible
    with open(log, "ab") as out:
        # torchrun holds the GPU locks too: if this worker is killed, the GPUs stay taken until it ends.
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   pass_fds=lease.files if lease else ())
        try:
            code = process.wait()
        except KeyboardInterrupt:
            process.terminate()
            process.wait()
            raise
    return (json.loads(result.read_text()) if result.is_file() else None), code


def _child(address: TrialAddress, send: Any, log: Path, visible: str | None, ignore_sigint: bool) -> None:
    """The trial process: its GPUs, output to the trial's log, one final message to the parent."""
    if visible is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible  # before anything starts CUDA
    # Ctrl-C ends the trial at once, and the worker records it; a worker that ignores SIGINT
    # (started in the background by a shell) keeps its trials from it too.
    signal.signal(signal.SIGINT, signal.SIG_IGN if ignore_sigint else signal.SIG_DFL)
    _release_fork_server()
    _die_with_parent()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    from .distributed import run_address

    try:
        send.send(run_address(address, on_epoch=send.send))
    finally:
        send.close()


def _release_fork_server() -> None:
    """Every process the fork server starts holds the write end of its "alive" pipe, so the server
    lives on while one of them does. A trial lets go of it: when its worker dies, the server ends,
    and with it the trial (:func:`_die_with_parent`)."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is not None:
        os.close(fd)
        server._forkserver_alive_fd = None


def _die_with_parent() -> None:
    """A trial whose worker was killed must not go on writing into the run directory that the
    next worker resumes from (Linux; elsewhere the orphan ends at its next message). The parent
    is the fork server, which ends when its worker does."""
    try:
        import ctypes

        parent = os.getppid()
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it ended before the line above
            os._exit(1)
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
