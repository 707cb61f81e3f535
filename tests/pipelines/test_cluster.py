"""`craft preprocess` as one job on a real two-node Ray cluster (a head and a second raylet on this
machine): every task slot of the cluster busy without `workers=`, a shard writer on each node, and
the worker node killed mid-run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import webdataset as wds
from helpers import ENV, SMALL_ARGS, craft, manifest_rows
from two_node import two_node_cluster

SMALL = SMALL_ARGS
# heavier meshes (~1 s each here) for the job that must keep both slots busy at once: each slot's
# actor starts on its own, and small meshes could all be done by the first before the second is up
BUSY = [a for a in SMALL if not a.startswith("geometry.watertight.resolution=")]
BUSY.append("geometry.watertight.resolution=256")


@pytest.mark.slow
def test_one_job_fills_a_two_node_cluster_with_a_writer_per_node(tmp_path, pybullet_dir):
    listing = tmp_path / "meshes.txt"
    picks = [f"random_urdfs/{i:03d}/{i:03d}.obj" for i in range(0, 48, 8)]  # 6; the first job takes 4
    listing.write_text("\n".join(str(pybullet_dir / p) for p in picks) + "\n")
    root = Path(tempfile.mkdtemp(prefix="craft-ray-", dir="/tmp"))  # short: Ray's socket paths
    try:
        with two_node_cluster(root, head_cpus=1, worker_cpus=1, env=ENV) as (address, env):
            out = tmp_path / "out"
            craft(
                "preprocess",
                f"source.path={listing}",
                f"output_dir={out}",
                f"ray.address={address}",
                "source.limit=4",
                *BUSY,
                env=env,
            )
            run = json.loads((out / "summary.json").read_text())["this_run"]
            assert run["workers"] == 2  # no workers=: both nodes' slots at once
            assert run["writers"] == 2  # each node's samples went to that node's writer
            tars = sorted(str(p) for p in (out / "shards").glob("*.tar"))
            keys = [s["__key__"] for s in wds.WebDataset(tars, shardshuffle=False)]
            manifest = manifest_rows(out)
            assert len(keys) == len(set(keys)) == 4 == len(manifest)
            capped = tmp_path / "capped"
            res = craft(
                "preprocess",
                f"source.path={listing}",
                f"output_dir={capped}",
                f"ray.address={address}",
                "workers=1",
                "source.limit=2",
                *SMALL,
                env=env,
            )
            assert json.loads((capped / "summary.json").read_text())["this_run"]["workers"] == 1, res.stdout

            # kill -9 the worker node (its raylet, store and workers, its shard writer with them) mid-run:
            # its tasks run again on the head, its uncommitted shard is redone; every object exactly once
            lost = tmp_path / "lost"
            args = [sys.executable, "-m", "craftsman_platform.cli", "preprocess", f"source.path={listing}"]
            args += [f"output_dir={lost}", f"ray.address={address}", "shard_max_bytes=1", *SMALL]
            job = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            deadline = time.time() + 240
            while time.time() < deadline and not list((lost / "journal").glob("shard-*.json")):
                time.sleep(0.2)
            node = [
                p for p in psutil.process_iter(["cmdline"]) if str(root / "worker") in " ".join(p.info["cmdline"] or [])
            ]
            assert node and job.poll() is None
            for proc in node:
                proc.kill()
            output, _ = job.communicate(timeout=600)
            assert job.returncode == 0, output[-3000:]
            tars = sorted(str(p) for p in (lost / "shards").glob("*.tar"))
            keys = [s["__key__"] for s in wds.WebDataset(tars, shardshuffle=False)]
            log = [x for x in output.splitlines() if "objects:" not in x][-40:]
            assert len(keys) == len(set(keys)) == len(picks), log
            assert {r["shard"] for r in manifest_rows(lost)} == {Path(t).name for t in tars}
    finally:
        shutil.rmtree(root, ignore_errors=True)
