"""Following running tasks (pipelines/tasks.py) on a real local Ray: a finished task is handed back
while slower ones still run, a failed one as its exception, overdue ones in submission order."""

from __future__ import annotations

import time

from craftsman_platform.pipelines.tasks import finished, overdue
from craftsman_platform.raycluster import RayConfig, init_ray


def test_finished_tasks_come_back_while_slow_ones_run_and_failures_as_exceptions():
    ray = init_ray(RayConfig(), num_cpus=3)
    try:
        # lambdas travel by value (workers cannot import a test module)
        nap = ray.remote(lambda seconds: time.sleep(seconds) or seconds).options(num_cpus=1)
        fail = ray.remote(lambda: 1 / 0).options(num_cpus=1)
        slow, fast, broken = nap.remote(60.0), nap.remote(0.0), fail.remote()
        pending = {slow: ("slow", time.monotonic()), fast: ("fast", time.monotonic()), broken: ("broken", 0)}
        got, t0 = {}, time.monotonic()
        while len(got) < 2:
            for ref, result in finished(ray, pending, wait_s=30.0):
                got[pending.pop(ref)[0]] = result
        # back long before the slow task or wait_s (the old wait-for-all kept the fast one's slot idle)
        assert time.monotonic() - t0 < 20, "finished() waited for the slow task"
        assert got["fast"] == 0.0 and isinstance(got["broken"], ZeroDivisionError)
        assert list(pending) == [slow]
        ray.cancel(slow, force=True)
    finally:
        ray.shutdown()


def test_overdue_are_the_oldest_tasks_past_their_time():
    now = time.monotonic()
    pending = {"a": (None, now - 50), "b": (None, now - 20), "c": (None, now - 1), "d": (None, now)}
    assert overdue(pending, timeout_s=10) == ["a", "b"]
    assert overdue(pending, timeout_s=100) == []
