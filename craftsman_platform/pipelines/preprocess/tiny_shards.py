"""A small real dataset for tests and benchmarks: `craft preprocess` on 8 pybullet meshes."""

from __future__ import annotations

from pathlib import Path

from craftsman_platform.corpora import pybullet_data_dir
from craftsman_platform.geometry.config import SampleConfig
from craftsman_platform.pipelines.preprocess.config import PreprocessConfig
from craftsman_platform.pipelines.preprocess.job import preprocess

TINY_SHARD_MESHES = [
    "duck.obj",
    "bunny.obj",
    "cube.obj",
    "soccerball.obj",
    "textured_sphere_smooth.obj",
    "random_urdfs/000/000.obj",
    "random_urdfs/001/001.obj",
    "random_urdfs/002/002.obj",
]


def make_tiny_shards(out: Path) -> Path:
    """`craft preprocess` on 8 real pybullet meshes with small counts (~2 objects per shard, 8 views each):
    the shards the tests and bench/training.py train on. Returns OUT/data."""
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
