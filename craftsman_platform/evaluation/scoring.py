"""Scoring one checkpoint: several held-out objects per forward pass, on the evaluation's device.

VAE checkpoints: each object is encoded (posterior mean) and decoded; diffusion checkpoints: a mesh
is generated from the object's 4 canonical views, or (text checkpoints) from its first caption.
The prediction is scored against the object's
stored ground truth and rendered from the shard's own cameras beside the shard's views.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import load_file

from craftsman_platform.evaluation.metrics import (
    empty_mesh_metrics,
    encoder_input,
    field_iou,
    sample_surface,
    surface_metrics,
)
from craftsman_platform.evaluation.render import render_pair
from craftsman_platform.inference.pipeline import Generator, decode_meshes
from craftsman_platform.inference.runtime import autocast
from craftsman_platform.models.checkpoints import load_vae, read_meta
from craftsman_platform.models.extraction import export_mesh
from craftsman_platform.models.shape_vae import ShapeVAE
from craftsman_platform.shapedata.captions import decode_captions
from craftsman_platform.shapedata.sample import CAPTIONS, read_cameras
from craftsman_platform.shapedata.views import SET_SIZE, shard_views


@dataclass
class Models:
    """What a checkpoint needs at evaluation: its VAE, and for diffusion its generator."""

    kind: str
    vae: ShapeVAE
    gen: Optional[Generator]
    weights: str  # 'ema' or 'raw'
    key: str  # the model config (and VAE) these modules were built for


def load_models(ckpt: Path, prefer_ema: bool, device: torch.device, cached: Optional[Models] = None) -> Models:
    """The checkpoint's models on `device`. In watch mode consecutive checkpoints share their
    architecture: the modules already built (CLIP and the frozen VAE included) only get new weights."""
    meta = read_meta(ckpt)
    model_cfg = meta["config"]["model"]
    key = json.dumps([model_cfg, meta.get("vae_checkpoint")], sort_keys=True, default=str)
    ema = prefer_ema and (ckpt / "ema.safetensors").exists()
    if cached is not None and cached.key == key:
        state = load_file(ckpt / "weights.safetensors", device=str(device))
        if ema:
            state.update(load_file(ckpt / "ema.safetensors", device=str(device)))
        target = cached.vae if cached.kind == "vae" else cached.gen.model
        target.load_state_dict(state, strict=cached.kind == "vae")
        if cached.gen is not None:
            cached.gen.step = meta["step"]
        cached.weights = "ema" if ema else "raw"
        return cached
    if model_cfg["kind"] == "vae":
        vae, _, which = load_vae(ckpt, prefer_ema, device)
        return Models("vae", vae, None, which, key)
    gen = Generator.load(ckpt, prefer_ema, device)
    return Models("diffusion", gen.vae, gen, gen.weights, key)


@torch.no_grad()
def predict_latents(models: Models, samples: list[dict], cfg, device: torch.device) -> torch.Tensor:
    """(B, L, C) latents for a batch: the VAE's posterior means, or generated from the canonical views."""
    if models.kind == "vae":
        points = torch.cat([encoder_input(s, models.vae.cfg.num_inputs, cfg.seed) for s in samples]).to(device)
        with autocast(device):
            return models.vae.encode(points, sample=False)
    if models.gen.text:  # the object's caption: the first of its captions
        context = models.gen.condition_text([prompt_of(s) for s in samples])
        return models.gen.sample(context, cfg.steps, cfg.guidance, cfg.sampler, cfg.seed)
    views = [canonical_views(s, models.gen.image_size) for s in samples]
    images = torch.from_numpy(np.stack([v[0] for v in views]))
    c2w = torch.from_numpy(np.stack([v[1] for v in views]))
    return models.gen.latents(images, c2w, cfg.steps, cfg.guidance, cfg.sampler, cfg.seed)


def prompt_of(sample: dict) -> str:
    """A held-out object's prompt for a text checkpoint: its first caption."""
    return decode_captions(sample.get(CAPTIONS))[0]


def canonical_views(sample: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A held-out object's condition: its canonical front/right/back/left views and cameras."""
    return shard_views(sample, range(SET_SIZE), size)


def score_batch(models: Models, samples: list[dict], cfg, device: torch.device, out: Path, tag: str) -> list[dict]:
    """Per-object rows (metrics, faces, seconds); writes each object's mesh and render."""
    start = time.perf_counter()
    tokens, meshes = decode_meshes(models.vae, predict_latents(models, samples, cfg, device), cfg.depth)
    shared = (time.perf_counter() - start) / len(samples)  # batched work, split evenly
    rows = []
    for i, (sample, (mesh, _)) in enumerate(zip(samples, meshes)):
        t0 = time.perf_counter()
        uid = sample["__key__"]
        row = {"uid": uid, **({"prompt": prompt_of(sample)} if models.gen is not None and models.gen.text else {})}
        row.update(field_iou(models.vae, tokens[i : i + 1], sample))
        if len(mesh.faces):
            gt = sample["surface"]
            row.update(
                surface_metrics(sample_surface(mesh, cfg.surface_samples, cfg.seed), (gt[:, :3], gt[:, 3:6]), device)
            )
            export_mesh(mesh, out / "meshes" / tag / f"{uid}.glb")
        else:
            row.update(empty_mesh_metrics())
        row["faces"] = len(mesh.faces)
        rgb, _ = canonical_views(sample, cfg.render_size)
        cams = read_cameras(sample)[:SET_SIZE]
        render_pair(rgb.transpose(0, 2, 3, 1), cams, mesh, out / "renders" / tag / f"{uid}.png", cfg.render_size)
        row["seconds"] = shared + time.perf_counter() - t0
        rows.append(row)
    return rows
