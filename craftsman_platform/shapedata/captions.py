"""Captions: what a text-conditioned model is trained on, per object (docs/data-format.md, "Captions").

A sample holds its object's captions as `captions.json`, a JSON list of strings (several captions
per object are fine: training draws one per step). They come from a captions file joined by uid
(`craft preprocess source.captions=FILE`, or later `craft pack captions=FILE`), or, as a weaker
fallback, from the source's own metadata (`source.captions=metadata`: Objaverse's name and tags).

Caption files: CSV or TSV, with or without a header (Cap3D's `uid,caption` files have none), or
parquet; several rows may name one uid. A header names its columns: the uid column `uid` (or
`object_uid`, `id`), the caption column `caption` (or `text`, `description`).
"""

from __future__ import annotations

import csv
import itertools
import json
from typing import Iterator

import pyarrow as pa

from craftsman_platform.errors import ConfigError

SCHEMA = pa.schema([("uid", pa.string()), ("caption", pa.string())])
UID_NAMES = ("uid", "object_uid", "id")
CAPTION_NAMES = ("caption", "text", "description")
BATCH = 50_000


def caption_batches(url: str, storage_options: dict | None = None) -> Iterator[pa.RecordBatch]:
    """(uid, caption) rows of a captions file, in batches; a malformed row is an error naming its line."""
    import fsspec

    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as fh:
            if url.split("?", 1)[0].lower().endswith(".parquet"):
                yield from _parquet(url, fh)
            else:
                yield from _delimited(url, fh)
    except FileNotFoundError:
        raise ConfigError(f"captions file {url} does not exist") from None


def _parquet(url: str, fh) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(fh)
    names = pf.schema_arrow.names
    uid, caption = _pick(url, names, UID_NAMES, "uid"), _pick(url, names, CAPTION_NAMES, "caption")
    for batch in pf.iter_batches(batch_size=BATCH, columns=[uid, caption]):
        yield pa.RecordBatch.from_arrays([batch.column(uid).cast(pa.string()), batch.column(caption).cast(pa.string())],
                                         schema=SCHEMA)  # fmt: skip


def _pick(url: str, names: list[str], wanted: tuple[str, ...], what: str) -> str:
    for name in names:
        if name.lower() in wanted:
            return name
    raise ConfigError(f"captions file {url}: no {what} column (one of {', '.join(wanted)}; it has {names})")


def _delimited(url: str, fh) -> Iterator[pa.RecordBatch]:
    lines = _lines(url, fh)
    first = next(lines, "")
    delimiter = "\t" if url.lower().endswith(".tsv") or ("\t" in first and "," not in first.split("\t")[0]) else ","
    rows = csv.reader(itertools.chain([first], lines), delimiter=delimiter)
    columns, uids, captions = (0, 1), [], []
    for row in rows:
        line = rows.line_num  # the file's line (a quoted caption may span several)
        lowered = [c.strip().lower() for c in row]
        if line == 1 and set(lowered) & set(UID_NAMES) and set(lowered) & set(CAPTION_NAMES):  # a header
            columns = (_index(url, lowered, UID_NAMES, "uid"), _index(url, lowered, CAPTION_NAMES, "caption"))
            continue
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(columns) or (columns == (0, 1) and len(row) != 2):
            raise ConfigError(f"{url}:{line}: expected uid{',' if delimiter == ',' else '<tab>'}caption, got {row[:3]}")
        uid, caption = row[columns[0]].strip(), row[columns[1]].strip()
        if not uid or not caption:
            raise ConfigError(f"{url}:{line}: an empty {'uid' if not uid else 'caption'}")
        uids.append(uid)
        captions.append(caption)
        if len(uids) == BATCH:
            yield pa.RecordBatch.from_arrays([pa.array(uids), pa.array(captions)], schema=SCHEMA)
            uids, captions = [], []
    if uids:
        yield pa.RecordBatch.from_arrays([pa.array(uids), pa.array(captions)], schema=SCHEMA)


def _lines(url: str, fh) -> Iterator[str]:
    """The file's lines as text; a line that is not UTF-8 is an error naming it."""
    for line, raw in enumerate(fh, 1):
        try:
            yield raw.decode("utf-8-sig" if line == 1 else "utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"{url}:{line}: not UTF-8 text ({err.reason})") from None


def _index(url: str, header: list[str], wanted: tuple[str, ...], what: str) -> int:
    for i, name in enumerate(header):
        if name in wanted:
            return i
    raise ConfigError(f"{url}: the header has no {what} column (one of {', '.join(wanted)})")


def from_metadata(annotations: dict | None) -> list[str]:
    """Captions from a source's own metadata, the weak fallback: its name with up to five tags, and
    its description's first sentence (at most 200 characters), where it has them."""
    notes = annotations or {}
    name = str(notes.get("name") or notes.get("title") or "").replace("_", " ").strip()
    tags = [str(t).replace("_", " ") for t in notes.get("tags") or [] if t][:5]
    found = [", ".join(part for part in [name, *tags] if part)] if name or tags else []
    description = " ".join(str(notes.get("description") or "").split())
    if description:
        found.append(description.split(". ")[0][:200])
    return found


def encode_captions(captions: list[str]) -> bytes:
    return json.dumps(list(captions), ensure_ascii=False).encode()


def decode_captions(data: bytes | None) -> list[str]:
    """A sample's captions.json (absent: no captions)."""
    if not data:
        return []
    value = json.loads(data)
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise ValueError("captions.json is not a list of strings")
    return value
