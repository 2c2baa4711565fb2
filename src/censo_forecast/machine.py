"""What this machine lets a process use: its CPUs, and how many threads one fit should take."""

from __future__ import annotations

import ctypes
import functools
import math
import os
from pathlib import Path

SMALL_TRAINING_ROWS = 20_000  # below this a second thread only waits (benchmarks/README.md, "busy machine")


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity mask and, in a container, its cgroup quota
    (cgroup v2 `cpu.max`, or v1 `cpu/cpu.cfs_quota_us` over `cpu.cfs_period_us`)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        if (cgroup / "cpu.max").exists():
            quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        else:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        if quota not in ("max", "-1"):
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no quota readable: the affinity mask alone
    return max(1, cpus)


def effective_jobs(n_jobs: int, cpus: int | None = None) -> int:
    """scikit-learn's meaning of `n_jobs`: a positive count as it is, -1 every available CPU,
    -2 all but one, and so on. 0, or fewer CPUs than none, is a ValueError."""
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0:
        raise ValueError(f"jobs must be a positive number of threads, or -1 for every CPU (-2 all but one); not {n_jobs!r}")
    if n_jobs > 0:
        return n_jobs
    cpus = available_cpus() if cpus is None else cpus
    if cpus + 1 + n_jobs < 1:
        raise ValueError(f"jobs {n_jobs} leaves no CPU of the {cpus} available; use -1 for every CPU or a positive number")
    return cpus + 1 + n_jobs


def threads_for(rows: int, requested: int) -> int:
    """Threads for one fit: no more than asked for or available, and one for a small training set."""
    return 1 if rows < SMALL_TRAINING_ROWS else max(1, min(requested, available_cpus()))


def release_freed_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's `malloc_trim`; nothing elsewhere).
    What a worker thread frees stays in its own malloc arena, out of the main thread's reach: with
    the fits side by side a national run's peak grew from 6.8 to 7.8 GB until this was called after
    each fold's fits (benchmarks/README.md, "fits side by side")."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return None
