"""Output to object storage, against a real S3 server (SeaweedFS on 127.0.0.1): the store, the lock,
and `craft preprocess` to s3:// killed with -9 (driver, then a shard writer) and resumed, with
`craft train` and `craft evaluate` reading the shards from s3://."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import s3fs
import webdataset as wds
from helpers import ENV, SMALL_ARGS, craft, kill_tree, manifest_rows
from s3server import BUCKET

from craftsman_platform.pipelines.lock import LockHeld, OutputLock
from craftsman_platform.pipelines.storage import Output

ROOT = Path(__file__).resolve().parents[2]
SMALL = SMALL_ARGS


def test_store_and_lock_on_s3(s3):
    out = Output(f"s3://{BUCKET}/unit")
    out.check_exclusive_create()  # SeaweedFS honours If-None-Match
    out.create_exclusive("a", b"1")
    with pytest.raises(FileExistsError):
        out.create_exclusive("a", b"2")
    assert out.read_bytes("a") == b"1"
    with out.open_staged("shards/x.tar") as fh:
        fh.write(b"abc")
    assert out.sizes("shards") == {"x.tar": 3}
    with OutputLock(out, stale_after_s=60):
        with pytest.raises(LockHeld, match="being written by pid"):
            OutputLock(out, stale_after_s=60).acquire()
    assert not out.exists(".lock")
    # a lock left by a dead job on another host, silent for longer than the stale limit, is taken over
    out.write_json(".lock", {"host": "elsewhere", "pid": 1, "started": 0, "token": "t", "heartbeat": time.time() - 100})
    with OutputLock(out, stale_after_s=60, settle_s=0.1) as lock:
        assert out.read_json(".lock")["token"] == lock.record["token"]


def _journals(fs: s3fs.S3FileSystem, prefix: str) -> int:
    fs.invalidate_cache()
    try:
        return len([p for p in fs.ls(f"{prefix}/journal") if p.rsplit("/", 1)[-1].startswith("shard-")])
    except FileNotFoundError:
        return 0


def _writer_process(proc: subprocess.Popen) -> psutil.Process | None:
    for child in psutil.Process(proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "WriterActor" in " ".join(child.cmdline()):
                return child
    return None


def _wait(predicate, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        assert proc.poll() is None, f"the job ended before {what}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_preprocess_to_s3_killed_twice_resumes_exactly_once_and_trains_from_it(s3, tmp_path, pybullet_dir):
    picks = [f"random_urdfs/{i:03d}/{i:03d}.obj" for i in range(0, 200, 5)] + ["duck.obj"]
    listing = tmp_path / "meshes.txt"
    listing.write_text("\n".join(str(pybullet_dir / p) for p in picks) + "\n")
    prefix = f"{BUCKET}/out"
    env = {**ENV, **s3}
    args = [sys.executable, "-m", "craftsman_platform.cli", "preprocess", f"source.path={listing}"]
    args += [f"output_dir=s3://{prefix}", "shard_max_bytes=1", "workers=1", *SMALL]
    fs = s3fs.S3FileSystem()
    start = dict(cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    # 1. kill -9 the driver (and its local Ray) after two shards are committed
    first = subprocess.Popen(args, **start)
    _wait(lambda: _journals(fs, prefix) >= 2, first, "two committed shards")
    kill_tree(first)
    after_first = _journals(fs, prefix)
    assert after_first < len(picks), "the kill should land mid-run"

    # 2. while a live job holds the output's lock, another job on it is refused (exit 2, naming the holder)
    with OutputLock(Output(f"s3://{prefix}"), stale_after_s=60):
        refused = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "is being written by pid" in refused.stderr, refused.stderr[-2000:]

    # 3. rerun, and kill -9 its shard writer as soon as it exists: the job redoes that writer's objects
    rerun = subprocess.Popen(args, **start)
    _wait(lambda: _writer_process(rerun) is not None, rerun, "the rerun's shard writer")
    _writer_process(rerun).kill()
    assert rerun.wait(timeout=600) == 0

    # 4. what is in the bucket: every object exactly once, the manifest describes exactly the shards
    local = tmp_path / "shards"
    fs.invalidate_cache()
    fs.get(f"{prefix}/shards/", str(local), recursive=True)
    tars = sorted(str(p) for p in local.rglob("*.tar"))
    keys = [s["__key__"] for s in wds.WebDataset(tars, shardshuffle=False)]
    assert len(keys) == len(set(keys)) == len(picks)
    manifest = manifest_rows(f"s3://{prefix}")
    assert sorted(r["uid"] for r in manifest) == sorted(keys) and {r["status"] for r in manifest} == {"ok"}
    assert {r["shard"] for r in manifest} == {Path(t).name for t in tars}
    summary = json.loads(fs.cat(f"{prefix}/summary.json"))
    sample_bytes = sum(os.path.getsize(t) for t in tars) / len(tars)
    assert summary["this_run"]["driver_bytes_per_object"] <= 4096 < sample_bytes / 10  # rows reach it, samples not
    assert summary["this_run"]["driver_cpu_ms_per_object"] > 0  # measured (bench/preprocess.py has the figures)
    assert not [p for p in fs.ls(prefix) if p.endswith(".lock")]

    # 5. training and evaluation read the shards from s3://
    run = tmp_path / "run"
    shards = f"data.train_shards=s3://{prefix}/shards/*.tar"
    craft("train", "experiment=vae_tiny", shards, f"run_dir={run}", "trainer.max_steps=4", "logger=none", env=env)
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()][-1] == 4
    evaluated = tmp_path / "eval"
    craft(
        "evaluate",
        f"checkpoint={run}",
        f"data.eval_shards=s3://{prefix}/shards/*.tar",
        f"output_dir={evaluated}",
        "data.max_objects=2",
        "depth=5",
        "surface_samples=5000",
        "logger=none",
        env=env,
    )
    assert (evaluated / "report.html").exists()


def test_pack_from_and_to_s3_then_train_from_it(s3, tiny_shards, tmp_path):
    """`craft report` writes the report of an archive in a bucket; `craft pack` reads the archive there and
    writes the pack there (journals, lock, pack.json); a resume finds it done; `craft train` streams
    it from s3://."""
    env = {**ENV, **s3}
    fs = s3fs.S3FileSystem()
    fs.put(str(tiny_shards), f"{BUCKET}/archive", recursive=True)
    report = craft("report", f"output_dir=s3://{BUCKET}/archive", env=env)  # the dataset report, in the bucket
    assert f"report: s3://{BUCKET}/archive/report.html (8 objects, 8 with pictures" in report.stdout
    assert b'<img src="data:image/png;base64,' in fs.cat_file(f"{BUCKET}/archive/report.html")
    pack = f"s3://{BUCKET}/packs/vae"
    args = ["kind=vae", f"source=s3://{BUCKET}/archive", f"output_dir={pack}", "num_surface=1024", "num_vol=512",
            "num_near=512", "chunks=2", "workers=2"]  # fmt: skip
    craft("pack", *args, env=env)
    fs.invalidate_cache()
    info = json.loads(fs.cat_file(f"{BUCKET}/packs/vae/pack.json"))
    assert info["complete"] and info["objects"] == 8 and info["source"]["url"] == f"s3://{BUCKET}/archive"
    shards = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{BUCKET}/packs/vae/shards"))
    assert shards == sorted(name for part in info["parts"] for name in part["shards"])
    assert not fs.exists(f"{BUCKET}/packs/vae/.lock")
    again = craft("pack", *args, env=env)
    assert "this run: 0 objects from 0 archive shards" in again.stdout
    run = tmp_path / "run"
    craft("train", "experiment=vae_tiny", f"data.train_shards={pack}", f"run_dir={run}", "trainer.max_steps=4",
          "logger=none", env=env)  # fmt: skip
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()][-1] == 4
