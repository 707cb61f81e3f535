"""Where objects come from: a local folder, a list file of paths / fsspec URLs, or Objaverse 1.0.

Every source yields `ObjectRef`s with a sanitised uid: [A-Za-z0-9_-] only, so it is safe as a
file name and as a WebDataset key (which reserves dots), and cannot escape a folder.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from craftsman_platform.errors import ConfigError, MissingInput
from craftsman_platform.geometry.mesh_io import SUPPORTED_SUFFIXES
from craftsman_platform.shapedata.sample import sanitize_uid

log = logging.getLogger(__name__)
_OBJAVERSE_UID = re.compile(r"^[0-9a-f]{32}$")


class TransientError(Exception):
    """A failure worth retrying (network, remote storage); anything else is final."""


@dataclass(frozen=True)
class ObjectRef:
    uid: str
    source: str  # absolute local path or URL
    annotations: dict = field(default_factory=dict, compare=False, hash=False)
    cached: Optional[str] = field(default=None, compare=False)  # a local copy to use where the node has it


# ---------------------------------------------------------------------------------------------
# Local folders and list files
# ---------------------------------------------------------------------------------------------


def folder_objects(root: str | Path) -> list[ObjectRef]:
    """Every supported mesh below `root` (recursive), uid from its path relative to root."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise MissingInput(f"source.path={root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
    return [ObjectRef(sanitize_uid(str(p.relative_to(root))), str(p)) for p in files]


def list_file_objects(list_path: str | Path) -> list[ObjectRef]:
    """One local path or fsspec URL (s3://, gs://, https://, ...) per line; '#' starts a comment.

    Local paths (relative ones from the list file's folder) get uids from their path relative to
    the common folder of the listed files, so names stay short and readable wherever the data
    lives; URLs get theirs from the whole URL."""
    base = Path(list_path).absolute().parent
    items = []
    for line in Path(list_path).read_text().splitlines():
        item = line.split("#", 1)[0].strip()
        if item:
            items.append(item if "://" in item else os.path.normpath(base / item))
    local = [i for i in items if "://" not in i]
    common = os.path.commonpath([os.path.dirname(i) for i in local]) if local else ""
    return [ObjectRef(sanitize_uid(i if "://" in i else os.path.relpath(i, common)), i) for i in items]


@contextmanager
def local_copy(source: str, cached: str | None = None) -> Iterator[Path]:
    """A local path for the object: itself if local, the node's cached copy where it has one, else a
    download through fsspec into node-local temporary space, deleted afterwards."""
    if "://" not in source or source.startswith("file://"):
        yield Path(source.removeprefix("file://"))
        return
    if cached and os.path.isfile(cached):
        yield Path(cached)
        return
    import fsspec

    tmp = Path(tempfile.mkdtemp(prefix="craft-fetch-"))
    try:
        target = tmp / ("object" + Path(source.split("?", 1)[0]).suffix.lower())
        try:
            with fsspec.open(source, "rb") as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
        except Exception as e:  # noqa: BLE001 - classified: network trouble is retried, the rest is final
            if _is_transient(e):
                raise TransientError(f"fetching {source}: {_root_cause(e)}") from e
            raise
        yield target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _chain(error: BaseException):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


_NETWORK_WORDS = re.compile(r"Connect|Timeout|DNS|Unreachable|Temporar|ServerDisconnected")


def _http_status(error: BaseException):
    status = getattr(error, "status", None) or getattr(error, "status_code", None)
    return status if isinstance(status, int) else None


def _is_transient(error: BaseException) -> bool:
    """Network trouble anywhere in the chain: refused or reset connections, DNS failures, timeouts,
    HTTP 5xx / 408 / 429 (fsspec's HTTP filesystem reports some of these as FileNotFoundError,
    with the network error as its cause). Only a definite "not found" or "denied" is final."""
    for e in _chain(error):
        if isinstance(e, (ConnectionError, TimeoutError, socket.gaierror)):
            return True
        status = _http_status(e)
        if status is not None and (status >= 500 or status in (408, 429)):
            return True
        if _NETWORK_WORDS.search(type(e).__name__):  # aiohttp, botocore, gcsfs client errors
            return True
    return isinstance(error, OSError) and not isinstance(error, (FileNotFoundError, PermissionError))


def _root_cause(error: BaseException) -> str:
    last = list(_chain(error))[-1]
    return f"{type(last).__name__}: {last}"


# ---------------------------------------------------------------------------------------------
# Objaverse 1.0 (through the `objaverse` package and its cache layout)
# ---------------------------------------------------------------------------------------------


OBJAVERSE_URL = "https://huggingface.co/datasets/allenai/objaverse/resolve/main"


@contextmanager
def _objaverse_cache(cache_dir: str | None):
    """Point the objaverse package at `cache_dir` (its BASE_PATH) for the duration."""
    import objaverse

    saved = (objaverse.BASE_PATH, objaverse._VERSIONED_PATH)
    if cache_dir:
        objaverse.BASE_PATH = str(Path(cache_dir).expanduser())
        objaverse._VERSIONED_PATH = str(Path(objaverse.BASE_PATH) / "hf-objaverse-v1")
    try:
        yield objaverse
    finally:
        objaverse.BASE_PATH, objaverse._VERSIONED_PATH = saved


def objaverse_objects(
    uids: list[str] | None,
    lvis_categories: list[str] | None,
    cache_dir: str | None,
    annotations: bool = True,
    limit: int | None = None,
    base_url: str = OBJAVERSE_URL,
) -> list[ObjectRef]:
    """Objaverse 1.0 objects by uid and/or LVIS category, as download URLs: no GLB is fetched here.

    Only the small index files (object-paths, LVIS lists, annotations) are read on the driver,
    from the package's cache or Hugging Face. Each task fetches the GLB it processes (retrying
    network errors) into node-local temporary space, or uses the file where that node's
    `cache_dir` already holds it.
    """
    with _objaverse_cache(cache_dir) as objaverse:
        selected = list(uids or [])
        category: dict[str, str] = {}  # uid -> LVIS category, when categories were asked for
        if lvis_categories:
            lvis = objaverse.load_lvis_annotations()
            unknown = sorted(set(lvis_categories) - set(lvis))
            if unknown:
                raise ConfigError(f"source.lvis_categories: unknown LVIS categories {unknown}")
            in_cats = [u for c in lvis_categories for u in lvis[c]]
            category = {u: c for c in lvis_categories for u in lvis[c]}
            selected = [u for u in selected if u in set(in_cats)] if uids else in_cats
        paths = objaverse._load_object_paths()  # uid -> glbs/000-023/UID.glb (the package's own index)
        if not selected:
            selected = list(paths)
        bad = [u for u in selected if not _OBJAVERSE_UID.match(u)]
        if bad:
            raise ConfigError(f"source.uids: not Objaverse uids (32 hex digits): {bad[:5]}")
        selected = list(dict.fromkeys(selected))[:limit]
        missing = [u for u in selected if u not in paths]
        if missing:
            log.warning("objaverse: %d uids are unknown to object-paths and are skipped: %s", len(missing), missing[:5])
        selected = [u for u in selected if u in paths]
        meta = objaverse.load_annotations(selected) if annotations and selected else {}
        cache = Path(objaverse._VERSIONED_PATH)
    return [
        ObjectRef(
            uid,
            f"{base_url.rstrip('/')}/{paths[uid]}",
            {**_annotation_summary(meta.get(uid)), **({"lvis_category": category[uid]} if uid in category else {})},
            str(cache / paths[uid]),
        )
        for uid in selected
    ]


def _annotation_summary(meta: dict | None) -> dict:
    """The annotation fields worth carrying into every sample (the full record is large)."""
    if not meta:
        return {}
    keep = ("name", "license", "uri", "viewerUrl", "faceCount", "vertexCount", "animationCount")
    out = {k: meta[k] for k in keep if k in meta}
    out["tags"] = [t.get("name") for t in meta.get("tags", []) if isinstance(t, dict)]
    out["categories"] = [c.get("name") for c in meta.get("categories", []) if isinstance(c, dict)]
    return out
