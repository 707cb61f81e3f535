"""`craft preprocess`: raw meshes -> WebDataset shards + manifest, on a local Ray or a cluster."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path

import hydra
import pyarrow as pa
from omegaconf import DictConfig, OmegaConf

from craftsman_platform.errors import ConfigError, MissingInput, NothingDone, check_writable
from craftsman_platform.paths import CONF_DIR
from craftsman_platform.pipelines.lock import OutputLock
from craftsman_platform.pipelines.manifest import ManifestParts
from craftsman_platform.pipelines.preprocess.config import PreprocessConfig, SourceConfig
from craftsman_platform.pipelines.preprocess.listing import DONE_COLUMNS, Plan, make_plan
from craftsman_platform.pipelines.preprocess.object_job import PIPELINE_VERSION
from craftsman_platform.pipelines.preprocess.scheduler import process_all
from craftsman_platform.pipelines.preprocess.sources import list_source
from craftsman_platform.pipelines.preprocess.sources.objaverse_xl import validate_xl
from craftsman_platform.pipelines.preprocess.summary import format_summary, summarize
from craftsman_platform.pipelines.report.job import format_result, write_report
from craftsman_platform.pipelines.shardstore import ShardStore
from craftsman_platform.pipelines.storage import Output
from craftsman_platform.shapedata.captions import caption_batches
from craftsman_platform.shapedata.manifest import MANIFEST_DIR, MANIFEST_SCHEMA

log = logging.getLogger("craft.preprocess")
SOURCE_KINDS = ("auto", "folder", "list", "objaverse", "objaverse_xl")
DUPLICATE_PART_ROWS = 200_000
MANIFEST_BYTES_PER_ROW = 50  # fewer than a real row takes in the parts (~180: docs/benchmarks.md)


# ---------------------------------------------------------------------------------------------
# Inputs and config identity
# ---------------------------------------------------------------------------------------------


def validate(cfg: PreprocessConfig) -> None:
    """Values the schema cannot check, before anything is read or written; errors name the key."""
    for key, low in (("workers", 1), ("threads_per_task", 1), ("max_retries", 0)):
        if getattr(cfg, key) is not None and getattr(cfg, key) < low:
            raise ConfigError(f"{key} must be >= {low}, got {getattr(cfg, key)}")
    for key in ("timeout_s", "memory_per_task_gb", "shard_max_bytes", "lock_stale_s"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key} must be > 0, got {getattr(cfg, key)}")
    validate_output(cfg.output_dir, cfg.storage_options)
    src = cfg.source
    if src.kind not in SOURCE_KINDS:
        raise ConfigError(f"source.kind={src.kind!r}: expected one of {', '.join(SOURCE_KINDS)}")
    if src.kind == "objaverse_xl":
        validate_xl(src)
        for key in ("uids", "lvis_categories"):
            if getattr(src, key):
                raise ConfigError(f"source.{key} selects Objaverse 1.0 objects (source.kind=objaverse), not XL ones")
    elif src.kind != "objaverse":
        if not src.path:
            raise ConfigError("source.path is required (a folder or a list file), or set source.kind=objaverse")
        if not Path(src.path).exists():
            raise MissingInput(f"source.path={src.path} does not exist")
        if src.kind == "folder" and not Path(src.path).is_dir():
            raise MissingInput(f"source.path={src.path} is not a folder")
        if src.kind == "list" and not Path(src.path).is_file():
            raise MissingInput(f"source.path={src.path} is not a list file")
    if src.partition:
        parse_partition(src.partition)
    if src.captions and src.captions != "metadata" and "://" not in src.captions and not Path(src.captions).is_file():
        raise MissingInput(f"source.captions={src.captions}: no such file (a CSV, TSV or parquet of uid, caption)")


def validate_output(url: str, storage_options: dict) -> Output:
    """The output as a store, or a ConfigError naming `output_dir` (unknown scheme, missing extra)."""
    if "://" not in url or url.startswith("file://"):
        local = url.removeprefix("file://")
        check_writable(local, "output_dir")
        for sub in ("shards", "journal", MANIFEST_DIR):
            if os.path.exists(os.path.join(local, sub)) and not os.path.isdir(os.path.join(local, sub)):
                raise ConfigError(
                    f"output_dir={url}: {os.path.join(local, sub)} is a file, where the job keeps a folder"
                )
    try:
        return Output(url, storage_options)
    except ImportError as err:
        raise ConfigError(
            f"output_dir={url}: {err.msg if hasattr(err, 'msg') else err} "
            "(object storage needs its fsspec driver: pip install 'craftsman-platform[cloud]')"
        ) from None
    except (ValueError, TypeError) as err:
        raise ConfigError(f"output_dir={url} / storage_options: {err}") from None


def parse_partition(text: str) -> tuple[int, int]:
    """ "i/n" -> (i, n), validated: the job takes the i-th of n disjoint slices of the objects."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"source.partition={text!r}: expected 'i/n', e.g. 0/4") from None
    if not 0 <= index < count:
        raise ConfigError(f"source.partition={text!r}: need 0 <= i < n")
    return index, count


def config_hash(cfg: PreprocessConfig) -> str:
    """Identity of what the output contains: geometry + render settings and the pipeline version."""
    ident = {
        "geometry": dataclasses.asdict(cfg.geometry),
        "render": dataclasses.asdict(cfg.render),
        "version": PIPELINE_VERSION,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def check_output(out: Output, digest: str) -> None:
    """Refuse an output written with another geometry/render config (nothing is written here)."""
    if out.exists("config.json"):
        previous = out.read_json("config.json")
        if previous["config_hash"] != digest:
            raise ConfigError(
                f"{out.display()} holds shards made with config hash {previous['config_hash']} (settings in "
                f"{out.display('config.json')}); this run's geometry/render settings hash to {digest}: use a new "
                "output_dir, or the same settings to resume"
            )


def claim_output(out: Output, cfg: PreprocessConfig, digest: str) -> None:
    """Record the config in OUT/config.json (once; a different config was refused by check_output)."""
    if out.exists("config.json"):
        return
    body = {
        "config_hash": digest,
        "pipeline_version": PIPELINE_VERSION,
        "geometry": dataclasses.asdict(cfg.geometry),
        "render": dataclasses.asdict(cfg.render),
    }
    out.write_json("config.json", body)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def preprocess(cfg: PreprocessConfig) -> dict:
    """Run (or resume) the job described by `cfg`; returns the summary.

    Nothing is written before the config, the sources and the output's lock check out. The
    manifest describes every object in the shards, every recorded failure and duplicate, whatever
    this run listed (a resume over a narrower listing keeps the earlier rows)."""
    validate(cfg)
    out = validate_output(cfg.output_dir, cfg.storage_options)
    digest = config_hash(cfg)
    check_output(out, digest)
    t0 = time.monotonic()
    listed = list_source(cfg.source)
    if not listed.estimate:
        raise NothingDone(f"no mesh files found in {_describe(cfg.source)}")
    with OutputLock(out, cfg.lock_stale_s) as lock:
        claim_output(out, cfg, digest)
        parts = ManifestParts(out)
        store = ShardStore(out, parts)
        committed, dropped = store.recover_shards(parts.shard_sizes())
        recovered = parts.reconcile(store, committed, dropped)
        partition = parse_partition(cfg.source.partition) if cfg.source.partition else None
        done = parts.done_batches(DONE_COLUMNS)
        done_rows = sum(out.sizes(MANIFEST_DIR).values()) // MANIFEST_BYTES_PER_ROW  # generous: one listing call
        captions = caption_batches(cfg.source.captions) if cfg.source.captions not in (None, "metadata") else None
        with make_plan(listed, done, cfg.retry_failed, partition, cfg.source.limit, cfg.source.group_max,
                       done_rows, captions) as plan:  # fmt: skip
            if not plan.stats["listed"]:
                raise NothingDone(f"no object of {_describe(cfg.source)} passes the filters")
            _record_listing(parts, plan)
            listing_s = time.monotonic() - t0
            done_before = sum(o.get("already_done", 0) for o in plan.stats["by_origin"].values())
            log.info("%d objects listed: %d already done, %d to process, %d new duplicates (%.1f s) -> %s",
                     plan.stats["listed"], done_before, plan.total, plan.stats["new_duplicates"], listing_s,
                     out.url)  # fmt: skip
            t1 = time.monotonic()
            counts, facts = (
                process_all(plan.groups(), plan.total, cfg, digest, store, lock)
                if plan.total
                else (Counter(), {"startup_s": 0.0, "peak": 0})
            )
            seconds = time.monotonic() - t1 - facts["startup_s"]
        store.remove_uncommitted()  # the shards are exactly what the journals, and so the manifest, name
        parts.flush()
        summary = summarize(out, seconds, plan.total, facts["peak"])
        run = summary["this_run"]
        run["ok"] = counts["ok"]
        run["writers"] = facts.get("writers", 0)
        run["driver_bytes_per_object"] = facts.get("driver_bytes", 0) / max(1, facts.get("results", 0))
        run["driver_cpu_ms_per_object"] = 1000 * facts.get("driver_cpu_s", 0) / max(1, plan.total)
        summary["listing"] = {**plan.stats, "seconds": round(listing_s, 2), **recovered}
        summary["config_hash"] = digest
        out.write_json("summary.json", summary)
    return summary


def _record_listing(parts: ManifestParts, plan: Plan) -> None:
    """The listing's verdicts into the manifest: rows it replaces leave first, then its new duplicates."""
    parts.supersede(pa.array(plan.superseded, pa.string()))
    tables, rows = [], 0
    for batch in plan.duplicates():
        tables.append(pa.Table.from_batches([batch]))
        rows += batch.num_rows
        if rows >= DUPLICATE_PART_ROWS:
            parts.write_part("duplicate", _duplicate_rows(pa.concat_tables(tables)))
            tables, rows = [], 0
    if rows:
        parts.write_part("duplicate", _duplicate_rows(pa.concat_tables(tables)))


def _duplicate_rows(table: pa.Table) -> pa.Table:
    n = table.num_rows
    given = {name: table.column(name) for name in table.column_names}
    given["status"] = pa.array(["duplicate"] * n, pa.string())
    return pa.table([given.get(f.name, pa.nulls(n, f.type)) for f in MANIFEST_SCHEMA], schema=MANIFEST_SCHEMA)


def _describe(src: SourceConfig) -> str:
    if src.kind == "objaverse":
        return f"Objaverse (source.uids={list(src.uids)[:3]}, source.lvis_categories={list(src.lvis_categories)})"
    if src.kind == "objaverse_xl":
        return (f"Objaverse-XL (source.xl_sources={list(src.xl_sources)}, source.file_types={list(src.file_types)}, "
                f"source.licenses={list(src.licenses)}, source.alignment={src.alignment})")  # fmt: skip
    return f"source.path={src.path}" + (f" (partition {src.partition})" if src.partition else "")


@hydra.main(config_path=CONF_DIR, config_name="preprocess", version_base="1.3")
def main(dcfg: DictConfig) -> None:
    cfg: PreprocessConfig = OmegaConf.to_object(dcfg)
    summary = preprocess(cfg)
    print(format_summary(summary))
    out = Output(cfg.output_dir, cfg.storage_options)
    print(
        f"shards: {out.display('shards')}  manifest: {out.display(MANIFEST_DIR)}/  "
        f"summary: {out.display('summary.json')}"
    )
    try:  # the data is complete either way: a report that cannot be made is a warning
        wandb = cfg.logger.wandb if cfg.logger.wandb.enabled else None
        print(format_result(write_report(out, cfg.report_gallery, wandb)))
    except Exception as err:  # noqa: BLE001
        log.warning("report.html not written (%s); `craft report output_dir=%s` retries it", err, out.display())
    run = summary["this_run"]
    if run["processed"] and not run["ok"]:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary["reasons"].items()))
        raise NothingDone(
            f"none of the {run['processed']} objects this run processed succeeded ({reasons}); "
            f"reasons per object in {out.display(MANIFEST_DIR)}/"
        )
