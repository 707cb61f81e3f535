"""What training could not read, counted honestly: each lost sample once, however many read errors
it raised and however many epochs met it; shards that could not be read at all apart.

A loader worker's `Tracker` gives the stream its error handlers and hands what it saw since its
last report to the next batch (`report()`); the rank's `Damage` keeps the union across workers and
epochs and is checkpointed with the data-stream state. A shard torn part-way loses the samples
after the tear too; the stream cannot know how many, so those are counted as one damaged shard,
the torn sample as a lost one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_CONSECUTIVE_FAILURES = 1000


class Tracker:
    """One loader worker's view: which shard it is in, and what it lost since the last report."""

    def __init__(self):
        self.url = ""
        self.members_from_url = 0
        self.consecutive = 0
        self.new: dict[str, list[str]] = {"lost": [], "damaged": [], "unreadable": []}

    def sources(self, srcs):
        """Wrap the shard sequence: the tracker knows the shard being opened and read."""
        for src in srcs:
            self.url, self.members_from_url = src["url"], 0
            yield src

    def members(self, files):
        """Wrap the member stream (webdataset reads one shard at a time, so members are the current
        shard's): a read error after some of them means a damaged shard, before any an unreadable one.
        An end marker goes between shards, so that a torn shard's last sample is never grouped with
        the next shard's first (webdataset's own marker is skipped when the tar read fails)."""
        previous = None
        for member in files:
            self.members_from_url += 1
            if member.get("__url__") != previous:
                if previous is not None:
                    yield {}
                previous = member.get("__url__")
            yield member

    def _failed(self, exn: Exception) -> bool:
        self.consecutive += 1
        if self.consecutive > MAX_CONSECUTIVE_FAILURES:
            raise RuntimeError(
                f"{self.consecutive} unreadable samples or shards in a row (last: {exn}); are the shards valid?"
            ) from exn
        return True  # skip it and go on

    def on_unopened(self, exn: Exception) -> bool:
        self.new["unreadable"].append(self.url)
        return self._failed(exn)

    def on_read_error(self, exn: Exception) -> bool:
        """A tar or grouping error: the shard is unreadable if nothing came from it yet, else damaged."""
        self.new["damaged" if self.members_from_url else "unreadable"].append(self.url)
        return self._failed(exn)

    def on_lost_sample(self, sample: dict, exn: Exception) -> None:
        self.new["lost"].append(f"{sample.get('__url__', self.url)}#{sample.get('__key__', '?')}")
        self._failed(exn)

    def on_sample(self) -> None:
        self.consecutive = 0

    def report(self) -> dict[str, list[str]]:
        out, self.new = self.new, {"lost": [], "damaged": [], "unreadable": []}
        return out

    def pending(self) -> bool:
        return any(self.new.values())


@dataclass
class Damage:
    """A rank's union of what its workers lost (sample ids url#key, shard urls)."""

    lost: set[str] = field(default_factory=set)
    damaged: set[str] = field(default_factory=set)
    unreadable: set[str] = field(default_factory=set)

    def add(self, report: dict[str, list[str]]) -> None:
        self.lost.update(report.get("lost", ()))
        self.unreadable.update(report.get("unreadable", ()))
        self.damaged.update(u for u in report.get("damaged", ()) if u not in self.unreadable)

    def counts(self) -> tuple[int, int, int]:
        return len(self.lost), len(self.damaged - self.unreadable), len(self.unreadable)

    def state(self) -> dict[str, list[str]]:
        return {"lost": sorted(self.lost), "damaged": sorted(self.damaged), "unreadable": sorted(self.unreadable)}

    @classmethod
    def of_state(cls, state: dict | None) -> "Damage":
        state = state or {}
        return cls(set(state.get("lost", ())), set(state.get("damaged", ())), set(state.get("unreadable", ())))

    def describe(self) -> str:
        lost, damaged, unreadable = self.counts()
        return f"{lost} unreadable sample(s), {damaged} damaged shard(s), {unreadable} unreadable shard(s)"
