"""The one shard store of every job that writes shards: atomic WebDataset shards, journals, manifest, resume.

Layout of OUT:
  shards/shard-000000.tar      complete shards only (written as .tar.tmp, fsynced, renamed)
  journal/shard-000000.json    manifest rows of that shard (rebuilt from the tar if missing)
  journal/failed.jsonl         one row per failed object, appended and fsynced as they fail
  config.json                  the config and its hash; a different config is refused
  manifest.parquet, summary.json   written at the end of every run

Exactly-once: a good object becomes visible only when its shard is renamed, and the tar is the
source of truth for what is done; a killed run leaves at most a .tar.tmp, which the next run
deletes (its objects are redone), and a torn last line in failed.jsonl, which is ignored.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import time
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)


def _fsync_write(path: Path, data: bytes) -> None:
    """Write a file atomically: temporary name, fsync, rename."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class ShardStore:
    def __init__(self, out_dir: str | Path, max_bytes: int, row_from_meta: Callable[[dict], dict]):
        """`row_from_meta` turns a sample's meta.json into its manifest row (the job's own columns)."""
        self.out = Path(out_dir)
        self.row_from_meta = row_from_meta
        self.shard_dir = self.out / "shards"
        self.journal_dir = self.out / "journal"
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._tar: tarfile.TarFile | None = None
        self._fh = None
        self._rows: list[dict] = []
        self._bytes = 0
        self._index = 0
        self._failed_fh = None

    # -- resume ----------------------------------------------------------------------------

    def recover(self) -> tuple[dict[str, dict], dict[str, dict]]:
        """(ok rows by uid, failed rows by uid) from a previous run; cleans up what it left."""
        for tmp in self.shard_dir.glob("*.tar.tmp"):
            log.info("removing incomplete shard %s (its objects will be redone)", tmp.name)
            tmp.unlink()
        ok: dict[str, dict] = {}
        shards = sorted(self.shard_dir.glob("shard-*.tar"))
        for shard in shards:
            journal = self.journal_dir / (shard.stem + ".json")
            if journal.exists():
                rows = json.loads(journal.read_text())
            else:
                rows = self._rows_from_tar(shard)
                _fsync_write(journal, json.dumps(rows).encode())
            for row in rows:
                ok[row["uid"]] = row
        self._index = 1 + max((int(s.stem.split("-")[1]) for s in shards), default=-1)
        failed: dict[str, dict] = {}
        path = self.journal_dir / "failed.jsonl"
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from a killed run
                failed[row["uid"]] = row
        return ok, {u: r for u, r in failed.items() if u not in ok}

    def _rows_from_tar(self, shard: Path) -> list[dict]:
        rows = []
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".meta.json"):
                    row = self.row_from_meta(json.load(tar.extractfile(member)))
                    rows.append({**row, "shard": shard.name})
        return rows

    # -- writing ---------------------------------------------------------------------------

    def add(self, uid: str, members: dict[str, bytes], row: dict) -> str:
        """Append one sample (WebDataset: member names `uid.ext`); returns its shard's name."""
        if self._tar is None:
            self._open()
        now = time.time()
        for name, data in members.items():
            info = tarfile.TarInfo(f"{uid}.{name}")
            info.size, info.mtime, info.mode = len(data), now, 0o444
            self._tar.addfile(info, io.BytesIO(data))
            self._bytes += len(data) + 1024
        name = self._name(self._index)
        self._rows.append({**row, "shard": name})
        if self._bytes >= self.max_bytes:
            self.close_shard()
        return name

    def add_failed(self, row: dict) -> None:
        if self._failed_fh is None:
            self._failed_fh = (self.journal_dir / "failed.jsonl").open("a")
        self._failed_fh.write(json.dumps(row) + "\n")
        self._failed_fh.flush()
        os.fsync(self._failed_fh.fileno())

    def close_shard(self) -> None:
        """Finish the current shard: fsync, rename into place, then its journal."""
        if self._tar is None:
            return
        self._tar.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        final = self.shard_dir / self._name(self._index)
        os.replace(final.with_name(final.name + ".tmp"), final)
        _fsync_write(self.journal_dir / (final.stem + ".json"), json.dumps(self._rows).encode())
        log.info("shard %s complete: %d objects, %.1f MB", final.name, len(self._rows), self._bytes / 1e6)
        self._tar, self._fh, self._rows, self._bytes = None, None, [], 0
        self._index += 1

    def close(self) -> None:
        self.close_shard()
        if self._failed_fh is not None:
            self._failed_fh.close()
            self._failed_fh = None

    def _open(self) -> None:
        path = self.shard_dir / (self._name(self._index) + ".tmp")
        self._fh = path.open("wb")
        self._tar = tarfile.open(fileobj=self._fh, mode="w", format=tarfile.PAX_FORMAT)  # names > 100 chars

    @staticmethod
    def _name(index: int) -> str:
        return f"shard-{index:06d}.tar"

    # -- manifest --------------------------------------------------------------------------

    def write_manifest(self, rows: list[dict]) -> Path:
        path = self.out / "manifest.parquet"
        columns = list(dict.fromkeys(k for r in rows for k in r))  # ok and failed rows differ
        table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in sorted(rows, key=lambda r: r["uid"])])
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return path
