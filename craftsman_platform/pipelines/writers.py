"""Shard writer actors, one per node, fed by the runs on that node; the driver's book of their shards.

Why writer actors (and not tasks that each own a shard): a run per object keeps its own timeout
and failure (a killed object loses one object, not a shard's worth of finished work), and runs
balance across the cluster one object at a time. Why the run hands its sample to its node's
writer itself (and not the driver passing the sample's reference on): the driver then owns no
sample object at all, and Ray's bookkeeping for each object the driver owns was most of its CPU
per object (docs/benchmarks.md). The sample goes from the run to the writer through that node's
object store, without a network hop; the driver gets the run's manifest row and, once per
shard, the writer's commit record, which it journals.

A writer decides its shards' boundaries (`shard_max_bytes`) and takes their numbers from one
counter actor, so names stay `shard-NNNNNN.tar`. A writer that dies (kill -9, a lost node) takes
its unfinished shard with it: the driver gives those objects back to the job and deletes whatever
the writer had uploaded.
"""

from __future__ import annotations

import logging
import time
import uuid

from craftsman_platform.pipelines.shardstore import ShardStore, ShardWriter, shard_name
from craftsman_platform.pipelines.storage import Output

log = logging.getLogger("craft.pipelines")
FIND_WRITER_S = 60.0  # how long a task waits for its node's writer (a node newer than the driver's last look)


class WriterLost(Exception):
    """The shard writer of this task's node died while the task handed it a sample."""


def writer_name(group: str, node: str) -> str:
    return f"craft-writer-{group}-{node}"


class ShardCounter:
    """The Ray actor that hands out shard numbers (one call per shard)."""

    def __init__(self, start: int):
        self.next = start

    def take(self) -> int:
        self.next += 1
        return self.next - 1


class WriterActor:
    """The Ray actor around a ShardWriter: appends what the node's tasks give it, seals full shards."""

    def __init__(self, url: str, storage_options: dict, max_bytes: int, counter):
        self.writer = ShardWriter(Output(url, storage_options))
        self.max_bytes, self.counter = max_bytes, counter
        self.index, self.rows = None, []

    def add(self, members: dict[str, bytes], row: dict) -> dict:
        """Append one sample; {"shard": its shard, "sealed": [commit records of shards finished now]}."""
        import ray

        if self.index is None:
            self.index = ray.get(self.counter.take.remote())
        try:
            size = self.writer.add(self.index, row["uid"], members)
        except OSError:  # the shard was dropped (its objects are redone by the next run): start anew
            self.index, self.rows = None, []
            raise
        self.rows.append(row)
        ack = {"shard": shard_name(self.index), "sealed": []}
        if size >= self.max_bytes:
            ack["sealed"].append(self._seal())
        return ack

    def _seal(self) -> dict:
        sealed = {**self.writer.seal(self.index), "rows": self.rows}
        self.index, self.rows = None, []
        return sealed

    def close(self) -> list[dict]:
        """Seal the open shard, if any: its commit record in a list."""
        return [self._seal()] if self.index is not None else []


# Writer handles by name, kept by each worker process across its tasks: looking a handle up per
# task makes every task a new borrower of the driver's actor, and the driver's reference counting
# for that was half of its CPU per object (docs/benchmarks.md).
_HANDLES: dict[str, object] = {}


def _find_writer(name: str):
    import ray

    deadline = time.monotonic() + FIND_WRITER_S
    while name not in _HANDLES:
        try:
            _HANDLES[name] = ray.get_actor(name)
        except ValueError:  # the driver creates writers for new nodes every few seconds
            if time.monotonic() > deadline:
                raise WriterLost(f"no shard writer {name} after {FIND_WRITER_S:.0f} s") from None
            time.sleep(0.5)
    return _HANDLES[name]


def hand_to_writer(group: str, members: dict[str, bytes], row: dict) -> dict:
    """In a run (on an object's task-slot actor): give the sample to this node's writer and wait
    for it to be written (the ack)."""
    import ray

    name = writer_name(group, ray.get_runtime_context().get_node_id())
    try:
        return ray.get(_find_writer(name).add.remote(members, row))
    except ray.exceptions.RayActorError as err:
        _HANDLES.pop(name, None)  # a new writer of that name will be another actor
        raise WriterLost(f"shard writer {name} died: {str(err).splitlines()[0][:200]}") from None


class WriterPool:
    """The driver's side: one writer per alive node, the shards not yet committed, commits."""

    def __init__(self, ray, store: ShardStore, url: str, storage_options: dict, max_bytes: int):
        self.ray, self.store = ray, store
        self.group = uuid.uuid4().hex[:8]
        self._actor_cls = ray.remote(WriterActor)
        self._args = (url, storage_options, max_bytes)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # on the driver's node: a counter on a worker node would die with it and stop every writer
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        self._counter = ray.remote(ShardCounter).options(num_cpus=0, scheduling_strategy=here).remote(store.next_index)
        self._writers: dict[str, object] = {}  # node id -> actor
        self._uncommitted: dict[str, tuple[str, list]] = {}  # shard name -> (node id, objects in it)

    @property
    def writers(self) -> int:
        return len(self._writers)

    def ensure(self, nodes: list[str]) -> list:
        """Writers for these (alive) nodes; the objects of writers whose node is gone, to run again."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        redo = []
        for node in [n for n in self._writers if n not in nodes]:
            redo += self.lost(node, "its node left the cluster", recreate=False)
        for node in nodes:
            if node not in self._writers:
                options = {
                    "name": writer_name(self.group, node),
                    "num_cpus": 0,
                    "max_restarts": 0,
                    "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=True),
                }
                self._writers[node] = self._actor_cls.options(**options).remote(*self._args, self._counter)
        return redo

    def accepted(self, obj, result: dict) -> list[dict]:
        """A task's sample is in `result["shard"]`; commit what its writer sealed. Returns committed rows."""
        node, objs = self._uncommitted.setdefault(result["shard"], (result["node"], []))
        objs.append(obj)
        rows = []
        for sealed in result["sealed"]:
            rows += self._commit(sealed)
        return rows

    def _commit(self, sealed: dict) -> list[dict]:
        self._uncommitted.pop(sealed["shard"], None)
        return self.store.commit({"shard": sealed["shard"], "bytes": sealed["bytes"]}, sealed["rows"])

    def lost(self, node: str, why: str, recreate: bool = True) -> list:
        """A writer died: delete its uncommitted shards, return their objects to run again."""
        actor = self._writers.pop(node, None)
        if actor is not None:
            self.ray.kill(actor, no_restart=True)  # if only its calls failed, make sure the name is free
        redo = []
        for shard, (owner, objs) in list(self._uncommitted.items()):
            if owner == node:
                del self._uncommitted[shard]
                self.store.discard(int(shard.removeprefix("shard-").removesuffix(".tar")))
                redo += objs
        log.warning("shard writer on node %s lost (%s): %d objects are redone", node[:8], why, len(redo))
        if recreate and actor is not None:
            self._wait_gone(writer_name(self.group, node))
        return redo

    def _wait_gone(self, name: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.ray.get_actor(name)
            except ValueError:
                return
            time.sleep(0.2)

    def close(self) -> tuple[list[dict], list]:
        """Seal every writer's open shard: (committed rows, objects to run again)."""
        rows, redo = [], []
        for node, actor in list(self._writers.items()):
            try:
                records = self.ray.get(actor.close.remote())
            except self.ray.exceptions.RayActorError as err:
                redo += self.lost(node, type(err).__name__)
                continue
            for sealed in records:
                rows += self._commit(sealed)
        return rows, redo
