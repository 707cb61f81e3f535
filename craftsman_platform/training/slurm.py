"""Ranks of an srun step: `srun --ntasks=N craft train launcher=torchrun ...` is one run of N ranks.

torchrun and Ray Train set RANK / WORLD_SIZE / LOCAL_RANK themselves; srun sets only SLURM_*. Without
this, every task of the step would be rank 0 of a one-rank run, N runs writing the same run_dir.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import MutableMapping

from craftsman_platform.errors import ConfigError

# a port per job (two concurrent steps of one job would need MASTER_PORT set apart)
PORT_BASE, PORT_SPAN = 20000, 20000


def ranks_from_slurm(launcher_kind: str, env: MutableMapping[str, str] = os.environ) -> bool:
    """Under an srun step of several tasks, set the torch.distributed variables from SLURM_PROCID /
    SLURM_STEP_NUM_TASKS / SLURM_LOCALID and the step's first node; refuse what would start several
    runs in one run_dir. True when the ranks came from Slurm."""
    if "RANK" in env:  # torchrun (also torchrun under srun) or Ray Train made the ranks
        return False
    tasks = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
    if tasks <= 1:
        return False
    if "SLURM_STEP_ID" not in env:
        if launcher_kind == "ray":  # one driver in the batch script (Ray started on the job's nodes)
            return False
        raise ConfigError(
            f"SLURM_NTASKS={tasks} but this is the batch script, not an srun step (no SLURM_STEP_ID): "
            "start the ranks with `srun craft train launcher=torchrun ...` or with torchrun"
        )
    if launcher_kind != "torchrun":
        raise ConfigError(
            f"launcher={launcher_kind} in an srun step of {tasks} tasks would start {tasks} runs in one "
            "run_dir: use launcher=torchrun (ranks from SLURM_PROCID)"
        )
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = str(tasks)
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    env.setdefault("MASTER_ADDR", first_host(env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"]))
    env.setdefault("MASTER_PORT", str(PORT_BASE + int(env.get("SLURM_JOB_ID", "0")) % PORT_SPAN))
    return True


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list (`gpu[003-008],cpu1` -> gpu003), expanded by scontrol."""
    if "[" not in nodelist:
        return nodelist.split(",")[0]
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        raise ConfigError(f"cannot expand the Slurm node list {nodelist!r}: scontrol is not on PATH; set MASTER_ADDR")
    out = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()[0]
