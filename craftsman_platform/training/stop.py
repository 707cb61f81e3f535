"""Stopping a run early and cleanly: preemption, scancel, a deleted pod, Ctrl-C.

A stop is asked for in three ways, the same on every launcher:
- SIGTERM or SIGINT to a rank's process: `launcher=local`, a torchrun or srun rank, a Ray Train
  worker (Ray runs the loop in a thread; `ray_worker_setup` puts the handler in the worker's main
  thread, where Python runs handlers);
- SIGTERM or SIGINT to the `craft train` driver of `launcher=ray`, which writes RUN_DIR/STOP;
- RUN_DIR/STOP itself (a SLURM trap, a Kubernetes preStop hook, a user: `touch RUN_DIR/STOP`).

Ranks agree on it at logging and checkpoint steps (every step in one process), checkpoint, and
end with status "preempted" and exit 0. A second signal at least DUPLICATE_WINDOW_S after the
first, or no checkpoint within `trainer.stop_grace_s`, ends the process at once with 128 + signal:
checkpoints are written whole or not at all, so the last complete one stands. Signals closer
together than the window are one event delivered twice (Slurm signals every process of a step, and
torchrun forwards the same signal to its ranks).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

log = logging.getLogger("craft.train")

STOP_FILE = "STOP"
DUPLICATE_WINDOW_S = 2.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Request:
    """This process's stop request (one per process: signal handlers are process-wide)."""

    def __init__(self):
        self.at: Optional[float] = None  # monotonic time of the first request
        self.reason = ""
        self.signum = signal.SIGTERM
        self.grace_s = 90.0
        self.active = False  # a training loop runs in this process (else a signal means: exit)
        self.on_request: Optional[Callable[[str], None]] = None
        self.timer: Optional[threading.Timer] = None
        self.fallback: dict[int, Callable] = {}  # a Ray worker's own handlers, for signals outside a run


_request = _Request()


def install(grace_s: float, on_request: Optional[Callable[[str], None]] = None) -> bool:
    """Handle SIGTERM and SIGINT here (main thread only: False elsewhere, e.g. a Ray Train loop
    thread, where `ray_worker_setup` has installed the handler already)."""
    _request.grace_s, _request.on_request, _request.active = grace_s, on_request, True
    _request.at, _request.reason = None, ""
    try:
        for signum in SIGNALS:
            signal.signal(signum, _handle)
    except ValueError:
        return False
    return True


def request(reason: str, signum: int = signal.SIGTERM) -> None:
    """Ask this process's run to stop (idempotent); starts the grace period."""
    if _request.at is not None:
        return
    _request.at, _request.reason, _request.signum = time.monotonic(), reason, signum
    log.warning(
        "%s: checkpointing at the next agreement point (exit within %g s: trainer.stop_grace_s)",
        reason,
        _request.grace_s,
    )
    _request.timer = threading.Timer(
        _request.grace_s, exit_now, (f"no checkpoint within {_request.grace_s:g} s of {reason}", signum)
    )
    _request.timer.daemon = True
    _request.timer.start()
    if _request.on_request is not None:
        _request.on_request(reason)


def requested() -> bool:
    return _request.at is not None


def reason() -> str:
    return _request.reason


def finish() -> None:
    """The run is over (stopped or not): no grace timer, and signals mean exit again."""
    if _request.timer is not None:
        _request.timer.cancel()
    _request.active, _request.timer = False, None


def exit_now(why: str, signum: int) -> None:
    sys.stderr.write(f"craft train: {why}: exiting now; the last whole checkpoint stands, resume=auto continues it\n")
    sys.stderr.flush()
    os._exit(128 + signum)


def _handle(signum: int, frame) -> None:
    name = signal.Signals(signum).name
    if not _request.active:
        fallback = _request.fallback.get(signum)
        if callable(fallback):
            fallback(signum, frame)
            return
        exit_now(name, signum)
    if _request.at is None:
        request(name, signum)
    elif time.monotonic() - _request.at >= DUPLICATE_WINDOW_S:
        exit_now(f"second {name}", signum)


def stop_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / STOP_FILE


def ask_workers(run_dir: str | Path) -> Callable[[str], None]:
    """For a driver whose ranks run elsewhere (launcher=ray): a request writes RUN_DIR/STOP, which
    rank 0 reads at its next agreement point (run_dir is shared storage on a cluster anyway)."""

    def write(why: str) -> None:
        stop_file(run_dir).write_text(f"{why} to the craft train driver (pid {os.getpid()})\n")

    return write


def ray_worker_setup() -> None:
    """In every Ray worker process of a training job, before it takes tasks: our handler in the
    main thread. Ray's own (installed after this hook, through `set_sigterm_handler`) exits the
    worker at once; it is kept and used for signals that arrive while no run is active."""
    import ray._private.utils as ray_utils

    def keep_as_fallback(handler) -> None:
        _request.fallback[signal.SIGTERM] = handler

    ray_utils.set_sigterm_handler = keep_as_fallback
    _request.fallback[signal.SIGINT] = signal.getsignal(signal.SIGINT)
    for signum in SIGNALS:
        signal.signal(signum, _handle)


def loader_worker_setup(delay_s: float, worker_id: int) -> None:
    """Loader workers leave stopping to their rank: torchrun and Slurm signal a rank's whole process
    group, and a worker dying of it would fail the rank before it checkpoints. SIGINT is ignored;
    SIGTERM ends the worker `delay_s` later (the rank's grace period), so that the DataLoader's own
    terminate() at an exit without a clean shutdown still ends it. Normally workers end with their
    rank: the DataLoader shuts them down, or its watchdog does when the rank is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def later(signum, frame) -> None:
        timer = threading.Timer(delay_s, os._exit, (0,))
        timer.daemon = True
        timer.start()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one timer

    signal.signal(signal.SIGTERM, later)
