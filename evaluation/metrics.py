"""Shape metrics: occupancy IoU on stored query points; Chamfer, F-score and normal consistency
between a predicted mesh and the ground-truth surface samples of a shard."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import trimesh
import webdataset as wds
from scipy.spatial import cKDTree

from inference.pipeline import load_vae
from models.shape_vae import ShapeVAE, occupancy_iou
from training.data import expand_urls

FSCORE_THRESHOLDS = (0.01, 0.02)


def npy(sample: dict, key: str) -> np.ndarray:
    return np.load(io.BytesIO(sample[key]), allow_pickle=False).astype(np.float32)


def sample_surface(mesh: trimesh.Trimesh, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n area-uniform points and their face normals."""
    points, faces = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return points.astype(np.float32), mesh.face_normals[faces].astype(np.float32)


def surface_metrics(pred: tuple[np.ndarray, np.ndarray], gt: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Chamfer (mean nearest-neighbour distance gt->pred + pred->gt, not squared, as 3DShape2VecSet),
    F-score at FSCORE_THRESHOLDS, normal consistency (mean |cos| to the nearest point, both ways)."""
    (pp, pn), (gp, gn) = pred, gt
    d_pg, i_pg = cKDTree(gp, balanced_tree=False).query(pp, workers=-1)
    d_gp, i_gp = cKDTree(pp, balanced_tree=False).query(gp, workers=-1)
    out = {"chamfer": float(d_pg.mean() + d_gp.mean())}
    for t in FSCORE_THRESHOLDS:
        precision, recall = float((d_pg < t).mean()), float((d_gp < t).mean())
        out[f"fscore@{t}"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    nc = 0.5 * (np.abs((pn * gn[i_pg]).sum(1)).mean() + np.abs((gn * pn[i_gp]).sum(1)).mean())
    out["normal_consistency"] = float(nc)
    return out


def empty_mesh_metrics() -> dict[str, float]:
    """What a prediction with no surface scores (a defined worst case, not a crash)."""
    return {"chamfer": float("nan"), **{f"fscore@{t}": 0.0 for t in FSCORE_THRESHOLDS}, "normal_consistency": 0.0}


@torch.no_grad()
def field_iou(vae: ShapeVAE, tokens: torch.Tensor, sample: dict) -> dict[str, float]:
    """IoU of the decoded occupancy on all the object's stored volume and near-surface points."""
    out = {}
    for name in ("vol", "near"):
        q = torch.from_numpy(npy(sample, f"{name}.npy"))[None]
        inside = torch.cat([vae.inside_field(tokens, part[..., :3]) for part in q.split(65536, dim=1)], dim=1) > 0
        out[f"iou_{name}"] = float(occupancy_iou(inside, q[..., 3] < 0))
    return out


def encoder_input(sample: dict, n: int, seed: int = 0) -> torch.Tensor:
    """A fixed random subset of n surface points (+ normals) of the object: (1, n, 6)."""
    surface = torch.from_numpy(npy(sample, "surface.npy"))
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(surface), generator=g)[:n]
    if len(pick) < n:
        pick = pick[torch.randint(len(pick), (n,), generator=g)]
    return surface[pick][None]


@torch.no_grad()
def query_iou(path: str | Path, shards: str, prefer_ema: bool = True, seed: int = 0) -> list[dict]:
    """Per object of the shards: the VAE's IoU on its query points, encoding the posterior mean."""
    vae, _, _ = load_vae(path, prefer_ema)
    rows = []
    for sample in wds.WebDataset(expand_urls(shards), shardshuffle=False, empty_check=False):
        tokens = vae.decode(vae.encode(encoder_input(sample, vae.cfg.num_inputs, seed), sample=False))
        rows.append({"uid": sample["__key__"], **field_iou(vae, tokens, sample)})
    return rows
