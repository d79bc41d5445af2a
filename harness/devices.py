"""The GPUs of this machine, as ``harness run`` sees them, and leases that keep workers apart.

Counting GPUs never initializes CUDA: the list comes from ``CUDA_VISIBLE_DEVICES`` where it is
set, else from NVML (the library behind ``nvidia-smi``, which is also how
``torch.cuda.device_count()`` counts before CUDA starts). ``HARNESS_FAKE_GPUS`` (a count, or a
list of ids) stands in for the machine's GPUs in tests on a machine without any.

A trial runs on GPUs it holds a lease on: one ``fcntl`` lock file per GPU in a directory shared
by the workers of this machine (``runs/.gpu-locks``, or ``$HARNESS_GPU_LOCKS``). The kernel
drops a lock when its process ends, so a killed worker never leaves a GPU taken. A trial that
needs N GPUs takes them all at once, and takers queue so that it is not overtaken forever.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import Problem, UserError
from .locks import file_lock

FAKE_ENV = "HARNESS_FAKE_GPUS"
LOCKS_ENV = "HARNESS_GPU_LOCKS"
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Gpu:
    """A GPU as this process sees it: its index (``cuda:<index>``, what ``--gpus`` names) and
    the id that selects it in a child's ``CUDA_VISIBLE_DEVICES``."""

    index: int
    ident: str


def visible_gpus() -> list[Gpu]:
    """The GPUs a trial of this process could use, without touching CUDA."""
    fake = os.environ.get(FAKE_ENV)
    if fake is not None:
        fake = fake.strip()
        idents = [str(i) for i in range(int(fake))] if fake.isdigit() else _parse_visible(fake)
    elif "CUDA_VISIBLE_DEVICES" in os.environ:
        idents = _parse_visible(os.environ["CUDA_VISIBLE_DEVICES"])
    else:
        idents = [str(i) for i in range(_nvml_count())]
    return [Gpu(i, ident) for i, ident in enumerate(idents)]


def _parse_visible(value: str) -> list[str]:
    """CUDA's reading of ``CUDA_VISIBLE_DEVICES``: ids up to the first invalid one (``-1`` hides all)."""
    found: list[str] = []
    for item in value.split(","):
        item = item.strip()
        if re.fullmatch(r"\d+", item) or re.fullmatch(r"(GPU|MIG)-[\w/-]+", item):
            found.append(item)
        else:
            break
    return found


def _nvml_count() -> int:
    """How many GPUs NVML sees; 0 without a driver. NVML is safe in a process that forks."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return 0
    try:
        if nvml.nvmlInit_v2() != 0:
            return 0
        count = ctypes.c_uint(0)
        ok = nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0
        nvml.nvmlShutdown()
        return count.value if ok else 0
    except AttributeError:
        return 0


def select_gpus(spec: str | None, visible: list[Gpu]) -> list[Gpu]:
    """The GPUs ``--gpus`` names (indices into the visible ones), or all of them."""
    if spec is None:
        return list(visible)

    def problem(message: str) -> UserError:
        shown = ", ".join(str(g.index) for g in visible)
        seen = f"this machine shows {len(visible)}: {shown}" if visible else "no GPU is visible here"
        return UserError(Problem("command line", "--gpus", f"{message} ({seen})"))

    items = [s.strip() for s in spec.split(",")]
    if not all(re.fullmatch(r"\d+", s) for s in items):
        raise problem(f"{spec!r} is not a comma-separated list of GPU indices such as 0,2")
    indices = [int(s) for s in items]
    if len(set(indices)) != len(indices):
        raise problem(f"{spec!r} names a GPU twice")
    missing = [i for i in indices if i >= len(visible)]
    if missing:
        raise problem(f"no GPU {missing[0]}")
    return [visible[i] for i in indices]


def device_label(gpus: list[Gpu]) -> str:
    """How storage and ``harness status`` name a trial's device: ``cuda:0,1`` or ``cpu``."""
    return "cuda:" + ",".join(str(g.index) for g in gpus) if gpus else "cpu"


def lock_dir(runs_dir: Path) -> Path:
    return Path(os.environ.get(LOCKS_ENV) or runs_dir / ".gpu-locks")


@dataclass
class Lease:
    """GPUs held by this process until :meth:`release`."""

    gpus: list[Gpu]
    files: list[int] = field(default_factory=list, repr=False)  # the open lock files

    @property
    def visible(self) -> str:
        """``CUDA_VISIBLE_DEVICES`` for the trial's processes."""
        return ",".join(g.ident for g in self.gpus)

    @property
    def label(self) -> str:
        return device_label(self.gpus)

    def release(self) -> None:
        for fd in self.files:
            os.close(fd)  # closing the file drops its lock
        self.files.clear()


class GpuPool:
    """The GPUs one worker may use, and the machine-wide locks that share them between workers."""

    def __init__(self, gpus: list[Gpu], directory: Path, home: int = 0) -> None:
        self.gpus = gpus
        self.directory = directory
        # Each worker tries its own GPU first, so that with one worker per GPU each keeps its device.
        self.home = home % len(gpus) if gpus else 0

    def _path(self, gpu: Gpu) -> Path:
        return self.directory / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu.ident)}.lock"

    def try_acquire(self, count: int) -> Lease | None:
        """``count`` free GPUs at once (this worker's own first), or None and nothing held."""
        self.directory.mkdir(parents=True, exist_ok=True)
        order = self.gpus[self.home:] + self.gpus[:self.home]
        lease = Lease([])
        for gpu in order:
            fd = os.open(self._path(gpu), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            lease.gpus.append(gpu)
            lease.files.append(fd)
            if len(lease.gpus) == count:
                lease.gpus.sort(key=lambda g: g.index)
                return lease
        lease.release()
        return None

    def acquire(self, count: int, waiting: Callable[[], None] = lambda: None,
                poll: float = POLL_SECONDS) -> Lease:
        """Block until ``count`` GPUs are held. Every taker goes through one queue lock, so a
        trial that waits for several GPUs is not overtaken forever by trials that need one."""
        if count > len(self.gpus):
            raise ValueError(f"{count} GPU(s) needed, {len(self.gpus)} selected")
        self.directory.mkdir(parents=True, exist_ok=True)
        with file_lock(self.directory / "queue.lock", waiting):
            told = False
            while (lease := self.try_acquire(count)) is None:
                if not told:
                    waiting()
                    told = True
                time.sleep(poll)
        return lease
