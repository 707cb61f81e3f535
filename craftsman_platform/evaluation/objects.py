"""Held-out objects from shards, read like training reads them: an unreadable shard or sample is
skipped, counted and logged, and the evaluation goes on. A pack is scored on the whole objects of
the archive it was made from (its points and views are training data, not ground truth)."""

from __future__ import annotations

import logging
from typing import Iterator, Optional

import numpy as np
import webdataset as wds

from craftsman_platform.shapedata.captions import decode_captions
from craftsman_platform.shapedata.pack import open_pack, pack_root
from craftsman_platform.shapedata.sample import (
    CAMERAS,
    CAPTIONS,
    NEAR,
    SURFACE,
    VOL,
    expand_urls,
    open_shards,
    read_npy,
    view_member,
)
from craftsman_platform.shapedata.views import SET_SIZE

log = logging.getLogger("craft.evaluate")
REQUIRED = (SURFACE, VOL, NEAR)


class ObjectReader:
    """Iterates a shard glob's samples in order; `skipped` counts what could not be read."""

    def __init__(self, shards: str, max_objects: Optional[int] = None, views: bool = False, captions: bool = False):
        root = pack_root(shards)
        self.keep: set[str] | None = None  # a pack: its objects, read whole from the archive it came from
        if root is None:
            self.urls = expand_urls(shards)
        else:
            pack = open_pack(root)
            self.urls, self.keep = pack.archive_urls(), pack.uids()
            log.info("%s is a %s pack: scoring its %d objects on the archive's shards", root, pack.kind, len(self.keep))
        self.max_objects, self.views, self.captions = max_objects, views, captions
        self.skipped = 0
        self.uncaptioned = 0  # objects without captions, left out when `captions` (a text checkpoint's evaluation)

    def _skip(self, exn: Exception) -> bool:
        self.skipped += 1
        log.warning("skipped an unreadable shard or sample: %s", exn)
        return True

    def _check(self, sample: dict) -> dict:
        """The sample with its arrays decoded, or an error naming what is missing or damaged."""
        needed = REQUIRED + ((CAMERAS, *(view_member(i) for i in range(SET_SIZE))) if self.views else ())
        missing = [m for m in needed if m not in sample]
        if missing:
            raise ValueError(f"{sample.get('__key__')}: no {', '.join(missing)}")
        for key in REQUIRED:
            sample[key.removesuffix(".npy")] = read_npy(sample[key]).astype(np.float32)
        return sample

    def __iter__(self) -> Iterator[dict]:
        files = wds.tariterators.tar_file_expander(open_shards(({"url": u} for u in self.urls), self._skip), self._skip)
        count = 0
        for raw in wds.tariterators.group_by_keys(files, handler=self._skip):
            if self.max_objects is not None and count >= self.max_objects:
                return
            if self.keep is not None and raw.get("__key__") not in self.keep:
                continue
            if self.captions and not decode_captions(raw.get(CAPTIONS)):
                self.uncaptioned += 1
                continue
            try:
                sample = self._check(raw)
            except Exception as exn:  # a damaged member: skip the object, count it
                self._skip(exn)
                continue
            count += 1
            yield sample

    def batches(self, size: int) -> Iterator[list[dict]]:
        batch: list[dict] = []
        for sample in self:
            batch.append(sample)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch
