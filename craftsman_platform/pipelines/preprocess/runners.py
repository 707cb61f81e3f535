"""The job's task slots as Ray actors that each run one object at a time (preprocess).

Why actors and not a Ray task per object: a call to a running actor goes straight to its worker
process, while every task first leases a worker from a raylet and hands it back afterwards, work
done by the driver's Ray threads for each object. With actors the driver's CPU per object is about
half (docs/benchmarks.md), and one driver's CPU is what a whole job's throughput rests on. What a
task per object gave stays: one object per call, its own timeout (the driver kills that actor and
a new one takes its slot), a crash costs that object a retry and no other object anything.

An actor counts as a slot once it has answered `ready`: one that waits for a node (an autoscaler
adding one) or for its process to start has no object yet, so no object's timeout runs meanwhile.

Objects come in runs (a GitHub repository's objects, fetched from one clone): an actor given a run
keeps the rest as its backlog and is given its next object as soon as it is idle; the backlog of
an actor that dies or is killed goes back to the driver (`returned`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable

from craftsman_platform.pipelines.tasks import finished, overdue

log = logging.getLogger("craft.preprocess")


class ObjectRunner:
    """The Ray actor of one task slot: runs the job's object function, one object per call."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def ready(self) -> bool:
        return True

    def run(self, obj):
        return self.fn(obj)


class RunnerPool:
    """The driver's side: actors starting, idle and running (ref -> (object, start time, actor))."""

    def __init__(self, ray, fn: Callable, options: dict):
        self.ray, self.fn = ray, fn
        self._cls = ray.remote(ObjectRunner).options(max_restarts=0, max_task_retries=0, **options)
        self.starting: dict = {}  # ready ref -> actor
        self.idle: list = []
        self.running: dict = {}  # run ref -> (object, start time, actor), in submission order
        self.backlog: dict = {}  # actor -> deque of the objects left of its run
        self.returned: list[list] = []  # runs left by actors that died or were killed

    @property
    def size(self) -> int:
        return len(self.starting) + len(self.idle) + len(self.running)

    def resize(self, want: int) -> None:
        """Start actors up to `want`, or stop idle (then starting) ones above it."""
        while self.size < want:
            actor = self._cls.remote(self.fn)
            self.starting[actor.ready.remote()] = actor
        while self.size > want and (self.idle or self.starting):
            if self.idle:
                self._kill(self.idle.pop())
            else:
                self._kill(self.starting.pop(next(iter(self.starting))))

    @property
    def waiting(self) -> int:
        """Objects in backlogs (given out, not yet running)."""
        return sum(len(q) for q in self.backlog.values())

    def submit(self, run: list) -> None:
        """Run the first of `run` on an idle actor (the caller checks there is one), the rest after it."""
        actor = self.idle.pop()
        self._start(actor, deque(run))

    def feed(self) -> None:
        """Idle actors with a backlog take its next object."""
        for actor in [a for a in self.idle if a in self.backlog]:
            self.idle.remove(actor)
            self._start(actor, self.backlog.pop(actor))

    def _start(self, actor, run: deque) -> None:
        obj = run.popleft()
        if run:
            self.backlog[actor] = run
        self.running[actor.run.remote(obj)] = (obj, time.monotonic(), actor)

    def poll(self, wait_s: float) -> list[tuple]:
        """(object, result or exception) of the runs that finished (waits `wait_s` at most); actors
        that have started become idle, as do those whose run finished, unless the actor died."""
        out = []
        for ref, result in finished(self.ray, [*self.running, *self.starting], wait_s):
            if ref in self.starting:
                actor = self.starting.pop(ref)
                if isinstance(result, Exception):  # it could not start (its node died, say): another takes the slot
                    log.warning("a task slot's actor did not start: %s", str(result).splitlines()[0][:200])
                    self._kill(actor)
                else:
                    self.idle.append(actor)
                continue
            obj, _, actor = self.running.pop(ref)
            if isinstance(result, self.ray.exceptions.RayActorError):
                self._kill(actor)  # it died with its object (a crash, its node lost, Ray's memory monitor)
            else:
                self.idle.append(actor)
            out.append((obj, result))
        return out

    def overdue(self, timeout_s: float) -> list:
        """The objects running for longer than `timeout_s`; their actors are killed (and so their
        processes: hung native code included), their slots taken by new ones."""
        late = []
        for ref in overdue(self.running, timeout_s):
            obj, _, actor = self.running.pop(ref)
            self._kill(actor)
            late.append(obj)
        return late

    def close(self) -> None:
        for actor in [*self.starting.values(), *self.idle, *(a for _, _, a in self.running.values())]:
            self._kill(actor)
        self.starting, self.idle, self.running, self.backlog = {}, [], {}, {}

    def _kill(self, actor) -> None:
        left = self.backlog.pop(actor, None)
        if left:
            self.returned.append(list(left))
        try:
            self.ray.kill(actor, no_restart=True)
        except Exception as err:  # already gone, or Ray is shutting down
            log.debug("killing a task slot's actor: %s", err)
