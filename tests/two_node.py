"""A real two-node Ray cluster on this machine: a head and a second raylet joined to it, each with
its own ports and temp dir, bound to 127.0.0.1, torn down by the test (its own processes only)."""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import psutil
from helpers import free_ports

RAY = str(Path(sys.executable).with_name("ray"))


def _node_args(temp: Path, cpus: int) -> list[str]:
    p = free_ports(6)
    low = random.randrange(10_000, 32_000, 200)  # worker ports below Linux's ephemeral range
    return [
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={cpus}",
        f"--temp-dir={temp}",
        f"--node-manager-port={p[0]}",
        f"--object-manager-port={p[1]}",
        f"--metrics-export-port={p[2]}",
        f"--dashboard-agent-listen-port={p[3]}",
        f"--dashboard-agent-grpc-port={p[4]}",
        f"--runtime-env-agent-port={p[5]}",
        f"--min-worker-port={low}",
        f"--max-worker-port={low + 199}",
        "--disable-usage-stats",
    ]


@contextlib.contextmanager
def two_node_cluster(
    root: Path, head_cpus: int = 1, worker_cpus: int = 1, env: dict | None = None
) -> Iterator[tuple[str, dict]]:
    """Yields (the head's address host:port, the environment a driver needs to join) once both nodes
    are up. Ray's token authentication stays on, with a token of this cluster's own."""
    env = {**(env or os.environ), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    started: list[psutil.Process] = []
    before = {p.pid for p in psutil.process_iter()}
    try:
        address = _start_head(root / "head", head_cpus, env)
        _start([RAY, "start", f"--address={address}"], root / "worker", worker_cpus, env)
        started = [p for p in psutil.process_iter(["cmdline"]) if p.pid not in before and _ours(p, root)]
        _wait_for_nodes(address, 2, env)
        yield address, env
    finally:
        started += [p for p in psutil.process_iter(["cmdline"]) if p.pid not in before and _ours(p, root)]
        for p in started:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGKILL)
        psutil.wait_procs(started, timeout=30)


def _start(cmd: list[str], temp: Path, cpus: int, env: dict) -> None:
    """`ray start`, tried again with other ports if one was taken meanwhile (a loaded machine)."""
    for _ in range(3):
        res = subprocess.run([*cmd, *_node_args(temp, cpus)], env=env, capture_output=True, text=True)
        if res.returncode == 0:
            return
        time.sleep(2)
    raise RuntimeError(f"ray start failed 3 times: {res.stderr[-2000:]}")


def _start_head(temp: Path, cpus: int, env: dict) -> str:
    """The head on a fresh GCS port each try; its address."""
    for _ in range(3):
        (gcs,) = free_ports(1)
        cmd = [RAY, "start", "--head", f"--port={gcs}", "--include-dashboard=false"]
        res = subprocess.run([*cmd, *_node_args(temp, cpus)], env=env, capture_output=True, text=True)
        if res.returncode == 0:
            return f"127.0.0.1:{gcs}"
        time.sleep(2)
    raise RuntimeError(f"ray start --head failed 3 times: {res.stderr[-2000:]}")


def _ours(proc: psutil.Process, root: Path) -> bool:
    with contextlib.suppress(psutil.Error):
        return str(root) in " ".join(proc.info["cmdline"] or [])
    return False


def _wait_for_nodes(address: str, count: int, env: dict) -> None:
    code = (
        "import ray, time\n"
        f"ray.init(address='{address}', logging_level='ERROR')\n"
        "deadline = time.time() + 60\n"
        f"while len([n for n in ray.nodes() if n['Alive']]) < {count} and time.time() < deadline: time.sleep(0.5)\n"
        f"assert len([n for n in ray.nodes() if n['Alive']]) >= {count}\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=120)
    time.sleep(0.5)
