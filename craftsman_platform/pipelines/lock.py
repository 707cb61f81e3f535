"""One writer per output folder: OUT/.lock holds the holder's host, pid, start time and heartbeat.

The file is created atomically (O_EXCL): a second live job on the same folder is refused at start,
naming the holder. A lock whose holder is dead (same host, pid gone) or whose heartbeat is older
than `stale_after_s` is taken over with a warning, so a job killed with -9 can simply be rerun.
Several jobs on one cluster: give each its own output_dir (e.g. one per `source.partition=i/n`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from craftsman_platform.errors import ConfigError

log = logging.getLogger("craft.preprocess")


class LockHeld(ConfigError):
    """Another live job writes this output folder (the command cannot run as given: exit 2)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class OutputLock:
    def __init__(self, folder: str | Path, stale_after_s: float = 120.0):
        self.path = Path(folder) / ".lock"
        self.stale_after_s = stale_after_s
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- holder --------------------------------------------------------------------------------
    def _write(self, flags: int) -> None:
        fd = os.open(self.path, flags, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump({**self.record, "heartbeat": time.time()}, f)
            f.flush()
            os.fsync(f.fileno())

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.stale_after_s / 4):
            tmp = self.path.with_name(f".lock.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({**self.record, "heartbeat": time.time()}))
            os.replace(tmp, self.path)

    def acquire(self) -> "OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            try:
                self._write(os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                self._take_over_if_stale()
        else:
            raise LockHeld(f"could not lock {self.path}")
        self._thread = threading.Thread(target=self._heartbeat, name="output-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if json.loads(self.path.read_text()).get("pid") == os.getpid():
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -- someone else's ------------------------------------------------------------------------
    def _take_over_if_stale(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return  # released meanwhile: try again
        except ValueError:  # torn by a kill mid-write: as good as dead
            holder = {}
        age = time.time() - float(holder.get("heartbeat", 0))
        dead = holder.get("host") == self.record["host"] and not _alive(int(holder.get("pid", -1)))
        if not (dead or age > self.stale_after_s):
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
            raise LockHeld(
                f"{self.path.parent} is being written by pid {holder.get('pid')} on {holder.get('host')} "
                f"(since {started}, heartbeat {age:.0f} s ago); wait for it, or use another output_dir"
            )
        why = "its process is gone" if dead else f"no heartbeat for {age:.0f} s"
        log.warning(
            "taking over the stale lock %s of pid %s on %s (%s)", self.path, holder.get("pid"), holder.get("host"), why
        )
        stale = self.path.with_name(f".lock.stale-{os.getpid()}")
        try:
            os.replace(self.path, stale)
        except FileNotFoundError:
            return  # another taker moved it first: try to create ours again
        try:
            moved = json.loads(stale.read_text())
        except ValueError:
            moved = {}
        if holder and {k: moved.get(k) for k in ("host", "pid", "started")} != {
            k: holder.get(k) for k in ("host", "pid", "started")
        }:
            os.replace(stale, self.path)  # that was a fresh lock another taker had just made: put it back
            raise LockHeld(f"{self.path.parent} was just taken over by another job")
        stale.unlink()
