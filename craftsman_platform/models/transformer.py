"""Transformer building blocks shared by the shape VAE and the denoisers.

Pre-LN blocks in the Michelangelo/CraftsMan layout (so parameter counts match the reference), with
attention through `F.scaled_dot_product_attention` (flash / memory-efficient kernels on GPU). The
`einsum` backend is the reference's formulation, kept only as the baseline that bench/models.py
measures against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

ATTENTION_BACKENDS = ("sdpa", "einsum")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """Multi-head attention on (B, H, N, D) tensors."""
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if backend == "einsum":
        weights = torch.einsum("bhnd,bhmd->bhnm", q * q.shape[-1] ** -0.5, k).softmax(dim=-1)
        return torch.einsum("bhnm,bhmd->bhnd", weights, v)
    raise ValueError(f"attention backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")


def set_attention_backend(module: nn.Module, backend: str) -> None:
    """Switch every attention layer below `module` to `backend` ('sdpa' or 'einsum')."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    for m in module.modules():
        if isinstance(m, (SelfAttention, CrossAttention)):
            m.backend = backend


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


# ----------------------------------------------------------------------------------------------
# Attention and MLP
# ----------------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.backend = heads, "sdpa"
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (_split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        return self.proj(_merge_heads(attention(q, k, v, self.backend)))


class CrossAttention(nn.Module):
    def __init__(self, width: int, heads: int, context_width: int | None = None, qkv_bias: bool = True):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.backend = heads, "sdpa"
        self.q = nn.Linear(width, width, bias=qkv_bias)
        self.kv = nn.Linear(context_width or width, 2 * width, bias=qkv_bias)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = _split_heads(self.q(x), self.heads)
        k, v = (_split_heads(t, self.heads) for t in self.kv(context).chunk(2, dim=-1))
        return self.proj(_merge_heads(attention(q, k, v, self.backend)))


class MLP(nn.Module):
    def __init__(self, width: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(width * ratio)
        self.fc, self.proj = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


# ----------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------
class SelfBlock(nn.Module):
    """x + attn(LN(x)); x + mlp(LN(x))."""

    def __init__(self, width: int, heads: int, qkv_bias: bool = True, mlp_ratio: float = 4.0):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(width), SelfAttention(width, heads, qkv_bias)
        self.ln2, self.mlp = nn.LayerNorm(width), MLP(width, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CrossBlock(nn.Module):
    """x + attn(LN(x), LN(context)); x + mlp(LN(x))."""

    def __init__(
        self, width: int, heads: int, context_width: int | None = None, qkv_bias: bool = True, mlp_ratio: float = 4.0
    ):
        super().__init__()
        self.ln_q, self.ln_kv = nn.LayerNorm(width), nn.LayerNorm(context_width or width)
        self.attn = CrossAttention(width, heads, context_width, qkv_bias)
        self.ln_mlp, self.mlp = nn.LayerNorm(width), MLP(width, mlp_ratio)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_q(x), self.ln_kv(context))
        return x + self.mlp(self.ln_mlp(x))


def run_block(block: nn.Module, *args: torch.Tensor, checkpointed: bool = False) -> torch.Tensor:
    """Run a block, recomputing its activations in the backward pass when `checkpointed`."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


class SelfAttentionStack(nn.Module):
    def __init__(self, width: int, heads: int, layers: int, qkv_bias: bool = True, checkpointing: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(SelfBlock(width, heads, qkv_bias) for _ in range(layers))
        self.checkpointing = checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = run_block(block, x, checkpointed=self.checkpointing)
        return x


def compile_blocks(module: nn.Module, block_types: tuple[type, ...], backend: str = "inductor") -> int:
    """`torch.compile` every module of `block_types` below `module`, in place; returns how many.

    Blocks rather than whole models (as torchtitan does): the blocks are where the time goes, identical
    blocks share one compiled graph, and the code around them (farthest point sampling, random
    generators, diffusers schedules) stays eager instead of breaking graphs. Parameter names and
    checkpoints do not change."""
    blocks = [m for m in module.modules() if isinstance(m, block_types)]
    for block in blocks:
        block.compile(backend=backend)
    return len(blocks)


# ----------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------
class FourierEmbedder(nn.Module):
    """[x, sin(f x), cos(f x)] for f = 2^0 .. 2^(n-1) (times pi when include_pi): 3 (2n + 1) dims."""

    def __init__(self, num_freqs: int = 8, include_pi: bool = True):
        super().__init__()
        freqs = 2.0 ** torch.arange(num_freqs, dtype=torch.float32)
        self.register_buffer("freqs", freqs * math.pi if include_pi else freqs, persistent=False)
        self.out_dim = 3 * (2 * num_freqs + 1)

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        angles = (xyz[..., None] * self.freqs.to(xyz.dtype)).flatten(-2)
        return torch.cat([xyz, angles.sin(), angles.cos()], dim=-1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, order: str = "cos_sin") -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps: (B, dim) with [cos, sin] halves as in DDPM / DiT, or
    [sin, cos] (`order="sin_cos"`: diffusers' Timesteps without flip_sin_to_cos, as CraftsMan)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    halves = [args.cos(), args.sin()] if order == "cos_sin" else [args.sin(), args.cos()]
    return F.pad(torch.cat(halves, dim=-1), (0, dim % 2))
