"""The dataset report at Objaverse scale, side by side with the obvious baseline, in one run.

A synthetic 800k-row manifest (the real rows of a small preprocessing output, repeated under new
uids with random quality columns; the real rows made the worst by Chamfer so the gallery finds
them in the shards) next to that output's real shards. Measured: the whole `write_report` (manifest
read, counts, histograms, gallery pictures, HTML), and the gallery's shard reads against the
baseline of streaming every shard front to back (webdataset's way) for the same members.

    python bench/report.py [--rows 800000] [--source OUT]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from craftsman_platform.pipelines.preprocess.tiny_shards import make_tiny_shards
from craftsman_platform.pipelines.report import gather
from craftsman_platform.pipelines.report.job import write_report
from craftsman_platform.pipelines.storage import Output
from craftsman_platform.shapedata.manifest import read_manifest


def synthetic_output(source: Path, rows: int, folder: Path) -> Path:
    out = folder / "out"
    shutil.copytree(source / "shards", out / "shards")
    for shard in (out / "shards").glob("*.tar"):  # production shards are ~1 GB: 64 MB of other members each
        with tarfile.open(shard, "a") as tar:
            for k in range(64):
                info = tarfile.TarInfo(f"filler-{k:03d}.bin")
                info.size = 2**20
                tar.addfile(info, io.BytesIO(os.urandom(2**20)))
    real = read_manifest(str(source)).to_pylist()
    rng = np.random.default_rng(0)
    n = rows - len(real)
    fake = {
        "uid": [f"synthetic-{i:07d}" for i in range(n)],
        "status": np.where(rng.random(n) < 0.06, "failed", "ok").tolist(),
        "chamfer": (rng.random(n) * 0.01).tolist(),
        "sign_agreement": (0.9 + 0.1 * rng.random(n)).tolist(),
        "parts_lost": rng.integers(0, 3, n).tolist(),
        "n_faces": rng.integers(100, 500_000, n).tolist(),
        "lvis_category": rng.choice(["chair", "mug", "car", "lamp", "shoe"], n).tolist(),
        **{f"time_{s}": rng.random(n).tolist() for s in ("load", "watertight", "sample", "render", "write")},
    }
    fake["reason"] = [None if s == "ok" else "no_triangles" for s in fake["status"]]
    fake["message"] = [None if s == "ok" else "no triangle geometry found" for s in fake["status"]]
    fake["shard"] = [None] * n  # not in any shard: only the real rows have pictures
    columns = list(dict.fromkeys([*real[0], *fake]))
    table = {c: [r.get(c) for r in real] + fake.get(c, [None] * n) for c in columns}
    table["chamfer"] = [1.0] * len(real) + fake["chamfer"]  # the real rows are the worst
    pq.write_table(pa.table(table), out / "manifest.parquet")
    return out


def stream_every_shard(out: Output, wanted: set[str]) -> int:
    """The baseline: read each shard with a wanted object front to back (a non-seeking stream)."""
    kept = 0
    for shard in sorted(out.sizes("shards")):
        with out.fs.open(out.path("shards/" + shard), "rb") as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
            for info in tar:
                data = tar.extractfile(info).read() if info.isfile() else b""
                kept += info.name.partition(".")[0] in wanted and len(data) > 0
    return kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=800_000)
    ap.add_argument("--source", help="a preprocessing output (default: make the tiny one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(args.source) if args.source else make_tiny_shards(Path(tmp) / "tiny")
        out_dir = synthetic_output(source, args.rows, Path(tmp))
        out = Output(str(out_dir))
        shards_mb = sum(os.path.getsize(p) for p in (out_dir / "shards").glob("*.tar")) / 1e6
        t = time.perf_counter()
        _, picks_from = gather.scan(out)
        rows = gather.gallery_rows(out, gather.pick_gallery(picks_from, 240))
        manifest_s = time.perf_counter() - t
        t = time.perf_counter()
        members = gather.read_members(out, rows)
        seek_s = time.perf_counter() - t
        wanted = {str(r["uid"]) for r in rows}
        t = time.perf_counter()
        stream_every_shard(out, wanted)
        stream_s = time.perf_counter() - t
        t = time.perf_counter()
        result = write_report(out, 240)
        total_s = time.perf_counter() - t
        html_mb = (out_dir / "report.html").stat().st_size / 1e6
    print(
        f"manifest: {args.rows:,} rows; shards: {shards_mb:.1f} MB; gallery: 240 picked, {len(members)} with pictures"
    )
    print(f"scan manifest, pick      {manifest_s:8.2f} s")
    print(f"gallery, seeking reads   {seek_s:8.2f} s")
    print(f"gallery, stream shards   {stream_s:8.2f} s   (baseline)")
    print(
        f"write_report, all of it  {total_s:8.2f} s   -> report.html {html_mb:.2f} MB ({result['objects']:,} objects)"
    )


if __name__ == "__main__":
    main()
