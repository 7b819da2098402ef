"""Steady memory for a training process: glibc's malloc told to keep the memory it frees.

torch's CPU allocator is plain malloc. A training step frees and allocates the same large blocks
(LeNet's first activation at batch 512 is 24 MB) again and again, and by default glibc adapts its
thresholds to what was freed before, so whether those blocks go back to the kernel, and come back
as fresh zeroed pages, depends on the process's history. Two epochs of E1 on a 2-core CPU took 1.5
to 9.9 million minor page faults and ran at 7,900 to 12,800 samples/s from one process to the
next; with these thresholds, 0.5 to 0.7 million faults and 12,500 to 13,000 samples/s
(docs/measured.md). `lambexp run`, `resume` and `reproduce` call it; Linux with glibc only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # blocks below 32 MB (glibc's largest) come from the heap ...
TRIM_THRESHOLD = 1 << 30  # ... which keeps up to 1 GB of freed memory instead of returning it


def keep_freed_memory() -> bool:
    """Fix glibc's thresholds for this process; True when it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                    and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):  # no glibc (musl, ...): leave malloc as it is
        return False
