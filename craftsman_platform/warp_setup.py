"""NVIDIA Warp, set up once per process for the project's kernels (geometry/distance.py,
inference/raycast.py): no banner or compile lines on the console, query kernels without
their adjoints (half the compile time), and on machines without the CUDA driver (CPU nodes) the
warning Warp's native library prints to stderr about it kept off the console."""

from __future__ import annotations

import ctypes
import os
from functools import cache

import warp as wp

wp.config.log_level = wp.LOG_WARNING


def _cuda_driver_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


@cache
def init_warp() -> None:
    """Initialise Warp (idempotent)."""
    if _cuda_driver_present():
        wp.init()
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            wp.init()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
