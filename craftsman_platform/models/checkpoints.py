"""Reading trained checkpoints (the read side; `training.checkpoint` writes them).

    RUN_DIR/checkpoints/step-NNNNNNN/{weights.safetensors, ema.safetensors, meta.json, ...}
    RUN_DIR/checkpoints/latest   the name of the newest complete checkpoint

`meta.json` carries the run's composed config; its `model` section is all a model needs, so
evaluation, generation and conversion load models from here without the training code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from craftsman_platform.errors import ConfigError, MissingInput
from craftsman_platform.models.build import ModelConfig, build_diffusion, build_vae, pretrained_frozen_keys
from craftsman_platform.models.diffusion import LatentDiffusion
from craftsman_platform.models.shape_vae import ShapeVAE

PREFIX = "step-"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "meta.json").exists())


def latest_checkpoint(path: str | Path) -> Optional[Path]:
    """The newest complete checkpoint under a run dir, its checkpoints/ dir, or `path` itself if it is one."""
    path = Path(path)
    if (path / "meta.json").exists():
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    pointer = root / "latest"
    if pointer.exists() and (root / pointer.read_text().strip() / "meta.json").exists():
        return root / pointer.read_text().strip()
    found = list_checkpoints(root)
    return found[-1] if found else None


def read_meta(ckpt: Path) -> dict:
    return json.loads((ckpt / "meta.json").read_text())


def load_weights(path: str | Path, prefer_ema: bool = True) -> tuple[dict[str, torch.Tensor], dict, str]:
    """(state dict, meta, 'ema' or 'raw') of a checkpoint or a run's latest one; EMA values replace
    the raw ones of the trainable weights when present and `prefer_ema`."""
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise MissingInput(f"no checkpoint in {path} (expected RUN_DIR, RUN_DIR/checkpoints or a step-N dir)")
    state = load_file(ckpt / "weights.safetensors")
    which = "raw"
    if prefer_ema and (ckpt / "ema.safetensors").exists():
        state.update(load_file(ckpt / "ema.safetensors"))
        which = "ema"
    return state, read_meta(ckpt), which


def find_vae_checkpoint(path: str | Path | None, key: str, needed_for: str) -> tuple[Path, dict]:
    """(checkpoint, its model config) of the trained VAE that config key `key` names; errors name the key."""
    if not path:
        raise ConfigError(f"{key} is required for {needed_for}: the run dir or checkpoint of a trained VAE")
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise MissingInput(f"{key}={path}: no checkpoint there")
    model = read_meta(ckpt)["config"]["model"]
    if model["kind"] != "vae":
        raise ConfigError(f"{key}={ckpt} is a {model['kind']} checkpoint, not a VAE")
    return ckpt, model


def weights_identity(path: str | Path, prefer_ema: bool = True) -> dict:
    """What identifies the weights `load_weights(path, prefer_ema)` returns, wherever the run dir is
    copied: the sha256 of the weight files read, plus where and at which step they were found."""
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise MissingInput(f"no checkpoint in {path} (expected RUN_DIR, RUN_DIR/checkpoints or a step-N dir)")
    files = ["weights.safetensors"]
    if prefer_ema and (ckpt / "ema.safetensors").exists():
        files.append("ema.safetensors")
    digest = hashlib.sha256()
    for name in files:
        with open(ckpt / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return {
        "checkpoint": str(ckpt),
        "step": read_meta(ckpt).get("step"),
        "weights": "ema" if len(files) == 2 else "raw",
        "sha256": digest.hexdigest(),
    }


def model_config(meta: dict) -> ModelConfig:
    """The validated model config a checkpoint was written with."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), meta["config"]["model"]))


def load_vae(
    path: str | Path, prefer_ema: bool = True, device: torch.device | str = "cpu"
) -> tuple[ShapeVAE, dict, str]:
    """A trained VAE in eval mode on `device` from a run dir or checkpoint: (model, meta, 'ema' or 'raw')."""
    state, meta, which = load_weights(path, prefer_ema)
    cfg = model_config(meta)
    if cfg.kind != "vae":
        raise ConfigError(f"{path} holds a {cfg.kind} checkpoint, not a VAE")
    vae = build_vae(cfg)
    vae.load_state_dict(state)
    return vae.eval().to(device), meta, which


def load_diffusion(
    path: str | Path, prefer_ema: bool = True, device: torch.device | str = "cpu"
) -> tuple[LatentDiffusion, ShapeVAE, dict, str]:
    """A trained diffusion model and the frozen VAE it was trained with, in eval mode on `device`:
    (model, vae, meta, 'ema' or 'raw'). The VAE is found through the checkpoint's meta."""
    state, meta, which = load_weights(path, prefer_ema)
    cfg = model_config(meta)
    if cfg.kind != "diffusion":
        raise ConfigError(f"{path} holds a {cfg.kind} checkpoint; generation needs a diffusion checkpoint")
    model = build_diffusion(cfg)
    # frozen pretrained CLIP weights are not in the checkpoint: they come from model.conditioner.pretrained
    missing, unexpected = model.load_state_dict(state, strict=False)
    if cfg.conditioner.pretrained:
        frozen = set(pretrained_frozen_keys(model))
        missing = [k for k in missing if k not in frozen]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    vae_path = meta.get("vae_checkpoint") or cfg.vae_checkpoint
    if not vae_path or latest_checkpoint(vae_path) is None:
        raise MissingInput(f"{path}: its VAE checkpoint {vae_path!r} is gone; set model.vae_checkpoint")
    vae, _, _ = load_vae(vae_path, prefer_ema, device)
    return model.eval().to(device), vae, meta, which
