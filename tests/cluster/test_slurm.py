"""The SLURM scripts under a real Slurm on this machine (tests/slurm_cluster.py): cluster/slurm/
train.sbatch as written, for the tiny recipe on one node with two (file-only) GPUs, so two ranks on
the CPU, ZeRO-2; the warning Slurm sends before a time limit, a checkpoint, the requeue, the resume,
the one-process curve. And `srun` ranks without torchrun, and the launches that would start N runs."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import CURVE_STEPS, ENV, TWO_RANK_ARGS, assert_follows, free_ports, losses, metrics
from helpers import shard_glob as shards
from slurm_cluster import have_slurm, slurm_cluster

from craftsman_platform.models.checkpoints import latest_checkpoint, read_meta
from craftsman_platform.training.slurm import first_host

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not have_slurm(), reason="Debian's slurmctld/slurmd/munge (scripts/setup.sh)")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield {**ENV, "SLURM_CONF": env["SLURM_CONF"]}


def sh(env: dict, *args: str) -> str:
    """A Slurm command, submitted from the repository root (the scripts' submit directory)."""
    return subprocess.run(args, env=env, capture_output=True, text=True, check=True, cwd=REPO).stdout


def job_field(env: dict, job: str, field: str) -> str:
    return re.search(rf"\b{field}=(\S+)", sh(env, "scontrol", "show", "job", job)).group(1)


def wait_until(condition, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"not {what} in {timeout} s"
        time.sleep(0.5)


def train_args(tiny_shards: Path, run: Path, steps: int) -> list[str]:
    return [*TWO_RANK_ARGS, f"data.train_shards={shards(tiny_shards)}", f"run_dir={run}", f"trainer.max_steps={steps}"]


@pytest.mark.slow
def test_train_sbatch_checkpoints_before_the_time_limit_requeues_and_follows_the_curve(
    slurm, one_rank_curve, tiny_shards, tmp_path
):
    run, log = tmp_path / "run", tmp_path / "train.out"
    env = {**slurm, "CRAFT_RDZV_PORT": str(free_ports(1)[0])}
    # the script's own directives, with the sizes of this one-node cluster (2 CPUs, 2 GPUs) and a log
    # file the test can find; --signal, --requeue and --open-mode=append are the script's
    sizes = ["--nodes=1", "--gpus-per-node=2", "--cpus-per-task=2", f"--output={log}"]
    args = [*train_args(tiny_shards, run, CURVE_STEPS), "trainer.ckpt_every=100", "deepspeed=zero2"]
    job = sh(env, "sbatch", "--parsable", *sizes, str(REPO / "cluster/slurm/train.sbatch"), *args).strip()
    wait_until(lambda: (run / "metrics.jsonl").exists() and len(metrics(run)) >= 4, "4 steps")
    # what `--signal=B:USR1@300` delivers 300 s before the time limit: USR1 to the batch script only
    sh(env, "scancel", "--batch", "--signal=USR1", job)
    wait_until(lambda: job_field(env, job, "Restarts") == "1", "requeued")
    step = read_meta(latest_checkpoint(run))["step"]
    assert 4 <= step < CURVE_STEPS, log.read_text()[-3000:]
    wait_until(lambda: job_field(env, job, "JobState") in ("COMPLETED", "FAILED", "TIMEOUT"), "finished", 400)
    text = log.read_text()
    assert job_field(env, job, "JobState") == "COMPLETED", text[-4000:]
    # one log for both runs (--open-mode=append): the stop, the requeue, the resume
    assert text.count(f"craft: job {job} start") == 2 and "restart 1" in text, text[-4000:]
    assert f"preempted at step {step}" in text and f"requeueing job {job}" in text, text[-4000:]
    assert "resumed from" in text and "finished at step 20" in text, text[-4000:]
    assert_follows(losses(run), one_rank_curve, CURVE_STEPS)


@pytest.mark.slow
def test_srun_tasks_are_the_ranks_of_one_run_and_launches_that_would_split_it_are_refused(
    slurm, one_rank_curve, tiny_shards, tmp_path
):
    steps = 6
    run = tmp_path / "run"
    srun = ["srun", "--ntasks=2", "--cpus-per-task=1", "--kill-on-bad-exit=1"]
    craft = [sys.executable, "-m", "craftsman_platform.cli", "train"]
    proc = subprocess.run(
        [*srun, *craft, "launcher=torchrun", *train_args(tiny_shards, run, steps)],
        env=slurm,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("train: finished at step 6") == 2, proc.stdout  # each rank says so
    curve = losses(run)
    assert sorted(curve) == list(range(1, steps + 1))
    assert_follows(curve, {s: one_rank_curve[s] for s in range(1, steps + 1)}, steps)
    # two tasks with launcher=local: two one-rank runs in one run_dir; refused before anything is written
    local = tmp_path / "local"
    proc = subprocess.run(
        [*srun, *craft, "launcher=local", *train_args(tiny_shards, local, steps)],
        env=slurm,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "would start 2 runs in one run_dir" in proc.stderr, proc.stderr[-2000:]
    assert not local.exists()
    # the batch script of a 2-task job running craft itself (no srun): refused too
    wrapped = " ".join([*craft, "launcher=torchrun", *train_args(tiny_shards, local, steps)])
    out = tmp_path / "batch.out"
    job = sh(slurm, "sbatch", "--parsable", "--ntasks=2", f"--output={out}", f"--wrap={wrapped}").strip()
    wait_until(lambda: job_field(slurm, job, "JobState") in ("COMPLETED", "FAILED"), "finished", 120)
    assert job_field(slurm, job, "JobState") == "FAILED" and "not an srun step" in out.read_text(), out.read_text()
    assert not local.exists()


def test_the_first_host_of_a_node_list_is_expanded_by_scontrol(slurm, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", slurm["SLURM_CONF"])  # scontrol wants a cluster's config, as in a job
    assert first_host("gpu[003-008,010],cpu1") == "gpu003"
    assert first_host("a1,b2") == "a1"
