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

from pipelines.config import CONF_DIR, PreprocessConfig, SourceConfig, register_configs
from pipelines.object_job import PIPELINE_VERSION, STAGES, failure, run_object
from pipelines.raycluster import init_ray
from pipelines.shards import ShardStore
from pipelines.sources import ObjectRef, TransientError, folder_objects, list_file_objects, objaverse_objects

log = logging.getLogger("craft.preprocess")
register_configs()


# ---------------------------------------------------------------------------------------------
# Inputs and config identity
# ---------------------------------------------------------------------------------------------


def resolve_sources(src: SourceConfig) -> list[ObjectRef]:
    kind = src.kind
    if kind == "auto":
        if not src.path:
            raise ValueError("source.path is required (a folder or a list file), or set source.kind=objaverse")
        kind = "folder" if Path(src.path).is_dir() else "list"
    if kind == "folder":
        refs = folder_objects(src.path)
    elif kind == "list":
        if not src.path or not Path(src.path).is_file():
            raise FileNotFoundError(f"source.path={src.path} is not a list file")
        refs = list_file_objects(src.path)
    elif kind == "objaverse":
        refs = objaverse_objects(src.uids or None, src.lvis_categories or None, src.cache_dir, src.annotations,
                                 src.limit, src.download_processes)
    else:
        raise ValueError(f"source.kind={kind!r}: expected auto, folder, list or objaverse")
    refs = list({r.uid: r for r in refs}.values())
    if src.partition:
        index, count = parse_partition(src.partition)
        refs = [r for r in refs if zlib.crc32(r.uid.encode()) % count == index]
    return refs[: src.limit] if src.limit else refs


def parse_partition(text: str) -> tuple[int, int]:
    """"i/n" -> (i, n), validated: the job takes the i-th of n disjoint slices of the objects."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"source.partition={text!r}: expected 'i/n', e.g. 0/4") from None
    if not 0 <= index < count:
        raise ValueError(f"source.partition={text!r}: need 0 <= i < n")
    return index, count


def config_hash(cfg: PreprocessConfig) -> str:
    """Identity of what the output contains: geometry + render settings and the pipeline version."""
    ident = {"geometry": dataclasses.asdict(cfg.geometry), "render": dataclasses.asdict(cfg.render), "version": PIPELINE_VERSION}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def claim_output(out: Path, cfg: PreprocessConfig, digest: str) -> None:
    """Record the config in OUT/config.json, or refuse an output written with another config."""
    path = out / "config.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous["config_hash"] != digest:
            raise SystemExit(
                f"craft preprocess: {out} holds shards made with config hash {previous['config_hash']} "
                f"(settings in {path}); this run's geometry/render settings hash to {digest}. "
                "Use a new output_dir, or the same settings to resume."
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    body = {"config_hash": digest, "pipeline_version": PIPELINE_VERSION,
            "geometry": dataclasses.asdict(cfg.geometry), "render": dataclasses.asdict(cfg.render)}
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


def process_all(todo: list[ObjectRef], cfg: PreprocessConfig, digest: str, store: ShardStore) -> tuple[dict[str, dict], float]:
    """Run every object on Ray, stream results into shards; (this run's rows by uid, Ray start seconds)."""
    t0 = time.monotonic()
    ray = start_ray(cfg)
    startup = time.monotonic() - t0
    task = ray.remote(run_object).options(
        num_cpus=1, memory=int(cfg.memory_per_task_gb * 2**30), max_retries=cfg.max_retries,
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
                    record(failure({"uid": obj.uid, "source": obj.source, "config_hash": digest}, "timeout",
                                   f"no result after {cfg.timeout_s:.0f} s (timeout_s); the worker was killed"))
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
        "objects": len(rows), "ok": len(ok), "failed": len(rows) - len(ok),
        "reasons": dict(Counter(r["reason"] for r in rows if r["status"] != "ok")),
        "watertight_methods": dict(Counter(r["watertight_method"] for r in ok)),
        "chamfer": {"median": med("chamfer"), "p90": pct("chamfer", 0.9)},
        "sign_agreement": {"min": min((r["sign_agreement"] for r in ok), default=None), "median": med("sign_agreement")},
        "parts_lost_total": sum(r["parts_lost"] for r in ok),
        "stage_median_seconds": {s: med(f"time_{s}") for s in STAGES},
        "this_run": {"processed": processed, "seconds": seconds, "workers": workers,  # seconds: Ray start excluded
                     "objects_per_second": processed / seconds if seconds > 0 else None},
    }


def format_summary(s: dict) -> str:
    lines = [f"objects {s['objects']}: ok {s['ok']}, failed {s['failed']}"]
    lines += [f"  failed {reason:<20} {n}" for reason, n in sorted(s["reasons"].items())]
    if s["ok"]:
        lines.append(f"watertight methods: {s['watertight_methods']}; source parts lost: {s['parts_lost_total']}")
        lines.append(f"chamfer median {s['chamfer']['median']:.4f} p90 {s['chamfer']['p90']:.4f}; "
                     f"sign agreement min {s['sign_agreement']['min']:.4f} median {s['sign_agreement']['median']:.4f}")
        lines.append("stage medians (s): " + ", ".join(f"{k} {v:.2f}" for k, v in s["stage_median_seconds"].items() if v is not None))
    run = s["this_run"]
    if run["processed"]:
        lines.append(f"this run: {run['processed']} objects in {run['seconds']:.1f} s with {run['workers']} workers "
                     f"({run['objects_per_second']:.2f} objects/s)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def preprocess(cfg: PreprocessConfig) -> dict:
    """Run (or resume) the job described by `cfg`; returns the summary."""
    out = Path(cfg.output_dir).resolve()
    digest = config_hash(cfg)
    claim_output(out, cfg, digest)
    store = ShardStore(out, cfg.shard_max_bytes)
    done_ok, done_failed = store.recover()
    refs = resolve_sources(cfg.source)
    skip = set(done_ok) | (set() if cfg.retry_failed else set(done_failed))
    todo = [r for r in refs if r.uid not in skip]
    log.info("%d objects: %d already done, %d to process -> %s", len(refs), len(refs) - len(todo), len(todo), out)
    t0 = time.monotonic()
    fresh, startup = process_all(todo, cfg, digest, store) if todo else ({}, 0.0)
    seconds = time.monotonic() - t0 - startup
    rows = {**done_failed, **done_ok, **fresh}
    wanted = {r.uid for r in refs}
    final = [rows[u] for u in sorted(rows) if u in wanted]
    store.write_manifest(final)
    summary = summarize(final, seconds, len(todo), cfg.workers)
    summary["config_hash"] = digest
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


@hydra.main(config_path=CONF_DIR, config_name="preprocess", version_base="1.3")
def main(dcfg: DictConfig) -> None:
    cfg: PreprocessConfig = OmegaConf.to_object(dcfg)
    summary = preprocess(cfg)
    print(format_summary(summary))
    out = Path(cfg.output_dir)
    print(f"shards: {out / 'shards'}  manifest: {out / 'manifest.parquet'}  summary: {out / 'summary.json'}")
