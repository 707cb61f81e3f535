"""Memory for one object's grids, kept in the worker process for the next object.

The watertight conversion allocates and frees about ten arrays of its grid's size per object (a
compact object's 256-voxel grid is ~10-16 M points: 40-65 MB as float32, cc3d's labels as many
again). Two defaults make that expensive, measured in kernel time with getrusage on the bench
machine (Debian, transparent huge pages "madvise" with defrag "madvise", Ubuntu's defaults too):
  * glibc hands every freed block over 32 MB back to the kernel, so each object faults all its
    pages in afresh: ~80 ms of kernel time per median object. Kept in the heap, a worker's freed
    blocks are reused by its next object; its peak memory stays what its largest object needs
    (a freed block is reused, not added to).
  * numpy asks for huge pages on every array over 4 MB, and with defrag "madvise" such a fault
    may compact memory first: ~70 us per fault against ~3 us for the 4 KiB pages of the same
    array (cc3d's labels of a 250^3 grid: 640 ms the first time, 75 ms without huge pages).
"""

from __future__ import annotations

import ctypes
from functools import cache

import numpy as np

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_KEEP = 1 << 30  # blocks up to 1 GiB come from the heap; larger ones are still mapped apart


@cache
def keep_freed_memory() -> bool:
    """Keep freed blocks (up to 1 GiB each) in this process's heap for reuse, and numpy's large
    arrays on ordinary pages. Idempotent; False where the C library is not glibc (then only
    numpy's setting changed)."""
    set_hugepage = getattr(np._core.multiarray, "_set_madvise_hugepage", None)  # numpy's switch
    if set_hugepage is not None:
        set_hugepage(False)
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    # Both thresholds fixed: glibc then stops moving the mmap threshold by itself, and the top of
    # the heap is only given back once more than 2 GiB of it lies free.
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * _KEEP))
