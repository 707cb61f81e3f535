"""A synthetic Objaverse-XL annotation set in the objaverse package's schema and cache layout, for
bench/ingest_scale.py (the real files cannot be downloaded here). Assumed, not measured: 60% GitHub
(~40 files per repository at one commit), 32% Thingiverse, 8% Sketchfab, 0.03% Smithsonian; 20% of
GitHub rows repeat an earlier GitHub row's sha256 (forks), 2% of Thingiverse rows a GitHub one."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SHARES = {"github": 0.60, "thingiverse": 0.32, "sketchfab": 0.08, "smithsonian": 0.0003}
CHUNK = 1_000_000


def _hex(raw: np.ndarray) -> pa.Array:
    """(n, 32) uint8 -> n lowercase hex strings, vectorised."""
    digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    out = np.empty((len(raw), 64), np.uint8)
    out[:, 0::2], out[:, 1::2] = digits[raw >> 4], digits[raw & 15]
    return pa.array(out.view("S64").ravel()).cast(pa.string())


def make_annotations(cache: Path, n: int, seed: int = 0) -> None:
    """CACHE/<source>/<source>.parquet for `n` rows in all, and Sketchfab's object paths."""
    rng = np.random.default_rng(seed)
    counts = {s: max(1, int(round(n * share))) for s, share in SHARES.items()}
    counts["github"] += n - sum(counts.values())
    github_sha = rng.integers(0, 256, (counts["github"], 32), dtype=np.uint8)
    dup = np.flatnonzero(rng.random(counts["github"]) < 0.20)
    dup = dup[dup > 0]
    github_sha[dup] = github_sha[(rng.random(len(dup)) * dup).astype(np.int64)]  # an earlier row's content
    paths = {}
    for source, count in counts.items():
        (cache / source).mkdir(parents=True, exist_ok=True)
        writer = None
        for start in range(0, count, CHUNK):
            idx = np.arange(start, min(count, start + CHUNK))
            if source == "github":
                raw = github_sha[idx]
                repo = idx // 40
                fids = [f"https://github.com/org{r % 50021}/repo{r}/blob/{(r * 2654435761) % 2**64:040x}/models/"
                        f"part_{i}.obj" for r, i in zip(repo.tolist(), idx.tolist())]  # fmt: skip
                types = "obj"
            else:
                raw = rng.integers(0, 256, (len(idx), 32), dtype=np.uint8)
                if source == "thingiverse":
                    copy = rng.random(len(idx)) < 0.02
                    raw[copy] = github_sha[rng.integers(0, len(github_sha), int(copy.sum()))]
                    fids = [f"https://www.thingiverse.com/thing:{i // 3}/files?fileId={i}" for i in idx.tolist()]
                    types = "stl"
                elif source == "sketchfab":
                    uids = [f"{i:032x}" for i in idx.tolist()]
                    fids = [f"https://sketchfab.com/3d-models/{u}" for u in uids]
                    paths.update({u: f"glbs/000-{i // 1000 % 160:03d}/{u}.glb" for u, i in zip(uids, idx.tolist())})
                    types = "glb"
                else:
                    fids = [f"https://3d-api.si.edu/content/document/3d_package:{i}/model.glb" for i in idx.tolist()]
                    types = "glb"
            table = pa.table({
                "fileIdentifier": fids, "source": pa.array([source] * len(idx)),
                "license": pa.array(["CC-BY 4.0"] * len(idx)), "fileType": pa.array([types] * len(idx)),
                "sha256": _hex(raw), "metadata": pa.array(["{}"] * len(idx)),
            })  # fmt: skip
            writer = writer or pq.ParquetWriter(cache / source / f"{source}.parquet", table.schema)
            writer.write_table(table, row_group_size=100_000)
        writer.close()
    (cache / "hf-objaverse-v1").mkdir(parents=True, exist_ok=True)
    with gzip.open(cache / "hf-objaverse-v1" / "object-paths.json.gz", "wt") as fh:
        json.dump(paths, fh)


def cached_annotations(work: Path, n: int) -> Path:
    cache = work / f"xl-{n}"
    if not (cache / "done").exists():
        shutil.rmtree(cache, ignore_errors=True)
        make_annotations(cache, n)
        (cache / "done").write_text("")
    return cache
