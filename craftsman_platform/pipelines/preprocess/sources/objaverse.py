"""Objaverse 1.0 through the `objaverse` package and its cache layout: only its index files are read
on the driver; each task slot fetches the GLB it processes (or uses the node's cached copy)."""

from __future__ import annotations

import json
import logging
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from craftsman_platform.errors import ConfigError
from craftsman_platform.pipelines.preprocess.config import OBJAVERSE_URL, SourceConfig
from craftsman_platform.pipelines.preprocess.sources import Listed, listing_batch
from craftsman_platform.pipelines.preprocess.sources.hub import hub_errors

log = logging.getLogger("craft.preprocess")
OBJAVERSE_UID = re.compile(r"^[0-9a-f]{32}$")
BATCH = 50_000


@contextmanager
def objaverse_cache(cache_dir: str | None):
    """The objaverse package pointed at `cache_dir` (its BASE_PATH) for the duration."""
    import objaverse

    saved = (objaverse.BASE_PATH, objaverse._VERSIONED_PATH)
    if cache_dir:
        objaverse.BASE_PATH = str(Path(cache_dir).expanduser())
        objaverse._VERSIONED_PATH = str(Path(objaverse.BASE_PATH) / "hf-objaverse-v1")
    try:
        yield objaverse
    finally:
        objaverse.BASE_PATH, objaverse._VERSIONED_PATH = saved


def object_paths(objaverse) -> dict[str, str]:
    """uid -> glbs/000-023/UID.glb, the package's own index (downloaded into its cache if absent)."""
    with hub_errors("Objaverse's object paths", f"{OBJAVERSE_URL}/object-paths.json.gz",
                    Path(objaverse._VERSIONED_PATH) / "object-paths.json.gz"):  # fmt: skip
        return objaverse._load_object_paths()


def objaverse_listing(src: SourceConfig) -> Listed:
    """Objaverse 1.0 objects by uid and/or LVIS category, as download URLs: no GLB is fetched here."""
    with objaverse_cache(src.cache_dir) as objaverse:
        versioned = Path(objaverse._VERSIONED_PATH)
        selected = list(src.uids or [])
        category: dict[str, str] = {}  # uid -> LVIS category, when categories were asked for
        if src.lvis_categories:
            with hub_errors("Objaverse's LVIS annotations", f"{OBJAVERSE_URL}/lvis-annotations.json.gz",
                            versioned / "lvis-annotations.json.gz"):  # fmt: skip
                lvis = objaverse.load_lvis_annotations()
            unknown = sorted(set(src.lvis_categories) - set(lvis))
            if unknown:
                raise ConfigError(f"source.lvis_categories: unknown LVIS categories {unknown}")
            category = {u: c for c in src.lvis_categories for u in lvis[c]}
            in_cats = list(category)
            selected = [u for u in selected if u in category] if src.uids else in_cats
        paths = object_paths(objaverse)
        if not selected:
            selected = list(paths)
        bad = [u for u in selected if not OBJAVERSE_UID.match(u)]
        if bad:
            raise ConfigError(f"source.uids: not Objaverse uids (32 hex digits): {bad[:5]}")
        selected = list(dict.fromkeys(selected))[: src.limit]
        missing = [u for u in selected if u not in paths]
        if missing:
            log.warning("objaverse: %d uids are unknown to object-paths and are skipped: %s", len(missing), missing[:5])
        selected = [u for u in selected if u in paths]
        meta = {}
        if src.annotations and selected:
            with hub_errors("Objaverse's annotations (metadata/*.json.gz)", f"{OBJAVERSE_URL}/metadata/",
                            versioned / "metadata"):  # fmt: skip
                meta = objaverse.load_annotations(selected)
    base = src.base_url.rstrip("/")

    def batches() -> Iterator[pa.RecordBatch]:
        for i in range(0, len(selected), BATCH):
            chunk = selected[i : i + BATCH]
            notes = [{**annotation_summary(meta.get(u)), **({"lvis_category": category[u]} if u in category else {})}
                     for u in chunk]  # fmt: skip
            yield listing_batch({
                "uid": chunk,
                "source": [f"{base}/{paths[u]}" for u in chunk],
                "cached": [str(versioned / paths[u]) for u in chunk],
                "origin": ["objaverse"] * len(chunk),
                "license": [n.get("license") for n in notes],
                "annotations": [json.dumps(n) if n else None for n in notes],
            })  # fmt: skip

    return Listed(batches(), len(selected))


def annotation_summary(meta: dict | None) -> dict:
    """The annotation fields worth carrying into every sample (the full record is large)."""
    if not meta:
        return {}
    keep = ("name", "license", "uri", "viewerUrl", "faceCount", "vertexCount", "animationCount")
    out = {k: meta[k] for k in keep if k in meta}
    out["tags"] = [t.get("name") for t in meta.get("tags", []) if isinstance(t, dict)]
    out["categories"] = [c.get("name") for c in meta.get("categories", []) if isinstance(c, dict)]
    return out
