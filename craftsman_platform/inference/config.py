"""Configs of `craft generate` and `craft app`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from craftsman_platform.models.extraction import DEFAULT_DEPTH


@dataclass
class GenerateConfig:
    checkpoint: str = MISSING  # a diffusion run dir or checkpoint dir
    images: list[str] = field(default_factory=list)
    prompt: Optional[str] = None  # text checkpoints: one prompt (one mesh)
    prompts: Optional[str] = None  # text checkpoints: a file of prompts, one a line (a mesh each: NAME_000, ...)
    right_view: Optional[str] = None
    back_view: Optional[str] = None
    left_view: Optional[str] = None
    output_dir: str = "outputs/generate"
    name: str = "mesh"
    remove_background: str = "auto"  # auto: rembg when available locally, else warn; always; never
    frontend: str = "none"  # none, imagedream, crm, wonder3d
    frontend_weights: Optional[str] = None
    frontend_trust_remote_code: bool = False  # run Python code shipped in frontend_weights (off: it is refused)
    guidance: Optional[float] = None  # default: the checkpoint's model.diffusion.guidance_scale
    steps: Optional[int] = None
    sampler: Optional[str] = None  # ddim or dpmsolver++
    seed: int = 0
    depth: int = DEFAULT_DEPTH  # octree depth: (2^depth + 1)^3 grid
    min_component_ratio: float = 0.01  # drop floaters with fewer faces than this share of the largest part
    ema: bool = True
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    compile: bool = False  # torch.compile the denoiser (CUDA graphs on a GPU); pays off over many meshes


@dataclass
class AppConfig:
    checkpoint: str = MISSING
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    ema: bool = True
    output_dir: Optional[str] = None  # where meshes are written (default: a temporary folder)
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    compile: bool = False  # torch.compile the denoiser once at start (CUDA graphs on a GPU)
