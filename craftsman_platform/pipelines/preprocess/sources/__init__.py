"""Where objects come from: a folder, a list file of paths / fsspec URLs, Objaverse 1.0, Objaverse-XL.

A source lists its objects as Arrow record batches of `LISTING_SCHEMA` (pipelines/preprocess/
listing.py spools, deduplicates and orders them in bounded memory); the task slots turn each row
into an `ObjectRef` and fetch it themselves (fetch.py, github.py): nothing is fetched on the driver
but the small index files. Every uid is sanitised: [A-Za-z0-9_-] only, so it is safe as a file name
and as a WebDataset key (which reserves dots), and cannot escape a folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterator, Optional

import pyarrow as pa

from craftsman_platform.pipelines.preprocess.config import SourceConfig

LISTING_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("source", pa.string()),  # the path or URL the listing names (Objaverse-XL: fileIdentifier)
        ("url", pa.string()),  # what a task slot fetches, where it is not `source` itself
        ("cached", pa.string()),  # a copy to use where the node has it (the Objaverse cache)
        ("origin", pa.string()),  # folder, list, objaverse, github, sketchfab, smithsonian, thingiverse
        ("listed_sha256", pa.string()),  # the content's hash as listed (Objaverse-XL), else null
        ("license", pa.string()),
        ("file_type", pa.string()),
        ("group", pa.string()),  # objects fetched together (a GitHub repository at a commit), else null
        ("annotations", pa.string()),  # JSON carried into meta.json, else null
        ("captions", pa.string()),  # JSON list of captions (joined from source.captions by the listing), else null
    ]
)


class TransientError(Exception):
    """A failure worth retrying (network, remote storage); anything else is final."""


@dataclass(frozen=True)
class ObjectRef:
    uid: str
    source: str  # absolute local path or URL (Objaverse-XL: its fileIdentifier)
    annotations: dict = field(default_factory=dict, compare=False, hash=False)
    cached: Optional[str] = field(default=None, compare=False)  # a local copy to use where the node has it
    url: Optional[str] = None  # what to fetch, where it is not `source`
    origin: str = "list"
    listed_sha256: Optional[str] = None  # the fetched file must hash to this
    file_type: Optional[str] = None  # the file's format where the URL does not say (e.g. "stl")
    group: Optional[str] = None  # fetched with the other objects of its group (one clone)
    last_in_group: bool = False  # its group's clone can go once it is done
    captions: tuple[str, ...] = ()  # from source.captions

    @classmethod
    def from_row(cls, row: dict, last_in_group: bool = False) -> "ObjectRef":
        """The object of a listing row (a dict of LISTING_SCHEMA's columns)."""
        return cls(
            row["uid"],
            row["source"],
            json.loads(row["annotations"]) if row.get("annotations") else {},
            row.get("cached"),
            row.get("url"),
            row.get("origin") or "list",
            row.get("listed_sha256"),
            row.get("file_type"),
            row.get("group"),
            last_in_group,
            tuple(json.loads(row["captions"])) if row.get("captions") else (),
        )


def listing_batch(columns: dict[str, list], n: int | None = None, arrays: dict[str, pa.Array] | None = None
                  ) -> pa.RecordBatch:  # fmt: skip
    """A record batch of LISTING_SCHEMA from lists or arrays (absent columns are null)."""
    given = {**{k: pa.array(v, pa.string()) for k, v in columns.items()}, **(arrays or {})}
    n = len(columns["uid"]) if n is None else n
    return pa.RecordBatch.from_arrays([given.get(f.name, pa.nulls(n, f.type)) for f in LISTING_SCHEMA],
                                      schema=LISTING_SCHEMA)  # fmt: skip


@dataclass
class Listed:
    """What a source lists: its batches (read once), an estimate of their rows, and counts the
    source kept while filtering (`stats`: {origin: {"read": n, "filtered": n}})."""

    batches: Iterator[pa.RecordBatch]
    estimate: int
    stats: dict = field(default_factory=dict)


def list_source(src: SourceConfig) -> Listed:
    """The objects `src` names, by its kind."""
    from pathlib import Path

    from craftsman_platform.pipelines.preprocess.sources import local, objaverse, objaverse_xl

    kind = src.kind
    if kind == "auto":
        kind = "folder" if Path(src.path).is_dir() else "list"
    if kind == "folder":
        return local.folder_listing(src.path)
    if kind == "list":
        return local.list_file_listing(src.path)
    if kind == "objaverse":
        return objaverse.objaverse_listing(src)
    return objaverse_xl.xl_listing(src)
