"""Trained checkpoints -> meshes: load a VAE or a diffusion model, generate, extract, export."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import trimesh

from models.build import build_diffusion, build_vae
from models.diffusion import LatentDiffusion
from models.extraction import extract_mesh
from models.shape_vae import ShapeVAE
from pipelines.render import CANONICAL_DIRECTIONS, look_at
from training.checkpoint import latest_checkpoint, load_weights
from training.config import TrainConfig
from training.loop import config_from_dict

VIEW_NAMES = ("front", "right", "back", "left")


def canonical_c2w(distance: float = 4.5) -> np.ndarray:
    """(4, 4, 4) camera-to-world of the front, right, back and left views the models train on."""
    return np.stack([look_at(d * distance) for d in CANONICAL_DIRECTIONS]).astype(np.float32)


def load_vae(path: str | Path, prefer_ema: bool = True) -> tuple[ShapeVAE, dict, str]:
    """A trained VAE in eval mode from a run dir or checkpoint: (model, meta, 'ema' or 'raw')."""
    state, meta, which = load_weights(path, prefer_ema)
    cfg = config_from_dict(meta["config"])
    if cfg.model.kind != "vae":
        raise ValueError(f"{path} holds a {cfg.model.kind} checkpoint, not a VAE")
    vae = build_vae(cfg.model)
    vae.load_state_dict(state)
    return vae.eval(), meta, which


@dataclass
class Generator:
    """A diffusion checkpoint with its frozen VAE, ready to turn view images into meshes."""

    model: LatentDiffusion
    vae: ShapeVAE
    cfg: TrainConfig
    step: int
    weights: str  # 'ema' or 'raw'

    @classmethod
    def load(cls, path: str | Path, prefer_ema: bool = True) -> "Generator":
        state, meta, which = load_weights(path, prefer_ema)
        cfg = config_from_dict(meta["config"])
        if cfg.model.kind != "diffusion":
            raise ValueError(f"{path} holds a {cfg.model.kind} checkpoint; generation needs a diffusion checkpoint")
        model = build_diffusion(cfg.model)
        # frozen pretrained CLIP weights are not in the checkpoint: they come from model.conditioner.pretrained
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("conditioner.clip.")]
        if missing or unexpected:
            raise ValueError(f"{path}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
        vae_path = meta.get("vae_checkpoint") or cfg.model.vae_checkpoint
        if not vae_path or latest_checkpoint(vae_path) is None:
            raise FileNotFoundError(f"{path}: its VAE checkpoint {vae_path!r} is gone; set model.vae_checkpoint")
        vae, _, _ = load_vae(vae_path, prefer_ema)
        return cls(model.eval(), vae, cfg, meta["step"], which)

    @torch.no_grad()
    def latents(self, images: torch.Tensor, c2w: torch.Tensor, steps: Optional[int] = None,
                guidance: Optional[float] = None, sampler: Optional[str] = None, seed: int = 0,
                view_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """images (B, V, 3, H, W) in [0, 1], c2w (B, V, 4, 4) -> VAE latents (B, L, C).

        `view_mask` (B, V) marks the views that were given; the tokens of missing views are set to the
        null condition (what the model saw under CFG dropout)."""
        cond = {"images": images, "c2w": c2w}
        if view_mask is not None:
            cond["view_mask"] = view_mask
        v = self.cfg.model.vae
        return self.model.sample(cond, v.num_latents, v.embed_dim, steps, guidance, sampler,
                                 torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def mesh(self, latents: torch.Tensor, depth: int = 7, chunk: int = 65536) -> tuple[trimesh.Trimesh, dict]:
        """Decode one object's latents (1, L, C) and extract its surface with the octree."""
        start = time.perf_counter()
        tokens = self.vae.decode(latents)
        decode_s = time.perf_counter() - start
        mesh, stats = extract_mesh(lambda xyz: self.vae.inside_field(tokens, xyz[None])[0], depth=depth, chunk=chunk)
        return mesh, {"decode_s": decode_s, "extract_s": stats.seconds, "queries": stats.queries}
