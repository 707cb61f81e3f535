"""A preprocessing output's manifest as parquet parts, written as the job goes (shapedata/manifest.py
has the layout and the readers).

  manifest/ok-RUN-SEQ.parquet         rows of committed shards, a part per batch of commits; the
                                      parquet metadata records each shard's bytes (resume checks
                                      shards against it instead of reading every journal)
  manifest/failed-RUN-SEQ.parquet     failed objects: this is their journal (flushed every minute)
  manifest/duplicate-RUN-SEQ.parquet  objects whose content another listed object holds

The shard journals stay the commit records: a part is written after its shards' journals, so a
job killed in between leaves journals no part covers, and `reconcile` (at the next start) writes
their rows. One row per object: a row that a later run replaces (a failure tried again, a
duplicate whose kept copy changed) is removed from its part first (`supersede`). Outputs of
earlier versions (one manifest.parquet, failures in journal/failed-*.jsonl) are converted on
their first resume.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import time
import uuid
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from craftsman_platform.pipelines.storage import Output
from craftsman_platform.shapedata.manifest import (
    MANIFEST_DIR,
    MANIFEST_FILE,
    MANIFEST_SCHEMA,
    manifest_batches,
    rows_table,
)

log = logging.getLogger("craft.pipelines")
KINDS = ("ok", "failed", "duplicate")
# (rows, seconds) after which a kind's buffer becomes a part. ok rows are in the journals too, so
# their parts can be large; failed rows exist only here, so a kill loses at most a minute of them
# (those objects are simply redone).
FLUSH = {"ok": (100_000, 300.0), "failed": (10_000, 60.0), "duplicate": (200_000, 1e9)}
SHARDS_KEY = b"craft.shards"  # parquet metadata of an ok part: {shard name: bytes}


class ManifestParts:
    def __init__(self, output: Output):
        self.output = output
        self.run = uuid.uuid4().hex[:8]
        self._seq = 0
        self._rows: dict[str, list[dict]] = {k: [] for k in KINDS}
        self._shards: dict[str, int] = {}  # shards of the buffered ok rows
        self._since = {k: time.monotonic() for k in KINDS}
        self.written = {k: 0 for k in KINDS}
        output.makedirs(MANIFEST_DIR)

    # -- writing ---------------------------------------------------------------------------------
    def add(self, kind: str, rows: list[dict], shard: tuple[str, int] | None = None) -> None:
        """Buffer rows of `kind`; an ok batch names its shard (name, bytes)."""
        self._rows[kind].extend(rows)
        if shard is not None:
            self._shards[shard[0]] = shard[1]
        limit_rows, limit_s = FLUSH[kind]
        if len(self._rows[kind]) >= limit_rows or time.monotonic() - self._since[kind] > limit_s:
            self.flush(kind)

    def flush(self, kind: str | None = None) -> None:
        """Write the buffered rows of `kind` (all kinds if None) as parts."""
        for k in [kind] if kind else KINDS:
            self._since[k] = time.monotonic()
            if not self._rows[k]:
                continue
            shards = self._shards if k == "ok" else None
            self._write(f"{k}-{self.run}-{self._seq:05d}.parquet", rows_table(self._rows[k]), shards)
            self._seq += 1
            self.written[k] += len(self._rows[k])
            self._rows[k] = []
            if k == "ok":
                self._shards = {}

    def write_part(self, kind: str, table: pa.Table) -> None:
        """A part of `kind` from a table of MANIFEST_SCHEMA, written now."""
        self._write(f"{kind}-{self.run}-{self._seq:05d}.parquet", table)
        self._seq += 1
        self.written[kind] += table.num_rows

    def _write(self, name: str, table: pa.Table, shards: dict[str, int] | None = None) -> None:
        if shards is not None:
            table = table.replace_schema_metadata({SHARDS_KEY: json.dumps(shards).encode()})
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self.output.write_bytes(posixpath.join(MANIFEST_DIR, name), buf.getvalue())

    # -- the parts -------------------------------------------------------------------------------
    def parts(self, kind: str | None = None) -> list[str]:
        names = sorted(n for n in self.output.sizes(MANIFEST_DIR) if n.endswith(".parquet"))
        return [n for n in names if kind is None or n.startswith(kind + "-")]

    def _read(self, name: str, columns: list[str] | None = None) -> pa.Table:
        with self.output.fs.open(self.output.path(posixpath.join(MANIFEST_DIR, name)), "rb") as fh:
            return pq.read_table(fh, columns=columns)

    def shard_sizes(self) -> dict[str, int]:
        """{shard: bytes} of every shard an ok part covers (from the parts' metadata only)."""
        sizes: dict[str, int] = {}
        for name in self.parts("ok"):
            with self.output.fs.open(self.output.path(posixpath.join(MANIFEST_DIR, name)), "rb") as fh:
                meta = pq.read_schema(fh).metadata or {}
            sizes.update(json.loads(meta.get(SHARDS_KEY, b"{}")))
        return sizes

    def supersede(self, uids: pa.Array) -> int:
        """Remove the failed and duplicate rows of these uids (a later row replaces them); returns how many."""
        if not len(uids):
            return 0
        removed = 0
        for name in self.parts("failed") + self.parts("duplicate"):
            hit = pc.is_in(self._read(name, ["uid"]).column("uid"), value_set=uids)
            n = pc.sum(hit).as_py() or 0
            if n:
                kept = self._read(name).filter(pc.invert(hit))
                if kept.num_rows:
                    self._write(name, kept)
                else:
                    self.output.delete(posixpath.join(MANIFEST_DIR, name))
                removed += n
        return removed

    # -- resume ----------------------------------------------------------------------------------
    def reconcile(self, store, committed: list[str], dropped: set[str]) -> dict:
        """At the start of a run, after the store's recovery: rows of committed journals that no part
        covers become a part; rows of shards whose journal was dropped leave their part; an earlier
        version's failure journals and manifest.parquet are converted. Returns what it did."""
        covered: dict[str, set[str]] = {}
        for name in self.parts("ok"):
            covered[name] = set(pc.unique(self._read(name, ["shard"]).column("shard")).to_pylist())
        for name, shards in covered.items():
            if shards & dropped:
                table = self._read(name)
                self._write(name, table.filter(pc.invert(pc.is_in(table.column("shard"), pa.array(sorted(dropped))))))
        have = set().union(*covered.values()) if covered else set()
        missing = [j for j in committed if j.removesuffix(".json") + ".tar" not in have]
        for journal in missing:  # bounded: flushed every FLUSH["ok"] rows
            body = store.read_journal(journal)
            self.add("ok", [_known(r) for r in body["rows"]], (journal.removesuffix(".json") + ".tar", body["bytes"]))
        self.flush("ok")
        legacy = store.failed_journals()
        for name in legacy:  # an earlier version's failures: a part each (rows an ok row supersedes go at listing)
            rows = store.failed_rows(name)
            if rows:
                table = rows_table([_known(r) for r in rows])
                self._write(f"failed-legacy-{name.removesuffix('.jsonl')}.parquet", table)
            self.output.delete("journal/" + name)
        if self.output.exists(MANIFEST_FILE):
            self.output.delete(MANIFEST_FILE)  # the parts now hold what it held (both came from the journals)
        return {"journals_recovered": len(missing), "legacy_failure_journals": len(legacy)}

    def done_batches(self, columns: list[str]) -> Iterator[pa.RecordBatch]:
        """Every row so far (these columns), in bounded memory."""
        return manifest_batches(self.output.url, columns, self.output.storage_options)


def _known(row: dict) -> dict:
    """A row of an earlier version with only the columns of MANIFEST_SCHEMA."""
    return {k: v for k, v in row.items() if k in MANIFEST_SCHEMA.names}
