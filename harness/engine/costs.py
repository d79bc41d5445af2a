"""What a trial costs and where it ran: peak memory, and the versions, machine and engine options
recorded with every trial."""

from __future__ import annotations

import os
import platform
import resource
import sys

import torch

from ..task import TaskConfig


def peak_memory_mb(device: str, start_rss_mb: float, peak_cuda_bytes: int = 0) -> float:
    """Peak GPU memory allocated on CUDA (``peak_cuda_bytes``: what :class:`TrialHook` saw before
    mmengine's logger reset the counter); on CPU the trial process's peak resident memory above
    what it had at its start (the libraries every trial shares are not the norm's cost)."""
    if device.startswith("cuda"):
        return max(peak_cuda_bytes, torch.cuda.max_memory_allocated()) / 2**20
    return max(0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - start_rss_mb)


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: report the whole peak
        return 0.0


def environment(device: str, config: TaskConfig | None = None) -> dict[str, str]:
    """Versions, machine and device, and the engine options that change speed or bits (recorded
    with every trial and shown by the leaderboard)."""
    import mmengine

    from .. import __version__

    env = {
        "harness": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "mmengine": mmengine.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "device": device,
        "threads": str(torch.get_num_threads()),
    }
    if config is not None:
        options = config.engine_options()
        if not device.startswith("cuda"):
            options["amp"] = "off"  # ignored on CPU (optim_wrapper_cfg)
        env.update({k: str(v).lower() for k, v in options.items() if k != "devices"})
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
        env["gpus"] = str(torch.cuda.device_count())
        env["cuda"] = str(torch.version.cuda)
        env["cudnn"] = str(torch.backends.cudnn.version())
    return env
