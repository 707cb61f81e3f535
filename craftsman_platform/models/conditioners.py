"""Condition encoders: multi-view CLIP images with ModLN camera injection, and CLIP text.

Weights come from a local directory (`save_pretrained` layout) or the Hugging Face cache; nothing is
downloaded at run time. `pretrained: null` builds the configured architecture with random weights
(tests, tiny experiments, and parameter counts on the meta device).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModel
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from craftsman_platform.errors import ConfigError, MissingInput

KINDS = ("image", "text")
CAMERA_DIM = 32  # sin and cos of the 16 entries of the flattened 4x4 camera-to-world
CAMERA_CONVENTIONS = ("opencv", "opengl_unit")
NULL_CONDITIONS = ("zeros", "clip_zero_images")


@dataclass
class ClipArchitecture:
    """Used when `pretrained` is null; the defaults are openai/clip-vit-large-patch14's towers."""

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    patch_size: int = 14
    image_size: int = 224
    text_hidden_size: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_intermediate_size: int = 3072
    vocab_size: int = 49408
    max_text_length: int = 77


@dataclass
class ConditionerConfig:
    kind: str = "image"
    pretrained: Optional[str] = "openai/clip-vit-large-patch14"  # a local directory or a Hugging Face id in the cache
    architecture: ClipArchitecture = field(default_factory=ClipArchitecture)
    num_views: int = 4
    modln: bool = True  # camera injection into every CLIP pre-norm; only the modulation trains
    cfg_dropout: float = 0.1  # per-sample probability of the null condition in training
    checkpointing: bool = False  # image: activation checkpointing of the CLIP layers (transformers' own)
    camera_convention: str = "opencv"  # cameras as the shards store them; opengl_unit: CraftsMan's frame
    null_condition: str = "zeros"  # image CFG null: zero tokens, or clip_zero_images (CraftsMan's empty embeds)
    normalize_embeds: bool = False  # unit-norm condition tokens (CraftsMan's normalize_embeds)
    tokenizer: Optional[str] = None  # text: clip_bpe (CLIP's own vocabulary), a folder; null: pretrained's

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"model.conditioner.kind must be one of {KINDS}, got {self.kind!r}")
        if self.camera_convention not in CAMERA_CONVENTIONS:
            raise ConfigError(
                f"model.conditioner.camera_convention must be one of {CAMERA_CONVENTIONS}, "
                f"got {self.camera_convention!r}"
            )
        if self.null_condition not in NULL_CONDITIONS:
            raise ConfigError(
                f"model.conditioner.null_condition must be one of {NULL_CONDITIONS}, got {self.null_condition!r}"
            )


class WeightsNotFound(MissingInput):
    pass


def load_pretrained(cls, name: str, **kwargs):
    """`cls.from_pretrained` from a local directory or the local HF cache only, with a clear error."""
    try:
        return cls.from_pretrained(name, local_files_only=True, **kwargs)
    except OSError as err:
        where = (
            os.path.abspath(name)
            if os.path.isdir(name)
            else (
                "the Hugging Face cache "
                f"({os.environ.get('HF_HUB_CACHE') or os.environ.get('HF_HOME') or '~/.cache/huggingface'})"
            )
        )
        raise WeightsNotFound(
            f"model.conditioner.pretrained={name!r}: no {cls.__name__} weights in {where}. Download them on a machine "
            f"with internet (`hf download {name}` or `save_pretrained(DIR)`) and point model.conditioner.pretrained "
            f"at that directory, or set it to null for random weights."
        ) from err


def opengl_unit(c2w: torch.Tensor) -> torch.Tensor:
    """OpenCV camera-to-world (x right, y down, z forward; any distance) as CraftsMan's cameras:
    OpenGL axes (y up, z backward) and the camera at unit distance from the origin."""
    out = c2w.clone()
    out[..., :3, 1:3] = -out[..., :3, 1:3]
    out[..., :3, 3] = out[..., :3, 3] / out[..., :3, 3].norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return out


def camera_embedding(c2w: torch.Tensor) -> torch.Tensor:
    """(..., 4, 4) camera-to-world -> (..., 32): [sin, cos] of the flattened matrix."""
    flat = c2w.flatten(-2)
    return torch.cat([flat.sin(), flat.cos()], dim=-1)


def drop_conditions(
    context: torch.Tensor, null: torch.Tensor, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Classifier-free guidance dropout: each sample independently gets `null` with probability p."""
    if p <= 0:
        return context
    drop = torch.rand(context.shape[0], generator=generator, device=context.device) < p
    return torch.where(drop.view(-1, *[1] * (context.dim() - 1)), null.to(context.dtype).expand_as(context), context)


# ----------------------------------------------------------------------------------------------
# ModLN
# ----------------------------------------------------------------------------------------------
class ModulatedLayerNorm(nn.Module):
    """LN(x) * (1 + scale) + shift with (shift, scale) = Linear(SiLU(camera)); zero-initialised."""

    def __init__(self, norm: nn.LayerNorm, state: dict):
        super().__init__()
        self.norm, self.state = norm, state  # state["camera"]: (B*V, 32), set by the encoder per call
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(CAMERA_DIM, 2 * norm.normalized_shape[0]))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.state.get("modulate", True):  # the plain CLIP layer norm (CraftsMan's empty embeds)
            return self.norm(x)
        shift, scale = self.modulation(self.state["camera"].to(x.dtype)).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]


# ----------------------------------------------------------------------------------------------
# Encoders
# ----------------------------------------------------------------------------------------------
class MultiViewImageEncoder(nn.Module):
    """(B, V, 3, S, S) uint8 views + (B, V, 4, 4) c2w -> (B, V * tokens, hidden) CLIP tokens."""

    def __init__(self, cfg: ConditionerConfig, load_weights: bool = True):
        super().__init__()
        self.cfg = cfg
        if cfg.pretrained and load_weights:
            self.clip = load_pretrained(CLIPVisionModel, cfg.pretrained, attn_implementation="sdpa")
        else:
            a = cfg.architecture
            self.clip = CLIPVisionModel(
                CLIPVisionConfig(
                    hidden_size=a.hidden_size,
                    num_hidden_layers=a.num_hidden_layers,
                    num_attention_heads=a.num_attention_heads,
                    intermediate_size=a.intermediate_size,
                    patch_size=a.patch_size,
                    image_size=a.image_size,
                    attn_implementation="sdpa",
                )
            )
        self.clip.requires_grad_(False)
        self.state: dict = {}
        self._null: Optional[torch.Tensor] = None  # cached null condition (clip_zero_images)
        if cfg.modln:
            for layer in self._tower().encoder.layers:
                layer.layer_norm1 = ModulatedLayerNorm(layer.layer_norm1, self.state)
                layer.layer_norm2 = ModulatedLayerNorm(layer.layer_norm2, self.state)
        if cfg.checkpointing:
            # gradients reach the ModLN modulation through every frozen layer, so their activations
            # are kept for the backward pass unless recomputed
            enable = getattr(self.clip, "activation_checkpointing_enable", None)  # transformers >= 5.x
            if enable is not None:
                enable({"use_reentrant": False})
            else:
                self.clip.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        c = self.clip.config
        self.image_size, self.hidden_size = c.image_size, c.hidden_size
        self.tokens_per_view = (c.image_size // c.patch_size) ** 2 + 1
        self.register_buffer("mean", torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "MultiViewImageEncoder":
        super().train(mode)
        self.clip.eval()  # frozen: no dropout, whatever the outer mode
        if mode and self.cfg.checkpointing:
            # transformers checkpoints a layer only when that layer is in training mode; the layer
            # itself has no dropout (its attention and MLP children stay in eval mode)
            for layer in self._tower().encoder.layers:
                layer.training = True
        return self

    def _tower(self) -> nn.Module:
        return getattr(self.clip, "vision_model", self.clip)  # transformers < 5 nests the tower

    def forward(self, images: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
        """images: (B, V, 3, S, S) uint8 from shapedata.views.condition_image (or floats in [0, 1])."""
        b, v = images.shape[:2]
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"views of {tuple(images.shape[-2:])} px, the conditioner takes {self.image_size} px: prepare "
                "them with craftsman_platform.shapedata.views.condition_image at that size (data.image_size)"
            )
        x = images.flatten(0, 1)[:, :3].float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        x = ((x - self.mean) / self.std).to(self.mean.dtype)
        c2w = c2w.flatten(0, 1).float()
        if self.cfg.camera_convention == "opengl_unit":
            c2w = opengl_unit(c2w)
        # read by every ModLN; kept after the call, because activation checkpointing replays the
        # layers (and reads it again) in the backward pass of this same call
        self.state["camera"] = camera_embedding(c2w)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.cfg.modln):
            tokens = self.clip(pixel_values=x).last_hidden_state  # not post-LN, as the reference
        if self.cfg.normalize_embeds:
            tokens = tokens / tokens.norm(dim=-1, keepdim=True)
        return tokens.reshape(b, v * tokens.shape[1], tokens.shape[2])

    def null(self, batch: int) -> torch.Tensor:
        """The unconditional embedding: zero tokens, or (`null_condition=clip_zero_images`) the frozen
        CLIP without modulation on all-zero images, computed once per device (CraftsMan's empty
        image embeds, which it computes before any checkpoint weight is loaded: plain CLIP)."""
        device = self.mean.device
        if self.cfg.null_condition == "zeros":
            return torch.zeros(batch, self.cfg.num_views * self.tokens_per_view, self.hidden_size, device=device)
        if self._null is None or self._null.device != device:
            v, size = self.cfg.num_views, self.image_size
            self.state["modulate"] = False
            try:
                with torch.no_grad(), torch.autocast(device.type, enabled=False):
                    self._null = self(
                        torch.zeros(1, v, 3, size, size, device=device), torch.eye(4, device=device).expand(1, v, 4, 4)
                    ).float()
            finally:
                self.state["modulate"] = True
        return self._null.expand(batch, -1, -1)


class TextEncoder(nn.Module):
    """Prompts -> (B, 77, hidden) CLIP text tokens; the null condition is the empty prompt's encoding."""

    def __init__(self, cfg: ConditionerConfig, load_weights: bool = True):
        super().__init__()
        self.cfg = cfg
        a = cfg.architecture
        if cfg.pretrained and load_weights:
            self.clip = load_pretrained(CLIPTextModel, cfg.pretrained, attn_implementation="sdpa")
        else:
            self.clip = CLIPTextModel(
                CLIPTextConfig(
                    hidden_size=a.text_hidden_size,
                    num_hidden_layers=a.text_layers,
                    num_attention_heads=a.text_heads,
                    intermediate_size=a.text_intermediate_size,
                    vocab_size=a.vocab_size,
                    max_position_embeddings=a.max_text_length,
                    attn_implementation="sdpa",
                )
            )
        self._tokenizer = None  # loaded on first use (a parameter count on the meta device needs none)
        self.clip.requires_grad_(False).eval()
        self.hidden_size = self.clip.config.hidden_size
        self.max_length = self.clip.config.max_position_embeddings

    def train(self, mode: bool = True) -> "TextEncoder":
        super().train(mode)
        self.clip.eval()
        return self

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = text_tokenizer(self.cfg)
        return self._tokenizer

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        if self.tokenizer is None:
            raise WeightsNotFound(
                "model.conditioner.pretrained and .tokenizer are null: no tokenizer to encode text prompts "
                "(model.conditioner.tokenizer=clip_bpe gives CLIP's)"
            )
        return self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        ).input_ids

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.clip(input_ids=input_ids.to(self.clip.device)).last_hidden_state

    @torch.no_grad()
    def null(self, batch: int) -> torch.Tensor:
        return self.forward(self.tokenize([""])).expand(batch, -1, -1)


def text_tokenizer(cfg: ConditionerConfig):
    """The text tower's tokenizer: `tokenizer` (clip_bpe, or a folder), else the pretrained weights' own."""
    if cfg.tokenizer == "clip_bpe":
        from craftsman_platform.models.clip_bpe import clip_tokenizer

        return clip_tokenizer()
    name = cfg.tokenizer or cfg.pretrained
    return load_pretrained(CLIPTokenizer, name) if name else None


def build_conditioner(cfg: ConditionerConfig, load_weights: bool = True) -> nn.Module:
    return (MultiViewImageEncoder if cfg.kind == "image" else TextEncoder)(cfg, load_weights)
