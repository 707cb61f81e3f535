"""The stop handlers of training/stop.py in a real process receiving real signals."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    from craftsman_platform.training import stop

    grace, gaps = float(sys.argv[1]), [float(g) for g in sys.argv[2:]]
    stop.install(grace)
    for gap in gaps:
        os.kill(os.getpid(), signal.SIGINT if gap < 0 else signal.SIGTERM)
        time.sleep(abs(gap))
    print("requested" if stop.requested() else "not requested", stop.reason(), flush=True)
    stop.finish()
    time.sleep(grace + 0.5)  # after finish() the grace timer no longer fires
    print("survived", flush=True)
    """
)


def run(grace: float, *gaps: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(grace), *map(str, gaps)], capture_output=True, text=True)


def test_a_signal_asks_for_a_stop_and_a_repeat_within_the_window_is_the_same_one():
    res = run(1.0, 0.1, 0.1)  # SIGTERM twice 0.1 s apart: Slurm and torchrun delivering one event
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == ["requested SIGTERM", "survived"]
    assert "SIGTERM: checkpointing at the next agreement point" in res.stderr


@pytest.mark.parametrize("signal_name, gap, code", [("SIGTERM", 2.5, 143), ("SIGINT", -2.5, 130)])
def test_a_second_signal_after_the_window_exits_at_once(signal_name, gap, code):
    res = run(30.0, gap, gap)
    assert res.returncode == code and "survived" not in res.stdout
    assert f"craft train: second {signal_name}: exiting now; the last whole checkpoint stands" in res.stderr


def test_no_checkpoint_within_the_grace_period_exits():
    res = run(0.5, 2.0)
    assert res.returncode == 143 and res.stdout == ""
    assert "craft train: no checkpoint within 0.5 s of SIGTERM: exiting now" in res.stderr
