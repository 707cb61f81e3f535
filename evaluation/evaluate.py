"""`craft evaluate checkpoint=PATH data.eval_shards=GLOB output_dir=DIR` (or `watch=true run_dir=DIR`).

VAE checkpoints: each held-out object is encoded (posterior mean) and decoded; diffusion
checkpoints: a mesh is generated from the object's 4 canonical views. Either way the prediction is
scored against the object's stored ground truth (IoU on its query points; Chamfer, F-score and
normal consistency against its surface samples) and rendered from the shard's own cameras beside
the shard's views. Writes DIR/metrics.json, DIR/objects.csv, DIR/history.jsonl (one line per
evaluated checkpoint), DIR/report.html, and logs to W&B (offline by default).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import hydra
import numpy as np
import torch
import webdataset as wds
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from PIL import Image
from tqdm import tqdm

from evaluation.metrics import empty_mesh_metrics, encoder_input, field_iou, npy, sample_surface, surface_metrics
from evaluation.render import render_pair
from evaluation.report import write_report
from inference.pipeline import Generator, load_vae
from models.extraction import export_mesh, extract_mesh
from pipelines.config import CONF_DIR
from training.checkpoint import latest_checkpoint, list_checkpoints, read_meta
from training.data import expand_urls

log = logging.getLogger("craft.evaluate")


@dataclass
class EvalDataConfig:
    eval_shards: str = MISSING
    max_objects: Optional[int] = None


@dataclass
class EvalConfig:
    checkpoint: Optional[str] = None  # a checkpoint dir, or a run dir (its latest checkpoint)
    run_dir: Optional[str] = None  # watch mode: evaluate every checkpoint of this run as it appears
    output_dir: str = MISSING
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    ema: bool = True  # EMA weights when the checkpoint has them; false: the raw weights
    depth: int = 7  # octree depth of the extracted meshes ((2^depth + 1)^3 grid)
    surface_samples: int = 100_000  # points per side for Chamfer / F-score / normal consistency
    render_size: int = 192
    steps: Optional[int] = None  # diffusion: sampling steps (default: the model's config)
    guidance: Optional[float] = None
    sampler: Optional[str] = None
    seed: int = 0
    watch: bool = False
    poll_s: float = 10.0
    idle_timeout_s: float = 600.0  # watch mode ends after this long without a new checkpoint...
    stop_at_max_steps: bool = True  # ...or once the run's final checkpoint is evaluated
    wandb_mode: str = "offline"  # offline, online, disabled
    wandb_project: str = "craftsman-platform"


ConfigStore.instance().store(name="evaluate_schema", node=EvalConfig)


def _objects(cfg: EvalConfig):
    dataset = wds.WebDataset(expand_urls(cfg.data.eval_shards), shardshuffle=False, empty_check=False)
    for i, sample in enumerate(dataset):
        if cfg.data.max_objects is not None and i >= cfg.data.max_objects:
            return
        yield sample


def _views(sample: dict, n: int = 4):
    """The shard's first n views (the canonical set): uint8 RGB (n, H, W, 3) and their cameras."""
    cams = json.loads(sample["cameras.json"])["views"][:n]
    rgb = np.stack([np.asarray(Image.open(io.BytesIO(sample[f"rgb_{i:03d}.png"])).convert("RGB")) for i in range(n)])
    return rgb, cams


def evaluate_checkpoint(ckpt: Path, cfg: EvalConfig, out: Path) -> dict:
    """Score one checkpoint on the eval shards; writes meshes, renders and the per-object table."""
    meta = read_meta(ckpt)
    kind = meta["config"]["model"]["kind"]
    step = meta["step"]
    tag = f"step-{step:07d}"
    (out / "meshes" / tag).mkdir(parents=True, exist_ok=True)
    (out / "renders" / tag).mkdir(parents=True, exist_ok=True)
    if kind == "vae":
        vae, _, which = load_vae(ckpt, cfg.ema)
        gen = None
    else:
        gen = Generator.load(ckpt, cfg.ema)
        vae, which = gen.vae, gen.weights
    rows = []
    for sample in tqdm(list(_objects(cfg)), desc=f"evaluate {tag}", unit="obj"):
        uid = sample["__key__"]
        start = time.perf_counter()
        with torch.no_grad():
            if gen is None:
                latents = vae.encode(encoder_input(sample, vae.cfg.num_inputs, cfg.seed), sample=False)
            else:
                rgb, cams = _views(sample)
                size = gen.cfg.data.image_size
                images = torch.from_numpy(rgb).permute(0, 3, 1, 2).float()[None] / 255.0
                images = torch.nn.functional.interpolate(images[0], size=(size, size), mode="bilinear", antialias=True)[None]
                c2w = torch.tensor(np.stack([c["c2w"] for c in cams]), dtype=torch.float32)[None]
                latents = gen.latents(images, c2w, cfg.steps, cfg.guidance, cfg.sampler, cfg.seed)
            tokens = vae.decode(latents)
        mesh, stats = extract_mesh(lambda xyz: vae.inside_field(tokens, xyz[None])[0], depth=cfg.depth)
        row = {"uid": uid, **field_iou(vae, tokens, sample)}
        surface = npy(sample, "surface.npy")
        if len(mesh.faces):
            row.update(surface_metrics(sample_surface(mesh, cfg.surface_samples, cfg.seed), (surface[:, :3], surface[:, 3:6])))
            export_mesh(mesh, out / "meshes" / tag / f"{uid}.glb")
        else:
            row.update(empty_mesh_metrics())
        row["faces"] = len(mesh.faces)
        row["seconds"] = time.perf_counter() - start
        rgb, cams = _views(sample)
        render_pair(rgb, cams, mesh, out / "renders" / tag / f"{uid}.png", cfg.render_size)
        rows.append(row)
    keys = [k for k in rows[0] if k not in ("uid",)] if rows else []
    agg = {k: float(np.nanmean([r[k] for r in rows])) if rows else float("nan") for k in keys if k != "faces"}
    result = {"checkpoint": str(ckpt), "step": step, "kind": kind, "weights": which, "objects": len(rows),
              "metrics": agg, "evaluated_at": time.time(), "output_root": str(out)}
    with open(out / "objects.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "uid", *keys])
        writer.writeheader()
        writer.writerows({"step": step, **r} for r in rows)
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    # one line per checkpoint step: evaluating a step again replaces its line
    lines = [json.dumps(h) for h in read_history(out) if h["step"] != step] + [json.dumps(result)]
    (out / "history.jsonl").write_text("\n".join(lines) + "\n")
    result["rows"] = rows
    return result


def read_history(out: Path) -> list[dict]:
    path = out / "history.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def run(cfg: EvalConfig) -> list[dict]:
    """Evaluate `checkpoint`, or in watch mode every checkpoint of `run_dir` once, in step order."""
    from evaluation.dashboard import Dashboard

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.watch:
        ckpt = latest_checkpoint(cfg.checkpoint) if cfg.checkpoint else None
        if ckpt is None:
            raise FileNotFoundError(f"checkpoint={cfg.checkpoint}: no checkpoint there")
        dash = Dashboard(out, cfg)
        result = evaluate_checkpoint(ckpt, cfg, out)
        dash.log(result)
        write_report(out, read_history(out), result)
        dash.close()
        return [result]
    if not cfg.run_dir:
        raise ValueError("watch=true needs run_dir=DIR (the training run to follow)")
    root = Path(cfg.run_dir) / "checkpoints"
    done = {h["step"] for h in read_history(out)}
    dash = Dashboard(out, cfg)
    results, idle_since = [], time.time()
    while True:
        new = [c for c in list_checkpoints(root) if read_meta(c)["step"] not in done]
        for ckpt in new:
            result = evaluate_checkpoint(ckpt, cfg, out)
            done.add(result["step"])
            dash.log(result)
            write_report(out, read_history(out), result)
            results.append(result)
            idle_since = time.time()
            log.info("evaluated step %d: %s", result["step"], _short(result["metrics"]))
        final = _run_max_steps(cfg.run_dir)
        if cfg.stop_at_max_steps and final is not None and final in done:
            break
        if time.time() - idle_since > cfg.idle_timeout_s:
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
    for result in run(cfg):
        print(f"step {result['step']} ({result['kind']}, {result['weights']} weights, {result['objects']} objects): "
              f"{_short(result['metrics'])}")
    print(f"report: {Path(cfg.output_dir) / 'report.html'}")
