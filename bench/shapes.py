"""Real shapes as implicit fields for the extraction benchmarks."""

from __future__ import annotations

import open3d as o3d
import torch

from craftsman_platform.corpora import pybullet_data_dir
from craftsman_platform.geometry.mesh_io import load_mesh
from craftsman_platform.geometry.meshops import raycasting_scene
from craftsman_platform.geometry.watertight import make_watertight


def duck_field():
    """pybullet's duck made watertight; field(xyz (M, 3)) = -signed distance (> 0 inside)."""
    mesh = make_watertight(load_mesh(pybullet_data_dir() / "duck.obj").mesh).mesh
    scene = raycasting_scene(mesh)
    return lambda xyz: -torch.from_numpy(scene.compute_signed_distance(o3d.core.Tensor(xyz.numpy())).numpy())
