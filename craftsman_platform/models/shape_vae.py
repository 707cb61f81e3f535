"""Perceiver shape VAE over a latent set (CraftsMan `l256-e64-ne8-nd16`, after Michelangelo / 3DShape2VecSet).

surface points + normals -> Fourier embedding -> 1 cross-attention from 256 queries -> 8 self-attention
blocks -> KL bottleneck (64 channels) -> 16 self-attention blocks -> latent tokens; a query decoder
cross-attends from Fourier-embedded xyz to those tokens and gives an occupancy logit (or an sdf).
The full config builds 184,522,113 parameters, as the reference does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from craftsman_platform.errors import ConfigError
from craftsman_platform.models.transformer import CrossBlock, FourierEmbedder, SelfAttentionStack, run_block

# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------
QUERY_MODES = ("fps", "learned")
HEADS = ("occupancy", "sdf")


@dataclass
class VAEConfig:
    num_inputs: int = 4096  # surface points per object fed to the encoder
    num_latents: int = 256
    embed_dim: int = 64  # KL channels per latent token
    width: int = 768
    heads: int = 12
    encoder_layers: int = 8
    decoder_layers: int = 16
    num_freqs: int = 8
    include_pi: bool = True
    qkv_bias: bool = True
    query_mode: str = "fps"  # fps: 3DShape2VecSet's farthest-point-sampled inputs; learned: Michelangelo's
    head: str = "occupancy"  # occupancy logits (BCE) or sdf regression
    logvar_min: float = -30.0
    logvar_max: float = 20.0
    logvar_init: float = 0.0  # initial posterior log-variance (bias of pre_kl); negative: near-deterministic start
    encoder_ln: bool = True  # LayerNorm after the encoder stack (CraftsMan's use_ln_post)
    shape_token: bool = False  # one extra leading query whose output is dropped (CraftsMan's "aligned" VAE)
    checkpointing: bool = False  # activation checkpointing of every block (recomputed in the backward pass)

    def __post_init__(self) -> None:
        if self.query_mode not in QUERY_MODES:
            raise ConfigError(f"model.vae.query_mode must be one of {QUERY_MODES}, got {self.query_mode!r}")
        if self.head not in HEADS:
            raise ConfigError(f"model.vae.head must be one of {HEADS}, got {self.head!r}")
        if self.query_mode == "fps" and self.num_queries > self.num_inputs:
            raise ConfigError(
                f"model.vae.num_latents ({self.num_latents}) > num_inputs ({self.num_inputs}) with fps queries"
            )

    @property
    def num_queries(self) -> int:
        return self.num_latents + int(self.shape_token)


# ----------------------------------------------------------------------------------------------
# Farthest point sampling
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def farthest_point_indices(
    xyz: torch.Tensor, k: int, random_start: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, N, 3) -> (B, k) indices, greedy farthest-point order (start at 0 unless random_start)."""
    b, n, _ = xyz.shape
    idx = torch.zeros(b, k, dtype=torch.long, device=xyz.device)
    dist = torch.full((b, n), float("inf"), device=xyz.device, dtype=xyz.dtype)
    current = (
        torch.randint(n, (b,), device=xyz.device, generator=generator)
        if random_start
        else torch.zeros(b, dtype=torch.long, device=xyz.device)
    )
    rows = torch.arange(b, device=xyz.device)
    for i in range(k):
        idx[:, i] = current
        d = ((xyz - xyz[rows, current][:, None]) ** 2).sum(-1)
        dist = torch.minimum(dist, d)
        current = dist.argmax(dim=1)
    return idx


# ----------------------------------------------------------------------------------------------
# Diagonal Gaussian posterior
# ----------------------------------------------------------------------------------------------
class DiagonalGaussian:
    def __init__(self, moments: torch.Tensor, logvar_min: float, logvar_max: float):
        self.mean, logvar = moments.chunk(2, dim=-1)
        self.logvar = logvar.clamp(logvar_min, logvar_max)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def kl(self) -> torch.Tensor:
        """KL to N(0, I), averaged over tokens and channels (the reference's normalisation): (B,)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).mean(dim=(1, 2))


# ----------------------------------------------------------------------------------------------
# The VAE
# ----------------------------------------------------------------------------------------------
class ShapeVAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.embedder = FourierEmbedder(cfg.num_freqs, cfg.include_pi)
        # encoder
        self.input_proj = nn.Linear(self.embedder.out_dim + 3, w)  # + raw normals
        if cfg.query_mode == "learned":
            self.learned_queries = nn.Parameter(torch.randn(cfg.num_queries, w) * 0.02)
        self.encoder_cross = CrossBlock(w, cfg.heads, qkv_bias=cfg.qkv_bias)
        self.encoder = SelfAttentionStack(w, cfg.heads, cfg.encoder_layers, cfg.qkv_bias, cfg.checkpointing)
        self.encoder_ln = nn.LayerNorm(w) if cfg.encoder_ln else nn.Identity()
        # bottleneck
        self.pre_kl = nn.Linear(w, 2 * cfg.embed_dim)
        # std 1 at initialisation (the reference) makes the decoder learn from noise-dominated latents;
        # a lower start lets small models fit in minutes and the posterior mean decode like a sample
        nn.init.constant_(self.pre_kl.bias[cfg.embed_dim :], cfg.logvar_init)
        self.post_kl = nn.Linear(cfg.embed_dim, w)
        # decoder
        self.decoder = SelfAttentionStack(w, cfg.heads, cfg.decoder_layers, cfg.qkv_bias, cfg.checkpointing)
        self.query_proj = nn.Linear(self.embedder.out_dim, w)
        self.query_cross = CrossBlock(w, cfg.heads, qkv_bias=cfg.qkv_bias)
        self.query_ln = nn.LayerNorm(w)
        self.output = nn.Linear(w, 1)

    # -- encoder ---------------------------------------------------------------------------------
    def posterior(self, surface: torch.Tensor, generator: torch.Generator | None = None) -> DiagonalGaussian:
        """surface (B, N, 6) xyz + normals -> posterior over (B, num_latents, embed_dim)."""
        xyz, normals = surface[..., :3].float(), surface[..., 3:6].float()
        # Fourier features in fp32 (2^7 pi x does not survive bf16); the projection runs in the weights'
        # dtype, so a module cast to bf16 (as DeepSpeed's bf16 mode does) gets bf16 inputs
        features = torch.cat([self.embedder(xyz), normals], dim=-1)
        tokens = self.input_proj(features.to(self.input_proj.weight.dtype))
        if self.cfg.query_mode == "fps":
            idx = farthest_point_indices(xyz, self.cfg.num_queries, random_start=self.training, generator=generator)
            queries = torch.gather(tokens, 1, idx[..., None].expand(-1, -1, tokens.shape[-1]))
        else:
            queries = self.learned_queries[None].expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        x = run_block(self.encoder_cross, queries, tokens, checkpointed=self.cfg.checkpointing)
        x = self.encoder_ln(self.encoder(x))
        if self.cfg.shape_token:  # the leading token served CraftsMan's CLIP alignment, not the latents
            x = x[:, 1:]
        # mean, log-variance, KL and samples in fp32
        return DiagonalGaussian(self.pre_kl(x).float(), self.cfg.logvar_min, self.cfg.logvar_max)

    def encode(
        self, surface: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Latents (B, num_latents, embed_dim): a posterior sample, or its mean."""
        post = self.posterior(surface, generator)
        return post.sample(generator) if sample else post.mean

    # -- decoder ---------------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, L, embed_dim) -> decoded tokens (B, L, width) that the query decoder reads."""
        return self.decoder(self.post_kl(latents.to(self.post_kl.weight.dtype)))

    def query(self, tokens: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
        """Raw head output at query points: occupancy logits or sdf, (B, M)."""
        q = self.query_proj(self.embedder(xyz.float()).to(self.query_proj.weight.dtype))
        x = run_block(self.query_cross, q, tokens, checkpointed=self.cfg.checkpointing)
        return self.output(self.query_ln(x)).squeeze(-1)

    def inside_field(self, tokens: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
        """A field that is > 0 inside and < 0 outside, whichever head: the surface is its 0 level."""
        out = self.query(tokens, xyz)
        return -out if self.cfg.head == "sdf" else out

    def forward(
        self,
        surface: torch.Tensor,
        queries: torch.Tensor,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(head output at queries (B, M), KL per object (B,))."""
        post = self.posterior(surface, generator)
        tokens = self.decode(post.sample(generator) if sample else post.mean)
        return self.query(tokens, queries), post.kl()


# ----------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------
@dataclass
class VAELossConfig:
    vol_weight: float = 1.0
    near_weight: float = 1.0  # 3DShape2VecSet uses 0.1, Michelangelo 0.1 on its near half
    kl_weight: float = 1e-3
    sdf_clip: float = 0.1  # sdf head: targets and predictions compared after clipping to +-this


def vae_loss(
    model: ShapeVAE,
    surface: torch.Tensor,
    vol: torch.Tensor,
    near: torch.Tensor,
    cfg: VAELossConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its parts; vol/near are (B, M, 4) xyz + sdf (sdf < 0 inside)."""
    n_vol = vol.shape[1]
    queries = torch.cat([vol, near], dim=1)
    out, kl = model(surface, queries[..., :3], generator=generator)
    sdf = queries[..., 3].float()
    out = out.float()
    if model.cfg.head == "occupancy":
        per_point = F.binary_cross_entropy_with_logits(out, (sdf < 0).float(), reduction="none")
        inside_pred = out > 0
    else:
        per_point = (out.clamp(-cfg.sdf_clip, cfg.sdf_clip) - sdf.clamp(-cfg.sdf_clip, cfg.sdf_clip)).abs()
        inside_pred = out < 0
    loss_vol, loss_near = per_point[:, :n_vol].mean(), per_point[:, n_vol:].mean()
    loss_kl = kl.mean()
    total = cfg.vol_weight * loss_vol + cfg.near_weight * loss_near + cfg.kl_weight * loss_kl
    parts = {
        "loss_vol": loss_vol.detach(),
        "loss_near": loss_near.detach(),
        "loss_kl": loss_kl.detach(),
        "iou_vol": occupancy_iou(inside_pred[:, :n_vol], sdf[:, :n_vol] < 0),
        "iou_near": occupancy_iou(inside_pred[:, n_vol:], sdf[:, n_vol:] < 0),
    }
    return total, parts


def occupancy_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean IoU over objects of boolean (B, M) occupancies (an object empty in both counts as 1)."""
    inter = (pred & target).sum(1).float()
    union = (pred | target).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).mean().detach()
