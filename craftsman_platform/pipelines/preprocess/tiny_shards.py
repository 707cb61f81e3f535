"""A small real dataset for tests and benchmarks: `craft preprocess` on 8 pybullet meshes, with
captions; and the captions file of the demo's meshes (`python -m ... demo-captions LISTING`)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from craftsman_platform.corpora import DEMO_CAPTIONS, pybullet_data_dir
from craftsman_platform.geometry.config import SampleConfig
from craftsman_platform.pipelines.preprocess.config import PreprocessConfig, SourceConfig
from craftsman_platform.pipelines.preprocess.job import preprocess
from craftsman_platform.pipelines.preprocess.sources import list_source

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
TINY_CAPTIONS = {
    "duck.obj": ["a yellow rubber duck", "a bath toy duck"],
    "bunny.obj": ["a rabbit sitting up"],
    "cube.obj": ["a plain cube", "a box"],
    "soccerball.obj": ["a soccer ball"],
    "textured_sphere_smooth.obj": ["a smooth round ball"],
    "random_urdfs/000/000.obj": ["a cluster of blocky parts"],
    "random_urdfs/001/001.obj": ["a long jointed bar"],
    "random_urdfs/002/002.obj": ["a flat plate with bumps"],
}


def write_captions(listing: Path, captions: dict[str, list[str]]) -> Path:
    """LISTING's folder/captions.csv (uid,caption; a row per caption) for the listed files whose path
    ends with a key of `captions`; uids as `craft preprocess` gives them to this list file."""
    out = listing.parent / "captions.csv"
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["uid", "caption"])
        for batch in list_source(SourceConfig(kind="list", path=str(listing))).batches:
            for row in batch.to_pylist():
                for caption in next((c for rel, c in captions.items() if row["source"].endswith(rel)), []):
                    writer.writerow([row["uid"], caption])
    return out


def make_tiny_shards(out: Path) -> Path:
    """`craft preprocess` on 8 real pybullet meshes with small counts (~2 objects per shard, 8 views each):
    the shards the tests and bench/training.py train on. Returns OUT/data."""
    listing = out / "meshes.txt"
    out.mkdir(parents=True, exist_ok=True)
    listing.write_text("\n".join(str(pybullet_data_dir() / m) for m in TINY_SHARD_MESHES) + "\n")
    cfg = PreprocessConfig(output_dir=str(out / "data"), shard_max_bytes=300_000)
    cfg.source.path = str(listing)
    cfg.source.captions = str(write_captions(listing, TINY_CAPTIONS))
    cfg.geometry.watertight.resolution = 128
    cfg.geometry.watertight.quality_samples = 5000
    cfg.geometry.sample = SampleConfig(surface=4000, sharp_max=500, volume=8000, near=2000)
    cfg.render.resolution, cfg.render.extra_sets = 64, 1
    summary = preprocess(cfg)
    assert summary["ok"] == len(TINY_SHARD_MESHES), summary
    return out / "data"


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "demo-captions":
        raise SystemExit("usage: python -m craftsman_platform.pipelines.preprocess.tiny_shards demo-captions LISTING")
    print(write_captions(Path(sys.argv[2]), DEMO_CAPTIONS))
