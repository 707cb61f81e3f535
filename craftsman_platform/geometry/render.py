"""Multi-view condition images on the CPU: open3d ray casting, no Blender, no GPU.

Each view gives RGBA (alpha = object mask, white background), a world-space normal map and a
16-bit planar depth map. Colours come from the original textured parts: base-colour textures
looked up through interpolated UVs, vertex colours, face colours or the material colour, with
optional headlight Lambert shading.

Cameras (OpenCV axes, the canonical views) are the data contract's: shapedata/cameras.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d
import trimesh

from craftsman_platform.geometry.config import compute_threads
from craftsman_platform.shapedata.cameras import intrinsics
from craftsman_platform.shapedata.sample import DEPTH_SCALE, View

GREY = np.array([0.7, 0.7, 0.7], dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Colours of the parts
# ---------------------------------------------------------------------------------------------


@dataclass
class PartColour:
    """How to colour hits on one part: a texture with UVs, per-vertex, per-face or one colour."""

    mode: str  # "texture", "vertex", "face", "flat"
    faces: np.ndarray
    uv: np.ndarray | None = None
    image: np.ndarray | None = None  # (H, W, 3) uint8: only the texels hit become floats
    factor: np.ndarray | None = None  # multiplies the texture
    colours: np.ndarray | None = None  # (V, 3) or (F, 3) float, or (3,) for flat


def _material_colour(material) -> tuple[np.ndarray | None, np.ndarray]:
    """(base-colour texture or None, colour factor) of a trimesh material."""
    image = getattr(material, "baseColorTexture", None)
    factor = getattr(material, "baseColorFactor", None)
    if image is None:
        image = getattr(material, "image", None)
    if factor is None:
        factor = getattr(material, "main_color", None)
    factor = np.asarray(factor if factor is not None else [255, 255, 255, 255], dtype=np.float32)[:3]
    factor = factor / 255.0 if factor.max() > 1.0 else factor
    # uint8 as decoded: a 4096^2 texture as float32 is 200 MB and took 2.3 s to convert here; a view
    # reads at most its 65k hit texels
    tex = None if image is None else np.asarray(image.convert("RGB"), dtype=np.uint8)
    return tex, factor


def part_colour(part: trimesh.Trimesh) -> PartColour:
    visual = part.visual
    faces = np.asarray(part.faces)
    kind = getattr(visual, "kind", None)
    if kind == "texture":
        tex, factor = _material_colour(visual.material)
        if tex is not None and visual.uv is not None and len(visual.uv) == len(part.vertices):
            return PartColour("texture", faces, uv=np.asarray(visual.uv, dtype=np.float32), image=tex, factor=factor)
        return PartColour("flat", faces, colours=factor)
    if kind == "vertex":
        return PartColour("vertex", faces, colours=np.asarray(visual.vertex_colors, dtype=np.float32)[:, :3] / 255.0)
    if kind == "face":
        return PartColour("face", faces, colours=np.asarray(visual.face_colors, dtype=np.float32)[:, :3] / 255.0)
    material = getattr(visual, "material", None)
    if material is not None:
        return PartColour("flat", faces, colours=_material_colour(material)[1])
    return PartColour("flat", faces, colours=GREY)


def _shade_hits(pc: PartColour, prim: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Base colour (n, 3) of hits on one part: primitive ids and (u, v) barycentrics."""
    w = np.stack([1.0 - bary[:, 0] - bary[:, 1], bary[:, 0], bary[:, 1]], axis=1)[:, :, None]
    tri = pc.faces[prim]
    if pc.mode == "texture":
        uv = (pc.uv[tri] * w).sum(axis=1) % 1.0
        h, wd = pc.image.shape[:2]
        col = np.clip((uv[:, 0] * wd).astype(np.int64), 0, wd - 1)
        row = np.clip(((1.0 - uv[:, 1]) * h).astype(np.int64), 0, h - 1)
        return pc.image[row, col].astype(np.float32) / 255.0 * pc.factor
    if pc.mode == "vertex":
        return (pc.colours[tri] * w).sum(axis=1)
    if pc.mode == "face":
        return pc.colours[prim]
    return np.broadcast_to(pc.colours, (len(prim), 3))


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


class Renderer:
    """Ray-casts the parts of one object; `render(c2w)` gives one view."""

    def __init__(self, parts: list[trimesh.Trimesh], width: int, height: int, fov_deg: float, lambert: bool = True):
        self.scene = o3d.t.geometry.RaycastingScene(nthreads=compute_threads())
        self.colours = []
        for part in parts:
            self.scene.add_triangles(
                o3d.core.Tensor(np.asarray(part.vertices, dtype=np.float32)),
                o3d.core.Tensor(np.asarray(part.faces, dtype=np.uint32)),
            )
            self.colours.append(part_colour(part))
        self.width, self.height, self.lambert = width, height, lambert
        self.K = intrinsics(width, height, fov_deg)
        cols, rows = np.meshgrid(np.arange(width), np.arange(height))
        pix = np.stack([cols, rows, np.ones_like(cols)], axis=-1).reshape(-1, 3).astype(np.float64)
        self._cam_dirs = pix @ np.linalg.inv(self.K).T  # camera-frame directions with z = 1
        self._rays = np.empty((len(pix), 6), dtype=np.float32)  # origin, direction: reused per view
        self._blank = np.zeros((height, width, 4), dtype=np.uint8)  # white, transparent: copied per view
        self._blank[..., :3] = 255

    def render(self, c2w: np.ndarray) -> View:
        rot, eye = c2w[:3, :3], c2w[:3, 3]
        dirs = self._cam_dirs @ rot.T
        self._rays[:, :3], self._rays[:, 3:] = eye, dirs
        hit = self.scene.cast_rays(o3d.core.Tensor.from_numpy(self._rays), nthreads=compute_threads())
        t = hit["t_hit"].numpy()
        mask = np.isfinite(t)
        shape = (self.height, self.width)
        # Only hit pixels are computed; the background is filled in the 8/16-bit outputs.
        rgba = self._blank.copy()
        normal = np.zeros((*shape, 3), dtype=np.uint8)
        depth = np.zeros(shape, dtype=np.uint16)
        if mask.any():
            gid = hit["geometry_ids"].numpy()[mask]
            prim = hit["primitive_ids"].numpy()[mask]
            bary = hit["primitive_uvs"].numpy()[mask]
            nrm = hit["primitive_normals"].numpy()[mask]
            d = dirs[mask]
            nrm = np.where((np.einsum("ij,ij->i", nrm, d) > 0)[:, None], -nrm, nrm)  # face the camera
            base = np.empty((len(gid), 3), dtype=np.float32)
            for g in np.unique(gid):
                sel = gid == g
                base[sel] = _shade_hits(self.colours[g], prim[sel], bary[sel])
            if self.lambert:
                cos = -np.einsum("ij,ij->i", nrm, d / np.linalg.norm(d, axis=1, keepdims=True))
                base = (base * (0.35 + 0.65 * np.clip(cos, 0.0, 1.0))[:, None]).astype(np.float32)
            m2 = mask.reshape(shape)
            rgba[m2, :3] = np.round(base * 255).astype(np.uint8)
            rgba[m2, 3] = 255
            normal[m2] = np.round((nrm + 1.0) * 0.5 * 255).astype(np.uint8)
            # direction z = 1 in the camera frame: t is planar depth
            depth[m2] = np.clip(np.round(t[mask] * DEPTH_SCALE), 0, 65535).astype(np.uint16)
        return View(rgba=rgba, normal=normal, depth=depth, c2w=c2w, K=self.K)
