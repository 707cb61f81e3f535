"""`craft evaluate checkpoint=PATH data.eval_shards=GLOB output_dir=DIR` (or `watch=true run_dir=DIR`).

VAE checkpoints: each held-out object is encoded (posterior mean) and decoded; diffusion
checkpoints: a mesh is generated from the object's 4 canonical views. Either way the prediction is
scored against the object's stored ground truth (IoU on its query points; Chamfer, F-score and
normal consistency against its surface samples) and rendered from the shard's own cameras beside
the shard's views. Writes DIR/metrics.json, DIR/objects.csv, DIR/history.jsonl (one line per
evaluated checkpoint), DIR/report.html, and logs to W&B (offline by default).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Optional

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from craftsman_platform.errors import ConfigError, MissingInput, NothingDone, check_writable
from craftsman_platform.evaluation.config import EvalConfig
from craftsman_platform.evaluation.objects import ObjectReader
from craftsman_platform.evaluation.report import write_report
from craftsman_platform.evaluation.scoring import Models, load_models, score_batch
from craftsman_platform.inference.runtime import resolve_device
from craftsman_platform.models.checkpoints import latest_checkpoint, list_checkpoints, read_meta
from craftsman_platform.models.extraction import MAX_DEPTH
from craftsman_platform.paths import CONF_DIR

log = logging.getLogger("craft.evaluate")


def evaluate_checkpoint(
    ckpt: Path, cfg: EvalConfig, out: Path, device: torch.device, cached: Optional[Models] = None
) -> tuple[dict, Models]:
    """Score one checkpoint on the eval shards; writes meshes, renders and the per-object table."""
    meta = read_meta(ckpt)
    step = meta["step"]
    tag = f"step-{step:07d}"
    (out / "meshes" / tag).mkdir(parents=True, exist_ok=True)
    (out / "renders" / tag).mkdir(parents=True, exist_ok=True)
    models = load_models(ckpt, cfg.ema, device, cached)
    text = models.gen is not None and models.gen.text  # objects without a caption cannot be asked for
    reader = ObjectReader(cfg.data.eval_shards, cfg.data.max_objects, views=True, captions=text)
    rows: list[dict] = []
    with tqdm(desc=f"evaluate {tag}", unit="obj", total=cfg.data.max_objects) as bar:
        for batch in reader.batches(cfg.batch_size):
            rows += score_batch(models, batch, cfg, device, out, tag)
            bar.update(len(batch))
    if not rows:
        raise RuntimeError(
            f"data.eval_shards={cfg.data.eval_shards}: no readable object "
            f"({reader.skipped} unreadable shards or samples skipped)"
        )
    keys = [k for k in rows[0] if k not in ("uid", "prompt")]
    agg = {k: float(np.nanmean([r[k] for r in rows])) for k in keys if k != "faces"}
    result = {
        "checkpoint": str(ckpt),
        "step": step,
        "kind": models.kind,
        "weights": models.weights,
        "objects": len(rows),
        "skipped": reader.skipped,
        "without_caption": reader.uncaptioned,  # text checkpoints: objects left out (no prompt to give)
        "device": str(device),
        "metrics": agg,
        "evaluated_at": time.time(),
        "output_root": str(out),
    }
    with open(out / "objects.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "uid", *(["prompt"] if text else []), *keys])
        writer.writeheader()
        writer.writerows({"step": step, **r} for r in rows)
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    # one line per checkpoint step: evaluating a step again replaces its line
    lines = [json.dumps(h) for h in read_history(out) if h["step"] != step] + [json.dumps(result)]
    (out / "history.jsonl").write_text("\n".join(lines) + "\n")
    result["rows"] = rows
    return result, models


def read_history(out: Path) -> list[dict]:
    path = out / "history.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def validate(cfg: EvalConfig) -> Optional[Path]:
    """Everything checked before anything is written; returns the checkpoint (None in watch mode)."""
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if not 1 <= cfg.depth <= MAX_DEPTH:
        raise ConfigError(f"depth must be in [1, {MAX_DEPTH}], got {cfg.depth}")
    resolve_device(cfg.device)
    check_writable(cfg.output_dir, "output_dir")
    ObjectReader(cfg.data.eval_shards)  # the glob matches shards
    if cfg.watch:
        if not cfg.run_dir:
            raise ConfigError("watch=true needs run_dir=DIR (the training run to follow)")
        if not Path(cfg.run_dir).is_dir():
            raise MissingInput(f"run_dir={cfg.run_dir} does not exist")
        return None
    ckpt = latest_checkpoint(cfg.checkpoint) if cfg.checkpoint else None
    if ckpt is None:
        raise MissingInput(f"checkpoint={cfg.checkpoint}: no checkpoint there")
    return ckpt


@contextlib.contextmanager
def output_dir(path: Path):
    """The output folder, created for the run; removed again if the run fails before writing to it."""
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        if created and not any(path.rglob("*.*")):  # only empty folders (meshes/, renders/) inside
            shutil.rmtree(path, ignore_errors=True)
        raise


def run(cfg: EvalConfig) -> list[dict]:
    """Evaluate `checkpoint`, or in watch mode every checkpoint of `run_dir` once, in step order."""
    ckpt = validate(cfg)
    device = resolve_device(cfg.device)
    with output_dir(Path(cfg.output_dir)) as out:
        return [evaluate_and_report(ckpt, cfg, out, device)[0]] if ckpt is not None else watch(cfg, out, device)


def evaluate_and_report(
    ckpt: Path, cfg: EvalConfig, out: Path, device: torch.device, models: Optional[Models] = None, dash=None
) -> tuple[dict, Models]:
    from craftsman_platform.evaluation.dashboard import Dashboard

    own = dash is None
    dash = dash or Dashboard(out, cfg)
    result, models = evaluate_checkpoint(ckpt, cfg, out, device, models)
    dash.log(result)
    write_report(out, read_history(out), result)
    if own:
        dash.close()
    return result, models


def watch(cfg: EvalConfig, out: Path, device: torch.device) -> list[dict]:
    """Every checkpoint of `run_dir` once, in step order, until its last step or an idle timeout."""
    from craftsman_platform.evaluation.dashboard import Dashboard

    root = Path(cfg.run_dir) / "checkpoints"
    done = {h["step"] for h in read_history(out)}
    dash = Dashboard(out, cfg)
    results, idle_since, models = [], time.time(), None
    while True:
        new = [c for c in list_checkpoints(root) if read_meta(c)["step"] not in done]
        for ckpt in new:
            result, models = evaluate_and_report(ckpt, cfg, out, device, models, dash)
            done.add(result["step"])
            results.append(result)
            idle_since = time.time()
            log.info("evaluated step %d: %s", result["step"], _short(result["metrics"]))
        final = _run_max_steps(cfg.run_dir)
        if cfg.stop_at_max_steps and final is not None and final in done:
            break
        if time.time() - idle_since > cfg.idle_timeout_s:
            if not done:
                dash.close()
                raise NothingDone(
                    f"run_dir={cfg.run_dir}: no checkpoint appeared within idle_timeout_s={cfg.idle_timeout_s:.0f}"
                )
            log.info("no new checkpoint for %.0f s: watch ends", cfg.idle_timeout_s)
            break
        time.sleep(cfg.poll_s)
    dash.close()
    return results


def _run_max_steps(run_dir: str) -> Optional[int]:
    path = Path(run_dir) / "config.yaml"
    return OmegaConf.load(path).trainer.max_steps if path.exists() else None


def _short(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if not math.isnan(v))


@hydra.main(config_path=CONF_DIR, config_name="evaluate", version_base="1.3")
def main(dcfg: DictConfig) -> None:
    cfg: EvalConfig = OmegaConf.to_object(dcfg)
    results = run(cfg)
    for result in results:
        skipped = f", {result['skipped']} unreadable skipped" if result["skipped"] else ""
        print(
            f"step {result['step']} ({result['kind']}, {result['weights']} weights, "
            f"{result['objects']} objects{skipped}, "
            f"{result['device']}): {_short(result['metrics'])}"
        )
    report = Path(cfg.output_dir) / "report.html"
    if report.exists():
        print(f"report: {report}")
    if not results:
        print(f"nothing new: every checkpoint of {cfg.run_dir} is already in {Path(cfg.output_dir) / 'history.jsonl'}")
