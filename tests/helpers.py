"""Helpers for writing small real mesh files in tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def write_obj(path: Path, vertices, faces) -> Path:
    """A plain OBJ writer for hand-made test files (1-based indices, no processing)."""
    lines = [f"v {x:.9g} {y:.9g} {z:.9g}" for x, y, z in np.asarray(vertices, dtype=float)]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in np.asarray(faces, dtype=int)]
    path.write_text("\n".join(lines) + "\n")
    return path


TINY_SHARD_MESHES = ["duck.obj", "bunny.obj", "cube.obj", "soccerball.obj", "textured_sphere_smooth.obj",
                     "random_urdfs/000/000.obj", "random_urdfs/001/001.obj", "random_urdfs/002/002.obj"]


def make_tiny_shards(out: Path) -> Path:
    """`craft preprocess` on 8 real pybullet meshes with small counts: ~2 objects per shard, 8 views each."""
    from craftsman_platform.config import PreprocessConfig, SampleConfig
    from craftsman_platform.corpora import pybullet_data_dir
    from craftsman_platform.preprocess.job import preprocess

    listing = out / "meshes.txt"
    out.mkdir(parents=True, exist_ok=True)
    listing.write_text("\n".join(str(pybullet_data_dir() / m) for m in TINY_SHARD_MESHES) + "\n")
    cfg = PreprocessConfig(output_dir=str(out / "data"), shard_max_bytes=300_000)
    cfg.source.path = str(listing)
    cfg.geometry.watertight.resolution = 128
    cfg.geometry.watertight.quality_samples = 5000
    cfg.geometry.sample = SampleConfig(surface=4000, sharp_max=500, volume=8000, near=2000)
    cfg.render.resolution, cfg.render.extra_sets = 64, 1
    summary = preprocess(cfg)
    assert summary["ok"] == len(TINY_SHARD_MESHES), summary
    return out / "data"


ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}


def craft(*args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    """Run `craft ARGS` in a subprocess (as a user would); fail with its stderr when it fails."""
    proc = subprocess.run([sys.executable, "-m", "craftsman_platform.cli", *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"craft {args[0]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def shard_glob(data: Path) -> str:
    return str(data / "shards" / "*.tar")
