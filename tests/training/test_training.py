"""`craft train` with real DeepSpeed engines on CPU, real shards from `craft preprocess`, W&B offline.

`vae_run` (conftest) is the tiny VAE trained once per session; it is also the frozen VAE of the
diffusion runs and the checkpoint the evaluation tests score.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from helpers import ENV, craft_train, losses, metrics, shard_glob

from craftsman_platform.evaluation.metrics import query_iou
from craftsman_platform.models.checkpoints import latest_checkpoint, list_checkpoints, load_weights, read_meta

shards = shard_glob


@pytest.mark.slow
def test_tiny_vae_overfits_real_shapes(vae_run, tiny_shards):
    """Volume IoU >= 0.9 on the shapes' own query points (EMA weights, posterior mean)."""
    ious = query_iou(vae_run, shards(tiny_shards))
    assert len(ious) == 8
    assert np.mean([r["iou_vol"] for r in ious]) >= 0.9, ious
    rows = metrics(vae_run)
    assert rows[-1]["step"] == 1000 and rows[-1]["loss"] < 0.5 * rows[0]["loss"]  # experiment vae_tiny: 1000 steps
    assert {"loss", "lr", "grad_norm", "samples_per_s", "data_time", "step_time"} <= set(rows[-1])
    # W&B offline run under the run dir, its id kept in the checkpoint
    meta = read_meta(latest_checkpoint(vae_run))
    assert meta["wandb_run_id"] and glob.glob(
        str(vae_run / "wandb" / f"offline-run-*-{meta['wandb_run_id']}" / "*.wandb")
    )
    # keep-N: trainer.keep_checkpoints=3 of the 10 written
    assert [p.name for p in list_checkpoints(vae_run / "checkpoints")] == [
        "step-0000800",
        "step-0000900",
        "step-0001000",
    ]


def test_diffusion_trains_on_the_frozen_vae(vae_run, tiny_shards, tmp_path):
    run = tmp_path / "diff"
    craft_train(
        "experiment=diffusion_tiny",
        f"data.train_shards={shards(tiny_shards)}",
        f"run_dir={run}",
        f"model.vae_checkpoint={vae_run}",
        "trainer.max_steps=6",
        "trainer.log_every=2",
        "logger=none",
    )
    rows = metrics(run)
    assert [r["step"] for r in rows] == [2, 4, 6] and all(np.isfinite(r["loss"]) for r in rows)
    state, meta, which = load_weights(run)
    assert which == "ema" and meta["latent_scale"] > 0
    assert float(state["latent_scale"]) == pytest.approx(meta["latent_scale"])
    assert any(k.startswith("denoiser.") for k in state) and any(".modulation." in k for k in state)
    # the VAE must be the one the config describes
    bad = craft_train(
        "experiment=diffusion_tiny",
        f"data.train_shards={shards(tiny_shards)}",
        f"run_dir={tmp_path / 'x'}",
        f"model.vae_checkpoint={vae_run}",
        "model.vae.embed_dim=32",
        check=False,
    )
    assert bad.returncode != 0 and "model.vae.embed_dim=32 (checkpoint: 16)" in bad.stderr


@pytest.mark.slow
def test_sigterm_then_resume_gives_the_same_losses(tiny_shards, tmp_path):
    common = [
        "experiment=vae_tiny",
        f"data.train_shards={shards(tiny_shards)}",
        "trainer.max_steps=16",
        "trainer.log_every=1",
        "trainer.ckpt_every=100",
        "data.num_workers=2",
    ]
    straight = tmp_path / "straight"
    craft_train(*common, f"run_dir={straight}", "logger=none")
    run = tmp_path / "stopped"
    proc = subprocess.Popen(
        [sys.executable, "-m", "craftsman_platform.cli", "train", *common, f"run_dir={run}"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not ((run / "metrics.jsonl").exists() and len(metrics(run)) >= 5):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "slow"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    stopped_at = read_meta(latest_checkpoint(run))["step"]
    assert 5 <= stopped_at < 16
    first_id = read_meta(latest_checkpoint(run))["wandb_run_id"]
    craft_train(*common, f"run_dir={run}", "resume=auto")
    resumed = losses(run)
    assert sorted(resumed) == list(range(1, 17))  # each step logged once
    reference = losses(straight)
    for step in range(1, 17):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-7), step
    assert read_meta(latest_checkpoint(run))["wandb_run_id"] == first_id  # the same W&B run continues
    refused = craft_train(*common, f"run_dir={run}", "resume=never", check=False)
    assert refused.returncode != 0 and "resume=never" in refused.stderr


def test_corrupt_shard_is_skipped_and_counted(tiny_shards, tmp_path):
    data = tmp_path / "shards"
    shutil.copytree(tiny_shards / "shards", data)
    good = (data / "shard-000001.tar").read_bytes()
    with tarfile.open(data / "shard-000001.tar") as tar:
        members = tar.getmembers()
    first = members[0].name.split(".")[0]
    victim = max((m for m in members if not m.name.startswith(first + ".")), key=lambda m: m.size)
    (data / "shard-000009.tar").write_bytes(good[: victim.offset_data + victim.size // 2])  # torn mid-member
    (data / "shard-000010.tar").write_bytes(os.urandom(20000))  # not a tar at all
    run = tmp_path / "run"
    craft_train(
        "experiment=vae_tiny",
        f"data.train_shards={data}/*.tar",
        f"run_dir={run}",
        "trainer.max_steps=30",
        "trainer.log_every=30",
        "logger=none",
        "data.num_workers=1",
    )
    last = metrics(run)[-1]
    assert last["step"] == 30 and np.isfinite(last["loss"])
    # every epoch meets both again; each is counted once: the torn sample, the torn shard, the non-tar
    assert (last["corrupt_skipped"], last["shards_damaged"], last["shards_unreadable"]) == (1, 1, 1), last
