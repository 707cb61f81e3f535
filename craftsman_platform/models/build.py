"""Model configs in one place and the functions that build models from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from torch import nn

from craftsman_platform.errors import ConfigError
from craftsman_platform.models.conditioners import ConditionerConfig, build_conditioner
from craftsman_platform.models.denoiser import DenoiserConfig, DiTBlock, build_denoiser
from craftsman_platform.models.diffusion import DiffusionConfig, LatentDiffusion
from craftsman_platform.models.shape_vae import ShapeVAE, VAEConfig, VAELossConfig
from craftsman_platform.models.transformer import CrossBlock, SelfBlock, compile_blocks, set_attention_backend

KINDS = ("vae", "diffusion")


@dataclass
class ModelConfig:
    kind: str = "vae"  # vae: train the shape VAE; diffusion: train the denoiser on a frozen VAE
    vae: VAEConfig = field(default_factory=VAEConfig)
    vae_loss: VAELossConfig = field(default_factory=VAELossConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    conditioner: ConditionerConfig = field(default_factory=ConditionerConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    vae_checkpoint: Optional[str] = None  # diffusion: the trained VAE (a run dir or checkpoint dir); required
    attention: str = "sdpa"  # sdpa (fused kernels) or einsum (the reference's, for comparison)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"model.kind must be one of {KINDS}, got {self.kind!r}")


def build_vae(cfg: ModelConfig) -> ShapeVAE:
    vae = ShapeVAE(cfg.vae)
    set_attention_backend(vae, cfg.attention)
    return vae


def build_diffusion(cfg: ModelConfig, load_weights: bool = True) -> LatentDiffusion:
    """Denoiser + conditioner. The conditioner's width must be the denoiser's context_dim."""
    conditioner = build_conditioner(cfg.conditioner, load_weights)
    if conditioner.hidden_size != cfg.denoiser.context_dim:
        raise ConfigError(
            f"model.denoiser.context_dim={cfg.denoiser.context_dim} but the conditioner gives "
            f"{conditioner.hidden_size}-wide tokens"
        )
    if (cfg.denoiser.latent_dim, cfg.denoiser.num_latents) != (cfg.vae.embed_dim, cfg.vae.num_latents):
        raise ConfigError(
            f"model.denoiser latent_dim/num_latents ({cfg.denoiser.latent_dim}, {cfg.denoiser.num_latents}) "
            f"must equal model.vae embed_dim/num_latents ({cfg.vae.embed_dim}, {cfg.vae.num_latents})"
        )
    denoiser = build_denoiser(cfg.denoiser)
    set_attention_backend(denoiser, cfg.attention)
    return LatentDiffusion(denoiser, conditioner, cfg.diffusion, cfg.conditioner.cfg_dropout)


def compile_model(model: nn.Module, backend: str = "inductor") -> int:
    """`torch.compile` the transformer blocks of a VAE or diffusion model (CLIP layers included) in place."""
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer

    return compile_blocks(model, (SelfBlock, CrossBlock, DiTBlock, CLIPEncoderLayer), backend)


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(all, trainable) parameter counts."""
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def module_summary(cfg: ModelConfig, load_weights: bool = False) -> list[tuple[str, int, int]]:
    """(name, parameters, trainable) per module of the experiment's model, then the total.

    Builds on the meta device: no memory, no weights read, any size."""
    import torch

    rows: list[tuple[str, int, int]] = []
    with torch.device("meta"):
        vae = build_vae(cfg)
        if cfg.kind == "vae":
            for name, child in vae.named_children():
                rows.append((f"vae.{name}", *count_parameters(child)))
            if cfg.vae.query_mode == "learned":
                rows.append(("vae.learned_queries", vae.learned_queries.numel(), vae.learned_queries.numel()))
            rows.append(("total", *count_parameters(vae)))
        else:
            vae.requires_grad_(False)  # frozen while the denoiser trains
            model = build_diffusion(cfg, load_weights)
            rows.append(("vae (frozen)", *count_parameters(vae)))
            rows.append(("denoiser", *count_parameters(model.denoiser)))
            rows.append((f"conditioner ({cfg.conditioner.kind})", *count_parameters(model.conditioner)))
            total = [a + b for a, b in zip(count_parameters(vae), count_parameters(model))]
            rows.append(("total", *total))
    return rows


def pretrained_frozen_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the frozen CLIP tower (its parameters that do not train, and its buffers)."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return [k for k in model.state_dict() if k.startswith("conditioner.clip.") and k not in trainable]
