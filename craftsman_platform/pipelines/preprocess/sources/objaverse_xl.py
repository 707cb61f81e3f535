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
from craftsman_platform.pipelines.preprocess.sources.objaverse import objaverse_cache, object_paths

log = logging.getLogger("craft.preprocess")
COLUMNS = ["fileIdentifier", "license", "fileType", "sha256", "metadata"]
ALIGNMENT_SOURCES = ("github", "sketchfab")  # the package has alignment files for these only
BATCH = 65_536
# organisation / repository (no leading dot: never "." or "..") / blob / commit / path in the repository
_GITHUB = re.compile(r"^https://github\.com/(\w[\w.-]*)/(\w[\w.-]*)/blob/([0-9a-f]{7,40})/(.+)$", re.ASCII)
_GITHUB_RE2 = r"^https://github\.com/(?P<org>\w[\w.-]*)/(?P<repo>\w[\w.-]*)/blob/(?P<commit>[0-9a-f]{7,40})/.+$"


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
            try:
                estimate += pq.ParquetFile(fh).metadata.num_rows
            except pa.ArrowException as err:
                raise ConfigError(f"{path}: not a parquet file ({err}); delete it to download it again") from None
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
                rows = _rows(source, batch.filter(pc.fill_null(keep, False)), src, paths)
                stats[source]["filtered"] += batch.num_rows - rows.num_rows
                if rows.num_rows:
                    yield rows


def _rows(source: str, batch: pa.RecordBatch, src: SourceConfig, paths: tuple | None) -> pa.RecordBatch:
    """Listing rows of annotation rows, column-wise; rows no slot could fetch (an identifier of the
    wrong shape, a Sketchfab uid unknown to Objaverse's object paths) are left out."""
    fid = batch.column("fileIdentifier")
    n = len(fid)
    cols = {"source": fid, "listed_sha256": _lower(batch.column("sha256")), "license": batch.column("license"),
            "file_type": _lower(batch.column("fileType")), "origin": pa.array([source] * n, pa.string())}  # fmt: skip
    valid = pa.array([True] * n)
    if source == "sketchfab":
        uid = pc.replace_substring_regex(fid, r"^.*/", "")
        keys, values, cache = paths
        at = pc.index_in(uid, value_set=keys)
        valid = pc.and_(pc.match_substring_regex(uid, "^[0-9a-f]{32}$"), pc.is_valid(at))
        rel = pc.take(values, at)
        cols["url"] = pc.binary_join_element_wise(src.base_url.rstrip("/"), rel, "/")
        cols["cached"] = pc.binary_join_element_wise(cache, rel, "/")
    else:
        uid = pa.array([f"{source}-{hashlib.blake2b(f.encode(), digest_size=12).hexdigest()}" for f in fid.to_pylist()])
        if source == "github":
            parts = pc.extract_regex(fid, _GITHUB_RE2)
            valid = pc.is_valid(parts)
            cols["group"] = pc.binary_join_element_wise(parts.field("org"), "/", parts.field("repo"), "@",
                                                        parts.field("commit"), "")  # fmt: skip
        elif source == "thingiverse":
            file_id = pc.replace_substring_regex(fid, r"^.*fileId=", "")
            cols["url"] = pc.binary_join_element_wise(f"{src.thingiverse_url.rstrip('/')}/download:", file_id, "")
    cols["uid"] = uid
    cols["annotations"] = _annotations(batch.column("license"), batch.column("metadata"), src.annotations)
    table = listing_batch({}, n, cols)
    return table.filter(pc.fill_null(valid, False))


def _lower(values: pa.Array) -> pa.Array:
    """Lowercase, empty strings as null."""
    lowered = pc.utf8_lower(values)
    return pc.if_else(pc.equal(lowered, ""), pa.scalar(None, pa.string()), lowered)


def _annotations(licenses: pa.Array, metadata: pa.Array, with_metadata: bool) -> pa.Array:
    """{"license", **metadata} per row as JSON; rows without metadata share one string per license."""
    common: dict = {}
    out = []
    for lic, meta in zip(licenses.to_pylist(), metadata.to_pylist() if with_metadata else [None] * len(licenses)):
        if not meta or meta == "{}":
            if lic not in common:
                common[lic] = json.dumps({"license": lic})
            out.append(common[lic])
        else:
            out.append(json.dumps({"license": lic, **_metadata(meta)}))
    return pa.array(out, pa.string())


def _metadata(text) -> dict:
    """An annotation row's `metadata` (a JSON object as a string; other shapes are kept as text)."""
    if not text:
        return {}
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return {"metadata": str(text)[:1000]}
    return value if isinstance(value, dict) else {"metadata": value}


def _sketchfab_paths(src: SourceConfig) -> tuple[pa.Array, pa.Array, str]:
    """Objaverse 1.0's object paths (uids, paths) and its cache folder: XL's Sketchfab objects are its GLBs."""
    with objaverse_cache(src.cache_dir) as objaverse:
        paths = object_paths(objaverse)
        cache = str(Path(objaverse._VERSIONED_PATH))
    return pa.array(list(paths), pa.string()), pa.array(list(paths.values()), pa.string()), cache


def parse_github(file_identifier: str) -> tuple[str, str, str, str]:
    """(organisation, repository, commit, path in the repository) of a GitHub fileIdentifier."""
    match = _GITHUB.match(file_identifier)
    if not match:
        raise ValueError(f"not a GitHub fileIdentifier: {file_identifier}")
    return match.group(1), match.group(2), match.group(3), match.group(4)
