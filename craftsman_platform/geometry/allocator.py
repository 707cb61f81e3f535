"""Memory for one object's grids, kept in the worker process for the next object.

The watertight conversion allocates and frees about ten arrays of its grid's size per object (a
compact object's 256-voxel grid is ~10-16 M points: 40-65 MB as float32, cc3d's labels as many
again). glibc hands every freed block over 32 MB back to the kernel, so the next object faults
all of its pages in afresh. How much that costs depends on the machine: ~2 us per 4 KiB page on
bare metal, 50 us and more on a VM whose host reclaims the memory its guest frees (this project's
bench machine: 80 ms of kernel time per median object, measured with getrusage). Kept in the
heap, a worker's freed blocks are reused by its next object; its peak memory stays what its
largest object needs (a freed block is reused, not added to).
"""

from __future__ import annotations

import ctypes
from functools import cache

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_KEEP = 1 << 30  # blocks up to 1 GiB come from the heap; larger ones are still mapped apart


@cache
def keep_freed_memory() -> bool:
    """Keep freed blocks (up to 1 GiB each) in this process's heap for reuse. Idempotent; False,
    and nothing changed, where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    # Both thresholds fixed: glibc then stops moving the mmap threshold by itself, and the top of
    # the heap is only given back once more than 2 GiB of it lies free.
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * _KEEP))
