"""Benchmark: where samples go in `craft preprocess`, the previous design beside the current one.

1. Ingest stress: Ray tasks that return ready-made 5.4 MB samples (the default sample size), the
   two designs in one run on the same local Ray:
     driver-writes  (the previous design) the driver ray.get()s every sample and appends it to
                    the tar itself;
     workers-write  (the current design, the job's own WriterPool) the driver reads a few-KB
                    result and hands the sample's reference to a shard writer actor.
   Per design: driver CPU ms per object (the driver process's CPU time, Ray's threads in it
   included), bytes the driver deserialises per object, and the ceiling that implies: objects/s
   one driver core keeps up with (1000 / ms per object).
2. Real meshes at default settings, 2 workers: `craft preprocess` of the previous commit (a git
   worktree of --baseline, the driver-writes design) and of this checkout, same meshes, same
   venv: objects/s (Ray start excluded), and whether every sample's members are byte for byte the
   same (meta.json compared without its stage timings).

  python bench/preprocess.py --objects 400 --count 24 --baseline 6ba6eed
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import webdataset as wds

from craftsman_platform.corpora import fixed_sample
from craftsman_platform.pipelines.shardstore import ShardStore
from craftsman_platform.pipelines.storage import Output
from craftsman_platform.pipelines.writers import WriterPool, hand_to_writer

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_BYTES = 5_370_000
MEMBERS = 70  # 20 views x (rgb, normal, depth) + arrays + json, as a real sample


def ready_sample(seed: int, group: str | None):
    """A task standing in for the pipeline: a 5.4 MB sample in MEMBERS members, made instantly;
    returned to the driver (group None) or handed to the node's writer of `group`."""
    import ray

    rng = np.random.default_rng(seed)
    blob = rng.integers(0, 255, SAMPLE_BYTES, dtype=np.uint8).tobytes()
    step = SAMPLE_BYTES // MEMBERS
    members = {f"m{i:03d}.bin": blob[i * step : (i + 1) * step] for i in range(MEMBERS)}
    row = {"uid": f"obj{seed:06d}", "status": "ok", "chamfer": 0.01, "time_sample": 1.5}
    if group is None:
        return {"status": "ok", "uid": row["uid"], "row": row, "members": members}
    ack = hand_to_writer(group, members, row)
    return {"status": "ok", "uid": row["uid"], "row": row, "node": ray.get_runtime_context().get_node_id(), **ack}


def stress_driver_writes(ray, n: int, out: Path) -> tuple[float, float]:
    task = ray.remote(ready_sample).options(num_cpus=1)
    out.mkdir(parents=True)
    cpu0, received = time.process_time(), 0
    refs = [task.remote(i, None) for i in range(n)]
    tar, size, index = None, 0, 0
    while refs:
        ready, refs = ray.wait(refs, num_returns=min(len(refs), 16), timeout=1.0)
        for result in ray.get(ready):
            received += len(pickle.dumps(result, protocol=5))
            if tar is None:
                tar = tarfile.open(out / f"shard-{index:06d}.tar", "w", format=tarfile.PAX_FORMAT)
            for name, data in result["members"].items():
                info = tarfile.TarInfo(f"{result['uid']}.{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                size += len(data)
            if size >= 1_000_000_000:
                tar.close()
                tar, size, index = None, 0, index + 1
    if tar is not None:
        tar.close()
    return (time.process_time() - cpu0) * 1000 / n, received / n


def stress_workers_write(ray, n: int, out: Path) -> tuple[float, float]:
    task = ray.remote(ready_sample).options(num_cpus=1)
    store = ShardStore(Output(str(out)))
    pool = WriterPool(ray, store, str(out), {}, 1_000_000_000)
    cpu0, received = time.process_time(), 0
    pool.ensure([node["NodeID"] for node in ray.nodes() if node["Alive"]])
    pending = [task.remote(i, pool.group) for i in range(n)]
    while pending:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0.2)
        for result in ray.get(ready):
            received += len(pickle.dumps(result, protocol=5))
            pool.accepted(None, result)
    pool.close()
    return (time.process_time() - cpu0) * 1000 / n, received / n


def ingest_stress(n: int, work: Path) -> None:
    from craftsman_platform.raycluster import RayConfig, init_ray

    ray = init_ray(RayConfig(), num_cpus=2, system_config={"max_direct_call_object_size": 16 * 1024})
    try:
        ray.get([ray.remote(ready_sample).remote(0, None) for _ in range(2)])  # warm the workers
        rows = []
        for name, fn in (
            ("driver-writes (previous)", stress_driver_writes),
            ("workers-write (current)", stress_workers_write),
        ):
            t0 = time.monotonic()
            ms, received = fn(ray, n, work / name.split()[0])
            wall = time.monotonic() - t0
            rows.append((name, ms, received, 1000 / ms, n / wall))
            shutil.rmtree(work / name.split()[0], ignore_errors=True)
    finally:
        ray.shutdown()
    print(f"\n1. ingest stress: {n} ready-made samples of {SAMPLE_BYTES / 1e6:.2f} MB, local Ray with 2 CPUs")
    print(
        "| design | driver CPU ms / object | bytes to the driver / object | ceiling, objects/s per driver core "
        "| objects/s here |"
    )
    print("|---|---|---|---|---|")
    for name, ms, received, ceiling, rate in rows:
        print(f"| {name} | {ms:.2f} | {received:,.0f} | {ceiling:,.0f} | {rate:.1f} |")


def run_preprocess(src: Path, files: list[Path], out: Path) -> dict:
    listing = out.with_suffix(".txt")
    listing.write_text("\n".join(str(f) for f in files) + "\n")
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-m", "craftsman_platform.cli", "preprocess", f"source.path={listing}"]
    subprocess.run([*cmd, f"output_dir={out}", "workers=2"], cwd=src, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def samples(out: Path) -> dict[str, dict]:
    found = {}
    for s in wds.WebDataset(sorted(str(p) for p in (out / "shards").glob("*.tar")), shardshuffle=False):
        meta = json.loads(s["meta.json"])
        meta.pop("timings")
        found[s["__key__"]] = {k: v for k, v in s.items() if not k.startswith("__") and k != "meta.json"} | {
            "meta": meta
        }
    return found


def real_meshes(count: int, baseline: str, work: Path) -> None:
    old_src = work / "baseline-src"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(old_src), baseline], cwd=ROOT, check=True, capture_output=True
    )
    try:
        files = fixed_sample(count)
        old = run_preprocess(old_src, files, work / "old")
        new = run_preprocess(ROOT, files, work / "new")
        old_s, new_s = samples(work / "old"), samples(work / "new")
        differing = sorted({k for u in old_s for k in old_s[u] if old_s[u][k] != new_s.get(u, {}).get(k)})
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old_src)], cwd=ROOT, check=False)
    print(f"\n2. {count} real meshes at defaults, 2 workers (Ray start excluded)")
    print("| code | ok | objects/s | shards | driver bytes / object |")
    print("|---|---|---|---|---|")
    for name, s in ((f"previous ({baseline})", old), ("current", new)):
        shards = len(list((work / ("old" if s is old else "new") / "shards").glob("*.tar")))
        received = s["this_run"].get("driver_bytes_per_object")
        print(
            f"| {name} | {s['ok']} | {s['this_run']['objects_per_second']:.3f} | {shards} | "
            f"{f'{received:,.0f}' if received is not None else 'every sample (~5.4 MB)'} |"
        )
    ratio = new["this_run"]["objects_per_second"] / old["this_run"]["objects_per_second"]
    print(f"current / previous: {ratio:.3f}; members that differ (meta.json without timings): {differing or 'none'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=400, help="samples in the ingest stress")
    ap.add_argument("--count", type=int, default=24, help="real meshes in part 2 (0: skip it)")
    ap.add_argument("--baseline", default="6ba6eed", help="the commit whose driver writes the shards")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="craft-bench-"))
    try:
        ingest_stress(args.objects, work)
        if args.count:
            real_meshes(args.count, args.baseline, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
