"""Trained checkpoints -> meshes: load a VAE or a diffusion model on a device, generate, extract.

Models are loaded once and kept on their device; on CUDA they run under bf16 autocast. Several
objects go through each stage together (conditioning, sampling, decoding, octree extraction).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import trimesh

from craftsman_platform.inference.runtime import autocast, device_generator, query_chunk
from craftsman_platform.models.build import build_diffusion, build_vae
from craftsman_platform.models.diffusion import LatentDiffusion
from craftsman_platform.models.extraction import DEFAULT_DEPTH, ExtractionStats, extract_meshes
from craftsman_platform.models.shape_vae import ShapeVAE
from craftsman_platform.geometry.render import CANONICAL_DIRECTIONS, look_at
from craftsman_platform.training.checkpoint import latest_checkpoint, load_weights
from craftsman_platform.training.tasks import pretrained_frozen_keys
from craftsman_platform.training.config import TrainConfig
from craftsman_platform.training.loop import config_from_dict
from craftsman_platform.errors import ConfigError, MissingInput


def canonical_c2w(distance: float = 4.5) -> np.ndarray:
    """(4, 4, 4) camera-to-world of the front, right, back and left views the models train on."""
    return np.stack([look_at(d * distance) for d in CANONICAL_DIRECTIONS]).astype(np.float32)


def load_vae(path: str | Path, prefer_ema: bool = True, device: torch.device | str = "cpu") -> tuple[ShapeVAE, dict, str]:
    """A trained VAE in eval mode on `device` from a run dir or checkpoint: (model, meta, 'ema' or 'raw')."""
    state, meta, which = load_weights(path, prefer_ema)
    cfg = config_from_dict(meta["config"])
    if cfg.model.kind != "vae":
        raise ConfigError(f"{path} holds a {cfg.model.kind} checkpoint, not a VAE")
    vae = build_vae(cfg.model)
    vae.load_state_dict(state)
    return vae.eval().to(device), meta, which


def decode_meshes(vae: ShapeVAE, latents: torch.Tensor, depth: int = DEFAULT_DEPTH
                  ) -> tuple[torch.Tensor, list[tuple[trimesh.Trimesh, ExtractionStats]]]:
    """Decode latents (B, L, C) and extract each object's surface with the batched octree:
    (decoded tokens, [(mesh, stats)] per object)."""
    device = latents.device
    with torch.no_grad(), autocast(device):
        tokens = vae.decode(latents)
        meshes = extract_meshes(lambda xyz: vae.inside_field(tokens, xyz), len(latents), depth,
                                chunk=query_chunk(device), device=device)
    return tokens, meshes


@dataclass
class Generator:
    """A diffusion checkpoint with its frozen VAE on one device, ready to turn views into meshes."""

    model: LatentDiffusion
    vae: ShapeVAE
    cfg: TrainConfig
    step: int
    weights: str  # 'ema' or 'raw'
    device: torch.device

    @classmethod
    def load(cls, path: str | Path, prefer_ema: bool = True, device: torch.device | str = "cpu") -> "Generator":
        device = torch.device(device)
        state, meta, which = load_weights(path, prefer_ema)
        cfg = config_from_dict(meta["config"])
        if cfg.model.kind != "diffusion":
            raise ConfigError(f"{path} holds a {cfg.model.kind} checkpoint; generation needs a diffusion checkpoint")
        model = build_diffusion(cfg.model)
        # frozen pretrained CLIP weights are not in the checkpoint: they come from model.conditioner.pretrained
        missing, unexpected = model.load_state_dict(state, strict=False)
        if cfg.model.conditioner.pretrained:
            frozen = set(pretrained_frozen_keys(model))
            missing = [k for k in missing if k not in frozen]
        if missing or unexpected:
            raise ValueError(f"{path}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
        vae_path = meta.get("vae_checkpoint") or cfg.model.vae_checkpoint
        if not vae_path or latest_checkpoint(vae_path) is None:
            raise MissingInput(f"{path}: its VAE checkpoint {vae_path!r} is gone; set model.vae_checkpoint")
        vae, _, _ = load_vae(vae_path, prefer_ema, device)
        return cls(model.eval().to(device), vae, cfg, meta["step"], which, device)

    @property
    def image_size(self) -> int:
        return self.model.conditioner.image_size

    def compile(self) -> None:
        """`torch.compile` the denoiser, the step the sampler repeats (CUDA graphs on a GPU)."""
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        self.model.denoiser = torch.compile(self.model.denoiser, mode=mode)

    @torch.no_grad()
    def condition(self, images: torch.Tensor, c2w: torch.Tensor, view_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """images (B, V, 3, S, S) uint8 (craftsman_platform.shapedata.views.condition_image), c2w (B, V, 4, 4) -> context.

        `view_mask` (B, V) marks the views that were given; the tokens of missing views are set to the
        null condition (what the model saw under CFG dropout)."""
        cond = {"images": images.to(self.device), "c2w": c2w.to(self.device)}
        if view_mask is not None:
            cond["view_mask"] = view_mask.to(self.device)
        with autocast(self.device):
            return self.model.encode_condition(cond)

    @torch.no_grad()
    def sample(self, context: torch.Tensor, steps: Optional[int] = None, guidance: Optional[float] = None,
               sampler: Optional[str] = None, seed: int = 0) -> torch.Tensor:
        """Latents (B, L, C) from encoded conditions, with a generator on the model's device."""
        v = self.cfg.model.vae
        with autocast(self.device):
            return self.model.sample_from_context(context, v.num_latents, v.embed_dim, steps, guidance, sampler,
                                                  device_generator(self.device, seed))

    def latents(self, images: torch.Tensor, c2w: torch.Tensor, steps: Optional[int] = None,
                guidance: Optional[float] = None, sampler: Optional[str] = None, seed: int = 0,
                view_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Views -> latents (conditioning and sampling in one call)."""
        return self.sample(self.condition(images, c2w, view_mask), steps, guidance, sampler, seed)

    def meshes(self, latents: torch.Tensor, depth: int = DEFAULT_DEPTH) -> list[tuple[trimesh.Trimesh, ExtractionStats]]:
        return decode_meshes(self.vae, latents, depth)[1]
