"""Benchmark: the `craft preprocess` driver at Objaverse-XL scale: listing, dedup, manifest, resume and
scheduling with up to 10M objects, each step in a fresh process so that its peak RSS is its own.

The data: a synthetic Objaverse-XL annotation set in the objaverse package's schema and cache layout
(the real files cannot be downloaded here). Assumed, not measured: a source mix of 60% GitHub (files
of ~40 per repository at one commit), 32% Thingiverse, 8% Sketchfab and 0.03% Smithsonian; 20% of
GitHub rows repeat the sha256 of an earlier GitHub row (forks) and 2% of Thingiverse rows a GitHub
one, i.e. 12.6% of all rows are duplicates.

Steps, per size N:
  listing   the job's listing and dedup (list_source + make_plan) of N rows against an empty output
  manifest  N ok rows into the manifest's parts as shard commits send them (186 per shard)
  resume    an output whose first N/2 objects are done (journals, parts, shards as sparse files of
            their recorded size): recovery + listing + dedup against it; again with the parts
            deleted (journals only: a run killed before its parts, or an earlier version's output)
  schedule  (one size) N listed, the first M through the real scheduler with a stand-in object
            function (1 KB samples, 16 slots): driver CPU per object, the driver's peak RSS
Baseline (--baseline, a git worktree, one run): the same N as a list file of URLs through the
baseline's own listing (an ObjectRef and, later, a row dict per object), its peak RSS and seconds.

  python bench/ingest_scale.py --rows 100000,1000000,10000000 --schedule 20000 --baseline 0889908
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from xl_synthetic import cached_annotations  # bench/ is on sys.path: this script's folder

ROOT = Path(__file__).resolve().parents[1]
ROWS_PER_SHARD = 186  # 1 GB shards of 5.37 MB samples


# ---------------------------------------------------------------------------------------------
# The steps (each in its own process: `--child STEP`)
# ---------------------------------------------------------------------------------------------


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _as_the_driver() -> None:
    """What the job's driver has imported before it lists (the geometry core, torch: ~590 MB here)."""
    import craftsman_platform.pipelines.preprocess.job  # noqa: F401


def _source(cache: Path):
    from craftsman_platform.pipelines.preprocess.config import SourceConfig

    return SourceConfig(kind="objaverse_xl", cache_dir=str(cache), annotations=False)


def child_listing(cache: Path, out: Path) -> dict:
    _as_the_driver()
    from craftsman_platform.pipelines.preprocess.listing import make_plan
    from craftsman_platform.pipelines.preprocess.sources import list_source

    t0 = time.monotonic()
    with make_plan(list_source(_source(cache)), iter([]), False, None, None, 256) as plan:
        seconds = time.monotonic() - t0
        return {"seconds": seconds, "peak_mb": _peak_mb(), **{k: plan.stats[k] for k in ("listed", "to_process")},
                "duplicates": plan.stats["new_duplicates"], "buckets": plan.stats["buckets"]}  # fmt: skip


def _ok_row(uid: str, shard: str) -> dict:
    """A manifest row of the real shape (bench/preprocess.py's) with values that vary as real ones do
    (so that the parts compress as a real manifest would), as a shard's journal holds it."""
    from preprocess import ready_row  # bench/ is on sys.path: this script's folder

    row = ready_row(uid)
    for key in ("chamfer", "sign_agreement", "worker_peak_rss_mb", *(k for k in row if k.startswith("time_"))):
        row[key] = row[key] * (0.5 + random.random())
    sha = f"{random.getrandbits(256):064x}"
    source = f"https://github.com/org{random.getrandbits(16)}/repo{random.getrandbits(20)}/blob/{sha[:40]}/m/{uid}.obj"
    return {**row, "source": source, "source_sha256": sha, "n_faces": random.getrandbits(17), "origin": "github",
            "listed_sha256": sha, "shard": shard}  # fmt: skip


def _done_output(cache: Path, out: Path, half: int, parts: bool) -> None:
    """OUT with the plan's first `half` objects done: sparse shards, their journals, manifest parts."""
    from craftsman_platform.pipelines.manifest import ManifestParts
    from craftsman_platform.pipelines.preprocess.listing import make_plan
    from craftsman_platform.pipelines.preprocess.sources import list_source
    from craftsman_platform.pipelines.storage import Output

    output = Output(str(out))
    for sub in ("shards", "journal"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    manifest = ManifestParts(output) if parts else None
    with make_plan(list_source(_source(cache)), iter([]), False, None, None, 256) as plan:
        rows, shard = [], 0
        for run in plan.groups():
            for ref in run:  # done as the job would have: its fetched content is the listed one
                sha = {"listed_sha256": ref.listed_sha256, "source_sha256": ref.listed_sha256, "origin": ref.origin}
                rows.append({**_ok_row(ref.uid, f"shard-{shard:06d}.tar"), **sha})
                if len(rows) == ROWS_PER_SHARD or shard * ROWS_PER_SHARD + len(rows) >= half:
                    name = f"shard-{shard:06d}.tar"
                    with open(out / "shards" / name, "wb") as fh:
                        fh.truncate(10**9)  # sparse: the size the journal records, no bytes on disk
                    output.write_bytes(f"journal/shard-{shard:06d}.json",
                                       json.dumps({"shard": name, "bytes": 10**9, "rows": rows}).encode())  # fmt: skip
                    if manifest is not None:
                        manifest.add("ok", rows, (name, 10**9))
                    rows, shard = [], shard + 1
                if shard * ROWS_PER_SHARD >= half:
                    break
            if shard * ROWS_PER_SHARD >= half:
                break
    if manifest is not None:
        manifest.flush()


def child_manifest(n: int, out: Path) -> dict:
    from craftsman_platform.pipelines.manifest import ManifestParts
    from craftsman_platform.pipelines.storage import Output

    parts = ManifestParts(Output(str(out)))
    t0 = time.monotonic()
    for shard in range(-(-n // ROWS_PER_SHARD)):
        name = f"shard-{shard:06d}.tar"
        count = min(ROWS_PER_SHARD, n - shard * ROWS_PER_SHARD)
        rows = [_ok_row(f"github-{shard:08d}{i:04d}", name) for i in range(count)]
        parts.add("ok", rows, (name, 10**9))
    parts.flush()
    seconds = time.monotonic() - t0
    size = sum(p.stat().st_size for p in (out / "manifest").iterdir())
    return {"seconds": seconds, "bytes": size, "parts": len(list((out / "manifest").iterdir())), "peak_mb": _peak_mb()}


def child_report(cache: Path, out: Path) -> dict:
    """The dataset report of OUT's manifest (counts, histograms; no gallery: the shards are not real), as
    `craft preprocess` makes it at its end."""
    _as_the_driver()
    from craftsman_platform.pipelines.report.job import write_report
    from craftsman_platform.pipelines.storage import Output

    result = write_report(Output(str(out)), 0)
    return {"seconds": result["seconds"], "objects": result["objects"], "peak_mb": _peak_mb()}


def child_resume(cache: Path, out: Path) -> dict:
    _as_the_driver()
    from craftsman_platform.pipelines.manifest import ManifestParts
    from craftsman_platform.pipelines.preprocess.job import MANIFEST_BYTES_PER_ROW
    from craftsman_platform.pipelines.preprocess.listing import DONE_COLUMNS, make_plan
    from craftsman_platform.pipelines.preprocess.sources import list_source
    from craftsman_platform.pipelines.shardstore import ShardStore
    from craftsman_platform.pipelines.storage import Output

    t0 = time.monotonic()
    output = Output(str(out))
    parts = ManifestParts(output)
    store = ShardStore(output, parts)
    committed, dropped = store.recover_shards(parts.shard_sizes())
    recovered = parts.reconcile(store, committed, dropped)
    recovery_s = time.monotonic() - t0
    done_rows = sum(output.sizes("manifest").values()) // MANIFEST_BYTES_PER_ROW  # as the job sizes its buckets
    with make_plan(list_source(_source(cache)), parts.done_batches(DONE_COLUMNS), False, None, None, 256,
                   done_rows) as plan:  # fmt: skip
        done = sum(o.get("already_done", 0) for o in plan.stats["by_origin"].values())
        return {"seconds": time.monotonic() - t0, "recovery_s": recovery_s, "peak_mb": _peak_mb(),
                "already_done": done, "to_process": plan.total, **recovered}  # fmt: skip


def child_schedule(cache: Path, out: Path, m: int) -> dict:
    from preprocess import ready_object

    from craftsman_platform.pipelines.lock import OutputLock
    from craftsman_platform.pipelines.manifest import ManifestParts
    from craftsman_platform.pipelines.preprocess.config import PreprocessConfig
    from craftsman_platform.pipelines.preprocess.listing import make_plan
    from craftsman_platform.pipelines.preprocess.scheduler import process_all
    from craftsman_platform.pipelines.preprocess.sources import list_source
    from craftsman_platform.pipelines.shardstore import ShardStore
    from craftsman_platform.pipelines.storage import Output

    cfg = PreprocessConfig(output_dir=str(out), workers=16, memory_per_task_gb=0.25)
    output = Output(str(out))
    with make_plan(list_source(_source(cache)), iter([]), False, None, None, 256) as plan, OutputLock(output) as lock:
        runs, taken = [], 0
        for run in plan.groups():
            run = [type(r)(**{**r.__dict__, "annotations": {"bytes": 1024}}) for r in run]
            runs.append(run)
            taken += len(run)
            if taken >= m:
                break
        store = ShardStore(output, ManifestParts(output))
        counts, facts = process_all(iter(runs), taken, cfg, "0" * 16, store, lock, object_fn=ready_object)
    at, cpu, done = facts["all_slots"] or (0.0, 0.0, 0)
    steady = taken - done
    return {"objects": taken, "ok": counts["ok"], "peak_mb": _peak_mb(),
            "driver_cpu_ms": 1000 * (facts["driver_cpu_s"] - cpu) / max(1, steady),
            "objects_per_s": steady / max(1e-9, facts["loop_s"] - at)}  # fmt: skip


def child_baseline(cache: Path, out: Path) -> dict:
    """The baseline's own listing of the same objects (as a list file of URLs) and its manifest write."""
    _as_the_driver()
    from craftsman_platform.pipelines.preprocess.config import SourceConfig
    from craftsman_platform.pipelines.preprocess.job import resolve_sources
    from craftsman_platform.pipelines.shardstore import ShardStore
    from craftsman_platform.pipelines.storage import Output

    t0 = time.monotonic()
    refs = resolve_sources(SourceConfig(kind="list", path=str(out / "list.txt")))
    listing_s = time.monotonic() - t0
    rows = {r.uid: {**_ok_row(r.uid, "shard-000000.tar"), "source": r.source} for r in refs}  # its rows dict
    t1 = time.monotonic()
    ShardStore(Output(str(out / "o"))).write_manifest(list(rows.values()))
    return {"listed": len(refs), "seconds": listing_s, "manifest_s": time.monotonic() - t1, "peak_mb": _peak_mb()}


def child_current_list(cache: Path, out: Path) -> dict:
    """This checkout's listing of the same list file (the baseline's side by side)."""
    _as_the_driver()
    from craftsman_platform.pipelines.preprocess.config import SourceConfig
    from craftsman_platform.pipelines.preprocess.listing import make_plan
    from craftsman_platform.pipelines.preprocess.sources import list_source

    t0 = time.monotonic()
    with make_plan(list_source(SourceConfig(kind="list", path=str(out / "list.txt"))), iter([]), False, None, None,
                   256) as plan:  # fmt: skip
        return {"listed": plan.stats["listed"], "seconds": time.monotonic() - t0, "peak_mb": _peak_mb()}


CHILDREN = {"listing": child_listing, "manifest": None, "report": child_report, "resume": child_resume,
            "schedule": None,
            "baseline": child_baseline, "current_list": child_current_list}  # fmt: skip


def run_child(step: str, src: Path, cache: Path, out: Path, *extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, str(ROOT / "bench" / "ingest_scale.py"), "--child", step, "--cache", str(cache),
           "--out", str(out), *extra]  # fmt: skip
    res = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"{step} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="100000,1000000", help="sizes N, comma-separated")
    ap.add_argument("--schedule", type=int, default=20_000, help="objects through the scheduler (at the largest N)")
    ap.add_argument("--baseline", default="", help="a commit whose listing to compare (up to 1M rows)")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "craft-bench-scale"))
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        cache, out = Path(args.cache), Path(args.out)
        if args.child == "manifest":
            result = child_manifest(args.n, out)
        elif args.child == "schedule":
            result = child_schedule(cache, out, args.n)
        elif args.child == "resume" and args.n:
            _done_output(cache, out, args.n, parts=True)
            result = {"prepared": True}
        else:
            result = CHILDREN[args.child](cache, out)
        print(json.dumps(result))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(x) for x in args.rows.split(",")]
    print("| N | listing + dedup s | listing peak RSS MB | listed | duplicates | to process | manifest write s | "
          "manifest MB | parts | report s | report peak RSS MB | resume s (parts) | resume s (journals only) | "
          "resume peak RSS MB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        t0 = time.monotonic()
        cache = cached_annotations(work, n)
        gen_s = time.monotonic() - t0
        scratch = Path(tempfile.mkdtemp(dir=work))
        try:
            lst = run_child("listing", ROOT, cache, scratch / "l")
            man = run_child("manifest", ROOT, cache, scratch / "m", "--n", str(n))
            rep = run_child("report", ROOT, cache, scratch / "m")
            shutil.rmtree(scratch / "m", ignore_errors=True)
            run_child("resume", ROOT, cache, scratch / "r", "--n", str(n // 2))
            res = run_child("resume", ROOT, cache, scratch / "r")
            shutil.rmtree(scratch / "r" / "manifest")  # journals only: every row read from them
            old = run_child("resume", ROOT, cache, scratch / "r")
            cells = [f"{n:,}", f"{lst['seconds']:.1f}", f"{lst['peak_mb']:.0f}", f"{lst['listed']:,}",
                     f"{lst['duplicates']:,}", f"{lst['to_process']:,}", f"{man['seconds']:.1f}",
                     f"{man['bytes'] / 1e6:.1f}", str(man["parts"]), f"{rep['seconds']:.1f}", f"{rep['peak_mb']:.0f}",
                     f"{res['seconds']:.1f}", f"{old['seconds']:.1f}",
                     f"{max(res['peak_mb'], old['peak_mb']):.0f}"]  # fmt: skip
            print("| " + " | ".join(cells) + " |", flush=True)
            assert res["already_done"] == old["already_done"] >= n // 2 and old["journals_recovered"] > 0
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        print(f"  (annotations generated in {gen_s:.0f} s; resume: {res['already_done']:,} done, "
              f"{res['to_process']:,} to process)", flush=True)  # fmt: skip
    n = sizes[-1]
    scratch = Path(tempfile.mkdtemp(dir=work))
    try:
        sch = run_child("schedule", ROOT, cached_annotations(work, n), scratch / "s", "--n", str(args.schedule))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"\nscheduler, {n:,} listed, {sch['objects']:,} through 16 slots (1 KB stand-in samples): driver "
        f"{sch['driver_cpu_ms']:.2f} ms CPU per object, {sch['objects_per_s']:.0f} objects/s here, driver peak RSS "
        f"{sch['peak_mb']:.0f} MB (Ray's driver included)"
    )
    if args.baseline:
        compare_baseline(args.baseline, [s for s in sizes if s <= 1_000_000], work)


def compare_baseline(baseline: str, sizes: list[int], work: Path) -> None:
    src = work / "baseline-src"
    subprocess.run(["git", "worktree", "add", "--detach", str(src), baseline], cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip
    try:
        print(f"\nlisting a list file of N URLs: {baseline} (an ObjectRef and a row dict per object, one manifest "
              "file) beside this checkout, in one run")  # fmt: skip
        print("| N | baseline s | baseline peak RSS MB | baseline manifest s | current s | current peak RSS MB |")
        print("|---|---|---|---|---|---|")
        for n in sizes:
            scratch = Path(tempfile.mkdtemp(dir=work))
            try:
                with open(scratch / "list.txt", "w") as fh:
                    for i in range(n):
                        fh.write(f"https://github.com/org{i % 50021}/repo{i // 40}/raw/{i:040x}/models/part_{i}.obj\n")
                old = run_child("baseline", src, scratch, scratch)
                new = run_child("current_list", ROOT, scratch, scratch)
                print(f"| {n:,} | {old['seconds']:.1f} | {old['peak_mb']:.0f} | {old['manifest_s']:.1f} | "
                      f"{new['seconds']:.1f} | {new['peak_mb']:.0f} |", flush=True)  # fmt: skip
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(src)], cwd=ROOT, check=False)


if __name__ == "__main__":
    main()
