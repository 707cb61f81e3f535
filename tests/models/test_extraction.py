"""Mesh extraction: the octree gives the dense grid's surface with far fewer queries, on a real shape."""

from __future__ import annotations

import numpy as np
import open3d as o3d
import pytest
import torch
import trimesh

from craftsman_platform.geometry.mesh_io import load_mesh
from craftsman_platform.geometry.meshops import raycasting_scene
from craftsman_platform.geometry.watertight import make_watertight
from craftsman_platform.models.extraction import (
    dense_grid,
    export_mesh,
    extract_mesh,
    extract_meshes,
    grid_iou,
    grid_to_mesh,
    octree_grid,
    octree_grids,
    remove_small_components,
)


@pytest.fixture(scope="module")
def duck_field(pybullet_dir):
    """The signed distance of pybullet's duck (made watertight): > 0 inside, like a decoder's field."""
    mesh = make_watertight(load_mesh(pybullet_dir / "duck.obj").mesh).mesh
    scene = raycasting_scene(mesh)

    def field(xyz: torch.Tensor) -> torch.Tensor:
        return -torch.from_numpy(scene.compute_signed_distance(o3d.core.Tensor(xyz.numpy())).numpy())

    return field, mesh


def test_octree_matches_the_dense_257_grid_with_5x_fewer_queries(duck_field):
    field, _ = duck_field
    octree, so = octree_grid(field, depth=8, coarse_depth=5, chunk=200_000)
    dense, sd = dense_grid(field, depth=8, chunk=200_000)
    assert so.resolution == sd.resolution == 257 and sd.queries == 257**3
    assert grid_iou(octree, dense) >= 0.99
    assert sd.queries / so.queries >= 5
    a, b = grid_to_mesh(octree), grid_to_mesh(dense)
    assert abs(a.area - b.area) / b.area < 0.01 and a.is_watertight


def test_extracted_mesh_is_the_shape_and_exports(duck_field, tmp_path):
    field, truth = duck_field
    mesh, stats = extract_mesh(field, depth=6, coarse_depth=4, chunk=5000)  # small chunks: bounded memory
    assert stats.resolution == 65 and mesh.is_watertight and mesh.volume > 0  # outward faces
    assert mesh.volume == pytest.approx(truth.volume, rel=0.05)
    for name in ("duck.glb", "duck.obj"):
        back = trimesh.load(export_mesh(mesh, tmp_path / name), force="mesh")
        assert len(back.faces) == len(mesh.faces)
    with pytest.raises(ValueError, match="ply"):
        export_mesh(mesh, tmp_path / "duck.ply")


def test_a_field_without_surface_gives_an_empty_mesh():
    mesh, _ = extract_mesh(lambda xyz: -torch.ones(len(xyz)), depth=4, coarse_depth=3)
    assert len(mesh.faces) == 0


def sphere(xyz: torch.Tensor) -> torch.Tensor:
    return 0.6 - xyz.norm(dim=-1)


def test_objects_extracted_together_equal_one_at_a_time(duck_field):
    field, _ = duck_field
    both = extract_meshes(
        lambda xyz: torch.stack([field(xyz[0]), sphere(xyz[1])]), 2, depth=6, coarse_depth=4, chunk=7000
    )
    alone = [extract_mesh(f, depth=6, coarse_depth=4) for f in (field, sphere)]
    for (mesh, stats), (ref, ref_stats) in zip(both, alone):
        assert stats.queries == ref_stats.queries and len(mesh.faces) == len(ref.faces) > 0
        assert abs(mesh.vertices - ref.vertices).max() < 1e-5


def test_marching_cubes_visits_only_refined_cells_and_finds_the_same_surface(duck_field):
    field, _ = duck_field
    values, visit, _ = octree_grids(lambda xyz: field(xyz[0])[None], 1, depth=7, coarse_depth=5)
    values, visit = values[0].numpy(), visit[0].numpy()
    assert visit.mean() < 0.3  # most of the grid is skipped
    full, masked = grid_to_mesh(values), grid_to_mesh(values, visit=visit)
    assert len(full.faces) == len(masked.faces) and abs(full.vertices - masked.vertices).max() == 0


def test_small_parts_are_dropped_and_the_rest_kept_face_for_face():
    big = trimesh.creation.icosphere(subdivisions=3)  # 1280 faces
    small = trimesh.creation.icosphere(subdivisions=1, radius=0.1)  # 80 faces
    small.apply_translation([3.0, 0, 0])
    both = trimesh.util.concatenate([big, small])
    kept = remove_small_components(both, 0.1)
    assert len(kept.faces) == len(big.faces) and len(kept.vertices) == len(big.vertices)
    assert np.allclose(np.sort(kept.area_faces), np.sort(big.area_faces))
    assert len(remove_small_components(both, 0.05).faces) == len(both.faces)  # 80 >= 0.05 x 1280
    assert remove_small_components(both, 0.0) is both
