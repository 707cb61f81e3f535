"""Mesh loading: every supported format, scene flattening, cleaning, and every rejection reason."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import trimesh
from helpers import write_obj

from craftsman_platform.geometry.config import LoadConfig
from craftsman_platform.geometry.mesh_io import REASONS, MeshRejected, load_mesh

CUBE_V = [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]]
CUBE_F = [
    [0, 2, 1],
    [0, 3, 2],
    [4, 5, 6],
    [4, 6, 7],
    [0, 1, 5],
    [0, 5, 4],
    [1, 2, 6],
    [1, 6, 5],
    [2, 3, 7],
    [2, 7, 6],
    [3, 0, 4],
    [3, 4, 7],
]


def rejected(path, cfg=None) -> MeshRejected:
    with pytest.raises(MeshRejected) as info:
        load_mesh(path, cfg)
    assert info.value.code in REASONS and info.value.message
    return info.value


@pytest.mark.parametrize(
    "rel",
    [
        "glTF2/2CylinderEngine-glTF-Binary/2CylinderEngine.glb",
        "glTF2/BoxTextured-glTF/BoxTextured.gltf",
        "OBJ/spider.obj",
        "PLY/Wuson.ply",
        "STL/Spider_binary.stl",
        "STL/Spider_ascii.stl",
        "OFF/Wuson.off",
    ],
)
def test_every_supported_format_loads_normalised(assimp_dir, rel):
    loaded = load_mesh(assimp_dir / rel)
    lo, hi = loaded.mesh.bounds
    assert np.isclose((hi - lo).max(), 1.9) and np.allclose((hi + lo)[np.argmax(hi - lo)], 0, atol=1e-9)
    assert np.abs(loaded.mesh.vertices).max() <= 0.95 + 1e-9
    assert len(loaded.mesh.faces) > 0 and loaded.parts


def test_scene_is_flattened_with_node_transforms_and_every_part(assimp_dir):
    path = assimp_dir / "glTF2/2CylinderEngine-glTF-Binary/2CylinderEngine.glb"
    scene = trimesh.load(path, force="scene")
    loaded = load_mesh(path)
    assert len(loaded.parts) == len(scene.graph.nodes_geometry) > 50  # instances, not just geometries
    # the recorded transform maps the source scene (with its node transforms) to the normalised mesh
    src_lo, src_hi = scene.bounds
    center, scale = np.array(loaded.normalization["center"]), loaded.normalization["scale"]
    assert np.allclose((src_lo - center) * scale, loaded.mesh.bounds[0], atol=1e-6)
    assert np.allclose((src_hi - center) * scale, loaded.mesh.bounds[1], atol=1e-6)


def test_margin_is_configurable(assimp_dir):
    loaded = load_mesh(assimp_dir / "OFF/Wuson.off", LoadConfig(bound=0.5))
    assert np.isclose(np.ptp(loaded.mesh.vertices, axis=0).max(), 1.0)


def test_materials_textures_and_vertex_colours_are_kept(assimp_dir):
    textured = load_mesh(assimp_dir / "glTF2/BoxTextured-glTF-Binary/BoxTextured.glb")
    assert any(p.visual.kind == "texture" and p.visual.uv is not None for p in textured.parts)
    coloured = load_mesh(assimp_dir / "OBJ/cube_with_vertexcolors.obj")
    assert any(p.visual.kind == "vertex" for p in coloured.parts)
    spider = load_mesh(assimp_dir / "OBJ/spider.obj")
    assert len(spider.parts) == 4 and all(p.visual.material is not None for p in spider.parts)


def test_degenerate_and_duplicate_faces_are_dropped(tmp_path):
    v = CUBE_V + [[0.5, 0.5, 0.5]]
    f = CUBE_F + [CUBE_F[0], CUBE_F[3][::-1], [0, 0, 1], [0, 8, 8]]
    loaded = load_mesh(write_obj(tmp_path / "dup.obj", v, f))
    assert loaded.stats["duplicate_dropped"] == 2 and loaded.stats["degenerate_dropped"] == 2
    assert len(loaded.mesh.faces) == 12 and loaded.mesh.is_watertight


# ---------------------------------------------------------------------------------------------
# Rejections: one real malformed file per reason
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel",
    [
        "invalid/empty.ply",
        "invalid/empty.off",
        "invalid/OutOfMemory.off",
        "PLY/pond.0.ply",
        "glTF2/MissingBin/BoxTextured.gltf",
    ],
)
def test_unreadable_files(assimp_dir, rel):
    assert rejected(assimp_dir / rel).code == "unreadable"


def test_missing_buffer_names_the_missing_file(assimp_dir):
    assert "BoxTextured0.bin" in rejected(assimp_dir / "glTF2/MissingBin/BoxTextured.gltf").message


def test_truncated_files_are_unreadable(assimp_dir, tmp_path):
    for rel in ["STL/Spider_binary.stl", "glTF2/2CylinderEngine-glTF-Binary/2CylinderEngine.glb"]:
        data = (assimp_dir / rel).read_bytes()
        cut = tmp_path / ("cut_" + rel.split("/")[-1])
        cut.write_bytes(data[: len(data) // 2])
        err = rejected(cut)
        assert err.code == "unreadable", err
    assert "truncated" in rejected(tmp_path / "cut_Spider_binary.stl").message


def test_unknown_format(assimp_dir, tmp_path):
    assert rejected(assimp_dir / "3DS/fels.3ds").code == "unknown_format"
    assert rejected(assimp_dir / "STL/formatDetection").code == "unknown_format"


@pytest.mark.parametrize(
    "rel", ["OBJ/point_cloud.obj", "OBJ/testline.obj", "OBJ/testpoints.obj", "PLY/points.ply", "OFF/invalid.off"]
)
def test_no_triangles(assimp_dir, rel):
    assert rejected(assimp_dir / rel).code == "no_triangles"


def test_non_finite_vertices(assimp_dir):
    err = rejected(assimp_dir / "glTF2/BoxWithInfinites-glTF-Binary/BoxWithInfinites.glb")
    assert err.code == "non_finite"


@pytest.mark.parametrize(
    "rel",
    [
        "glTF2/IndexOutOfRange/IndexOutOfRange.gltf",
        "glTF2/IndexOutOfRange/AllIndicesOutOfRange.gltf",
        "invalid/malformed.obj",
    ],
)
def test_indices_out_of_range(assimp_dir, rel):
    assert rejected(assimp_dir / rel).code == "index_out_of_range"


def test_a_gltf_breaking_the_schema_says_where(assimp_dir):
    bad = rejected(assimp_dir / "glTF2/wrongTypes/badArray.gltf")  # primitives given as an object
    assert bad.code == "malformed_gltf" and "meshes[0].primitives must be an array" in bad.message
    bad = rejected(assimp_dir / "glTF2/wrongTypes/badObject.gltf")  # a material's object given as an array
    assert bad.code == "malformed_gltf" and "materials[0].pbrMetallicRoughness must be an object" in bad.message
    load_mesh(assimp_dir / "glTF2/wrongTypes/badString.gltf")  # a wrong type outside what is read: loads


def test_zero_extent(tmp_path):
    path = write_obj(tmp_path / "point.obj", [[0.3, 0.3, 0.3]] * 4, [[0, 1, 2], [0, 2, 3]])
    assert rejected(path).code == "zero_extent"


def test_too_many_faces(assimp_dir):
    err = rejected(assimp_dir / "OFF/Wuson.off", LoadConfig(max_faces=1000))
    assert err.code == "too_many_faces" and "1,000" in err.message


def test_draco_without_decoder_is_rejected(assimp_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "DracoPy", None)  # import DracoPy now raises ImportError
    assert rejected(assimp_dir / "glTF2/draco/2CylinderEngine.gltf").code == "draco_no_decoder"


def test_draco_with_decoder_matches_uncompressed(assimp_dir):
    draco = load_mesh(assimp_dir / "glTF2/draco/2CylinderEngine.gltf")
    plain = load_mesh(assimp_dir / "glTF2/2CylinderEngine-glTF-Binary/2CylinderEngine.glb")
    assert draco.stats["draco"] and not plain.stats["draco"]
    assert np.allclose(draco.center, plain.center, rtol=1e-3, atol=1e-2)
    assert np.isclose(draco.scale, plain.scale, rtol=1e-3)
