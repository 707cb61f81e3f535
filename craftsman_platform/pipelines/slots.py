"""How many tasks a pipeline keeps running: the cluster's task slots, followed as it grows or shrinks."""

from __future__ import annotations

import time

REFRESH_S = 5.0  # how often the driver re-reads the cluster's size
MAX_REQUEST = 10_000  # task slots asked of the autoscaler at most


def node_slots(cpus: float, memory_bytes: float, task_memory_bytes: int) -> int:
    """Task slots of one node: one CPU and `task_memory_bytes` of Ray's memory resource each."""
    return min(int(cpus), int(memory_bytes // task_memory_bytes))


class Slots:
    """How many tasks to keep running: the cluster's task slots (CPUs, and memory at
    `memory_per_task_gb` each, per node), re-read every few seconds, capped by `workers`. On a
    cluster it also asks the autoscaler for as many slots as there are tasks left. `cfg` is a job
    config with `workers`, `memory_per_task_gb` and `ray` (preprocess, pack)."""

    def __init__(self, ray, cfg):
        self.ray, self.cfg = ray, cfg
        self.task_memory = int(cfg.memory_per_task_gb * 2**30)
        self._target, self._read_at, self._requested = 1, -REFRESH_S, None

        self.nodes: list[str] = []  # alive nodes with task slots, as of the last look

    def _read_cluster(self) -> int:
        slots, self.nodes = 0, []
        for node in self.ray.nodes():
            if node.get("Alive"):
                res = node.get("Resources", {})
                n = node_slots(res.get("CPU", 0), res.get("memory", 0), self.task_memory)
                slots += n
                if n:
                    self.nodes.append(node["NodeID"])
        return slots

    def refresh(self, remaining: int, force: bool = False) -> bool:
        """Re-read the cluster every REFRESH_S seconds (or now); True if it did."""
        now = time.monotonic()
        if not force and now - self._read_at < REFRESH_S:
            return False
        self._read_at = now
        self._target = max(1, min(self._read_cluster(), self.cfg.workers or 1 << 30))
        if self.cfg.ray.address:
            self._ask_autoscaler(min(remaining, self.cfg.workers or MAX_REQUEST, MAX_REQUEST))
        return True

    @property
    def target(self) -> int:
        return self._target

    def _ask_autoscaler(self, slots: int) -> None:
        if slots == self._requested:
            return
        from ray.autoscaler.sdk import request_resources

        self._requested = slots
        request_resources(bundles=[{"CPU": 1, "memory": self.task_memory}] * slots)

    def release(self) -> None:
        if self._requested:
            self._ask_autoscaler(0)
