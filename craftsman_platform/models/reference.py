"""CraftsMan v1's released checkpoints in our modules: config translation and state-dict mapping.

The reference (github.com/wyysf-98/CraftsMan, commit 2fc35ee) saves Lightning checkpoints whose
`state_dict` holds `shape_model.*` (the VAE), and for the diffusion system also `condition.*` (CLIP
with ModLN) and `denoiser_model.*`, next to a `config.yaml`. Nothing of the reference's code is
used here; the mapping follows its module layout:

- self-attention `c_qkv` rows are grouped per head, [q_h, k_h, v_h] for h = 0..H-1; ours are
  [Q_all; K_all; V_all] with heads inside each: rows are permuted (`qkv_rows`). Cross-attention
  `c_kv` likewise ([k_h, v_h] per head -> [K_all; V_all]); `c_q` needs nothing.
- the denoiser's skip merge concatenates [skip, x]; ours [x, skip]: its Linear's input columns swap.
- names: `ln_1/ln_2/ln_3` -> `ln_q/ln_kv/ln_mlp` (cross blocks) or `ln1/ln2` (self blocks),
  `mlp.c_fc/c_proj` -> `mlp.fc/proj`, CLIP's `layer_norm1` -> `layer_norm1.norm` and `mod_norm1.mlp`
  -> `layer_norm1.modulation`, and so on (`vae_key`, `denoiser_key`, `conditioner_key`).

Behaviours that differ from ours by default and are switched by config values in the converted
checkpoint (docs/craftsman-weights.md lists them): timestep embedding [sin, cos] and a GELU time
MLP; DDIM with set_alpha_to_one=False; the null condition is CLIP on zero images; cameras in the
reference's OpenGL-style, unit-distance frame; optional unit-norm condition tokens; no encoder
ln_post or an extra leading latent (the "aligned" VAE) where its config says so.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional

import torch

from craftsman_platform.errors import ConfigError

# ----------------------------------------------------------------------------------------------
# Layout permutations
# ----------------------------------------------------------------------------------------------


def qkv_rows(weight: torch.Tensor, heads: int, parts: int) -> torch.Tensor:
    """Reference rows [h][part][d] -> ours [part][h][d] (parts = 3 for qkv, 2 for kv); weight or bias."""
    d = weight.shape[0] // (heads * parts)
    rest = weight.shape[1:]
    return weight.reshape(heads, parts, d, *rest).transpose(0, 1).reshape(weight.shape)


def qkv_rows_back(weight: torch.Tensor, heads: int, parts: int) -> torch.Tensor:
    """Ours [part][h][d] -> reference [h][part][d]: the inverse of `qkv_rows`."""
    d = weight.shape[0] // (heads * parts)
    rest = weight.shape[1:]
    return weight.reshape(parts, heads, d, *rest).transpose(0, 1).reshape(weight.shape)


def swap_halves(weight: torch.Tensor) -> torch.Tensor:
    """A Linear over [a, b] as one over [b, a]: its input columns swap halves (its own inverse)."""
    a, b = weight.chunk(2, dim=1)
    return torch.cat([b, a], dim=1)


# ----------------------------------------------------------------------------------------------
# Key names (reference -> ours)
# ----------------------------------------------------------------------------------------------
_BLOCK = [  # inside a reference ResidualAttentionBlock / ResidualCrossAttentionBlock
    (r"attn\.c_qkv\.", "attn.qkv."),
    (r"attn\.c_q\.", "attn.q."),
    (r"attn\.c_kv\.", "attn.kv."),
    (r"attn\.c_proj\.", "attn.proj."),
    (r"mlp\.c_fc\.", "mlp.fc."),
    (r"mlp\.c_proj\.", "mlp.proj."),
]
_SELF_LN = [(r"ln_1\.", "ln1."), (r"ln_2\.", "ln2.")]
_CROSS_LN = [(r"ln_1\.", "ln_q."), (r"ln_2\.", "ln_kv."), (r"ln_3\.", "ln_mlp.")]


def _rename(rest: str, rules: list[tuple[str, str]]) -> str:
    for pattern, repl in rules:
        if re.match(pattern, rest):
            return re.sub("^" + pattern, repl, rest)
    return rest


def vae_key(key: str) -> Optional[str]:
    """A reference `shape_model.` key (prefix removed) -> ours, or None for keys ours does not keep."""
    m = re.match(r"encoder\.self_attn\.resblocks\.(\d+)\.(.*)", key)
    if m:
        return f"encoder.blocks.{m[1]}." + _rename(_rename(m[2], _BLOCK), _SELF_LN)
    m = re.match(r"transformer\.resblocks\.(\d+)\.(.*)", key)
    if m:
        return f"decoder.blocks.{m[1]}." + _rename(_rename(m[2], _BLOCK), _SELF_LN)
    m = re.match(r"encoder\.cross_attn\.(.*)", key)
    if m:
        return "encoder_cross." + _rename(_rename(m[1], _BLOCK), _CROSS_LN)
    m = re.match(r"decoder\.cross_attn_decoder\.(.*)", key)
    if m:
        return "query_cross." + _rename(_rename(m[1], _BLOCK), _CROSS_LN)
    simple = {
        "encoder.query": "learned_queries",
        "encoder.input_proj.weight": "input_proj.weight",
        "encoder.input_proj.bias": "input_proj.bias",
        "encoder.ln_post.weight": "encoder_ln.weight",
        "encoder.ln_post.bias": "encoder_ln.bias",
        "decoder.query_proj.weight": "query_proj.weight",
        "decoder.query_proj.bias": "query_proj.bias",
        "decoder.ln_post.weight": "query_ln.weight",
        "decoder.ln_post.bias": "query_ln.bias",
        "decoder.output_proj.weight": "output.weight",
        "decoder.output_proj.bias": "output.bias",
    }
    if key in simple:
        return simple[key]
    if re.match(r"(pre_kl|post_kl)\.(weight|bias)$", key):
        return key
    if key == "projection":  # the aligned VAE's CLIP-alignment head: no part of the geometry
        return None
    raise KeyError(key)


def denoiser_key(key: str) -> str:
    """A reference `denoiser_model.` key (prefix removed) -> ours."""
    m = re.match(r"backbone\.(encoder)\.(\d+)\.(.*)", key)
    if m:
        return f"encoder.{m[2]}." + _rename(_rename(m[3], _BLOCK), _SELF_LN)
    m = re.match(r"backbone\.middle_block\.(.*)", key)
    if m:
        return "middle." + _rename(_rename(m[1], _BLOCK), _SELF_LN)
    m = re.match(r"backbone\.decoder\.(\d+)\.([012])\.(.*)", key)
    if m:
        i, part, rest = m[1], m[2], m[3]
        if part == "0":
            return f"decoder.{i}." + _rename(_rename(rest, _BLOCK), _SELF_LN)
        return f"skips.{i}.{'linear' if part == '1' else 'norm'}.{rest}"
    simple = {
        "input_proj": "latent_embed",
        "output_proj": "out",
        "ln_post": "out_norm",
        "time_proj.c_fc": "time_embed.mlp.0",
        "time_proj.c_proj": "time_embed.mlp.2",
        "context_embed.0": "context_embed.0",
        "context_embed.1": "context_embed.1",
    }
    head, _, leaf = key.rpartition(".")
    if head in simple and leaf in ("weight", "bias"):
        return f"{simple[head]}.{leaf}"
    raise KeyError(key)


def conditioner_key(key: str, tower: str) -> Optional[str]:
    """A reference `condition.` key (prefix removed) -> ours under `tower` (our CLIP vision tower's
    key prefix, which depends on the installed transformers), or None for the parts of the
    reference's full CLIP the image conditioner does not use (text tower, projections, logit scale)
    and its canonical-camera buffer."""
    if (
        key == "cameras"
        or key.startswith(("model.text_model.", "model.visual_projection.", "model.text_projection."))
        or key == "model.logit_scale"
    ):
        return None
    m = re.match(r"model\.vision_model\.(.*)", key)
    if not m:
        raise KeyError(key)
    rest = m[1]
    rest = re.sub(r"^(encoder\.layers\.\d+)\.layer_norm([12])\.", r"\1.layer_norm\2.norm.", rest)
    rest = re.sub(r"^(encoder\.layers\.\d+)\.mod_norm([12])\.mlp\.", r"\1.layer_norm\2.modulation.", rest)
    return tower + rest


# ----------------------------------------------------------------------------------------------
# State dicts
# ----------------------------------------------------------------------------------------------
def _convert(
    state: dict[str, torch.Tensor],
    prefix: str,
    name: Callable[[str], Optional[str]],
    fix: Callable[[str, torch.Tensor], torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """(converted, ignored keys, unknown keys) for the reference keys under `prefix`."""
    out, ignored, unknown = {}, [], []
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        try:
            ours = name(rest)
        except KeyError:
            unknown.append(key)
            continue
        if ours is None:
            ignored.append(key)
        else:
            out[ours] = fix(ours, value)
    return out, ignored, unknown


def convert_vae(state: dict[str, torch.Tensor], heads: int, prefix: str = "shape_model."):
    def fix(ours: str, value: torch.Tensor) -> torch.Tensor:
        if ours.endswith(("attn.qkv.weight", "attn.qkv.bias")):
            return qkv_rows(value, heads, 3)
        if ours.endswith(("attn.kv.weight", "attn.kv.bias")):
            return qkv_rows(value, heads, 2)
        return value

    return _convert(state, prefix, vae_key, fix)


def convert_denoiser(state: dict[str, torch.Tensor], heads: int, prefix: str = "denoiser_model."):
    def fix(ours: str, value: torch.Tensor) -> torch.Tensor:
        if ours.endswith(("attn.qkv.weight", "attn.qkv.bias")):
            return qkv_rows(value, heads, 3)
        if re.match(r"skips\.\d+\.linear\.weight$", ours):
            return swap_halves(value)
        return value

    return _convert(state, prefix, denoiser_key, fix)


def convert_conditioner(state: dict[str, torch.Tensor], tower: str, prefix: str = "condition."):
    return _convert(state, prefix, lambda k: conditioner_key(k, tower), lambda ours, v: v)


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------
def _get(tree: Any, path: str, default: Any = None) -> Any:
    for part in path.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return default
        tree = tree[part]
    return tree


def vae_overrides(shape: dict) -> dict:
    """Our `model.vae` values for a reference `system.shape_model` section."""
    if _get(shape, "point_feats", 0) != 3 or _get(shape, "embed_point_feats", False):
        raise ConfigError("system.shape_model: only xyz + raw normals inputs (point_feats: 3) are supported")
    if _get(shape, "embed_type", "fourier") != "fourier" or _get(shape, "out_dim", 1) != 1:
        raise ConfigError("system.shape_model: only Fourier embeddings and one occupancy output are supported")
    return {
        "num_latents": _get(shape, "num_latents", 256),
        "embed_dim": _get(shape, "embed_dim", 64),
        "width": _get(shape, "width", 768),
        "heads": _get(shape, "heads", 12),
        "encoder_layers": _get(shape, "num_encoder_layers", 8),
        "decoder_layers": _get(shape, "num_decoder_layers", 16),
        "num_freqs": _get(shape, "num_freqs", 8),
        "include_pi": _get(shape, "include_pi", True),
        "qkv_bias": _get(shape, "qkv_bias", True),
        "query_mode": "fps" if _get(shape, "use_downsample", False) else "learned",
        "encoder_ln": _get(shape, "use_ln_post", False),
        "head": "occupancy",
    }


def clip_architecture(clip_config: Optional[dict]) -> dict:
    """Our `model.conditioner.architecture` from a CLIP config.json (its vision part), or {} for
    CLIP ViT-L/14, the default."""
    if not clip_config:
        return {}
    vision = clip_config.get("vision_config", clip_config)
    keys = {
        "hidden_size": "hidden_size",
        "num_hidden_layers": "num_hidden_layers",
        "num_attention_heads": "num_attention_heads",
        "intermediate_size": "intermediate_size",
        "patch_size": "patch_size",
        "image_size": "image_size",
    }
    return {ours: vision[theirs] for ours, theirs in keys.items() if theirs in vision}


def model_overrides(config: dict, aligned: bool, clip_config: Optional[dict] = None) -> dict:
    """Our `model` section for a reference config.yaml (a VAE or a diffusion system)."""
    system = config.get("system", {})
    vae = {**vae_overrides(system.get("shape_model", {})), "shape_token": aligned}
    if config.get("system_type") != "shape-diffusion-system":
        return {"kind": "vae", "vae": vae}
    den, cond = system.get("denoiser_model", {}), system.get("condition_model", {})
    noise, ddim = system.get("noise_scheduler", {}), system.get("denoise_scheduler", {})
    if not _get(den, "skip_ln", False) or not _get(den, "context_ln", True) or _get(den, "flip_sin_to_cos", False):
        raise ConfigError(
            "system.denoiser_model: skip_ln: true, context_ln: true and flip_sin_to_cos: false are supported"
        )
    if not _get(cond, "encode_camera", False) or _get(cond, "camera_embeds_type", "sincos") != "sincos":
        raise ConfigError(
            "system.condition_model: only the camera-modulated (ModLN, sincos) image encoder is supported"
        )
    gamma = system.get("snr_gamma", 5.0)
    return {
        "kind": "diffusion",
        "vae": vae,
        "denoiser": {
            "kind": "unet_transformer",
            "width": _get(den, "width", 768),
            "heads": _get(den, "heads", 12),
            "encoder_layers": _get(den, "layers", 6),
            "context_dim": _get(den, "context_dim", 1024),
            "qkv_bias": False,
            "time_embedding": "sin_cos",
            "time_activation": "gelu",
        },
        "conditioner": {
            "kind": "image",
            "pretrained": _get(cond, "pretrained_model_name_or_path") or None,
            "architecture": clip_architecture(clip_config),
            "num_views": _get(cond, "n_views", 4),
            "modln": True,
            "cfg_dropout": _get(cond, "empty_embeds_ratio", 0.1),
            "normalize_embeds": _get(cond, "normalize_embeds", False),
            "null_condition": "zeros" if _get(cond, "zero_uncond_embeds", True) else "clip_zero_images",
            "camera_convention": "opengl_unit",
        },
        "diffusion": {
            "num_train_timesteps": _get(noise, "num_train_timesteps", 1000),
            "beta_schedule": _get(noise, "beta_schedule", "linear"),
            "beta_start": _get(noise, "beta_start", 0.0001),
            "beta_end": _get(noise, "beta_end", 0.02),
            "prediction_type": _get(noise, "prediction_type", "epsilon"),
            "min_snr_gamma": float(gamma) if gamma else None,
            "sampler": "ddim",
            "sampling_steps": system.get("num_inference_steps", 50),
            "guidance_scale": system.get("guidance_scale", 7.5),
            "set_alpha_to_one": _get(ddim, "set_alpha_to_one", True),
            "steps_offset": _get(ddim, "steps_offset", 0),
        },
    }
