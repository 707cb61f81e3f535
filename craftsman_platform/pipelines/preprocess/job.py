"""`craft preprocess`: raw meshes -> WebDataset shards + manifest, on a local Ray or a cluster."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import statistics
import time
import zlib
from collections import Counter
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from craftsman_platform.errors import ConfigError, MissingInput, NothingDone, check_writable
from craftsman_platform.paths import CONF_DIR
from craftsman_platform.pipelines.lock import OutputLock
from craftsman_platform.pipelines.preprocess.config import PreprocessConfig, SourceConfig
from craftsman_platform.pipelines.preprocess.object_job import (
    PIPELINE_VERSION,
    RETRIED_ON_RERUN,
    STAGES,
    failure,
    manifest_row,
    run_object,
)
from craftsman_platform.pipelines.preprocess.sources import (
    ObjectRef,
    TransientError,
    folder_objects,
    list_file_objects,
    objaverse_objects,
)
from craftsman_platform.pipelines.shardstore import ShardStore
from craftsman_platform.raycluster import init_ray

log = logging.getLogger("craft.preprocess")
SOURCE_KINDS = ("auto", "folder", "list", "objaverse")


# ---------------------------------------------------------------------------------------------
# Inputs and config identity
# ---------------------------------------------------------------------------------------------


def validate(cfg: PreprocessConfig) -> None:
    """Values the schema cannot check, before anything is read or written; errors name the key."""
    for key, low in (("workers", 1), ("threads_per_task", 1), ("max_retries", 0)):
        if getattr(cfg, key) < low:
            raise ConfigError(f"{key} must be >= {low}, got {getattr(cfg, key)}")
    for key in ("timeout_s", "memory_per_task_gb", "shard_max_bytes", "lock_stale_s"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key} must be > 0, got {getattr(cfg, key)}")
    check_writable(cfg.output_dir, "output_dir")
    src = cfg.source
    if src.kind not in SOURCE_KINDS:
        raise ConfigError(f"source.kind={src.kind!r}: expected one of {', '.join(SOURCE_KINDS)}")
    if src.kind != "objaverse":
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


def resolve_sources(src: SourceConfig) -> list[ObjectRef]:
    kind = src.kind
    if kind == "auto":
        kind = "folder" if Path(src.path).is_dir() else "list"
    if kind == "folder":
        refs = folder_objects(src.path)
    elif kind == "list":
        refs = list_file_objects(src.path)
    elif kind == "objaverse":
        refs = objaverse_objects(
            src.uids or None,
            src.lvis_categories or None,
            src.cache_dir,
            src.annotations,
            src.limit,
            src.download_processes,
        )
    refs = list({r.uid: r for r in refs}.values())
    if src.partition:
        index, count = parse_partition(src.partition)
        refs = [r for r in refs if zlib.crc32(r.uid.encode()) % count == index]
    return refs[: src.limit] if src.limit else refs


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


def check_output(out: Path, digest: str) -> None:
    """Refuse an output written with another geometry/render config (nothing is written here)."""
    path = out / "config.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous["config_hash"] != digest:
            raise ConfigError(
                f"{out} holds shards made with config hash {previous['config_hash']} (settings in {path}); this "
                f"run's geometry/render settings hash to {digest}: use a new output_dir, or the same settings to resume"
            )


def claim_output(out: Path, cfg: PreprocessConfig, digest: str) -> None:
    """Record the config in OUT/config.json (once; a different config was refused by check_output)."""
    path = out / "config.json"
    if path.exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    body = {
        "config_hash": digest,
        "pipeline_version": PIPELINE_VERSION,
        "geometry": dataclasses.asdict(cfg.geometry),
        "render": dataclasses.asdict(cfg.render),
    }
    path.write_text(json.dumps(body, indent=2))


# ---------------------------------------------------------------------------------------------
# Running on Ray
# ---------------------------------------------------------------------------------------------


def start_ray(cfg: PreprocessConfig):
    threads = str(cfg.threads_per_task)
    return init_ray(cfg.ray, num_cpus=cfg.workers, env_vars={"CRAFT_THREADS": threads, "OMP_NUM_THREADS": threads})


def _crash_reason(error: Exception) -> tuple[str, str]:
    import ray.exceptions as rex

    cause = getattr(error, "cause", None)  # a RayTaskError carries the task's own exception
    if isinstance(cause, TransientError):
        return "fetch_failed", str(cause)[:500]
    if isinstance(error, (rex.WorkerCrashedError, rex.OutOfMemoryError, rex.NodeDiedError)):
        return "worker_crashed", f"{type(error).__name__}: {str(error)[:300]}"
    return "error", f"{type(error).__name__}: {str(error)[:300]}"


def process_all(
    todo: list[ObjectRef], cfg: PreprocessConfig, digest: str, store: ShardStore
) -> tuple[dict[str, dict], float]:
    """Run every object on Ray, stream results into shards; (this run's rows by uid, Ray start seconds)."""
    t0 = time.monotonic()
    ray = start_ray(cfg)
    startup = time.monotonic() - t0
    task = ray.remote(run_object).options(
        num_cpus=1,
        memory=int(cfg.memory_per_task_gb * 2**30),
        max_retries=cfg.max_retries,
        retry_exceptions=[TransientError],
    )
    cfg_ref = ray.put(cfg)
    rows: dict[str, dict] = {}
    pending: dict = {}  # ObjectRef of the task -> (object, submit time)
    queue = iter(todo)
    counts = Counter()
    bar = tqdm(total=len(todo), desc="objects", unit="obj", smoothing=0.05)

    def record(result: dict) -> None:
        row = result["row"]
        if result["status"] == "ok":
            row = {**row, "shard": store.add(result["uid"], result["members"], row)}
        else:
            store.add_failed(row)
        rows[result["uid"]] = row
        counts[result["status"]] += 1
        bar.update(1)
        bar.set_postfix(ok=counts["ok"], failed=counts["failed"])

    try:
        exhausted = False
        while pending or not exhausted:
            while not exhausted and len(pending) < cfg.workers:
                obj = next(queue, None)
                if obj is None:
                    exhausted = True
                    break
                pending[task.remote(obj, cfg_ref, digest)] = (obj, time.monotonic())
            if not pending:
                break
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                obj, _ = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as e:  # the task itself died or gave up retrying
                    result = failure({"uid": obj.uid, "source": obj.source, "config_hash": digest}, *_crash_reason(e))
                record(result)  # a write error here (disk full) stops the job: it is not the object's fault
            now = time.monotonic()
            for ref, (obj, started) in list(pending.items()):
                if now - started > cfg.timeout_s:
                    ray.cancel(ref, force=True)  # kills the worker process, not the job
                    pending.pop(ref)
                    record(
                        failure(
                            {"uid": obj.uid, "source": obj.source, "config_hash": digest},
                            "timeout",
                            f"no result after {cfg.timeout_s:.0f} s (timeout_s); the worker was killed",
                        )
                    )
    finally:
        bar.close()
        store.close()
        ray.shutdown()
    return rows, startup


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------


def summarize(rows: list[dict], seconds: float, processed: int, workers: int) -> dict:
    """Counts, reasons, quality distributions, stage medians and this run's throughput."""
    ok = [r for r in rows if r["status"] == "ok"]

    def med(key):
        vals = [r[key] for r in ok if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    def pct(key, q):
        vals = sorted(r[key] for r in ok if r.get(key) is not None)
        return vals[min(len(vals) - 1, int(q * len(vals)))] if vals else None

    return {
        "objects": len(rows),
        "ok": len(ok),
        "failed": len(rows) - len(ok),
        "reasons": dict(Counter(r["reason"] for r in rows if r["status"] != "ok")),
        "watertight_methods": dict(Counter(r["watertight_method"] for r in ok)),
        "chamfer": {"median": med("chamfer"), "p90": pct("chamfer", 0.9)},
        "sign_agreement": {
            "min": min((r["sign_agreement"] for r in ok), default=None),
            "median": med("sign_agreement"),
        },
        "parts_lost_total": sum(r["parts_lost"] for r in ok),
        "stage_median_seconds": {s: med(f"time_{s}") for s in STAGES},
        "this_run": {
            "processed": processed,
            "seconds": seconds,
            "workers": workers,  # seconds: Ray start excluded
            "objects_per_second": processed / seconds if seconds > 0 else None,
        },
    }


def format_summary(s: dict) -> str:
    lines = [f"objects {s['objects']}: ok {s['ok']}, failed {s['failed']}"]
    lines += [f"  failed {reason:<20} {n}" for reason, n in sorted(s["reasons"].items())]
    if s["ok"]:
        lines.append(f"watertight methods: {s['watertight_methods']}; source parts lost: {s['parts_lost_total']}")
        lines.append(
            f"chamfer median {s['chamfer']['median']:.4f} p90 {s['chamfer']['p90']:.4f}; "
            f"sign agreement min {s['sign_agreement']['min']:.4f} median {s['sign_agreement']['median']:.4f}"
        )
        lines.append(
            "stage medians (s): "
            + ", ".join(f"{k} {v:.2f}" for k, v in s["stage_median_seconds"].items() if v is not None)
        )
    run = s["this_run"]
    if run["processed"]:
        lines.append(
            f"this run: {run['processed']} objects in {run['seconds']:.1f} s with {run['workers']} workers "
            f"({run['objects_per_second']:.2f} objects/s)"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def preprocess(cfg: PreprocessConfig) -> dict:
    """Run (or resume) the job described by `cfg`; returns the summary.

    Nothing is written before the config, the sources and the output's lock check out. The
    manifest describes every object in the shards and every recorded failure, whatever this run
    listed (a resume over a narrower listing keeps the earlier rows)."""
    validate(cfg)
    out = Path(cfg.output_dir).resolve()
    digest = config_hash(cfg)
    check_output(out, digest)
    refs = resolve_sources(cfg.source)
    if not refs:
        raise NothingDone(f"no mesh files found in {_describe(cfg.source)}")
    with OutputLock(out, cfg.lock_stale_s):
        claim_output(out, cfg, digest)
        store = ShardStore(out, cfg.shard_max_bytes, manifest_row)
        done_ok, done_failed = store.recover()
        retry = (
            set(done_failed)
            if cfg.retry_failed
            else {u for u, r in done_failed.items() if r["reason"] in RETRIED_ON_RERUN}
        )
        todo = [r for r in refs if r.uid not in done_ok and (r.uid not in done_failed or r.uid in retry)]
        log.info("%d objects: %d already done, %d to process -> %s", len(refs), len(refs) - len(todo), len(todo), out)
        t0 = time.monotonic()
        fresh, startup = process_all(todo, cfg, digest, store) if todo else ({}, 0.0)
        seconds = time.monotonic() - t0 - startup
        rows = {**done_failed, **done_ok, **fresh}
        store.write_manifest(list(rows.values()))
        summary = summarize(list(rows.values()), seconds, len(todo), cfg.workers)
        summary["this_run"]["ok"] = sum(r["status"] == "ok" for r in fresh.values())
        summary["config_hash"] = digest
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _describe(src: SourceConfig) -> str:
    if src.kind == "objaverse":
        return f"Objaverse (source.uids={list(src.uids)[:3]}, source.lvis_categories={list(src.lvis_categories)})"
    return f"source.path={src.path}" + (f" (partition {src.partition})" if src.partition else "")


@hydra.main(config_path=CONF_DIR, config_name="preprocess", version_base="1.3")
def main(dcfg: DictConfig) -> None:
    cfg: PreprocessConfig = OmegaConf.to_object(dcfg)
    summary = preprocess(cfg)
    print(format_summary(summary))
    out = Path(cfg.output_dir)
    print(f"shards: {out / 'shards'}  manifest: {out / 'manifest.parquet'}  summary: {out / 'summary.json'}")
    run = summary["this_run"]
    if run["processed"] and not run["ok"]:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary["reasons"].items()))
        raise NothingDone(
            f"none of the {run['processed']} objects this run processed succeeded ({reasons}); "
            f"reasons per object in {out / 'manifest.parquet'}"
        )
