"""A real Slurm for the tests: munged, one slurmctld and one slurmd on this machine (Debian's
slurm-wlm 22.05 and munge), every file in a temporary folder, every port free and on 127.0.0.1.

The daemons run in the foreground as children of the fixture and are stopped (their own
processes only) when it ends; clients find the cluster through SLURM_CONF in the yielded env.
cred_expire=10 instead of 120 s: a requeued job waits that long before it starts again (AuthInfo).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

from helpers import free_ports, stop_server

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel")


def have_slurm() -> bool:
    return all(shutil.which(d) or Path("/usr/sbin", d).exists() for d in DAEMONS)


def _conf(folder: Path, ctld_port: int, slurmd_port: int, cpus: int, gpus: int, memory_mb: int) -> str:
    host = socket.gethostname()
    return f"""\
ClusterName=craft-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/munge.socket,cred_expire=10
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool/%n
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd-%n.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
MailProg=/bin/true
GresTypes=gpu
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MinJobAge=3600
KillWait=30
InactiveLimit=0
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} Gres=gpu:{gpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


def _munged(folder: Path) -> subprocess.Popen:
    munge = folder / "munge"
    munge.mkdir(mode=0o700)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    args = [
        "munged",
        "--foreground",
        "--force",
        f"--socket={munge}/munge.socket",
        f"--key-file={key}",
        f"--pid-file={munge}/munged.pid",
        f"--log-file={munge}/munged.log",
        f"--seed-file={munge}/munged.seed",
    ]
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    _wait(lambda: (munge / "munge.socket").exists(), proc, munge / "munged.log", "munged")
    return proc


def _wait(ready, proc: subprocess.Popen, log: Path, name: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            text = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{name} exited ({proc.returncode}): {text}")
        if time.time() > deadline:
            raise RuntimeError(f"{name} not ready in {timeout} s")
        time.sleep(0.2)


def _ping(env: dict[str, str]) -> str:
    return subprocess.run(["scontrol", "ping"], env=env, capture_output=True, text=True).stdout


def _jobs(env: dict[str, str]) -> str:
    return subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip()


def _node_idle(env: dict[str, str]) -> bool:
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout
    return out.strip().rstrip("*") == "idle"


@contextlib.contextmanager
def slurm_cluster(folder: Path, cpus: int = 2, gpus: int = 2, memory_mb: int = 8000) -> Iterator[dict[str, str]]:
    """Yields the environment whose SLURM_CONF points sbatch/squeue/scontrol at the cluster."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state").mkdir()
    (folder / "spool").mkdir()
    conf = folder / "slurm.conf"
    conf.write_text(_conf(folder, *free_ports(2), cpus, gpus, memory_mb))
    # GPUs as empty files (slurmd wants a device file per GPU): jobs may ask for them and get
    # CUDA_VISIBLE_DEVICES; nothing is a real device, so the ranks run on the CPU
    (folder / "dev").mkdir()
    for i in range(gpus):
        (folder / "dev" / f"gpu{i}").touch()
    (folder / "gres.conf").write_text(f"NodeName={socket.gethostname()} Name=gpu File={folder}/dev/gpu[0-{gpus - 1}]\n")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    procs = []
    try:
        procs.append(_munged(folder))
        (folder / "spool" / socket.gethostname()).mkdir()
        out = open(folder / "daemons.out", "w")  # their console lines; the logs are slurmctld.log, slurmd.log
        daemon = dict(env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
        ctld = subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(conf)], **daemon)
        procs.append(ctld)
        _wait(lambda: "UP" in _ping(env), ctld, folder / "slurmctld.log", "slurmctld")
        slurmd = subprocess.Popen(["slurmd", "-D", "-f", str(conf)], **daemon)
        procs.append(slurmd)
        _wait(lambda: _node_idle(env), slurmd, folder / "slurmd.log", "slurmd")
        yield env
    finally:
        if len(procs) == 3:  # jobs still running (a failed test) end with the cluster, not after it
            subprocess.run(["scancel", "--user=root"], env=env, capture_output=True)
            deadline = time.time() + 60
            while _jobs(env) and time.time() < deadline:
                time.sleep(0.5)
        for proc in reversed(procs):
            stop_server(proc)
