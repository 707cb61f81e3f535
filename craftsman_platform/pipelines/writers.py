"""Shard writer actors, one per node that produces samples, and the driver's book of their shards.

Why writer actors fed object references (and not tasks that each own a shard): a task per object
keeps its own timeout and failure (a killed object loses one object, not a shard's worth of
finished work), tasks balance across the cluster one object at a time, and a writer on the node
where a sample was made reads it from that node's object store without a network hop. The driver
passes the sample's reference along unread; it only keeps each shard's manifest rows (a few KB per
object) until the shard's journal is written.

A writer that dies (kill -9, a lost node) takes its unfinished shards with it: their objects are
given back to the job to run again, and whatever the writer had uploaded is deleted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from craftsman_platform.pipelines.shardstore import ShardStore, ShardWriter
from craftsman_platform.pipelines.storage import Output

log = logging.getLogger("craft.pipelines")


class WriterActor:
    """The Ray actor around a ShardWriter (created with ray.remote by WriterPool)."""

    def __init__(self, url: str, storage_options: dict):
        self.writer = ShardWriter(Output(url, storage_options))

    def add_many(self, index: int, uids: list[str], refs: list) -> int:
        """Append samples to shard `index`, reading them (by reference) from the object store."""
        import ray

        size = 0
        for uid, members in zip(uids, ray.get(refs)):
            size = self.writer.add(index, uid, members)
        return size

    def seal(self, index: int) -> dict:
        return self.writer.seal(index)


@dataclass
class OpenShard:
    index: int
    bytes: int = 0
    entries: list[tuple] = field(default_factory=list)  # (object to redo, manifest row)
    unsent: list[tuple] = field(default_factory=list)  # (uid, sample reference) not yet sent to the writer


class WriterPool:
    def __init__(self, ray, store: ShardStore, url: str, storage_options: dict, max_bytes: int):
        self.ray, self.store, self.max_bytes = ray, store, max_bytes
        self._actor_cls = ray.remote(WriterActor)
        self._args = (url, storage_options)
        self._writers: dict[str, object] = {}  # node id -> actor
        self._open: dict[str, OpenShard] = {}  # node id -> its writer's open shard
        self._sealing: dict = {}  # seal ObjectRef -> (node id, OpenShard)

    @property
    def writers(self) -> int:
        return len(self._writers)

    def _writer(self, node: str):
        if node not in self._writers:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            strategy = NodeAffinitySchedulingStrategy(node_id=node, soft=True)
            options = {"num_cpus": 0, "max_restarts": 0, "max_task_retries": 0, "scheduling_strategy": strategy}
            self._writers[node] = self._actor_cls.options(**options).remote(*self._args)
        return self._writers[node]

    def add(self, node: str, obj, row: dict, members_ref, size: int) -> None:
        """Queue one sample (its reference, unread) for the writer of the node that made it; queued
        samples go to each writer in one call per shard and poll (one call per object would cost
        the driver more CPU than the whole rest of its work)."""
        shard = self._open.get(node) or self._open.setdefault(node, OpenShard(self.store.allocate()))
        shard.bytes += size
        shard.entries.append((obj, row))
        shard.unsent.append((row["uid"], members_ref))
        if shard.bytes >= self.max_bytes:
            self._seal(node)

    def _send(self, node: str, shard: OpenShard) -> None:
        if shard.unsent:
            uids, refs = zip(*shard.unsent)
            self._writer(node).add_many.remote(shard.index, list(uids), list(refs))
            shard.unsent = []

    def flush(self) -> None:
        for node, shard in self._open.items():
            self._send(node, shard)

    def _seal(self, node: str) -> None:
        shard = self._open.pop(node)
        self._send(node, shard)  # a sync actor runs calls in order: every add before the seal
        actor = self._writers[node]
        self._sealing[actor.seal.remote(shard.index)] = (node, actor, shard)

    def poll(self, timeout: float = 0.0) -> tuple[list[dict], list]:
        """Send queued samples; commit the shards whose upload finished: (committed rows, objects to run again)."""
        self.flush()
        if not self._sealing:
            return [], []
        ready, _ = self.ray.wait(list(self._sealing), num_returns=len(self._sealing), timeout=timeout)
        rows, redo = [], []
        for ref in ready:
            node, actor, shard = self._sealing.pop(ref)
            try:
                sealed = self.ray.get(ref)
            except Exception as err:  # the writer died or its upload failed: nothing of it is committed
                redo += self._lost(node, actor, shard, err)
                continue
            rows += self.store.commit(sealed, [row for _, row in shard.entries])
        return rows, redo

    def _lost(self, node: str, actor, shard: OpenShard, err: Exception) -> list:
        log.warning(
            "shard writer on node %s failed (%s: %s); its %d objects of shard %d are redone",
            node[:8],
            type(err).__name__,
            str(err).splitlines()[0][:200] if str(err) else "",
            len(shard.entries),
            shard.index,
        )
        if isinstance(err, OSError):
            raise err  # a store error (disk full, access denied) is the job's, not the object's
        self.store.discard(shard.index)
        redo = [obj for obj, _ in shard.entries]
        if self._writers.get(node) is actor:  # first news of this death: its open shard goes with it
            del self._writers[node]
            orphan = self._open.pop(node, None)
            if orphan is not None:
                self.store.discard(orphan.index)
                redo += [obj for obj, _ in orphan.entries]
        return redo

    def seal_all(self) -> None:
        for node in list(self._open):
            self._seal(node)

    @property
    def busy(self) -> bool:
        return bool(self._sealing)
