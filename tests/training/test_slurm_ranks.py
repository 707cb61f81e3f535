"""Ranks from an srun step's SLURM_* variables, and the launches that would start several runs in one
run_dir (training/slurm.py); the real srun and sbatch runs are in tests/cluster/test_slurm.py."""

from __future__ import annotations

import pytest

from craftsman_platform.errors import ConfigError
from craftsman_platform.training.slurm import ranks_from_slurm

STEP = {
    "SLURM_JOB_ID": "4242",
    "SLURM_NTASKS": "16",
    "SLURM_STEP_ID": "0",
    "SLURM_STEP_NUM_TASKS": "16",
    "SLURM_PROCID": "9",
    "SLURM_LOCALID": "1",
    "SLURM_STEP_NODELIST": "gpu7",
    "SLURM_JOB_NODELIST": "gpu7",
}


def test_an_srun_task_becomes_its_rank_of_one_run():
    env = dict(STEP)
    assert ranks_from_slurm("torchrun", env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == ("9", "16", "1", "gpu7")
    assert env["MASTER_PORT"] == str(20000 + 4242)  # the same on every task of the job
    # torchrun (also under srun) set the ranks itself: left as they are
    env = {**STEP, "RANK": "3", "WORLD_SIZE": "8"}
    assert not ranks_from_slurm("torchrun", env) and env["RANK"] == "3"
    # one task: nothing to do
    assert not ranks_from_slurm("local", {"SLURM_NTASKS": "1", "SLURM_STEP_ID": "0"})


def test_launches_that_would_start_several_runs_in_one_run_dir_are_refused():
    with pytest.raises(ConfigError, match="launcher=local in an srun step of 16 tasks would start 16 runs"):
        ranks_from_slurm("local", dict(STEP))
    batch = {k: v for k, v in STEP.items() if not k.startswith("SLURM_STEP")}
    with pytest.raises(ConfigError, match="SLURM_NTASKS=16 but this is the batch script, not an srun step"):
        ranks_from_slurm("torchrun", batch)
    # the batch script of a job that started Ray on its nodes runs one driver: that is one run
    assert not ranks_from_slurm("ray", batch) and "RANK" not in batch
