"""Benchmark: `craft preprocess` end to end on real meshes at default settings.

  1. --count real meshes (a fixed seeded sample of pybullet_data: half procedural multi-part
     objects, half robot parts / scans) with 2 workers: objects/s, objects/s per core, seconds
     per object per core (sum of the single-threaded stage times), per-stage medians, peak
     memory per worker process;
  2. the first --compare-count of them with 1 worker and with 2 workers, side by side.

Throughput excludes Ray's start-up (reported separately by the job's log).

    python bench/preprocess.py --count 200 --compare-count 60
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from craftsman_platform.corpora import fixed_sample
from craftsman_platform.pipelines.preprocess.config import PreprocessConfig
from craftsman_platform.pipelines.preprocess.job import preprocess
from craftsman_platform.pipelines.preprocess.object_job import STAGES


def run(files: list[Path], workers: int, root: Path, name: str) -> tuple[dict, list[dict]]:
    listing = root / f"{name}.txt"
    listing.write_text("\n".join(str(f) for f in files) + "\n")
    cfg = PreprocessConfig(output_dir=str(root / name), workers=workers)
    cfg.source.path = str(listing)
    summary = preprocess(cfg)
    rows = pq.read_table(root / name / "manifest.parquet").to_pylist()
    return summary, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--compare-count", type=int, default=60)
    ap.add_argument("--workdir", default=None, help="where outputs go (default: a temporary folder, removed)")
    ap.add_argument("--compare-only", action="store_true", help="skip part 1, run only the 1 vs 2 workers comparison")
    args = ap.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="craft-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    files = fixed_sample(args.count)
    try:
        if not args.compare_only:
            summary, rows = run(files, 2, root, "all")
            ok = [r for r in rows if r["status"] == "ok"]
            per_object = [sum(r[f"time_{s}"] for s in STAGES) for r in ok]
            run_ = summary["this_run"]
            print(
                f"\n{len(files)} real meshes, defaults (R=256, 100k surface / 200k vol / 2x100k near, "
                "20 views at 256 px), 2 workers"
            )
            print(f"ok {summary['ok']}, failed {summary['failed']} {summary['reasons']}")
            print(
                f"throughput: {run_['objects_per_second']:.3f} objects/s = "
                f"{run_['objects_per_second'] / 2:.3f} objects/s per core "
                f"({run_['processed']} objects in {run_['seconds']:.0f} s)"
            )
            print(
                f"seconds per object per core: median {statistics.median(per_object):.2f}, "
                f"mean {statistics.fmean(per_object):.2f}, "
                f"p90 {sorted(per_object)[int(0.9 * len(per_object))]:.2f}"
            )
            print(
                "stage medians (s): "
                + ", ".join(f"{s} {statistics.median(r[f'time_{s}'] for r in ok):.3f}" for s in STAGES)
            )
            peaks = [r["worker_peak_rss_mb"] for r in ok]
            print(f"peak memory per worker process: max {max(peaks):.0f} MB, median {statistics.median(peaks):.0f} MB")
            shard_bytes = sum(p.stat().st_size for p in (root / "all" / "shards").glob("*.tar"))
            print(
                f"output: {shard_bytes / 1e6:.0f} MB in shards, {shard_bytes / max(1, len(ok)) / 1e6:.2f} MB per object"
            )

        subset = files[: args.compare_count]
        print(f"\n1 vs 2 workers on the same {len(subset)} meshes:")
        print("| workers | objects/s | speed-up |")
        print("|---|---|---|")
        base = None
        for workers in (1, 2):
            s, _ = run(subset, workers, root, f"w{workers}")
            ops = s["this_run"]["objects_per_second"]
            base = base or ops
            print(f"| {workers} | {ops:.3f} | {ops / base:.2f}x |")
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
