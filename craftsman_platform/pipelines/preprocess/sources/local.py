"""Local folders and list files of paths / fsspec URLs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from craftsman_platform.errors import MissingInput
from craftsman_platform.geometry.mesh_io import SUPPORTED_SUFFIXES
from craftsman_platform.pipelines.preprocess.sources import Listed, listing_batch
from craftsman_platform.shapedata.sample import sanitize_uid

BATCH = 50_000


def folder_listing(root: str | Path) -> Listed:
    """Every supported mesh below `root` (recursive, in path order), uid from its path relative to root."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise MissingInput(f"source.path={root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)

    def batches() -> Iterator[pa.RecordBatch]:
        for i in range(0, len(files), BATCH):
            chunk = files[i : i + BATCH]
            uids = [sanitize_uid(str(p.relative_to(root))) for p in chunk]
            yield listing_batch({"uid": uids, "source": [str(p) for p in chunk], "origin": ["folder"] * len(chunk)})

    return Listed(batches(), len(files))


def list_file_items(list_path: str | Path) -> Iterator[str]:
    """One local path or fsspec URL (s3://, gs://, https://, ...) per line; '#' starts a comment.
    Relative paths are taken from the list file's folder."""
    base = Path(list_path).absolute().parent
    with open(list_path) as fh:
        for line in fh:
            item = line.split("#", 1)[0].strip()
            if item:
                yield item if "://" in item else os.path.normpath(base / item)


def list_file_listing(list_path: str | Path) -> Listed:
    """The list file's items in its order. Local paths get uids from their path relative to the common
    folder of the listed files, so names stay short and readable wherever the data lives; URLs get
    theirs from the whole URL. Two streaming reads: the first finds that folder."""
    common, count = None, 0
    for item in list_file_items(list_path):
        count += 1
        if "://" not in item:
            folder = os.path.dirname(item)
            common = folder if common is None else os.path.commonpath([common, folder])

    def uid(item: str) -> str:
        return sanitize_uid(item if "://" in item else os.path.relpath(item, common))

    def batches() -> Iterator[pa.RecordBatch]:
        chunk: list[str] = []
        for item in list_file_items(list_path):
            chunk.append(item)
            if len(chunk) == BATCH:
                yield listing_batch({"uid": [uid(i) for i in chunk], "source": chunk, "origin": ["list"] * len(chunk)})
                chunk = []
        if chunk:
            yield listing_batch({"uid": [uid(i) for i in chunk], "source": chunk, "origin": ["list"] * len(chunk)})

    return Listed(batches(), count)
