"""Ground truth beside prediction: the shard's views on top, the predicted mesh rendered from the
same cameras below, in one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from craftsman_platform.geometry.render import Renderer


def fov_of(K: list, width: int) -> float:
    """Horizontal field of view (degrees) of pixel intrinsics (shapedata.cameras.intrinsics, inverted)."""
    return float(np.degrees(2 * np.arctan(0.5 * width / np.asarray(K)[0][0])))


def render_views(mesh: trimesh.Trimesh, cams: list[dict], size: int) -> np.ndarray:
    """(V, size, size, 3) uint8 renders of `mesh` from the shard's cameras (white where empty)."""
    if len(mesh.faces) == 0:
        return np.full((len(cams), size, size, 3), 255, dtype=np.uint8)
    grey = mesh.copy()
    grey.visual = trimesh.visual.ColorVisuals(grey, face_colors=[180, 180, 200, 255])
    renderer = Renderer([grey], size, size, fov_of(cams[0]["K"], cams[0]["width"]))
    return np.stack([renderer.render(np.asarray(c["c2w"])).rgba[..., :3] for c in cams])


def render_pair(gt_rgb: np.ndarray, cams: list[dict], mesh: trimesh.Trimesh, path: Path, size: int) -> Path:
    """Top row: ground-truth views (resized); bottom row: the prediction from the same cameras."""
    gt = np.stack([np.asarray(Image.fromarray(v).resize((size, size), Image.BILINEAR)) for v in gt_rgb])
    pred = render_views(mesh, cams, size)
    grid = np.concatenate([np.concatenate(list(gt), axis=1), np.concatenate(list(pred), axis=1)], axis=0)
    Image.fromarray(grid).save(path)
    return path
