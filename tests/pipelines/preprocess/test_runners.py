"""The task-slot actors of `craft preprocess` (pipelines/preprocess/runners.py) on a real local Ray:
a slot counts once its actor is up, a run whose process dies comes back as the actor's error and
its slot is filled anew, an overdue run's process is killed and nothing else is; a run of objects
goes to one actor, one object at a time, and what is left of it comes back when that actor dies."""

from __future__ import annotations

import os
import time

import psutil

from craftsman_platform.pipelines.preprocess.runners import RunnerPool
from craftsman_platform.raycluster import RayConfig, init_ray


def make_work(pid_file):
    """A closure, so that it travels by value (workers cannot import a test module)."""

    def work(item: str):
        if item == "die":
            os._exit(1)  # the process dies mid-run, as a segfault or the OOM killer would
        if item == "hang":
            pid_file.write_text(str(os.getpid()))
            time.sleep(600)
        return item, os.getpid()

    return work


def poll_until(pool: RunnerPool, done: dict, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(done) < n and time.monotonic() < deadline:
        done.update(pool.poll(wait_s=1.0))
    assert len(done) >= n, f"only {len(done)} of {n} runs came back"


def test_slots_start_then_run_one_object_each_crashes_and_timeouts_cost_one_actor(tmp_path):
    ray = init_ray(RayConfig(), num_cpus=2)
    try:
        pid_file = tmp_path / "hung.pid"
        pool = RunnerPool(ray, make_work(pid_file), {"num_cpus": 1})
        pool.resize(2)
        assert len(pool.starting) == 2 and not pool.idle  # no slot until its actor answers
        deadline = time.monotonic() + 120
        while len(pool.idle) < 2 and time.monotonic() < deadline:
            pool.poll(wait_s=1.0)
        assert len(pool.idle) == 2 and not pool.starting

        done: dict = {}
        pool.submit(["die", "lost"])  # a run of two: the second is that actor's backlog
        pool.submit(["ok"])
        poll_until(pool, done, 2)
        assert pool.returned == [["lost"]] and not pool.backlog  # the dead actor's backlog came back
        assert done["ok"][0] == "ok"
        assert isinstance(done["die"], ray.exceptions.RayActorError)
        assert pool.size == 1  # the dead one's slot is empty ...
        pool.resize(2)  # ... until the driver fills it
        assert pool.size == 2

        while len(pool.idle) < 2 and time.monotonic() < deadline:
            pool.poll(wait_s=1.0)
        pool.submit(["hang", "after"])
        pool.submit(["fine", "again"])  # one actor, one object at a time, in order
        done = {}
        poll_until(pool, done, 1)
        assert pool.waiting == 2 and "again" not in done  # "after" and "again" wait behind their runs
        pool.feed()  # the idle actor takes the next object of its run
        poll_until(pool, done, 2)
        assert done["again"][1] == done["fine"][1]  # the same actor's process
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        hung = psutil.Process(int(pid_file.read_text()))
        assert pool.overdue(timeout_s=3600) == []  # within its time: left alone
        time.sleep(0.2)
        assert pool.overdue(timeout_s=0.1) == ["hang"] and not pool.running
        assert pool.returned[-1] == ["after"]  # the killed actor's backlog came back
        hung.wait(timeout=30)  # its process is gone, not just forgotten
        assert done["fine"][0] == "fine" and psutil.pid_exists(done["fine"][1])  # the other actor lives on
    finally:
        ray.shutdown()
