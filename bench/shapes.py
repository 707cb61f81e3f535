"""Real shapes as implicit fields for the extraction benchmarks."""
from __future__ import annotations

import open3d as o3d
import torch

from pipelines.corpora import pybullet_data_dir
from pipelines.mesh_io import load_mesh
from pipelines.meshops import raycasting_scene
from pipelines.watertight import make_watertight


def duck_field():
    """pybullet's duck made watertight; field(xyz (M, 3)) = -signed distance (> 0 inside)."""
    mesh = make_watertight(load_mesh(pybullet_data_dir() / "duck.obj").mesh).mesh
    scene = raycasting_scene(mesh)
    return lambda xyz: -torch.from_numpy(scene.compute_signed_distance(o3d.core.Tensor(xyz.numpy())).numpy())
