"""The one shard store of every job that writes shards: WebDataset tars, journals, recovery, manifest.

Layout of OUT (a local folder or any fsspec URL, see storage.py):
  shards/shard-000000.tar      WebDataset tars (written by `ShardWriter`s, on the workers)
  journal/shard-000000.json    the commit record of that shard: its size and manifest rows
  manifest/*.parquet           (preprocess, with a ManifestParts: pipelines/manifest.py) the manifest
                               in parts, failed objects included, written as shards commit
  journal/failed-*.jsonl       (packs) failed objects, in batches (flushed every few seconds)
  config.json, manifest.parquet (packs), summary.json   (the job's)

Exactly-once, without a rename on object stores: a writer uploads a shard under its final key,
which becomes visible only once complete; the shard becomes part of the dataset only when the
driver has written its journal. On resume, shards no journal names (a writer or driver killed
between upload and journal) and journals whose shard is missing or of another size are deleted,
and their objects redone. A lost batch of failure rows only means those objects are tried again.
"""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from craftsman_platform.pipelines.storage import Output

log = logging.getLogger("craft.pipelines")
SHARD = re.compile(r"^shard-(\d{6,})\.tar$")
FAILED_FLUSH_S, FAILED_FLUSH_ROWS = 10.0, 500


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def journal_name(shard: str) -> str:
    return "journal/" + shard.removesuffix(".tar") + ".json"


# ---------------------------------------------------------------------------------------------
# Writing one shard (on a worker: inside a writer actor, next to the tasks that made the samples)
# ---------------------------------------------------------------------------------------------


class ShardWriter:
    """Appends samples to open shards and uploads each whole. Shards are named by the driver."""

    def __init__(self, output: Output):
        self.output = output
        self.output.makedirs("shards")
        self._open: dict[int, tuple] = {}  # index -> (context manager, file, tar, bytes)

    def add(self, index: int, uid: str, members: dict[str, bytes]) -> int:
        """Append one sample (member names `uid.ext`) to shard `index`; returns the shard's bytes so far."""
        if index not in self._open:
            ctx = self.output.open_staged("shards/" + shard_name(index))
            fh = ctx.__enter__()
            self._open[index] = (ctx, fh, tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT), 0)
        ctx, fh, tar, size = self._open[index]
        now = int(time.time())  # whole seconds: a fractional mtime costs every member a PAX header
        try:
            for name, data in members.items():
                info = tarfile.TarInfo(f"{uid}.{name}")  # PAX: names past USTAR's 100 characters
                info.size, info.mtime, info.mode = len(data), now, 0o444
                tar.addfile(info, io.BytesIO(data))
                size += len(data) + 1024
        except OSError as err:
            self._abort(index, err)
        self._open[index] = (ctx, fh, tar, size)
        return size

    def _abort(self, index: int, err: OSError) -> None:
        """A write failed: the staged shard is dropped (and a full disk named as such by the store)."""
        ctx = self._open.pop(index)[0]
        ctx.__exit__(type(err), err, err.__traceback__)
        raise err

    def seal(self, index: int) -> dict:
        """Finish shard `index` and make it visible under its final name: {"shard", "bytes"}."""
        ctx, fh, tar, _ = self._open[index]
        try:
            tar.close()
        except OSError as err:
            self._abort(index, err)
        del self._open[index]
        ctx.__exit__(None, None, None)
        name = shard_name(index)
        return {"shard": name, "bytes": self.output.fs.size(self.output.path("shards/" + name))}


# ---------------------------------------------------------------------------------------------
# The driver's side: journals, recovery, failures, manifest
# ---------------------------------------------------------------------------------------------


class ShardStore:
    """`manifest`: where committed and failed rows go as manifest parts (preprocess); without it
    failures are journaled as journal/failed-*.jsonl and the job writes its own manifest (packs)."""

    def __init__(self, output: Output, manifest=None):
        self.output, self.manifest = output, manifest
        self.next_index = 0
        self._failed: list[dict] = []
        self._failed_seq = 0
        self._failed_flushed = time.monotonic()
        self._run = uuid.uuid4().hex[:8]
        output.makedirs("shards")
        output.makedirs("journal")

    # -- resume ----------------------------------------------------------------------------------
    def recover_shards(self, known: dict[str, int] | None = None) -> tuple[list[str], set[str]]:
        """(journal names of committed shards, shards whose journal was dropped): deletes what no journal
        commits, and journals whose shard is missing or of another size (their objects are redone).
        `known`: shard sizes already recorded elsewhere (the manifest's parts), so that a 10M-object
        output's journals are not all read."""
        shards = self.output.sizes("shards")
        journals = self.output.sizes("journal")
        committed, dropped = [], set()
        indices = [int(m.group(1)) for m in map(SHARD.match, shards) if m]
        for name in sorted(journals):
            if not (name.startswith("shard-") and name.endswith(".json")):
                continue
            shard = name.removesuffix(".json") + ".tar"
            expected = (known or {}).get(shard)
            if expected is None:
                body = self.output.read_json("journal/" + name)
                expected = body.get("bytes") if isinstance(body, dict) else shards.get(shard)  # lists: sizes came later
            if shards.get(shard) is None or shards[shard] != expected:
                log.warning("journal %s names a missing or resized %s: its objects are redone", name, shard)
                self.output.delete("journal/" + name)
                dropped.add(shard)
                continue
            committed.append(name)
            indices.append(int(SHARD.match(shard).group(1)))
        names = {n.removesuffix(".json") + ".tar" for n in committed}
        for leftover in sorted(set(shards) - names):
            log.info("removing %s, which no journal commits (its objects will be redone)", leftover)
            self.output.delete("shards/" + leftover)
        self.next_index = 1 + max(indices, default=-1)
        return committed, dropped

    def read_journal(self, name: str) -> dict:
        """A shard's commit record {"shard", "bytes", "rows"} (journals of early versions were lists of rows)."""
        body = self.output.read_json("journal/" + name)
        if isinstance(body, dict):
            return body
        shard = name.removesuffix(".json") + ".tar"
        return {"shard": shard, "bytes": self.output.sizes("shards").get(shard), "rows": body}

    def recover(self) -> tuple[dict[str, dict], dict[str, dict]]:
        """(ok rows by uid, failed rows by uid) of earlier runs, for jobs whose rows fit in memory
        (packs); deletes what no journal commits."""
        committed, _ = self.recover_shards()
        ok = {row["uid"]: row for name in committed for row in self.read_journal(name)["rows"]}
        failed: dict[str, dict] = {}
        for name in self.failed_journals():
            for row in self.failed_rows(name):
                failed[row["uid"]] = row
        return ok, {u: r for u, r in failed.items() if u not in ok}

    def failed_journals(self) -> list[str]:
        return sorted(n for n in self.output.sizes("journal") if n.startswith("failed") and n.endswith(".jsonl"))

    def failed_rows(self, name: str) -> list[dict]:
        rows = []
        for line in self.output.read_bytes("journal/" + name).decode().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line (journals of earlier versions were appended to)
        return rows

    # -- committing ------------------------------------------------------------------------------
    def commit(self, sealed: dict, rows: list[dict]) -> list[dict]:
        """Make a sealed shard part of the dataset by writing its journal; returns the rows with `shard`."""
        rows = [{**r, "shard": sealed["shard"]} for r in rows]
        self.output.write_json(journal_name(sealed["shard"]), {**sealed, "rows": rows})
        if self.manifest is not None:
            self.manifest.add("ok", rows, (sealed["shard"], sealed["bytes"]))
        log.info("shard %s committed: %d objects, %.1f MB", sealed["shard"], len(rows), sealed["bytes"] / 1e6)
        return rows

    def discard(self, index: int) -> None:
        """Delete what a failed writer may have uploaded for shard `index` (its objects are redone)."""
        self.output.delete("shards/" + shard_name(index))
        if self.output.local:
            self.output.delete("shards/" + shard_name(index) + ".tmp")

    def remove_uncommitted(self) -> int:
        """At the end of a run: delete shards no journal commits (a writer whose commit record was lost
        with its task, e.g. on a node that died after the upload; the objects were redone elsewhere)."""
        journals = {n.removesuffix(".json") + ".tar" for n in self.output.sizes("journal") if n.startswith("shard-")}
        leftovers = [n for n in self.output.sizes("shards") if n not in journals]
        for name in leftovers:
            log.info("removing %s, which no journal commits (its objects were redone)", name)
            self.output.delete("shards/" + name)
        return len(leftovers)

    def add_failed(self, row: dict) -> None:
        if self.manifest is not None:
            self.manifest.add("failed", [row])
            return
        self._failed.append(row)
        if len(self._failed) >= FAILED_FLUSH_ROWS or time.monotonic() - self._failed_flushed > FAILED_FLUSH_S:
            self.flush_failed()

    def flush_failed(self) -> None:
        if self.manifest is not None:
            self.manifest.flush()
            return
        self._failed_flushed = time.monotonic()
        if not self._failed:
            return
        name = f"journal/failed-{self._run}-{self._failed_seq:05d}.jsonl"
        self.output.write_bytes(name, "".join(json.dumps(r) + "\n" for r in self._failed).encode())
        self._failed, self._failed_seq = [], self._failed_seq + 1

    # -- manifest --------------------------------------------------------------------------------
    def write_manifest(self, rows: list[dict]) -> str:
        columns = list(dict.fromkeys(k for r in rows for k in r))  # ok and failed rows differ
        table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in sorted(rows, key=lambda r: r["uid"])])
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.output.write_bytes("manifest.parquet", buf.getvalue())
        return self.output.display("manifest.parquet")
