"""Benchmark: where samples go in `craft preprocess` and what the driver spends per object, this
checkout beside a previous commit (--baseline, run from a git worktree of it), in one run.

1. Ingest stress: runs that hand over ready-made samples instantly, so that only the path of the
   samples and the driver's work are measured:
     driver-writes  (before issue 18) tasks return 5.37 MB samples (the default sample size); the
                    driver ray.get()s each and appends it to the tar itself;
     workers-write  the job's own scheduler (`process_all`) with a stand-in object function: each
                    run hands its sample to its node's shard writer, the driver reads a few-KB
                    result and journals the shards. This checkout's (an actor per task slot, a
                    call per object) and the baseline's (by its own bench: a Ray task per object),
                    with 5.37 MB samples on this machine's 2 task slots, then with 1 KB samples on
                    16 slots, where the runs finish faster than the driver can follow: its ceiling.
   Per run: driver CPU ms per object (the driver process's CPU time, Ray's threads in it
   included; Ray start and the slots' process start-ups excluded), bytes the driver deserialises
   per object, objects/s, the share of one core the driver used, and the ceiling that implies:
   objects/s one driver core keeps up with (1000 / ms per object).
2. Real meshes at default settings, 2 workers: `craft preprocess` of the baseline and of this
   checkout, same meshes, same venv: objects/s (Ray start excluded), and whether every sample's
   members are byte for byte the same (meta.json compared without its stage timings).

  python bench/preprocess.py --objects 300 --count 24 --baseline a5ec97f

A baseline from before 0f6744a (e.g. 6ba6eed, before samples left the driver) needs pysdf, which
this checkout no longer installs: `pip install --target /tmp/pysdf-site pysdf` (Debian's
libeigen3-dev, with CPLUS_INCLUDE_PATH=/usr/include/eigen3) and PYTHONPATH=.:/tmp/pysdf-site.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import webdataset as wds

from craftsman_platform.corpora import fixed_sample
from craftsman_platform.pipelines.lock import OutputLock
from craftsman_platform.pipelines.preprocess.config import PreprocessConfig
from craftsman_platform.pipelines.preprocess.object_job import STAGES, manifest_row
from craftsman_platform.pipelines.preprocess.scheduler import process_all
from craftsman_platform.pipelines.preprocess.sources import ObjectRef
from craftsman_platform.pipelines.shardstore import ShardStore
from craftsman_platform.pipelines.storage import Output
from craftsman_platform.pipelines.writers import hand_to_writer

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_BYTES = 5_370_000
MEMBERS = 70  # 20 views x (rgb, normal, depth) + arrays + json, as a real sample


def ready_members(seed: int, size: int) -> dict[str, bytes]:
    blob = np.random.default_rng(seed).integers(0, 255, size, dtype=np.uint8).tobytes()
    step = size // MEMBERS
    return {f"m{i:03d}.bin": blob[i * step : (i + 1) * step] for i in range(MEMBERS)}


def ready_row(uid: str) -> dict:
    """A manifest row of the real shape (so the driver reads as much as in a real job)."""
    meta = {
        "uid": uid, "source": f"/data/meshes/{uid}.glb", "config_hash": "0" * 16, "source_sha256": "0" * 64,
        "timings": {s: 0.5 for s in STAGES}, "sign_agreement": 1.0, "counts": {"sharp": 4096}, "faces": 100_000,
        "views": 20, "watertight": {"method": "udf", "chamfer": 0.004, "parts_in": 3, "parts_out": 1, "parts_lost": 0},
    }  # fmt: skip
    return {**manifest_row(meta), "worker_peak_rss_mb": 2400.0}


def ready_object(ref: ObjectRef, cfg, digest: str, group: str) -> dict:
    """Stand-in for `run_object` in the job's scheduler: a ready-made sample of
    ref.annotations["bytes"], handed to this node's writer; the result a real run returns."""
    import ray

    row = ready_row(ref.uid)
    ack = hand_to_writer(group, ready_members(zlib.crc32(ref.uid.encode()), ref.annotations["bytes"]), row)
    return {"uid": ref.uid, "source": ref.source, "config_hash": digest, "status": "ok", "row": row,
            "node": ray.get_runtime_context().get_node_id(), **ack}  # fmt: skip


def returned_sample(seed: int) -> dict:
    """The previous design's task: the whole sample goes back to the driver."""
    uid = f"obj{seed:06d}"
    return {"status": "ok", "uid": uid, "row": ready_row(uid), "members": ready_members(seed, SAMPLE_BYTES)}


def stress_driver_writes(n: int, out: Path) -> dict:
    from craftsman_platform.raycluster import RayConfig, init_ray

    ray = init_ray(RayConfig(), num_cpus=2, system_config={"max_direct_call_object_size": 16 * 1024})
    try:
        task = ray.remote(returned_sample).options(num_cpus=1)
        out.mkdir(parents=True)
        t0, cpu0, received = time.monotonic(), time.process_time(), 0
        refs = [task.remote(i) for i in range(n)]
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
        return {"cpu_s": time.process_time() - cpu0, "wall_s": time.monotonic() - t0, "bytes": received, "n": n}
    finally:
        ray.shutdown()


def stress_workers_write(n: int, out: Path, sample_bytes: int, slots: int) -> dict:
    """The job's scheduler over n stand-in objects on a local Ray of `slots` CPUs, in its steady
    state: from the moment every slot's actor has started (each is a new process that imports the
    job's code, ~3 s of CPU here) to the end."""
    cfg = PreprocessConfig(output_dir=str(out), workers=slots, memory_per_task_gb=0.25)
    runs = ([ObjectRef(f"obj{i:06d}", f"/data/meshes/obj{i:06d}.glb", {"bytes": sample_bytes})] for i in range(n))
    output = Output(str(out))
    with OutputLock(output) as lock:
        counts, facts = process_all(runs, n, cfg, "0" * 16, ShardStore(output), lock, object_fn=ready_object)
    assert counts["ok"] == n, "the stand-in objects must all succeed"
    at, cpu, done = facts["all_slots"] or (0.0, 0.0, 0)
    return {
        "cpu_s": facts["driver_cpu_s"] - cpu,
        "wall_s": facts["loop_s"] - at,
        "bytes": facts["driver_bytes"] * (n - done) / n,
        "n": n - done,
    }


def ingest_stress(n: int, work: Path) -> list[str]:
    """The stress's table rows for this checkout."""
    current = "workers-write, an actor call per object"
    runs = [
        ("driver-writes (before issue 18)", "5.37 MB", 2, lambda out: stress_driver_writes(n, out)),
        (current, "5.37 MB", 2, lambda out: stress_workers_write(n, out, SAMPLE_BYTES, 2)),
        (current, "1 KB", 16, lambda out: stress_workers_write(5 * n, out, 1024, 16)),
    ]
    rows = []
    for i, (name, size, slots, fn) in enumerate(runs):
        r = fn(work / f"stress-{i}")
        shutil.rmtree(work / f"stress-{i}", ignore_errors=True)
        ms = 1000 * r["cpu_s"] / r["n"]
        rows.append(
            f"| {name} | {size} | {slots} | {r['n']} | {ms:.2f} | {r['bytes'] / r['n']:,.0f} | "
            f"{r['n'] / r['wall_s']:.1f} | {r['cpu_s'] / r['wall_s']:.0%} | {1000 / ms:,.0f} |"
        )
    return rows


def baseline_stress(src: Path, baseline: str, n: int) -> list[str]:
    """The same stress by the baseline's own bench (its own scheduler), its workers-write rows."""
    out = subprocess.run(
        [sys.executable, "bench/preprocess.py", "--objects", str(n), "--count", "0"],
        cwd=src, env=_env(src), check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    rows = []
    for line in out.splitlines():
        cells = line.split("|")
        if not line.startswith("| workers-write") or re.search(r"\([0-9a-f]{7,}\)", cells[1]):
            continue  # not a stress row, or a row of the baseline's own baseline
        cells[1] = f" {cells[1].strip().replace(' (current)', '')} ({baseline}) "
        rows.append("|".join(cells))
    return rows


def print_stress(rows: list[str]) -> None:
    print("\n1. ingest stress: runs hand over ready-made samples; local Ray on this machine")
    print(
        "| design | sample | task slots | objects | driver CPU ms / object | bytes to the driver / object "
        "| objects/s here | driver's share of a core | ceiling, objects/s per driver core |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


def _env(src: Path) -> dict:
    # what PYTHONPATH already holds stays behind the checkout (e.g. pysdf for a baseline that needs it)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))}


def run_preprocess(src: Path, files: list[Path], out: Path) -> dict:
    listing = out.with_suffix(".txt")
    listing.write_text("\n".join(str(f) for f in files) + "\n")
    cmd = [sys.executable, "-m", "craftsman_platform.cli", "preprocess", f"source.path={listing}"]
    cmd += [f"output_dir={out}", "workers=2"]
    subprocess.run(cmd, cwd=src, env=_env(src), check=True, stdout=subprocess.DEVNULL)
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


def real_meshes(count: int, old_src: Path, baseline: str, work: Path) -> None:
    files = fixed_sample(count)
    old = run_preprocess(old_src, files, work / "old")
    new = run_preprocess(ROOT, files, work / "new")
    old_s, new_s = samples(work / "old"), samples(work / "new")
    differing = sorted({k for u in old_s for k in old_s[u] if old_s[u][k] != new_s.get(u, {}).get(k)})
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
    ap.add_argument("--baseline", default="a5ec97f", help="the commit to compare this checkout with")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="craft-bench-"))
    old_src = work / "baseline-src"
    subprocess.run(["git", "worktree", "add", "--detach", str(old_src), args.baseline], cwd=ROOT, check=True)
    try:
        rows = ingest_stress(args.objects, work)
        print_stress(rows + baseline_stress(old_src, args.baseline, args.objects))
        if args.count:
            real_meshes(args.count, old_src, args.baseline, work)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old_src)], cwd=ROOT, check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
