"""Shape metrics: occupancy IoU on stored query points; Chamfer, F-score and normal consistency
between a predicted mesh and the ground-truth surface samples of a shard.

Nearest neighbours run on the GPU when the evaluation does (blocked exact distances), else with a
KD-tree on the CPU; both give the same numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree

from craftsman_platform.evaluation.objects import ObjectReader
from craftsman_platform.inference.runtime import autocast
from craftsman_platform.models.checkpoints import load_vae
from craftsman_platform.models.shape_vae import ShapeVAE, occupancy_iou

FSCORE_THRESHOLDS = (0.01, 0.02)


def sample_surface(mesh: trimesh.Trimesh, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n area-uniform points and their face normals."""
    points, faces = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return points.astype(np.float32), mesh.face_normals[faces].astype(np.float32)


def nearest(
    query: np.ndarray, ref: np.ndarray, device: torch.device | str = "cpu", block: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """(distance, index) of each query point's nearest reference point."""
    device = torch.device(device)
    if device.type != "cuda":
        return cKDTree(ref, balanced_tree=False).query(query, workers=-1)
    q, r = torch.from_numpy(query).to(device), torch.from_numpy(ref).to(device)
    best = [torch.cdist(q[i : i + block], r).min(dim=1) for i in range(0, len(q), block)]
    return torch.cat([b.values for b in best]).cpu().numpy(), torch.cat([b.indices for b in best]).cpu().numpy()


def surface_metrics(
    pred: tuple[np.ndarray, np.ndarray], gt: tuple[np.ndarray, np.ndarray], device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Chamfer (mean nearest-neighbour distance gt->pred + pred->gt, not squared, as 3DShape2VecSet),
    F-score at FSCORE_THRESHOLDS, normal consistency (mean |cos| to the nearest point, both ways)."""
    (pp, pn), (gp, gn) = pred, gt
    d_pg, i_pg = nearest(pp, gp, device)
    d_gp, i_gp = nearest(gp, pp, device)
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
def field_iou(vae: ShapeVAE, tokens: torch.Tensor, sample: dict, chunk: int = 65536) -> dict[str, float]:
    """IoU of one object's decoded occupancy (tokens (1, L, W)) on all its stored volume and
    near-surface points, computed on the tokens' device."""
    out = {}
    for name in ("vol", "near"):
        q = torch.from_numpy(sample[name]).to(tokens.device)[None]
        with autocast(tokens.device):
            inside = torch.cat([vae.inside_field(tokens, part[..., :3]) for part in q.split(chunk, dim=1)], dim=1) > 0
        out[f"iou_{name}"] = float(occupancy_iou(inside, q[..., 3] < 0))
    return out


def encoder_input(sample: dict, n: int, seed: int = 0) -> torch.Tensor:
    """A fixed random subset of n surface points (+ normals) of the object: (1, n, 6)."""
    surface = torch.from_numpy(sample["surface"])
    g = torch.Generator().manual_seed(seed)  # the subset is drawn on the host, where the points are
    pick = torch.randperm(len(surface), generator=g)[:n]
    if len(pick) < n:
        pick = pick[torch.randint(len(pick), (n,), generator=g)]
    return surface[pick][None]


@torch.no_grad()
def query_iou(path: str | Path, shards: str, prefer_ema: bool = True, seed: int = 0) -> list[dict]:
    """Per object of the shards: the VAE's IoU on its query points, encoding the posterior mean."""
    vae, _, _ = load_vae(path, prefer_ema)
    rows = []
    for sample in ObjectReader(shards):
        tokens = vae.decode(vae.encode(encoder_input(sample, vae.cfg.num_inputs, seed), sample=False))
        rows.append({"uid": sample["__key__"], **field_iou(vae, tokens, sample)})
    return rows
