"""Ray Train on a real local Ray (diffusion, 2 workers) and on a real two-node cluster (2 workers,
ZeRO-1, the one-process curve through stops by signal and a lost worker; ZeRO-2 across two ranks
is tests/cluster/test_slurm.py's)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from helpers import (
    CURVE_STEPS,
    ENV,
    TWO_RANK_ARGS,
    assert_follows,
    craft_train,
    losses,
    metrics,
    train_in_background,
    wait_for_rows,
)
from helpers import shard_glob as shards
from two_node import two_node_cluster

from craftsman_platform.models.checkpoints import latest_checkpoint, read_meta


def read_pid(path: Path) -> int:
    """A rank's pid file; a new rank may be writing it (empty for an instant): read again."""
    for _ in range(100):
        text = path.read_text().strip()
        if text:
            return int(text)
        time.sleep(0.05)
    raise AssertionError(f"{path} stayed empty")


def worker_summaries(run):
    return [json.loads(p.read_text()) for p in sorted((run / "workers").glob("rank-*.json"))]


@pytest.mark.slow
def test_diffusion_trains_with_two_ray_workers(vae_run, latents_pack, tmp_path):
    """From a latents pack (`craft pack`): what a multi-GPU diffusion run reads."""
    run = tmp_path / "run"
    proc = craft_train(
        "experiment=diffusion_tiny",
        f"data.train_shards={latents_pack}",
        f"run_dir={run}",
        f"model.vae_checkpoint={vae_run}",
        "trainer.max_steps=6",
        "trainer.log_every=2",
        "launcher=ray",
        "launcher.num_workers=2",
        "data.num_workers=1",
        "data.batch_size=2",
    )
    assert [m["step"] for m in metrics(run)] == [2, 4, 6]
    console = proc.stdout + proc.stderr
    assert "Reporting training result" not in console and "State API" not in console  # behind --verbose
    ranks = worker_summaries(run)
    assert [r["step"] for r in ranks] == [6, 6] and ranks[0]["param_checksum"] == ranks[1]["param_checksum"]
    # the latent scale was measured over both ranks' batches and stored once
    assert read_meta(latest_checkpoint(run))["latent_scale"] > 0


@pytest.mark.slow
def test_stops_and_a_lost_worker_keep_the_one_process_curve(one_rank_curve, tiny_shards, tmp_path):
    """launcher=ray on a real two-node cluster (a head and a second raylet, one CPU each, so one
    Ray Train worker per node), both reading through loader workers. Run 1: SIGTERM to `craft train`.
    Run 2 (resumed): kill -9 the worker node's Ray Train worker, Ray Train restarts the group from
    the checkpoint; then SIGTERM to that node's worker of the new group. Each stop is a checkpoint
    at the agreed step and exit 0; metrics.jsonl holds one row per step up to the last stop, the
    one-process curve's (run 2 is itself the resume of run 1; resuming to the end is the torchrun,
    sbatch and single-process tests')."""
    run = tmp_path / "run"
    root = Path(tempfile.mkdtemp(prefix="craft-ray-", dir="/tmp"))  # short: Ray's socket paths
    rank_1 = run / "workers" / "rank-1.pid"
    try:
        with two_node_cluster(root, head_cpus=1, worker_cpus=1, env=ENV) as (address, env):
            args = [
                *TWO_RANK_ARGS,
                f"data.train_shards={shards(tiny_shards)}",
                f"run_dir={run}",
                f"trainer.max_steps={CURVE_STEPS}",
                "trainer.ckpt_every=100",
                "launcher=ray",
                "launcher.num_workers=2",
                "launcher.max_failures=1",
                f"ray.address={address}",
            ]

            def stopped(proc, after: int) -> int:
                out, _ = proc.communicate(timeout=300)
                assert proc.returncode == 0, out[-3000:]
                step = read_meta(latest_checkpoint(run))["step"]
                assert after <= step < CURVE_STEPS and f"train: preempted at step {step}" in out, out[-3000:]
                assert all(r["status"] == "preempted" and r["step"] == step for r in worker_summaries(run))
                return step

            proc = train_in_background(*args, env=env)
            wait_for_rows(proc, run, 3)

            def on_worker_node(pid: int) -> bool:  # a process of the worker node's raylet
                return any(str(root / "worker") in " ".join(p.cmdline()) for p in psutil.Process(pid).parents())

            placed = [on_worker_node(int((run / "workers" / f"rank-{r}.pid").read_text())) for r in (0, 1)]
            assert sorted(placed) == [False, True], placed  # one rank per node
            os.kill(proc.pid, signal.SIGTERM)
            first_stop = stopped(proc, 3)

            proc = train_in_background(*args, env=env)
            wait_for_rows(proc, run, first_stop + 3)
            lost = read_pid(rank_1)
            os.kill(lost, signal.SIGKILL)
            deadline = time.time() + 300
            while read_pid(rank_1) == lost or len(metrics(run)) < first_stop + 6:  # the new group's steps
                assert proc.poll() is None and time.time() < deadline, "the group did not come back"
                time.sleep(0.2)
            os.kill(read_pid(rank_1), signal.SIGTERM)
            last = stopped(proc, first_stop + 6)
            # every step once, through both stops and the lost worker: the one-process curve's
            assert_follows(losses(run), {s: one_rank_curve[s] for s in range(1, last + 1)}, last)
            ranks = worker_summaries(run)
            assert [r["rank"] for r in ranks] == [0, 1]
            assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]  # the replicas stayed in sync
    finally:
        shutil.rmtree(root, ignore_errors=True)
