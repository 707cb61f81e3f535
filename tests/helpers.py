"""Helpers for writing small real mesh files in tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_obj(path: Path, vertices, faces) -> Path:
    """A plain OBJ writer for hand-made test files (1-based indices, no processing)."""
    lines = [f"v {x:.9g} {y:.9g} {z:.9g}" for x, y, z in np.asarray(vertices, dtype=float)]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in np.asarray(faces, dtype=int)]
    path.write_text("\n".join(lines) + "\n")
    return path
