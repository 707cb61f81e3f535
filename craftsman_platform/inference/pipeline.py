"""Trained checkpoints -> meshes: load a VAE or a diffusion model on a device, generate, extract.

Models are loaded once and kept on their device; on CUDA they run under bf16 autocast. Several
objects go through each stage together (conditioning, sampling, decoding, octree extraction).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import trimesh

from craftsman_platform.inference.runtime import autocast, device_generator, query_chunk
from craftsman_platform.models.build import ModelConfig
from craftsman_platform.models.checkpoints import load_diffusion, model_config
from craftsman_platform.models.diffusion import LatentDiffusion
from craftsman_platform.models.extraction import DEFAULT_DEPTH, ExtractionStats, extract_meshes
from craftsman_platform.models.shape_vae import ShapeVAE


def decode_meshes(
    vae: ShapeVAE, latents: torch.Tensor, depth: int = DEFAULT_DEPTH
) -> tuple[torch.Tensor, list[tuple[trimesh.Trimesh, ExtractionStats]]]:
    """Decode latents (B, L, C) and extract each object's surface with the batched octree:
    (decoded tokens, [(mesh, stats)] per object)."""
    device = latents.device
    with torch.no_grad(), autocast(device):
        tokens = vae.decode(latents)
        meshes = extract_meshes(
            lambda xyz: vae.inside_field(tokens, xyz), len(latents), depth, chunk=query_chunk(device), device=device
        )
    return tokens, meshes


@dataclass
class Generator:
    """A diffusion checkpoint with its frozen VAE on one device, ready to turn views into meshes."""

    model: LatentDiffusion
    vae: ShapeVAE
    cfg: ModelConfig
    step: int
    weights: str  # 'ema' or 'raw'
    device: torch.device

    @classmethod
    def load(cls, path: str | Path, prefer_ema: bool = True, device: torch.device | str = "cpu") -> "Generator":
        device = torch.device(device)
        model, vae, meta, which = load_diffusion(path, prefer_ema, device)
        return cls(model, vae, model_config(meta), meta["step"], which, device)

    @property
    def text(self) -> bool:
        """A text-conditioned checkpoint (prompts in), else an image one (views in)."""
        return self.cfg.conditioner.kind == "text"

    @property
    def image_size(self) -> int:
        return self.model.conditioner.image_size

    def compile(self) -> None:
        """`torch.compile` the denoiser, the step the sampler repeats (CUDA graphs on a GPU)."""
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        self.model.denoiser = torch.compile(self.model.denoiser, mode=mode)

    @torch.no_grad()
    def condition(
        self, images: torch.Tensor, c2w: torch.Tensor, view_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """images (B, V, 3, S, S) uint8 (shapedata.views.condition_image), c2w (B, V, 4, 4) -> context.

        `view_mask` (B, V) marks the views that were given; the tokens of missing views are set to the
        null condition (what the model saw under CFG dropout)."""
        cond = {"images": images.to(self.device), "c2w": c2w.to(self.device)}
        if view_mask is not None:
            cond["view_mask"] = view_mask.to(self.device)
        with autocast(self.device):
            return self.model.encode_condition(cond)

    @torch.no_grad()
    def condition_text(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> context (CLIP text tokens; "" is the unconditional prompt)."""
        ids = self.model.conditioner.tokenize(list(prompts)).to(self.device)
        with autocast(self.device):
            return self.model.encode_condition({"input_ids": ids})

    @torch.no_grad()
    def sample(
        self,
        context: torch.Tensor,
        steps: Optional[int] = None,
        guidance: Optional[float] = None,
        sampler: Optional[str] = None,
        seed: int = 0,
    ) -> torch.Tensor:
        """Latents (B, L, C) from encoded conditions, with a generator on the model's device."""
        v = self.cfg.vae
        with autocast(self.device):
            return self.model.sample_from_context(
                context, v.num_latents, v.embed_dim, steps, guidance, sampler, device_generator(self.device, seed)
            )

    def latents(
        self,
        images: torch.Tensor,
        c2w: torch.Tensor,
        steps: Optional[int] = None,
        guidance: Optional[float] = None,
        sampler: Optional[str] = None,
        seed: int = 0,
        view_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Views -> latents (conditioning and sampling in one call)."""
        return self.sample(self.condition(images, c2w, view_mask), steps, guidance, sampler, seed)

    def meshes(
        self, latents: torch.Tensor, depth: int = DEFAULT_DEPTH
    ) -> list[tuple[trimesh.Trimesh, ExtractionStats]]:
        return decode_meshes(self.vae, latents, depth)[1]
