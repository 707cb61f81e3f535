"""Latent-set denoisers.

`UNetTransformer` is CraftsMan's 104M "simple denoiser": an in-context transformer shaped like a
U-Net. The sequence is [timestep token ; context tokens ; latent tokens]; 6 encoder blocks push
their outputs on a stack, a middle block follows, and each of 6 decoder blocks first merges the
matching encoder output (concatenate, Linear 2w -> w, LayerNorm). Only the latent tokens leave.
The full config builds 104,816,448 parameters, as the reference does.

`CrossAttentionDiT` is the scaling variant: latent tokens only in the sequence, context through
cross-attention, timestep through adaLN-Zero modulation (DiT).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from craftsman_platform.errors import ConfigError
from craftsman_platform.models.transformer import (
    MLP,
    CrossAttention,
    SelfAttention,
    SelfBlock,
    run_block,
    timestep_embedding,
)

KINDS = ("unet_transformer", "dit")
TIME_ORDERS = ("cos_sin", "sin_cos")
ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU}


@dataclass
class DenoiserConfig:
    kind: str = "unet_transformer"
    latent_dim: int = 64  # the VAE's embed_dim
    num_latents: int = 256
    context_dim: int = 1024  # CLIP ViT-L/14 hidden size
    width: int = 768
    heads: int = 12
    encoder_layers: int = 6  # unet_transformer: 6 + 1 middle + 6; dit: 2 * encoder_layers + 1 blocks
    qkv_bias: bool = False
    time_embedding: str = "cos_sin"  # order of the sinusoidal halves; sin_cos: CraftsMan's (diffusers Timesteps)
    time_activation: str = "silu"  # of the timestep MLP; gelu: CraftsMan's
    checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"model.denoiser.kind must be one of {KINDS}, got {self.kind!r}")
        if self.time_embedding not in TIME_ORDERS:
            raise ConfigError(
                f"model.denoiser.time_embedding must be one of {TIME_ORDERS}, got {self.time_embedding!r}"
            )
        if self.time_activation not in ACTIVATIONS:
            raise ConfigError(
                f"model.denoiser.time_activation must be one of {tuple(ACTIVATIONS)}, got {self.time_activation!r}"
            )


class TimestepEmbedder(nn.Module):
    """Sinusoidal(width) -> Linear(w, 4w) -> SiLU (or GELU) -> Linear(4w, w)."""

    def __init__(self, width: int, order: str = "cos_sin", activation: str = "silu"):
        super().__init__()
        self.width, self.order = width, order
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), ACTIVATIONS[activation](), nn.Linear(4 * width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.width, order=self.order).to(self.mlp[0].weight.dtype))


def _to_weights_dtype(layer: nn.Linear, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Inputs in the dtype of the weights: fp32 under autocast (which casts per op), bf16 when the
    module itself was cast (DeepSpeed's bf16 mode, bf16 inference)."""
    return tuple(x.to(layer.weight.dtype) for x in inputs)


# ----------------------------------------------------------------------------------------------
# CraftsMan's in-context U-Net transformer
# ----------------------------------------------------------------------------------------------
class SkipMerge(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.linear, self.norm = nn.Linear(2 * width, width), nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(torch.cat([x, skip], dim=-1)))


class UNetTransformer(nn.Module):
    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        self.cfg = cfg
        w, layers = cfg.width, cfg.encoder_layers
        self.time_embed = TimestepEmbedder(w, cfg.time_embedding, cfg.time_activation)
        self.context_embed = nn.Sequential(nn.LayerNorm(cfg.context_dim), nn.Linear(cfg.context_dim, w))
        self.latent_embed = nn.Linear(cfg.latent_dim, w)
        self.encoder = nn.ModuleList(SelfBlock(w, cfg.heads, cfg.qkv_bias) for _ in range(layers))
        self.middle = SelfBlock(w, cfg.heads, cfg.qkv_bias)
        self.skips = nn.ModuleList(SkipMerge(w) for _ in range(layers))
        self.decoder = nn.ModuleList(SelfBlock(w, cfg.heads, cfg.qkv_bias) for _ in range(layers))
        self.out_norm, self.out = nn.LayerNorm(w), nn.Linear(w, cfg.latent_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x (B, L, latent_dim), t (B,), context (B, C, context_dim) -> (B, L, latent_dim)."""
        ck = self.cfg.checkpointing
        x, context = _to_weights_dtype(self.latent_embed, x, context)
        h = torch.cat([self.time_embed(t)[:, None], self.context_embed(context), self.latent_embed(x)], dim=1)
        stack = []
        for block in self.encoder:
            h = run_block(block, h, checkpointed=ck)
            stack.append(h)
        h = run_block(self.middle, h, checkpointed=ck)
        for merge, block in zip(self.skips, self.decoder):
            h = run_block(block, merge(h, stack.pop()), checkpointed=ck)
        return self.out(self.out_norm(h[:, -x.shape[1] :]))


# ----------------------------------------------------------------------------------------------
# Cross-attention DiT (adaLN-Zero)
# ----------------------------------------------------------------------------------------------
def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Self-attention, cross-attention to the context, MLP; the timestep sets shift/scale/gate."""

    def __init__(self, width: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(width, heads, qkv_bias)
        self.norm_ctx = nn.LayerNorm(width)
        self.cross = CrossAttention(width, heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(width)
        # zero-initialised: every block starts as the identity (the "Zero" of adaLN-Zero)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attn(_modulate(self.norm1(x), shift1, scale1))
        x = x + self.cross(self.norm_ctx(x), context)
        return x + gate2[:, None] * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class CrossAttentionDiT(nn.Module):
    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.time_embed = TimestepEmbedder(w, cfg.time_embedding, cfg.time_activation)
        self.context_embed = nn.Sequential(nn.LayerNorm(cfg.context_dim), nn.Linear(cfg.context_dim, w))
        self.latent_embed = nn.Linear(cfg.latent_dim, w)
        self.blocks = nn.ModuleList(DiTBlock(w, cfg.heads, cfg.qkv_bias) for _ in range(2 * cfg.encoder_layers + 1))
        self.out_norm = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.out_ada = nn.Sequential(nn.SiLU(), nn.Linear(w, 2 * w))
        self.out = nn.Linear(w, cfg.latent_dim)
        for layer in (self.out_ada[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        c = self.time_embed(t)
        x, context = _to_weights_dtype(self.latent_embed, x, context)
        ctx = self.context_embed(context)
        h = self.latent_embed(x)  # no positions: a latent set is permutation-equivariant, as in the reference
        for block in self.blocks:
            h = run_block(block, h, c, ctx, checkpointed=self.cfg.checkpointing)
        shift, scale = self.out_ada(c).chunk(2, dim=-1)
        return self.out(_modulate(self.out_norm(h), shift, scale))


def build_denoiser(cfg: DenoiserConfig) -> nn.Module:
    return UNetTransformer(cfg) if cfg.kind == "unet_transformer" else CrossAttentionDiT(cfg)
