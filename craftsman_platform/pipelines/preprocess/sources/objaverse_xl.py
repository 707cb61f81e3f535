"""Objaverse-XL: ~10M objects from GitHub, Thingiverse, Sketchfab and the Smithsonian, listed from
the `objaverse.xl` package's annotation files (fileIdentifier, source, license, fileType, sha256,
metadata), in its cache layout: CACHE/<source>/<source>.parquet, CACHE/<source>/alignment.parquet.

Why not `objaverse.xl.get_annotations()`: it loads each file whole into pandas (GitHub's millions of
rows as Python strings: several GB on the driver); here the same files are read batch by batch with
pyarrow, filtered as they stream, and nothing per object stays in memory (listing.py spools it).

Each row becomes an object the task slots fetch themselves: Sketchfab objects as Objaverse 1.0 GLBs
(`source.base_url`, the package's object paths), Smithsonian ones at their URL, Thingiverse ones
from its download endpoint, GitHub ones from a shallow clone of their repository at the listed
commit, one clone per group of objects (github.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from craftsman_platform.errors import ConfigError
from craftsman_platform.pipelines.preprocess.config import XL_SOURCES, SourceConfig
from craftsman_platform.pipelines.preprocess.sources import Listed, listing_batch
from craftsman_platform.pipelines.preprocess.sources.hub import cached_file
from craftsman_platform.pipelines.preprocess.sources.objaverse import OBJAVERSE_UID, objaverse_cache, object_paths

log = logging.getLogger("craft.preprocess")
COLUMNS = ["fileIdentifier", "license", "fileType", "sha256", "metadata"]
ALIGNMENT_SOURCES = ("github", "sketchfab")  # the package has alignment files for these only
BATCH = 65_536
# organisation / repository (no leading dot: never "." or "..") / blob / commit / path in the repository
_GITHUB = re.compile(r"^https://github\.com/(\w[\w.-]*)/(\w[\w.-]*)/blob/([0-9a-f]{7,40})/(.+)$", re.ASCII)


def annotation_path(cache_dir: str | None, source: str, alignment: bool) -> Path:
    """Where the objaverse package keeps a source's annotations (its `download_dir` layout)."""
    root = Path(cache_dir or "~/.objaverse").expanduser()
    return root / source / ("alignment.parquet" if alignment else f"{source}.parquet")


def validate_xl(src: SourceConfig) -> None:
    unknown = sorted(set(src.xl_sources) - set(XL_SOURCES))
    if unknown or not src.xl_sources:
        raise ConfigError(f"source.xl_sources={list(src.xl_sources)}: expected some of {', '.join(XL_SOURCES)}")
    if src.group_max < 1:
        raise ConfigError(f"source.group_max must be >= 1, got {src.group_max}")


def xl_listing(src: SourceConfig) -> Listed:
    """The rows of every chosen source's annotations that pass the filters, sources in the order of
    `source.xl_sources` (the order in which copies of one content are kept)."""
    validate_xl(src)
    sources = [s for s in src.xl_sources if not src.alignment or s in ALIGNMENT_SOURCES]
    files = {}
    for source in sources:  # every file is in place (or fetched) before the first row is listed
        path = annotation_path(src.cache_dir, source, src.alignment)
        url = f"{src.xl_url.rstrip('/')}/{source}/{path.name}"
        files[source] = cached_file(url, path, f"the Objaverse-XL {source} annotations")
    estimate = 0
    for path in files.values():
        with path.open("rb") as fh:
            estimate += pq.ParquetFile(fh).metadata.num_rows
    stats = {s: {"read": 0, "filtered": 0} for s in sources}
    return Listed(_batches(src, files, stats), estimate, stats)


def _batches(src: SourceConfig, files: dict[str, Path], stats: dict) -> Iterator[pa.RecordBatch]:
    types = pa.array([t.lower() for t in src.file_types]) if src.file_types else None
    licenses = pa.array(list(src.licenses)) if src.licenses else None
    for source, path in files.items():
        paths = _sketchfab_paths(src) if source == "sketchfab" else None
        with path.open("rb") as fh:
            pf = pq.ParquetFile(fh, pre_buffer=False, buffer_size=1 << 20)  # memory stays flat across batches
            missing = sorted(set(COLUMNS) - set(pf.schema_arrow.names))
            if missing:
                raise ConfigError(f"{path}: not Objaverse-XL annotations (no column {', '.join(missing)})")
            for batch in pf.iter_batches(batch_size=BATCH, columns=COLUMNS):
                stats[source]["read"] += batch.num_rows
                keep = pc.is_valid(batch.column("fileIdentifier"))
                if types is not None:
                    keep = pc.and_(keep, pc.is_in(pc.utf8_lower(batch.column("fileType")), value_set=types))
                if licenses is not None:
                    keep = pc.and_(keep, pc.is_in(batch.column("license"), value_set=licenses))
                kept = batch.filter(pc.fill_null(keep, False))
                rows = _rows(source, kept.to_pydict(), src, paths)
                stats[source]["filtered"] += batch.num_rows - len(rows["uid"])
                if rows["uid"]:
                    yield listing_batch(rows)


def _rows(source: str, cols: dict[str, list], src: SourceConfig, paths: dict[str, str] | None) -> dict[str, list]:
    """Listing columns of annotation rows; rows no slot could fetch (an identifier of the wrong shape,
    a Sketchfab uid unknown to Objaverse's object paths) are left out."""
    out: dict[str, list] = {k: [] for k in ("uid", "source", "url", "cached", "group", "listed_sha256",
                                             "license", "file_type", "annotations")}  # fmt: skip
    cache = Path(src.cache_dir or "~/.objaverse").expanduser() / "hf-objaverse-v1"
    for fid, lic, ftype, sha, meta in zip(*(cols[c] for c in COLUMNS)):
        url = cached = group = None
        if source == "sketchfab":
            uid = fid.rstrip("/").rsplit("/", 1)[-1]
            if not OBJAVERSE_UID.match(uid) or uid not in paths:
                continue
            url, cached = f"{src.base_url.rstrip('/')}/{paths[uid]}", str(cache / paths[uid])
        else:
            uid = f"{source}-{hashlib.blake2b(fid.encode(), digest_size=12).hexdigest()}"
            if source == "github":
                match = _GITHUB.match(fid)
                if not match:
                    continue
                group = f"{match.group(1)}/{match.group(2)}@{match.group(3)}"
            elif source == "thingiverse":
                url = f"{src.thingiverse_url.rstrip('/')}/download:{fid.split('fileId=')[-1]}"
        note = {"license": lic, **_metadata(meta)} if src.annotations else {"license": lic}
        values = (uid, fid, url, cached, group, (sha or "").lower() or None, lic, (ftype or "").lower() or None,
                  json.dumps(note))  # fmt: skip
        for key, value in zip(out, values):
            out[key].append(value)
    out["origin"] = [source] * len(out["uid"])
    return out


def _metadata(text) -> dict:
    """An annotation row's `metadata` (a JSON object as a string; other shapes are kept as text)."""
    if not text:
        return {}
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return {"metadata": str(text)[:1000]}
    return value if isinstance(value, dict) else {"metadata": value}


def _sketchfab_paths(src: SourceConfig) -> dict[str, str]:
    """Objaverse 1.0's object paths: XL's Sketchfab objects are its GLBs."""
    with objaverse_cache(src.cache_dir) as objaverse:
        return object_paths(objaverse)


def parse_github(file_identifier: str) -> tuple[str, str, str, str]:
    """(organisation, repository, commit, path in the repository) of a GitHub fileIdentifier."""
    match = _GITHUB.match(file_identifier)
    if not match:
        raise ValueError(f"not a GitHub fileIdentifier: {file_identifier}")
    return match.group(1), match.group(2), match.group(3), match.group(4)
