"""The driver's listing in bounded memory: what a source lists, against what the output already
holds, deduplicated by content and put in the order the task slots take it, whatever the number of
objects (10M: docs/benchmarks.md). Rows are spooled to local disk as Arrow IPC files, spread over
hash buckets, and only one bucket is in memory at a time:

  1. spool   the source's rows (its filters applied; partition and limit here), ranked in listing
             order, by uid; the output's manifest rows, by uid
  2. diff    per uid: what the output holds is skipped; failures tried again, duplicates and new
             objects are candidates; rows a later one replaces are superseded. Content held by the
             output (ok objects, and failures of the content itself) goes on, by content
  3. dedup   per content (listed sha256): a candidate whose content the output holds is a duplicate
             of that object; else the first listed copy (lowest rank) is kept, the others are its
             duplicates. Candidates without a listed hash are kept
  4. order   per group: kept objects by (group, rank), so a group's objects come in a row (`Plan`)

Which copy is kept is thus stable across runs: the output's own, else the first listed (sources
in the order of `source.xl_sources`, then each annotation file's row order). A kept copy that fails
before its content is in hand (reasons.NO_CONTENT) holds nothing: the next run keeps the next copy.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from craftsman_platform.pipelines.preprocess.reasons import NO_CONTENT, RETRIED_ON_RERUN
from craftsman_platform.pipelines.preprocess.sources import LISTING_SCHEMA, Listed, ObjectRef

log = logging.getLogger("craft.preprocess")
ROWS_PER_BUCKET = 100_000  # ~25 MB of listing rows in memory at a time
DONE_COLUMNS = ["uid", "status", "reason", "listed_sha256", "source_sha256", "duplicate_of"]
RANKED = LISTING_SCHEMA.append(pa.field("rank", pa.int64()))
CANDIDATES = RANKED.append(pa.field("prev_duplicate_of", pa.string()))
HOLDERS = pa.schema([("content", pa.string()), ("uid", pa.string())])
CAPTION_ROWS = pa.schema([("uid", pa.string()), ("caption", pa.string())])
DONE = pa.schema([(c, pa.string()) for c in DONE_COLUMNS])
DUPLICATES = pa.schema([(c, pa.string()) for c in ("uid", "source", "origin", "listed_sha256", "license",
                                                   "file_type", "duplicate_of")])  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Buckets: rows spread over IPC files by a key's hash
# ---------------------------------------------------------------------------------------------


def bucket_of(keys, n: int) -> np.ndarray:
    """The bucket of each key (a pandas Series or Arrow array of strings): pandas' stable 64-bit hash,
    the same in every run and process."""
    if n == 1:
        return np.zeros(len(keys), np.int64)
    values = keys.to_numpy(dtype=object) if isinstance(keys, pd.Series) else keys.to_numpy(zero_copy_only=False)
    return (pd.util.hash_array(values) % np.uint64(n)).astype(np.int64)


class Buckets:
    def __init__(self, folder: Path, name: str, n: int, schema: pa.Schema):
        self.folder, self.name, self.n, self.schema = folder, name, n, schema
        self._writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
        self.rows = 0

    def add(self, table: pa.Table | pa.RecordBatch, keys) -> None:
        """Append `table`'s rows to the buckets of their `keys`."""
        if not table.num_rows:
            return
        table = table.select(self.schema.names).cast(self.schema)
        bucket = bucket_of(keys, self.n)
        order = np.argsort(bucket, kind="stable")
        bucket = bucket[order]
        table = table.take(pa.array(order))  # rows by bucket; a slice of it is written compactly
        starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
        for start, end in zip(starts, np.r_[starts[1:], len(bucket)]):
            index = int(bucket[start])
            if index not in self._writers:
                self._writers[index] = pa.ipc.new_file(self.folder / f"{self.name}-{index:04d}.arrow", self.schema)
            self._writers[index].write(table.slice(start, end - start))
        self.rows += table.num_rows

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}

    def remove(self) -> None:
        """Delete the buckets' files (a pass that has read them all)."""
        for path in self.folder.glob(f"{self.name}-*.arrow"):
            path.unlink()

    def read(self, index: int) -> pd.DataFrame:
        return pa.Table.from_batches(list(self.batches(index)), schema=self.schema).to_pandas()

    def batches(self, index: int) -> Iterator[pa.RecordBatch]:
        path = self.folder / f"{self.name}-{index:04d}.arrow"
        if not path.exists():
            return
        with pa.OSFile(str(path)) as fh:  # read, not memory-mapped: the pages would count as the driver's memory
            reader = pa.ipc.open_file(fh)
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)


def _key(frame: pd.DataFrame, column: str) -> pd.Series:
    """`column` where set, else the uid: the content key of a row, or its uid when it lists none."""
    return frame[column].where(frame[column].notna(), frame["uid"])


# ---------------------------------------------------------------------------------------------
# The listing
# ---------------------------------------------------------------------------------------------


class Plan:
    """The objects to process in order, as groups (lists of ObjectRef); the duplicates found (manifest
    rows to write once the superseded rows are gone); what the listing found (`stats`)."""

    def __init__(self, folder: Path, kept: Buckets, duplicates: Buckets, superseded: list[str], group_max: int,
                 stats: dict):  # fmt: skip
        self.folder, self._kept, self._duplicates = folder, kept, duplicates
        self.total, self.superseded, self.group_max, self.stats = kept.rows, superseded, group_max, stats

    def duplicates(self) -> Iterator[pa.RecordBatch]:
        """The new duplicate rows (DUPLICATES' columns)."""
        return self._duplicates.batches(0)

    def groups(self) -> Iterator[list[ObjectRef]]:
        """Runs of objects a slot takes together: a group's objects (at most `group_max` in a run), or one."""
        for index in range(self._kept.n):
            frame = self._kept.read(index)
            if frame.empty:
                continue
            frame = frame.sort_values(["group", "rank"], na_position="last", kind="stable")
            rows = frame.to_dict("records")
            del frame
            i = 0
            while i < len(rows):
                group = rows[i]["group"]
                j = i + 1
                if isinstance(group, str):
                    while j < len(rows) and rows[j]["group"] == group and j - i < self.group_max:
                        j += 1
                yield [ObjectRef.from_row(_plain(r), last_in_group=k == j - 1) for k, r in enumerate(rows[i:j], i)]
                i = j

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "Plan":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _plain(row: dict) -> dict:
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}


def make_plan(
    listed: Listed,
    done: Iterator[pa.RecordBatch],
    retry_failed: bool,
    partition: tuple[int, int] | None,
    limit: int | None,
    group_max: int,
    done_rows: int = 0,
    captions: Iterator[pa.RecordBatch] | None = None,
) -> Plan:
    """The plan of a listing against the output's manifest rows `done` (DONE_COLUMNS; about
    `done_rows` of them: the buckets are sized for both); `captions`: (uid, caption) rows to join."""
    folder = Path(tempfile.mkdtemp(prefix="craft-listing-"))
    try:
        n = max(1, min(256, -(-2 * (listed.estimate + done_rows) // ROWS_PER_BUCKET)))
        counts: Counter = Counter()
        listing, held = Buckets(folder, "listed", n, RANKED), Buckets(folder, "done", n, DONE)
        _spool(listed, listing, partition, limit, counts)
        for batch in done:
            held.add(batch, batch.column("uid"))
        said = Buckets(folder, "captions", n, CAPTION_ROWS)
        for batch in captions or ():
            said.add(batch, batch.column("uid"))
        listing.close()
        held.close()
        said.close()
        candidates, holders = Buckets(folder, "candidates", n, CANDIDATES), Buckets(folder, "holders", n, HOLDERS)
        superseded: list[str] = []
        for index in range(n):
            listed_rows = _with_captions(listing.read(index), said.read(index), counts)
            _diff(listed_rows, held.read(index), retry_failed, candidates, holders, superseded, counts)
        candidates.close()
        holders.close()
        listing.remove()  # the spool's disk: at most about two copies of the listing at a time
        held.remove()
        said.remove()
        kept, duplicates = Buckets(folder, "kept", n, RANKED), Buckets(folder, "duplicates", 1, DUPLICATES)
        for index in range(n):
            rows = _dedup(candidates.read(index), holders.read(index), kept, superseded, counts)
            duplicates.add(pa.Table.from_pandas(rows, schema=DUPLICATES, preserve_index=False), rows["uid"])
        kept.close()
        duplicates.close()
        candidates.remove()
        holders.remove()
        stats: dict = {"buckets": n, "listed": listing.rows, "to_process": kept.rows, "superseded": len(superseded),
                       "new_duplicates": duplicates.rows, "by_origin": {}}  # fmt: skip
        for origin, numbers in listed.stats.items():
            stats["by_origin"][origin] = dict(numbers)
        for (origin, what), value in sorted(counts.items()):
            stats["by_origin"].setdefault(origin, {})[what] = value
        return Plan(folder, kept, duplicates, superseded, group_max, stats)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _spool(listed: Listed, listing: Buckets, partition: tuple[int, int] | None, limit: int | None,
           counts: Counter) -> None:  # fmt: skip
    rank = 0
    for batch in listed.batches:
        if partition:
            index, count = partition
            keys = pc.coalesce(batch.column("listed_sha256"), batch.column("uid")).to_pylist()
            batch = batch.filter(pa.array([zlib.crc32(k.encode()) % count == index for k in keys]))
        if limit is not None:
            batch = batch.slice(0, max(0, limit - rank))
        batch = batch.append_column("rank", pa.array(np.arange(rank, rank + batch.num_rows, dtype=np.int64)))
        rank += batch.num_rows
        for entry in pc.value_counts(batch.column("origin")).to_pylist():
            counts[(entry["values"], "listed")] += entry["counts"]
        listing.add(batch, batch.column("uid"))
        if limit is not None and rank >= limit:
            break


def _with_captions(listed: pd.DataFrame, captions: pd.DataFrame, counts: Counter) -> pd.DataFrame:
    """One uid bucket's listed rows with the captions file's captions of their uid (a JSON list, in the
    file's order); the source's own, if any, come first."""
    if captions.empty:
        return listed
    joined = captions.groupby("uid", sort=False)["caption"].agg(list)
    found = listed["uid"].map(joined)
    for origin, n in listed.loc[found.notna(), "origin"].value_counts().items():
        counts[(origin, "captioned")] += int(n)
    own = listed["captions"].map(lambda text: json.loads(text) if isinstance(text, str) else [])
    merged = [json.dumps([*o, *f], ensure_ascii=False) if isinstance(f, list) else (None if not o else json.dumps(o))
              for o, f in zip(own, found)]  # fmt: skip
    return listed.assign(captions=merged)


def _diff(listed: pd.DataFrame, done: pd.DataFrame, retry_failed: bool, candidates: Buckets, holders: Buckets,
          superseded: list[str], counts: Counter) -> None:  # fmt: skip
    """One uid bucket: candidates (by content) and the output's holders of content (by content)."""
    listed = listed.sort_values("rank", kind="stable").drop_duplicates("uid", keep="first")
    done = done.assign(order=done["status"].map({"ok": 0, "failed": 1, "duplicate": 2}).fillna(3))
    done = done.sort_values(["uid", "order"], kind="stable")
    effective = done.drop_duplicates("uid", keep="first")
    # a failure or duplicate row beside an ok row of the same uid (a run killed between the two) goes
    extra = done[done.duplicated("uid", keep="first")]
    superseded += extra.loc[extra["uid"].isin(effective.loc[effective["status"] == "ok", "uid"]), "uid"].tolist()
    merged = listed.merge(effective[["uid", "status", "reason", "duplicate_of"]], on="uid", how="left")
    failed = merged["status"] == "failed"
    retried = failed & (retry_failed or merged["reason"].isin(RETRIED_ON_RERUN))
    settled = (merged["status"] == "ok") | (failed & ~retried)
    superseded += merged.loc[retried, "uid"].tolist()
    for origin, n in merged.loc[settled, "origin"].value_counts().items():
        counts[(origin, "already_done")] += int(n)
    for origin, n in merged.loc[retried, "origin"].value_counts().items():
        counts[(origin, "retried")] += int(n)
    chosen = merged.loc[~settled].copy()
    chosen["prev_duplicate_of"] = chosen["duplicate_of"].where(chosen["status"] == "duplicate")
    candidates.add(pa.Table.from_pandas(chosen, schema=CANDIDATES, preserve_index=False), _key(chosen, "listed_sha256"))
    # content the output holds: its ok objects (what was fetched), failures of the content itself
    retrying = set(merged.loc[retried, "uid"])
    holds = (effective["status"] == "ok") | (
        (effective["status"] == "failed") & ~effective["reason"].isin(NO_CONTENT) & ~effective["uid"].isin(retrying)
    )
    held = effective.loc[holds]
    content = held["source_sha256"].where(held["status"] == "ok").fillna(held["listed_sha256"])
    held = pd.DataFrame({"content": content, "uid": held["uid"]}).dropna()
    holders.add(pa.Table.from_pandas(held, schema=HOLDERS, preserve_index=False), held["content"])


def _dedup(candidates: pd.DataFrame, holders: pd.DataFrame, kept: Buckets, superseded: list[str],
           counts: Counter) -> pd.DataFrame:  # fmt: skip
    """One content bucket: the kept candidates (to `kept`, by group) and the new duplicate rows."""
    candidates = candidates.sort_values("rank", kind="stable")
    sha = candidates["listed_sha256"]
    holder = holders.sort_values("uid").drop_duplicates("content").set_index("content")["uid"]
    first = candidates.loc[sha.notna()].drop_duplicates("listed_sha256").set_index("listed_sha256")["uid"]
    keeper = sha.map(holder).fillna(sha.map(first))
    duplicate_of = keeper.where(keeper != candidates["uid"])  # null: kept
    previous = candidates["prev_duplicate_of"]
    changed = previous.notna() & (previous != duplicate_of)
    superseded += candidates.loc[changed, "uid"].tolist()
    is_dup = duplicate_of.notna()
    new = is_dup & (previous != duplicate_of)
    for origin, n in candidates.loc[is_dup, "origin"].value_counts().items():
        counts[(origin, "duplicates")] += int(n)
    for origin, n in candidates.loc[~is_dup, "origin"].value_counts().items():
        counts[(origin, "to_process")] += int(n)
    chosen = candidates.loc[~is_dup]
    kept.add(pa.Table.from_pandas(chosen, schema=CANDIDATES, preserve_index=False).select(RANKED.names),
             _key(chosen, "group"))  # fmt: skip
    rows = candidates.loc[new, list(DUPLICATES.names[:-1])]
    return rows.assign(duplicate_of=duplicate_of[new])
