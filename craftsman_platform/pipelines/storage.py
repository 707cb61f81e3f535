"""Where a job's output lives: a local folder or any fsspec URL (s3://, gs://, memory://, ...).

One small interface over both, with the two properties the shard store and the lock need:

- **a whole file appears at once.** Locally a file is written under `NAME.tmp`, fsynced and
  renamed; on an object store a key becomes visible only when its upload completes (a single PUT
  or a completed multipart upload), so a killed writer leaves nothing readable behind.
- **exclusive create.** `create_exclusive` fails if the file exists: O_EXCL locally,
  a conditional PUT (`If-None-Match: *` on S3, `ifGenerationMatch=0` on GCS) on object stores.
  `check_exclusive_create` proves the store honours it before the lock relies on it.

Credentials come from the usual places of each filesystem (environment, ~/.aws, gcloud
application-default credentials); `storage_options` are passed to fsspec as given.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import uuid
from contextlib import contextmanager
from typing import IO, Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

from craftsman_platform.errors import DiskFull


class StoreError(OSError):
    """The output store refused or failed an operation; the message names the path."""


def _disk_full(err: OSError, path: str) -> OSError:
    if getattr(err, "errno", None) == errno.ENOSPC:
        return DiskFull(errno.ENOSPC, f"no space left on the device holding {path}")
    return err


class Output:
    """A job's output root. Paths given to its methods are relative to the root, '/'-separated."""

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = url.rstrip("/") if "://" in url else os.path.abspath(os.path.expanduser(url))
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.local = isinstance(self.fs, LocalFileSystem)

    # -- names -----------------------------------------------------------------------------------
    def path(self, rel: str) -> str:
        """The filesystem path of `rel` (no protocol)."""
        return posixpath.join(self.root, rel) if rel else self.root

    def display(self, rel: str = "") -> str:
        """`rel` as the user would write it: a local path or a full URL."""
        return posixpath.join(self.url, rel) if rel else self.url

    def __repr__(self) -> str:
        return f"Output({self.url})"

    # -- reading ---------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def read_json(self, rel: str):
        return json.loads(self.read_bytes(rel))

    def sizes(self, rel_dir: str) -> dict[str, int]:
        """{file name: size} of the files directly in `rel_dir` (one listing call; {} if absent)."""
        try:
            entries = self.fs.ls(self.path(rel_dir), detail=True)
        except FileNotFoundError:
            return {}
        self.fs.invalidate_cache()
        return {posixpath.basename(e["name"]): int(e["size"]) for e in entries if e["type"] == "file"}

    # -- writing ---------------------------------------------------------------------------------
    def makedirs(self, rel: str) -> None:
        if self.local:
            os.makedirs(self.path(rel), exist_ok=True)  # object stores have no folders

    @contextmanager
    def open_staged(self, rel: str) -> Iterator[IO[bytes]]:
        """Write `rel` whole or not at all: visible under its name only after the block succeeds."""
        target = self.path(rel)
        if self.local:
            tmp = f"{target}.tmp"
            try:
                with open(tmp, "wb") as fh:
                    yield fh
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
            except OSError as err:
                raise _disk_full(err, target) from err
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return
        with self.fs.open(target, "wb") as fh:  # multipart upload: completed on close, aborted on error
            yield fh

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.open_staged(rel) as fh:
            fh.write(data)

    def write_json(self, rel: str, body) -> None:
        self.write_bytes(rel, json.dumps(body, indent=1).encode())

    def create_exclusive(self, rel: str, data: bytes) -> None:
        """Create `rel` only if it does not exist (FileExistsError otherwise)."""
        target = self.path(rel)
        if self.local:
            try:
                fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except OSError as err:
                raise _disk_full(err, target) from err
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            return
        try:
            with self.fs.open(target, "xb") as fh:
                fh.write(data)
        except FileExistsError:
            raise
        except OSError as err:  # s3fs reports a failed precondition as EINVAL
            if self.fs.exists(target):
                raise FileExistsError(errno.EEXIST, f"{self.display(rel)} exists") from err
            raise

    def delete(self, rel: str) -> None:
        try:
            self.fs.rm_file(self.path(rel))
        except FileNotFoundError:
            pass

    def check_exclusive_create(self) -> None:
        """Raise StoreError unless a second exclusive create of one key fails on this store."""
        if self.local:
            return
        probe = f".probe-{uuid.uuid4().hex}"
        self.create_exclusive(probe, b"1")
        try:
            self.create_exclusive(probe, b"2")
        except FileExistsError:
            return
        finally:
            self.delete(probe)
        raise StoreError(
            errno.ENOTSUP,
            f"{self.url} does not honour conditional writes (exclusive create), so one writer per output "
            "cannot be guaranteed there; use a store that does (S3, GCS, MinIO, SeaweedFS, R2 do) or a local path",
        )
