"""Running every object on Ray: one actor call per object, samples to shard writers on the workers.

The driver only schedules: it keeps an actor per task slot of the cluster (or `workers`, if set;
pipelines/preprocess/runners.py says why actors), gives each idle one the next object, and keeps a
shard writer on every node. Each run hands its sample to its node's writer; the driver reads each
run's small result (manifest row, shard: a few KB) and journals each shard its writer finished.
A per-object timeout kills that object's actor only; a crash or a transient fetch error runs the
object again, `max_retries` times at most.

The work comes from the listing's plan (listing.py) as runs of objects, read as they are needed:
the driver holds the objects running and about to run, never the whole listing. What each object
ends as goes to the manifest's parts as it happens (ShardStore); the driver keeps counts only.

`object_fn` (default `run_object`) is what each run calls; the benchmark passes a stand-in that
hands over ready-made samples, so that it measures this very scheduler.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections import Counter, deque
from typing import Callable, Iterator

from tqdm import tqdm

from craftsman_platform.errors import DiskFull
from craftsman_platform.pipelines.lock import OutputLock
from craftsman_platform.pipelines.preprocess.config import PreprocessConfig
from craftsman_platform.pipelines.preprocess.object_job import failure, row_base, run_object
from craftsman_platform.pipelines.preprocess.runners import RunnerPool
from craftsman_platform.pipelines.preprocess.sources import ObjectRef, TransientError
from craftsman_platform.pipelines.shardstore import ShardStore
from craftsman_platform.pipelines.slots import Slots
from craftsman_platform.pipelines.writers import WriterPool
from craftsman_platform.raycluster import init_ray

log = logging.getLogger("craft.preprocess")
WAIT_S = 0.2  # the longest the driver waits for a result before it looks at timeouts and the cluster


def start_ray(cfg: PreprocessConfig):
    threads = str(cfg.threads_per_task)
    # A local Ray returns task results of up to 16 KiB inline to the driver, larger ones through the
    # object store (Ray's default inlines up to 100 KiB): a small sample never reaches the driver either.
    return init_ray(
        cfg.ray,
        num_cpus=cfg.workers,
        env_vars={"CRAFT_THREADS": threads, "OMP_NUM_THREADS": threads},
        system_config={"max_direct_call_object_size": 16 * 1024},
    )


def _crash_reason(error: Exception) -> tuple[str, str]:
    """(reason, message) of a run that raised: its fetch gave up, its process died, or a bug."""
    import ray.exceptions as rex

    cause = getattr(error, "cause", None)  # a RayTaskError carries the run's own exception
    if isinstance(cause, TransientError):
        return "fetch_failed", str(cause)[:500]
    if isinstance(error, (rex.RayActorError, rex.WorkerCrashedError, rex.OutOfMemoryError, rex.NodeDiedError)):
        return "worker_crashed", f"{type(error).__name__}: {str(error)[:300]}"
    return "error", f"{type(error).__name__}: {str(error)[:300]}"


def _retryable(error: Exception) -> bool:
    """What Ray's task retries covered: a transient fetch error, or the process running it died."""
    return _crash_reason(error)[0] in ("fetch_failed", "worker_crashed")


def _job_fn(object_fn: Callable[..., dict], cfg: PreprocessConfig, digest: str, group: str) -> Callable:
    """The job's object function, one object its only argument: the config goes to each actor
    once, with the function, instead of with every call."""

    def run(obj: ObjectRef) -> dict:
        return object_fn(obj, cfg, digest, group)

    run.__name__ = run.__qualname__ = object_fn.__name__
    return run


class Work:
    """The runs still to give out: those returned (retries, a dead writer's objects, a dead actor's
    backlog) first, then the plan's, read one at a time."""

    def __init__(self, runs: Iterator[list[ObjectRef]], total: int):
        self._runs, self.front = runs, deque()
        self.left = total  # objects not yet given out, the plan's included

    def take(self) -> list[ObjectRef] | None:
        run = self.front.popleft() if self.front else next(self._runs, None)
        if run is not None:
            self.left -= len(run)
        return run

    def give_back(self, run: list[ObjectRef], first: bool = False) -> None:
        (self.front.appendleft if first else self.front.append)(run)
        self.left += len(run)


def process_all(
    runs: Iterator[list[ObjectRef]],
    total: int,
    cfg: PreprocessConfig,
    digest: str,
    store: ShardStore,
    lock: OutputLock,
    object_fn: Callable[..., dict] = run_object,
) -> tuple[Counter, dict]:
    """Run every object of `runs` (`total` in all); returns (this run's objects by status, run facts:
    Ray start seconds, peak concurrency, writers, bytes the driver received and its CPU seconds, Ray
    start excluded, and `all_slots`: [seconds, driver CPU seconds, objects done] when every slot
    first had its actor)."""
    t0 = time.monotonic()
    ray = start_ray(cfg)
    startup = time.monotonic() - t0
    cpu0 = time.process_time()  # the driver process: this loop and Ray's threads in it
    pool = WriterPool(ray, store, store.output.url, cfg.storage_options, cfg.shard_max_bytes)
    memory = int(cfg.memory_per_task_gb * 2**30)
    runners = RunnerPool(ray, _job_fn(object_fn, cfg, digest, pool.group), {"num_cpus": 1, "memory": memory})
    slots = Slots(ray, cfg)
    work = Work(runs, total)
    redone = Counter()  # uid -> runs given back because their shard writer died
    tries = Counter()  # uid -> runs that crashed or hit a transient error
    counts = Counter()
    facts = {"startup_s": startup, "peak": 0, "driver_bytes": 0, "results": 0, "all_slots": None}
    bar = tqdm(total=total, desc="objects", unit="obj", smoothing=0.05)

    def failed(obj: ObjectRef, reason: str, message: str) -> dict:
        return failure(row_base(obj, digest), reason, message)

    def record_failure(obj: ObjectRef, result: dict) -> None:
        store.add_failed(result["row"])
        counts["failed"] += 1

    shown = None

    def show() -> None:
        nonlocal shown
        running = len(runners.running)
        state = {"ok": counts["ok"], "failed": counts["failed"], "running": running, "writers": pool.writers}
        if state != shown:
            bar.set_postfix(state, refresh=False)  # the bar redraws at its own pace
            shown = state

    def give_back(objs: list) -> None:  # their shard writer died: run them again, a bounded number of times
        for obj in objs:
            redone[obj.uid] += 1
            if redone[obj.uid] > cfg.max_retries + 1:
                record_failure(obj, failed(obj, "worker_crashed", "its shard writer died every time"))
            else:
                work.give_back([obj])
                bar.total += 1
                bar.refresh()

    def remaining() -> int:
        return work.left + runners.waiting + len(runners.running)

    try:
        while remaining():
            lock.check()
            if slots.refresh(remaining()):
                give_back(pool.ensure(slots.nodes))
            runners.resize(min(slots.target, remaining()))  # none idle once all is given out
            runners.feed()
            while runners.idle and (run := work.take()) is not None:
                runners.submit(run)
            facts["peak"] = max(facts["peak"], len(runners.running))
            if facts["all_slots"] is None and not runners.starting and runners.size == slots.target:
                facts["all_slots"] = [time.monotonic() - t0 - startup, time.process_time() - cpu0, bar.n]
            for obj, result in runners.poll(WAIT_S):
                if isinstance(result, Exception):  # its process died, or it raised
                    if isinstance(getattr(result, "cause", result), DiskFull):
                        raise result  # the output is full: stop here (what is journaled stays; the rest is redone)
                    if _retryable(result) and tries[obj.uid] < cfg.max_retries:
                        tries[obj.uid] += 1
                        work.give_back([obj], first=True)
                        continue
                    result = failed(obj, *_crash_reason(result))
                else:
                    facts["driver_bytes"] += len(pickle.dumps(result, protocol=5))
                    facts["results"] += 1
                if result["status"] == "ok":
                    pool.accepted(obj, result)
                    counts["ok"] += 1  # written by its shard writer; committed with its shard
                    bar.update(1)
                elif result["status"] == "writer_lost":
                    give_back([obj, *pool.lost(result["node"], result["message"])])
                    slots.refresh(work.left, force=True)
                    give_back(pool.ensure(slots.nodes))
                else:
                    record_failure(obj, result)
                    bar.update(1)
            for obj in runners.overdue(cfg.timeout_s):  # their actors are killed, not the job
                bar.update(1)
                why = f"no result after {cfg.timeout_s:.0f} s (timeout_s); its process was killed"
                record_failure(obj, failed(obj, "timeout", why))
            while runners.returned:  # the backlogs of actors that died or were killed
                work.give_back(runners.returned.pop(), first=True)
            if not remaining():  # the end: finish the open shards (a dead writer's objects come back)
                give_back(pool.close()[1])
            show()
    finally:
        bar.close()
        runners.close()
        store.flush_failed()
        slots.release()
        facts["driver_cpu_s"], facts["loop_s"] = time.process_time() - cpu0, time.monotonic() - t0 - startup
        ray.shutdown()
    facts["writers"] = pool.writers
    return counts, facts
