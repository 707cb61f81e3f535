"""Run and output dirs: refused up front when unusable (naming the key); after a failed save or a resume,
no torn checkpoint dirs and one metrics row per step."""

from __future__ import annotations

import json

from craftsman_platform.logger import WandbConfig
from craftsman_platform.training.checkpoint import Checkpointer
from craftsman_platform.training.metrics import MetricsLogger


def test_a_resumed_run_keeps_one_metrics_row_per_step(tmp_path):
    rows = [{"step": s, "loss": 1.0 / s} for s in (10, 20, 30)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4')  # torn
    logger = MetricsLogger(tmp_path, 0, WandbConfig(enabled=False), {}, start_step=20)  # resumed at step 20
    logger.log(30, {"loss": 0.5})
    logger.close()
    got = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in got] == [(10, 0.1), (20, 0.05), (30, 0.5)]


def test_a_failed_checkpoint_save_is_cleaned_up_on_the_next_start(tmp_path):
    torn = tmp_path / "checkpoints" / ".tmp-step-0000030"
    (torn / "ds").mkdir(parents=True)
    (torn / "weights.safetensors").write_bytes(b"partial")
    (tmp_path / "checkpoints" / "step-0000020").mkdir()
    Checkpointer(tmp_path, rank=0, keep=3)
    assert not torn.exists() and (tmp_path / "checkpoints" / "step-0000020").exists()


def test_unwritable_output_and_run_dirs_are_refused_naming_the_key(tmp_path):
    import pytest

    from craftsman_platform.errors import ConfigError, check_writable
    from craftsman_platform.pipelines.preprocess.job import validate_output

    # root passes os.access on /proc, but nothing can be created there: a real probe finds it
    with pytest.raises(ConfigError, match=r"^output_dir=/proc/craft_out: cannot write in /proc \("):
        validate_output("/proc/craft_out", {})
    with pytest.raises(ConfigError, match=r"^run_dir=/proc/run: cannot write in /proc \("):
        check_writable("/proc/run", "run_dir")
    out = tmp_path / "out"
    out.mkdir()
    (out / "shards").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"output_dir=.*/shards is a file, where the job keeps a folder"):
        validate_output(str(out), {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the probes left nothing behind


def test_a_full_disk_during_a_checkpoint_says_so_and_leaves_no_torn_dir(tiny_shards, tmp_path):
    import subprocess

    import pytest
    from helpers import craft, shard_glob

    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:  # vae_tiny's checkpoint (weights, EMA, optimizer) is ~20 MB: the first save fills the 4 MB disk
        run = small / "run"
        res = craft("train", "experiment=vae_tiny", f"data.train_shards={shard_glob(tiny_shards)}", f"run_dir={run}",
                    "trainer.max_steps=2", "logger=none", check=False)  # fmt: skip
        assert res.returncode == 1, res.stderr[-2000:]
        assert f"no space left on the device holding {run / 'checkpoints'}" in res.stderr, res.stderr[-2000:]
        assert not list((run / "checkpoints").glob(".tmp-*"))
    finally:
        subprocess.run(["umount", str(small)])
