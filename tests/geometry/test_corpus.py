"""The whole geometry core on a fixed subset of real, messy meshes (pybullet_data, assimp)."""

from __future__ import annotations

import numpy as np
import pytest

from craftsman_platform.geometry.config import GeometryConfig, SampleConfig
from craftsman_platform.geometry.pipeline import process_mesh

# A fixed subset: procedural objects of touching parts, robot parts (open, multi-shell), scanned
# shapes, a textured sphere, and assimp's multi-part glTF engine.
PYBULLET = [
    "duck.obj",
    "random_urdfs/000/000.obj",
    "random_urdfs/123/123.obj",
    "random_urdfs/987/987.obj",
    "husky/meshes/wheel.stl",
    "a1/meshes/trunk.obj",
    "textured_sphere_smooth.obj",
    "sphere_smooth.obj",
    "kuka_iiwa/meshes/link_2.stl",
    "bicycle/files/wheel_scaled.stl",
]
ASSIMP = [
    "OBJ/spider.obj",
    "glTF2/2CylinderEngine-glTF-Binary/2CylinderEngine.glb",
    "STL/sphereWithHole.stl",
    "OFF/Wuson.off",
]

SMALL = GeometryConfig(sample=SampleConfig(surface=20_000, volume=40_000, near=20_000, sharp_max=4_000))
SMALL.watertight.quality_samples = 30_000


def _check(out):
    rec = out.record()
    assert rec["watertight_is_watertight"] and rec["watertight_parts_lost"] == 0, rec
    assert rec["watertight_chamfer"] < 0.06, rec
    assert rec["sign_agreement"] >= 0.995, rec
    assert out.samples.surface.shape == (20_000, 6) and out.samples.vol.shape == (40_000, 4)
    assert np.isfinite(out.samples.vol).all() and np.isfinite(out.samples.near).all()
    # some of the volume is solid, most of it is air
    assert 0.0 < (out.samples.vol[:, 3] < 0).mean() < 0.9


@pytest.mark.parametrize("rel", PYBULLET)
def test_pybullet_meshes(pybullet_dir, rel):
    _check(process_mesh(pybullet_dir / rel, rel.replace("/", "-").replace(".", "_"), SMALL))


@pytest.mark.parametrize("rel", ASSIMP)
def test_assimp_meshes(assimp_dir, rel):
    _check(process_mesh(assimp_dir / rel, rel.replace("/", "-").replace(".", "_"), SMALL))
