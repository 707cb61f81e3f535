"""The manifest of an output: one row per listed object, as parquet (docs/data-format.md, "Manifest").

Two layouts, read the same way by every reader (`read_manifest`, `manifest_batches`):
  OUT/manifest/*.parquet   parts written as the job goes (craft preprocess since Objaverse-XL
                           support): `ok-*` per batch of committed shards, `failed-*` per batch of
                           failures, `duplicate-*` per listing; together one row per object
  OUT/manifest.parquet     one file (outputs of earlier versions, and packs)

Every part of a preprocessing output has the schema `MANIFEST_SCHEMA`, so readers never meet a
column whose type differs between parts; a single file of an older output may lack columns
(newer ones read as null).
"""

from __future__ import annotations

import posixpath
from typing import Iterator, Sequence

import pyarrow as pa

MANIFEST_FILE = "manifest.parquet"
MANIFEST_DIR = "manifest"
STATUSES = ("ok", "failed", "duplicate")

_STAGES = ("load", "watertight", "sample", "render", "write")
MANIFEST_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("source", pa.string()),  # the path or URL listed (Objaverse-XL: its fileIdentifier)
        ("origin", pa.string()),  # folder, list, objaverse, or the Objaverse-XL source (github, sketchfab, ...)
        ("status", pa.string()),  # ok, failed, duplicate
        ("reason", pa.string()),
        ("message", pa.string()),
        ("shard", pa.string()),
        ("duplicate_of", pa.string()),  # duplicate: the uid whose copy of the same content is kept
        ("config_hash", pa.string()),
        ("listed_sha256", pa.string()),  # the content hash the listing gave (Objaverse-XL annotations)
        ("source_sha256", pa.string()),  # the fetched file's
        ("license", pa.string()),
        ("file_type", pa.string()),
        ("lvis_category", pa.string()),
        ("caption", pa.string()),  # the first of the object's captions (source.captions), else null
        ("n_captions", pa.int64()),
        *[(f"time_{s}", pa.float64()) for s in _STAGES],
        ("watertight_method", pa.string()),
        ("chamfer", pa.float64()),
        ("parts_in", pa.int64()),
        ("parts_out", pa.int64()),
        ("parts_lost", pa.int64()),
        ("sign_agreement", pa.float64()),
        ("n_sharp", pa.int64()),
        ("n_faces", pa.int64()),
        ("views", pa.int64()),
        ("worker_peak_rss_mb", pa.float64()),
    ]
)


def rows_table(rows: Sequence[dict]) -> pa.Table:
    """Manifest rows (dicts) as a table of MANIFEST_SCHEMA; a key the schema lacks is an error."""
    names = set(MANIFEST_SCHEMA.names)
    extra = {k for r in rows for k in r} - names
    if extra:
        raise ValueError(f"manifest rows hold columns the schema lacks: {sorted(extra)}")
    return pa.Table.from_pylist(list(rows), schema=MANIFEST_SCHEMA)


def manifest_files(fs, root: str) -> list[str]:
    """The parquet files of the manifest under `root` (fs paths): the parts, else the one file, else []."""
    folder = posixpath.join(root, MANIFEST_DIR)
    try:
        parts = sorted(e for e in fs.ls(folder, detail=False) if e.endswith(".parquet"))
    except FileNotFoundError:
        parts = []
    if parts:
        return parts
    single = posixpath.join(root, MANIFEST_FILE)
    return [single] if fs.exists(single) else []


def _open(url: str, storage_options: dict | None):
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    fs.invalidate_cache()
    return fs, root


def manifest_schema(fs, files: list[str]) -> pa.Schema:
    """The schema of the manifest in `files`: MANIFEST_SCHEMA for parts (every part is written with
    it, so no part's footer is read: a 10M-object output on object storage has hundreds); a single
    file's own (an older output may lack newer columns)."""
    import pyarrow.parquet as pq

    if not files:
        return MANIFEST_SCHEMA
    if posixpath.basename(posixpath.dirname(files[0])) == MANIFEST_DIR:
        return MANIFEST_SCHEMA
    with fs.open(files[0], "rb") as fh:
        return pq.read_schema(fh)


def _reading(url: str, columns: list[str] | None, storage_options: dict | None):
    """(fs, files, schema of what is read): `columns` a file lacks come as nulls of their type."""
    fs, root = _open(url, storage_options)
    files = manifest_files(fs, root)
    schema = manifest_schema(fs, files)
    wanted = list(columns) if columns is not None else schema.names
    known = {f.name: f for f in MANIFEST_SCHEMA}
    fields = [schema.field(c) if c in schema.names else known.get(c, pa.field(c, pa.string())) for c in wanted]
    return fs, files, pa.schema(fields)


def manifest_batches(
    url: str, columns: list[str] | None = None, storage_options: dict | None = None, batch_rows: int = 65_536
) -> Iterator[pa.RecordBatch]:
    """The manifest under `url` (an output folder or URL) in batches, in bounded memory."""
    import pyarrow.parquet as pq

    fs, files, schema = _reading(url, columns, storage_options)
    for f in files:
        with fs.open(f, "rb") as fh:
            pf = pq.ParquetFile(fh, pre_buffer=False, buffer_size=1 << 20)  # pre_buffer: memory grows per row group
            have = [c for c in schema.names if c in pf.schema_arrow.names]
            for batch in pf.iter_batches(batch_size=batch_rows, columns=have):
                yield pa.RecordBatch.from_arrays(
                    [
                        batch.column(f.name).cast(f.type) if f.name in have else pa.nulls(batch.num_rows, f.type)
                        for f in schema
                    ],
                    schema=schema,
                )


def read_manifest(url: str, columns: list[str] | None = None, storage_options: dict | None = None) -> pa.Table:
    """The whole manifest (these columns) as one table; empty if there is none. Readers that can go
    batch by batch use `manifest_batches` (a 10M-object manifest does not fit every machine)."""
    schema = _reading(url, columns, storage_options)[2]
    return pa.Table.from_batches(list(manifest_batches(url, columns, storage_options)), schema=schema)


def has_manifest(url: str, storage_options: dict | None = None) -> bool:
    fs, root = _open(url, storage_options)
    return bool(manifest_files(fs, root))


def manifest_columns(url: str, storage_options: dict | None = None) -> list[str]:
    """The column names of the manifest under `url`."""
    fs, root = _open(url, storage_options)
    return manifest_schema(fs, manifest_files(fs, root)).names
