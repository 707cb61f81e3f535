"""Streamed training data: WebDataset shards (an archive from `craft preprocess`, or a pack from
`craft pack`) -> batches of tensors.

Every rank and DataLoader worker gets its own deterministic stream, a function of (seed, virtual
epoch, rank, worker): shards drawn with replacement (resampled) or split explicitly by rank then
worker; samples shuffled as raw bytes and decoded afterwards; batches made in the worker. The
stream state is (epoch, batches done), so a resumed run replays nothing and skips nothing: it
rebuilds the epoch's stream and drops the batches already trained on, before decoding them.
Corrupt samples and shards are skipped and counted (the count travels with each batch).
A pack gives each epoch its own shard list (one chunk series per part, shapedata/pack.py).
"""

from __future__ import annotations

import functools
import json
import random
import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from craftsman_platform.errors import ConfigError
from craftsman_platform.shapedata.pack import (
    Pack,
    open_pack,
    pack_root,
)
from craftsman_platform.shapedata.sample import (
    expand_urls,
    open_shards,
)
from craftsman_platform.training import stop
from craftsman_platform.training.config import DataConfig
from craftsman_platform.training.damage import Damage, Tracker
from craftsman_platform.training.decode import collate, decode_sample, member_filter


@dataclass
class StreamState:
    epoch: int = 0
    batches_done: int = 0  # batches of this epoch already delivered to the trainer


class TrainingData:
    """What `data.train_shards` names: archive shards (every epoch the same list) or a pack
    (its folder, URL or pack.json), checked against the task and the data config at start."""

    def __init__(self, spec: str | None, cfg: DataConfig, task_kind: str):
        root = pack_root(spec)
        self.pack: Pack | None = open_pack(root) if root else None
        self.archive = None if self.pack else expand_urls(spec)
        self.sample_kind = "archive" if self.pack is None else self.pack.kind
        if self.pack is not None:
            _check_pack(self.pack, spec, cfg, task_kind)
        if cfg.condition == "text" and self.pack is not None and not self.pack.info.get("captioned"):
            raise ConfigError(
                f"data.train_shards={spec}: the pack holds no captions (data.condition=text): pack with "
                "captions=FILE, or from an archive made with source.captions"
            )
        canonical = self.sample_kind == "latents" and cfg.view_set == "canonical"
        self._canonical_sets = self.pack.recipe["view_sets"] if canonical else None

    @classmethod
    def of_urls(cls, urls: list[str]) -> "TrainingData":
        """Archive shards given as a list (tests, benchmarks)."""
        data = cls.__new__(cls)
        data.pack, data.archive, data.sample_kind, data._canonical_sets = None, list(urls), "archive", None
        return data

    def urls(self, epoch: int) -> list[str]:
        if self.pack is None:
            return self.archive
        return self.pack.epoch_urls(epoch, self._is_canonical if self._canonical_sets else None)

    def _is_canonical(self, chunk: int) -> bool:
        """data.view_set=canonical on a latents pack: the chunks holding the first view set."""
        return chunk % self._canonical_sets == 0

    @property
    def shard_count(self) -> int:
        return len(self.urls(0))


def _check_pack(pack: Pack, spec: str, cfg: DataConfig, task_kind: str) -> None:
    want = "vae" if task_kind == "vae" else "latents"
    if pack.kind != want:
        raise ConfigError(
            f"data.train_shards={spec} is a {pack.kind} pack; model.kind={task_kind} trains from a {want} pack "
            "or the archive's shards"
        )
    recipe = pack.recipe
    if pack.kind == "vae":
        for key in ("num_surface", "num_vol", "num_near"):
            if getattr(cfg, key) > recipe[key]:
                raise ConfigError(
                    f"data.{key}={getattr(cfg, key)} but the pack's chunks hold {recipe[key]} points: "
                    f"repack with {key}={getattr(cfg, key)} or lower data.{key}"
                )
        return
    if cfg.condition == "text":
        return  # the pack's views are not read
    if cfg.image_size != recipe["image_size"]:
        raise ConfigError(f"data.image_size={cfg.image_size} but the pack's views are {recipe['image_size']} px")
    if cfg.views > recipe["views_per_set"]:
        raise ConfigError(f"data.views={cfg.views} but the pack stores {recipe['views_per_set']} views per sample")
    if cfg.rotation_augment:
        raise ConfigError("data.rotation_augment=true cannot rotate pre-encoded latents: train from the archive")


def _rng_seed(*parts: int) -> int:
    return zlib.crc32(json.dumps(parts).encode())


# ----------------------------------------------------------------------------------------------
# The stream
# ----------------------------------------------------------------------------------------------
class ShardStream(IterableDataset):
    """One rank's batches for one virtual epoch; build a new DataLoader per epoch (see `epoch_loader`)."""

    def __init__(
        self,
        data: TrainingData | list[str],
        cfg: DataConfig,
        kind: str,
        rank: int = 0,
        world_size: int = 1,
        state: StreamState | None = None,
    ):
        super().__init__()
        self.data = data if isinstance(data, TrainingData) else TrainingData.of_urls(data)
        # how samples decode: latents / vae_pack for packs, the task's kind for the archive
        self.kind = {"latents": "latents", "vae": "vae_pack"}.get(self.data.sample_kind, kind)
        self.recipe = self.data.pack.recipe if self.data.pack else None
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.state = state or StreamState()
        shards = self.data.shard_count
        if not cfg.resampled and shards < world_size * max(cfg.num_workers, 1):
            raise ConfigError(
                f"{shards} shards cannot be split over {world_size} ranks x {cfg.num_workers} workers "
                "without resampling: set data.resampled=true or write more shards"
            )

    def _worker(self) -> tuple[int, int]:
        """(logical worker, workers). The DataLoader reads its workers round-robin from worker 0, so
        batch i of an epoch is logical worker i % workers's; after a resume at batch k, physical
        worker p plays logical worker (p + k) % workers to keep that order."""
        info = get_worker_info()
        if info is None:
            return 0, 1
        return (info.id + self.state.batches_done) % info.num_workers, info.num_workers

    def _shards(self, worker: int, workers: int) -> Iterator[dict]:
        rng = random.Random(_rng_seed(self.cfg.seed, self.state.epoch, self.rank, worker))
        urls = self.data.urls(self.state.epoch)
        if self.cfg.resampled:
            while True:
                yield {"url": rng.choice(urls)}
        mine = urls[self.rank :: self.world_size][worker::workers]
        rng.shuffle(mine)
        yield from ({"url": u} for u in mine)

    def __iter__(self) -> Iterator[dict]:
        worker, workers = self._worker()
        seed = _rng_seed(self.cfg.seed, self.state.epoch, self.rank, worker)
        per_worker = self.cfg.epoch_samples // self.cfg.batch_size // workers
        skip = len(range(worker, self.state.batches_done, workers)) if self.state.batches_done else 0
        tracker = Tracker()
        files = wds.tariterators.tar_file_expander(
            open_shards(tracker.sources(self._shards(worker, workers)), tracker.on_unopened),
            handler=tracker.on_read_error,
            select_files=member_filter(self.kind, self.cfg.condition == "text"),
        )
        raw = wds.tariterators.group_by_keys(tracker.members(files), handler=tracker.on_read_error)
        raw = wds.filters._shuffle(raw, self.cfg.shuffle_buffer, min(self.cfg.shuffle_buffer, 32), random.Random(seed))
        batch, made = [], 0
        for sample in raw:
            if made < skip:  # already trained on: count it off without decoding
                batch.append(None)
            else:
                try:
                    batch.append(
                        decode_sample(
                            sample, self.cfg, self.kind, np.random.default_rng([seed, made, len(batch)]), self.recipe
                        )
                    )
                except Exception as exn:  # a damaged member: skip the sample, count it
                    tracker.on_lost_sample(sample, exn)
                    continue
            tracker.on_sample()
            if len(batch) == self.cfg.batch_size:
                if made >= skip:
                    out = collate(batch)
                    out["damage"] = tracker.report()
                    # the batch's own random stream (noise, timesteps, dropout): training randomness is a
                    # function of the data slot, so resumes and rank layouts reproduce it exactly
                    out["seed"] = torch.tensor(_rng_seed(seed, made))
                    out["worker"] = torch.tensor(worker)
                    yield out
                made, batch = made + 1, []
                if made >= per_worker:
                    break
        if tracker.pending():  # what the epoch's tail lost, in an item without data
            yield {"damage": tracker.report(), "worker": torch.tensor(worker)}


def epoch_loader(stream: ShardStream, pin_memory: bool = False, stop_delay_s: float = 10.0) -> DataLoader:
    """A DataLoader over the stream's current epoch (batches come ready-made from the workers);
    `pin_memory` for CUDA, so host-to-device copies run asynchronously."""
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=stream.cfg.num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=2 if stream.cfg.num_workers else None,
        worker_init_fn=functools.partial(stop.loader_worker_setup, stop_delay_s),
    )


class BatchIterator:
    """Endless batches across virtual epochs; `state` says where the stream is (checkpointed)."""

    def __init__(
        self, stream: ShardStream, pin_memory: bool = False, damage: Damage | None = None, stop_delay_s: float = 10.0
    ):
        self.stream, self.pin_memory, self.stop_delay_s = stream, pin_memory, stop_delay_s
        self._it: Iterator | None = None
        self.damage = damage or Damage()

    @property
    def state(self) -> StreamState:
        return self.stream.state

    def __next__(self) -> dict:
        delivered_before = self.state.batches_done
        while True:
            if self._it is None:
                self._it = iter(epoch_loader(self.stream, self.pin_memory, self.stop_delay_s))
            try:
                batch = next(self._it)
            except StopIteration:
                if self.state.batches_done == 0 and delivered_before == 0:
                    raise RuntimeError(
                        f"a whole epoch of {self.stream.data.shard_count} shard(s) gave no batch "
                        f"({self.damage.describe()}): are they valid?"
                    )
                delivered_before = 0
                self._it = None
                self.stream.state = StreamState(self.state.epoch + 1, 0)
                continue
            self.damage.add(batch.pop("damage"))
            if "seed" not in batch:  # a worker's last report, no data
                continue
            self.state.batches_done += 1
            batch.pop("worker")
            batch["seed"] = int(batch["seed"])
            return batch


class SlotBatches:
    """A rank's batches when gradients accumulate over `accum` micro-steps.

    The data is split into world_size x accum slots, each its own deterministic stream; rank r
    reads slots r*accum .. r*accum+accum-1 in turn. A global step therefore sees the same samples
    whether it runs as 1 rank x 2 micro-steps or 2 ranks x 1: loss curves can be compared exactly.
    """

    def __init__(
        self,
        data: TrainingData | list[str],
        cfg: DataConfig,
        kind: str,
        rank: int,
        world_size: int,
        accum: int,
        states: list[dict] | None = None,
        pin_memory: bool = False,
        stop_delay_s: float = 10.0,
    ):
        slots = world_size * accum
        if states is not None and len(states) != accum:
            states = None  # another world size or accumulation: start fresh streams (logged by the caller)
        self.restored = states is not None
        self.iters = [
            BatchIterator(
                ShardStream(data, cfg, kind, rank * accum + a, slots, _stream_state(states[a]) if states else None),
                pin_memory,
                Damage.of_state(states[a].get("damage")) if states else None,
                stop_delay_s,
            )
            for a in range(accum)
        ]
        self.next_slot = 0

    def __next__(self) -> dict:
        batch = next(self.iters[self.next_slot])
        self.next_slot = (self.next_slot + 1) % len(self.iters)
        return batch

    def state_dict(self) -> list[dict]:
        return [
            {"epoch": it.state.epoch, "batches_done": it.state.batches_done, "damage": it.damage.state()}
            for it in self.iters
        ]

    def close(self) -> None:
        """Shut the loaders' workers down (the DataLoader tells them to finish and joins them)."""
        for it in self.iters:
            it._it = None  # the iterator's only reference: CPython shuts its workers down now

    def damage_counts(self) -> tuple[int, int, int]:
        """(lost samples, damaged shards, unreadable shards) this rank met, each counted once."""
        counts = [it.damage.counts() for it in self.iters]
        return tuple(sum(c[i] for c in counts) for i in range(3))


def _stream_state(saved: dict) -> StreamState:
    return StreamState(saved["epoch"], saved["batches_done"])
