"""One writer per output: OUT/.lock holds the holder's host, pid, start time, token and heartbeat.

The lock is created with an exclusive create (O_EXCL locally, a conditional PUT on object stores;
a store that does not honour it is refused, see storage.py), so a second live job on the same
output is refused at start, naming the holder. A lock whose holder is dead (same host, pid gone)
or whose heartbeat is older than `stale_after_s` is taken over with a warning, so a job killed
with -9 can simply be rerun. Object stores have no atomic compare-and-delete: a taker re-reads the
lock a moment after creating it, and the holder's heartbeat checks its token every beat; if
another job ever holds the lock, `check()` raises and the job stops before writing more.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

from craftsman_platform.errors import ConfigError
from craftsman_platform.pipelines.storage import Output

log = logging.getLogger("craft.pipelines")
LOCK = ".lock"


class LockHeld(ConfigError):
    """Another live job writes this output (the command cannot run as given: exit 2)."""


class LockLost(RuntimeError):
    """This job's lock was taken over while it ran (its heartbeat stalled past the stale limit)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class OutputLock:
    def __init__(self, output: Output, stale_after_s: float = 120.0, settle_s: float = 1.0):
        self.output = output
        self.stale_after_s = stale_after_s
        self.settle_s = settle_s  # after a take-over: how long to wait before re-reading the lock
        self.record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
            "token": uuid.uuid4().hex,
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None

    def _body(self) -> bytes:
        return json.dumps({**self.record, "heartbeat": time.time()}).encode()

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.output.read_bytes(LOCK))
        except FileNotFoundError:
            return None
        except ValueError:  # torn by a kill mid-write (local): as good as dead
            return {}

    # -- holder ----------------------------------------------------------------------------------
    def acquire(self) -> "OutputLock":
        self.output.check_exclusive_create()
        self.output.makedirs("")
        for _ in range(10):
            try:
                self.output.create_exclusive(LOCK, self._body())
                break
            except FileExistsError:
                if self._take_over_if_stale():
                    break
        else:
            raise LockHeld(f"could not lock {self.output.display(LOCK)}")
        self._thread = threading.Thread(target=self._heartbeat, name="output-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.stale_after_s / 4):
            holder = self._holder()
            if holder is not None and holder.get("token") != self.record["token"]:
                self._lost = f"pid {holder.get('pid')} on {holder.get('host')} took over {self.output.display(LOCK)}"
                return
            try:
                self.output.write_bytes(LOCK, self._body())
            except OSError as err:  # a store hiccup: the next beat tries again
                log.warning("lock heartbeat failed (%s); retrying", err)

    def check(self) -> None:
        """Raise LockLost if another job took this output over (called by the job as it writes)."""
        if self._lost:
            raise LockLost(f"{self._lost}: this job stops so two jobs never write one output")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        holder = self._holder()
        if holder and holder.get("token") == self.record["token"]:
            self.output.delete(LOCK)

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -- someone else's --------------------------------------------------------------------------
    def _take_over_if_stale(self) -> bool:
        """True if this job now holds a lock it took over; False to try creating it again."""
        holder = self._holder()
        if holder is None:
            return False  # released meanwhile: try again
        age = time.time() - float(holder.get("heartbeat", 0))
        dead = holder.get("host") == self.record["host"] and not _alive(int(holder.get("pid", -1)))
        if not (dead or age > self.stale_after_s):
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
            raise LockHeld(
                f"{self.output.display()} is being written by pid {holder.get('pid')} on {holder.get('host')} "
                f"(since {started}, heartbeat {age:.0f} s ago); wait for it, or use another output_dir"
            )
        why = "its process is gone" if dead else f"no heartbeat for {age:.0f} s"
        log.warning(
            "taking over the stale lock %s of pid %s on %s (%s)",
            self.output.display(LOCK),
            holder.get("pid"),
            holder.get("host"),
            why,
        )
        self.output.delete(LOCK)
        try:
            self.output.create_exclusive(LOCK, self._body())
        except FileExistsError:
            return False  # another taker was first: look at its lock
        time.sleep(self.settle_s)  # a second taker that read the stale lock too may delete ours now
        mine = self._holder()
        if not mine or mine.get("token") != self.record["token"]:
            raise LockHeld(f"{self.output.display()} was just taken over by another job")
        return True
