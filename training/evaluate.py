"""Checkpoint scoring on held-out shards (the library behind `craft evaluate`)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from models.build import build_vae
from models.shape_vae import ShapeVAE, occupancy_iou
from training.checkpoint import load_weights
from training.data import expand_urls
from training.loop import config_from_dict


def load_vae(path: str | Path, prefer_ema: bool = True) -> tuple[ShapeVAE, dict, str]:
    """A trained VAE in eval mode from a run dir or checkpoint: (model, meta, 'ema' or 'raw')."""
    state, meta, which = load_weights(path, prefer_ema)
    cfg = config_from_dict(meta["config"])
    if cfg.model.kind != "vae":
        raise ValueError(f"{path} holds a {cfg.model.kind} checkpoint, not a VAE")
    vae = build_vae(cfg.model)
    vae.load_state_dict(state)
    return vae.eval(), meta, which


def _array(sample: dict, key: str) -> torch.Tensor:
    return torch.from_numpy(np.load(io.BytesIO(sample[key]), allow_pickle=False).astype(np.float32))


@torch.no_grad()
def query_iou(path: str | Path, shards: str, prefer_ema: bool = True, seed: int = 0) -> list[dict]:
    """Per object: IoU of the VAE's occupancy on all its stored volume and near-surface query points,
    encoding a fixed random subset of its surface points with the posterior mean."""
    vae, _, _ = load_vae(path, prefer_ema)
    n = vae.cfg.num_inputs
    rows = []
    for sample in wds.WebDataset(expand_urls(shards), shardshuffle=False, empty_check=False):
        surface = _array(sample, "surface.npy")
        pick = torch.randperm(len(surface), generator=torch.Generator().manual_seed(seed))[:n]
        if len(pick) < n:
            pick = pick[torch.randint(len(pick), (n,), generator=torch.Generator().manual_seed(seed))]
        tokens = vae.decode(vae.encode(surface[pick][None], sample=False))
        row = {"uid": sample["__key__"]}
        for name in ("vol", "near"):
            q = _array(sample, f"{name}.npy")[None]
            inside = torch.cat([vae.inside_field(tokens, part[..., :3]) for part in q.split(65536, dim=1)], dim=1) > 0
            row[f"iou_{name}"] = float(occupancy_iou(inside, q[..., 3] < 0))
        rows.append(row)
    return rows
