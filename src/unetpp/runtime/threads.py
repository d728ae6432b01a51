"""Threads and seeds: how many torch threads to run, the seed of every generator, and
deterministic algorithms. See :mod:`unetpp.runtime`."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


# --------------------------------------------------------------------------- threads, seeds
def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """``deterministic``: deterministic algorithms (warn where none exists); otherwise let
    cuDNN benchmark its convolutions on CUDA (fixed patch sizes make that pay)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic and torch.device(device).type == "cuda"


def _cpu_times(stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(all jiffies, idle jiffies) summed over the CPUs, from the first line of /proc/stat;
    None where there is no such file (macOS, Windows)."""
    try:
        fields = stat.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 6:
        return None
    values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return sum(values), values[3] + values[4]


def busy_cores(interval: float = 0.5, stat: Path = Path("/proc/stat")) -> float:
    """How many cores other processes keep busy *now*: the CPU time that was not idle over
    ``interval`` seconds (this process sleeps meanwhile). Falls back to the 1-minute load
    average where /proc/stat is missing; that lags by a minute, so right after a heavy job
    (e.g. ``pip install`` before ``make demo``) it would still count cores that are free."""
    before = _cpu_times(stat)
    if before is not None:
        time.sleep(interval)
        after = _cpu_times(stat)
        if after is not None and after[0] > before[0]:
            idle_share = (after[1] - before[1]) / (after[0] - before[0])
            return max(0.0, (1.0 - idle_share) * (os.cpu_count() or 1))
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return 0.0


def set_threads(threads: int | None, log: Callable[[str], None] = lambda _: None, jobs: int = 1) -> int:
    """``torch.set_num_threads``: ``threads``, or (None) the idle cores shared out between
    ``jobs`` processes.

    On a CPU busy with other work, more compute threads than idle cores make every step
    several times slower (the threads wait for each other), so with no explicit number we
    take ``(cpu_count - round(busy_cores())) // jobs`` (at least 1, at most torch's default).
    """
    if threads is None:
        default = torch.get_num_threads()
        busy = busy_cores()
        idle = max(1, min(default, (os.cpu_count() or 1) - int(round(busy))))
        threads, unbusy = max(1, idle // jobs), max(1, default // jobs)
        if threads < unbusy:
            log(f"the CPU is busy (other processes use {busy:.1f} of {os.cpu_count()} cores): using {threads} "
                f"torch thread(s){' per job' if jobs > 1 else ''} instead of {unbusy} (--threads to choose)")
    torch.set_num_threads(threads)
    return threads


def loader_workers(device: torch.device) -> int:
    """DataLoader worker processes by default: on CUDA, all cores but one (at most 8), so
    that the GPU never waits for patches; on the CPU none, since every worker takes a core
    from the convolutions (measured in ``benchmarks/data.py``)."""
    if torch.device(device).type == "cuda":
        return max(1, min(8, (os.cpu_count() or 2) - 1))
    return 0
