"""Fetching an object in its task slot: a local path as it is, the node's cached copy where it has
one, a URL through fsspec into node-local temporary space, a GitHub object from its repository's
clone (github.py). Network trouble is a `TransientError` (the driver retries it); the rest is final."""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from craftsman_platform.geometry.mesh_io import SUPPORTED_SUFFIXES
from craftsman_platform.pipelines.preprocess.config import SourceConfig
from craftsman_platform.pipelines.preprocess.sources import ObjectRef, TransientError


@contextmanager
def fetched(ref: ObjectRef, src: SourceConfig, timeout_s: float) -> Iterator[Path]:
    """A local path holding the object's file, removed afterwards where it was a download."""
    if ref.origin == "github":
        from craftsman_platform.pipelines.preprocess.sources import github

        with github.checkout(ref, src.github_url, timeout_s) as path:
            yield path
        return
    suffix = f".{ref.file_type}" if ref.file_type else None
    with local_copy(ref.url or ref.source, ref.cached, suffix) as path:
        yield path


@contextmanager
def local_copy(source: str, cached: str | None = None, suffix: str | None = None) -> Iterator[Path]:
    """A local path for the object: itself if local, the node's cached copy where it has one, else a
    download through fsspec into node-local temporary space, deleted afterwards. `suffix`: the
    file's extension where the URL does not end with a mesh format's (Thingiverse's download:N)."""
    if "://" not in source or source.startswith("file://"):
        yield Path(source.removeprefix("file://"))
        return
    if cached and os.path.isfile(cached):
        yield Path(cached)
        return
    import fsspec

    tmp = Path(tempfile.mkdtemp(prefix="craft-fetch-"))
    try:
        own = Path(source.split("?", 1)[0]).suffix.lower()
        target = tmp / ("object" + (own if own in SUPPORTED_SUFFIXES or not suffix else suffix.lower()))
        try:
            with fsspec.open(source, "rb") as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
        except Exception as e:  # noqa: BLE001 - classified: network trouble is retried, the rest is final
            if is_transient(e):
                raise TransientError(f"fetching {source}: {root_cause(e)}") from e
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


def is_transient(error: BaseException) -> bool:
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


def root_cause(error: BaseException) -> str:
    last = list(_chain(error))[-1]
    return f"{type(last).__name__}: {last}"
