"""The host allocator's settings, applied by every entry point (the CLI, workers, Slurm tasks) before any tensor.
Kept free of torch, so that `mmbench --help` and a refused command answer without loading it (3 s)."""
from __future__ import annotations

import ctypes
import os
import platform

from .errors import MMBenchError


def tune_host_allocator() -> bool:
    """Keep freed host memory in the process for the next step (glibc): large tensors otherwise come from fresh
    mmap()s whose pages fault in again every step (an mrVAE step on 2 CPU cores spent a third of its time in the
    kernel: 1.34 s -> 0.95 s with this). Sets M_MMAP_MAX = 0 and a 2 GiB trim threshold for this process and, through
    MALLOC_MMAP_MAX_ / MALLOC_TRIM_THRESHOLD_, its children (workers); MMBENCH_MALLOC=default leaves glibc's defaults.
    Resident memory stays at its high-water mark; speed changes, never a number. Returns whether it applied."""
    setting = os.environ.get("MMBENCH_MALLOC", "tuned")
    if setting not in ("tuned", "default"):
        raise MMBenchError(f"MMBENCH_MALLOC must be 'tuned' (keep freed memory in the process) or 'default' (glibc's "
                           f"settings), not {setting!r}")
    if setting == "default" or platform.libc_ver()[0] != "glibc":
        return False
    mmap_max = os.environ.get("MALLOC_MMAP_MAX_", "0")
    trim = os.environ.get("MALLOC_TRIM_THRESHOLD_", str(2 ** 31 - 1))
    try:
        libc = ctypes.CDLL(None)
        # mallopt(M_MMAP_MAX = -4, n) and mallopt(M_TRIM_THRESHOLD = -1, bytes) for this process
        if not (libc.mallopt(-4, int(mmap_max)) and libc.mallopt(-1, int(trim))):
            return False
    except (OSError, AttributeError, ValueError):
        return False
    os.environ["MALLOC_MMAP_MAX_"], os.environ["MALLOC_TRIM_THRESHOLD_"] = mmap_max, trim  # read by glibc in children
    return True
