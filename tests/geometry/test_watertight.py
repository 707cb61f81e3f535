"""Watertight conversion and signed-distance labels on analytic shapes, edge cases and real meshes."""

from __future__ import annotations

import igl
import numpy as np
import pytest
import scipy.ndimage as ndi
import trimesh
from helpers import write_obj

from craftsman_platform.geometry.band import spread, surface_cells
from craftsman_platform.geometry.config import GeometryConfig, SampleConfig, WatertightConfig
from craftsman_platform.geometry.mesh_io import load_mesh
from craftsman_platform.geometry.meshops import signed_volume
from craftsman_platform.geometry.sampling import SignedDistance, sample_object, sharp_edge_samples
from craftsman_platform.geometry.watertight import make_watertight

VOXEL = 2.0 / 256
UDF = WatertightConfig(fast_path=False, quality_samples=20_000)


def load_written(tmp_path, name, mesh: trimesh.Trimesh):
    path = tmp_path / name
    mesh.export(path)
    return load_mesh(path)


def volume_labels(mesh: trimesh.Trimesh, n: int = 100_000, seed: int = 0):
    pts = np.random.default_rng(seed).uniform(-1.05, 1.05, (n, 3)).astype(np.float32)
    return pts, SignedDistance(mesh)(pts) < 0


# Analytic shapes, in the normalised frame (longest side spans [-0.95, 0.95]).
SHAPES = {
    "sphere": (
        lambda: trimesh.creation.icosphere(subdivisions=5, radius=1.0),
        lambda p: np.linalg.norm(p, axis=1) - 0.95,
    ),
    "box": (
        lambda: trimesh.creation.box(extents=(2.0, 1.0, 0.6)),
        lambda p: np.max(np.abs(p) - np.array([0.95, 0.475, 0.285]), axis=1),
    ),
    "torus": (
        lambda: trimesh.creation.torus(major_radius=1.0, minor_radius=0.3, major_sections=128, minor_sections=64),
        lambda p: np.hypot(np.hypot(p[:, 0], p[:, 1]) - 0.95 / 1.3, p[:, 2]) - 0.3 * 0.95 / 1.3,
    ),
}


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast_path", "udf"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_analytic_shapes_labels_match(tmp_path, name, fast_path):
    make, analytic = SHAPES[name]
    loaded = load_written(tmp_path, f"{name}.obj", make())
    wt = make_watertight(loaded.mesh, WatertightConfig(fast_path=fast_path, quality_samples=20_000))
    assert wt.method == ("fast_path" if fast_path else "udf") and wt.is_watertight
    assert signed_volume(wt.mesh) > 0  # wound outward
    pts, inside = volume_labels(wt.mesh)
    truth = analytic(pts)
    # faceting of the tessellated primitive is < 1 voxel; the UDF shell adds eps = 1 voxel
    far = np.abs(truth) > 2 * VOXEL
    agreement = np.mean(inside[far] == (truth[far] < 0))
    assert agreement >= 0.999, agreement
    assert wt.chamfer < (0.002 if fast_path else 3 * VOXEL)


def test_open_plane_becomes_a_thin_closed_shell(tmp_path):
    plane = write_obj(tmp_path / "plane.obj", [[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], [[0, 1, 2], [0, 2, 3]])
    wt = make_watertight(load_mesh(plane).mesh)
    assert wt.method == "udf" and wt.fast_path_refusal == "not watertight" and wt.is_watertight
    assert wt.parts_out == 1 and wt.parts_lost == 0
    assert np.ptp(wt.mesh.vertices[:, 2]) < 4 * VOXEL  # a shell of thickness ~2 eps, not a slab
    assert 0 < wt.mesh.volume < 1.9 * 1.9 * 4 * VOXEL


def test_box_missing_a_face_is_closed_and_keeps_its_walls(tmp_path):
    box = trimesh.creation.box(extents=(1, 1, 1))
    top = np.where(box.face_normals[:, 2] > 0.9)[0]
    box.update_faces(np.setdiff1d(np.arange(len(box.faces)), top))
    loaded = load_written(tmp_path, "open_box.obj", box)
    wt = make_watertight(loaded.mesh)
    assert wt.method == "udf" and wt.is_watertight and wt.parts_lost == 0
    pts, inside = volume_labels(wt.mesh)
    # the open box is a cup: its cavity is outside (air), its walls are thin solid shells
    cavity = np.all(np.abs(pts) < 0.95 - 3 * VOXEL, axis=1)
    assert inside[cavity].mean() < 0.001
    assert wt.chamfer < 3 * VOXEL


def test_inside_out_mesh_is_flipped_on_the_fast_path(tmp_path):
    box = trimesh.creation.box(extents=(1, 2, 1))
    box.invert()
    loaded = load_written(tmp_path, "inverted.obj", box)
    assert loaded.mesh.volume < 0
    wt = make_watertight(loaded.mesh)
    assert wt.method == "fast_path" and wt.mesh.volume > 0
    pts, inside = volume_labels(wt.mesh)
    assert inside[np.all(np.abs(pts) < [0.4, 0.9, 0.4], axis=1)].all()


def test_partly_flipped_faces_go_through_udf(tmp_path):
    box = trimesh.creation.box(extents=(1, 2, 1))
    faces = box.faces.copy()
    faces[:4] = faces[:4, ::-1]
    loaded = load_mesh(write_obj(tmp_path / "flipped.obj", box.vertices, faces))
    wt = make_watertight(loaded.mesh)
    assert wt.method == "udf" and wt.fast_path_refusal == "inconsistent winding" and wt.is_watertight
    pts, inside = volume_labels(wt.mesh)
    truth = np.max(np.abs(pts) - np.array([0.475, 0.95, 0.475]), axis=1)
    far = np.abs(truth) > 2 * VOXEL
    assert np.mean(inside[far] == (truth[far] < 0)) >= 0.999


def test_hidden_inner_part_is_swallowed(tmp_path):
    outer = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    inner = trimesh.creation.box(extents=(0.4, 0.4, 0.4))
    loaded = load_written(tmp_path, "nested.obj", trimesh.util.concatenate([outer, inner]))
    wt = make_watertight(loaded.mesh)
    assert wt.method == "udf" and wt.fast_path_refusal == "parts touch or overlap"
    assert wt.parts_in == 2 and wt.parts_out == 1 and wt.parts_lost == 0
    assert signed_volume(wt.mesh) > 0
    pts, inside = volume_labels(wt.mesh)
    assert inside[np.linalg.norm(pts, axis=1) < 0.9].all()  # solid all the way through


def test_separate_parts_are_all_kept(tmp_path):
    # a car with four wheels: no largest-component filter may drop them
    body = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    wheels = [
        trimesh.creation.cylinder(
            radius=0.2,
            height=0.1,
            sections=32,
            transform=trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0], point=[0, 0, 0]),
        )
        for _ in range(4)
    ]
    for wheel, (x, y) in zip(wheels, [(-0.7, -0.65), (0.7, -0.65), (-0.7, 0.65), (0.7, 0.65)]):
        wheel.apply_translation([x, y, -0.25])
    loaded = load_written(tmp_path, "car.obj", trimesh.util.concatenate([body, *wheels]))
    for cfg in (WatertightConfig(quality_samples=20_000), UDF):
        wt = make_watertight(loaded.mesh, cfg)
        assert wt.parts_in == 5 and wt.parts_out == 5 and wt.parts_lost == 0, (wt.method, wt.parts_out)


def test_multi_part_real_mesh_labels_match_winding_number(pybullet_dir):
    # five touching/overlapping closed parts: plain ray parity mislabels points where parts overlap
    loaded = load_mesh(pybullet_dir / "random_urdfs/000/000.obj")
    wt = make_watertight(loaded.mesh, WatertightConfig(quality_samples=20_000))
    assert wt.method == "udf" and wt.parts_in > 1 and wt.parts_lost == 0
    pts, inside = volume_labels(wt.mesh)
    src = loaded.mesh
    winding = igl.fast_winding_number(
        np.asarray(src.vertices, dtype=np.float64), np.asarray(src.faces, dtype=np.int64), pts.astype(np.float64)
    )
    dist = np.abs(SignedDistance(src)(pts))
    far = dist > 2 * VOXEL
    assert np.mean(inside[far] == (winding[far] > 0.5)) >= 0.999


def test_resolution_512_is_supported(tmp_path):
    loaded = load_written(tmp_path, "sphere.obj", trimesh.creation.icosphere(subdivisions=3))
    wt = make_watertight(loaded.mesh, WatertightConfig(fast_path=False, resolution=512, quality_samples=20_000))
    assert wt.is_watertight and wt.chamfer < 3 * 2.0 / 512 + 0.002


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def _slivers() -> trimesh.Trimesh:
    v = np.array([[0, 0, 0], [1.0, 0, 0], [0.5, 0.003, 0], [0.2, 0.3, 0.1], [0.21, 0.31, 0.9]])
    return trimesh.Trimesh(v, [[0, 1, 2], [0, 1, 3], [3, 4, 1]], process=False)


@pytest.mark.parametrize(
    "make_mesh, h",
    [(_slivers, 0.02), (lambda: trimesh.creation.icosphere(5), 0.1), (lambda: trimesh.creation.icosphere(5), 0.03)],
    ids=["slivers", "tiny-faces", "large-faces"],  # icosphere(5) edges ~0.04: below / above the spacing
)
def test_band_holds_every_grid_point_within_eps_and_little_more(make_mesh, h):
    # the conversion's band: lattice cells spread by r = (eps + slack) / h voxels
    mesh = make_mesh()
    eps, slack = 0.5 * h, 0.45 * h
    origin = mesh.bounds[0] - 3 * h
    dims = np.ceil((mesh.bounds[1] - origin) / h).astype(np.int64) + 4
    r = (eps + slack) / h
    band = spread(surface_cells(mesh, origin, h, dims, slack * np.sqrt(2)), int(np.floor(r)), int(np.ceil(r)))
    grid = origin + h * np.stack(np.meshgrid(*map(np.arange, dims), indexing="ij"), axis=-1).reshape(-1, 3)
    tree = igl.AABB()
    V, F = np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)
    tree.init(V, F)
    udf = np.sqrt(tree.squared_distance(V, F, grid)[0]).reshape(tuple(dims))
    assert band[udf <= eps].all()  # nothing within eps is missed: the flood cannot leak
    assert udf[band].max() <= (r + 1) * h * np.sqrt(3)  # and the band is tight around the surface


@pytest.mark.parametrize("make_mesh", [_slivers, lambda: trimesh.creation.icosphere(5)], ids=["slivers", "tiny-faces"])
def test_surface_cells_cover_every_surface_point_within_half_a_spacing(make_mesh):
    # on a grid much finer than the lattice, the marked cells stand for the lattice points
    mesh, spacing, h = make_mesh(), 0.05, 0.004  # icosphere(5) edges ~0.04: every face tiny
    origin = mesh.bounds[0] - 2 * h
    dims = np.ceil((mesh.bounds[1] - origin) / h).astype(np.int64) + 2
    centres = origin + h * (np.argwhere(surface_cells(mesh, origin, h, dims, spacing)) + 0.5)
    probes, _ = trimesh.sample.sample_surface(mesh, 20_000, seed=np.random.default_rng(0))
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(centres).query(probes)
    assert dist.max() <= spacing / np.sqrt(2) + h * np.sqrt(3) / 2
    assert len(centres) < 4 * mesh.area / spacing**2 + 3 * 1.0 / spacing * 3  # area-proportional


def test_spread_matches_scipy_dilation():
    rng = np.random.default_rng(1)
    mask = rng.random((20, 21, 22)) > 0.995
    ours = spread(mask, below=2, above=3)
    # index c spreads to [c-2, c+3]: a box of 6 whose centre sits right of c
    ref = ndi.binary_dilation(mask, structure=np.ones((6, 6, 6), bool), origin=(-1, -1, -1))
    assert np.array_equal(ours, ref)


def test_sampling_is_deterministic_per_uid(pybullet_dir):
    cfg = SampleConfig(surface=2000, volume=3000, near=1000, sharp_max=500)
    mesh = load_mesh(pybullet_dir / "cube.obj").mesh
    a, b = sample_object(mesh, mesh, cfg, "obj-a"), sample_object(mesh, mesh, cfg, "obj-a")
    c = sample_object(mesh, mesh, cfg, "obj-b")
    for name in ("surface", "sharp", "vol", "near"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.vol, c.vol)


def test_inside_test_gives_points_on_the_surface_the_same_sign_every_time(pybullet_dir):
    # Points on the surface are where a ray test's answer depends on its rays: with a random ray
    # frame per mesh (pysdf's, used before) hundreds of these flip between two instances.
    mesh = load_mesh(pybullet_dir / "duck_vhacd.obj").mesh
    on_surface = np.asarray(mesh.sample(20_000, seed=0), dtype=np.float16).astype(np.float32)
    signs = [SignedDistance(mesh).inside(on_surface) for _ in range(3)]
    assert 0 < signs[0].sum() < len(on_surface)  # both answers occur: the points do sit on the surface
    assert all(np.array_equal(signs[0], s) for s in signs[1:])


def test_sharp_points_of_a_swallowed_part_are_dropped_and_the_rest_snapped():
    # source: a cube with a small cube inside it; target: the outer cube alone (the inner one
    # swallowed, as the conversion does): no sharp point may come from the inner cube's edges
    outer = trimesh.creation.box(extents=(1.9, 1.9, 1.9))
    inner = trimesh.creation.box(extents=(0.4, 0.4, 0.4))
    source = trimesh.util.concatenate([outer, inner])
    cfg = SampleConfig(sharp_max=4000, sharp_spacing=0.001)
    pts = sharp_edge_samples(source, outer, cfg, np.random.default_rng(0), max_offset=0.01)
    on_face = np.isclose(np.abs(pts[:, :3]), 0.95, atol=1e-3).sum(axis=1)
    assert len(pts) > 3000 and (on_face >= 2).all()  # ~90% of the edge length is the outer cube's


def test_samples_have_the_documented_shapes_and_properties(pybullet_dir):
    cfg = SampleConfig(surface=5000, volume=8000, near=3000, near_sigmas=[0.005, 0.05], sharp_max=2000)
    mesh = load_mesh(pybullet_dir / "cube.obj").mesh
    s = sample_object(mesh, mesh, cfg, "cube")
    assert s.surface.shape == (5000, 6) and s.vol.shape == (8000, 4) and s.near.shape == (6000, 4)
    assert s.sharp.shape == (2000, 6)  # 12 edges of length 1.9 saturate the cap
    assert np.allclose(np.linalg.norm(s.surface[:, 3:], axis=1), 1, atol=1e-5)
    # sharp points lie on cube edges: two coordinates at +-0.95
    on_face = np.isclose(np.abs(s.sharp[:, :3]), 0.95, atol=1e-3).sum(axis=1)
    assert (on_face >= 2).all()
    # volume points are uniform in [-1.05, 1.05]^3; labels match the analytic cube
    assert np.abs(s.vol[:, :3]).max() <= 1.05
    inside = np.all(np.abs(s.vol[:, :3]) < 0.95, axis=1)
    assert np.array_equal(s.vol[:, 3] < 0, inside)
    # near points: the first block is the tight sigma, closer to the surface than the second
    assert np.abs(s.near[:3000, 3]).mean() < np.abs(s.near[3000:, 3]).mean() / 3
    # positions are exact float16 values, so float16 storage keeps every label
    stored = s.float16()
    assert np.array_equal(stored["vol"][:, :3].astype(np.float32), s.vol[:, :3])
    assert np.array_equal(stored["vol"][:, 3] < 0, s.vol[:, 3] < 0)
    assert np.array_equal(stored["near"][:, 3] < 0, s.near[:, 3] < 0)
    assert s.sign_agreement >= 0.999


def test_geometry_config_defaults_are_the_documented_ones():
    cfg = GeometryConfig()
    assert (cfg.sample.surface, cfg.sample.sharp_max, cfg.sample.volume, cfg.sample.near) == (
        100_000,
        32_000,
        200_000,
        100_000,
    )
    assert cfg.sample.near_sigmas == [0.005, 0.05] and cfg.watertight.resolution == 256 and cfg.load.bound == 0.95


def test_float16_sdf_keeps_the_sign_of_tiny_values():
    from craftsman_platform.geometry.sampling import sdf_to_f16

    sdf = np.array([-1e-9, 1e-9, -1e-30, 0.0, -0.3, 2e-8], dtype=np.float32)
    out = sdf_to_f16(sdf)
    assert out.dtype == np.float16
    assert np.array_equal(out < 0, sdf < 0) and np.array_equal(out > 0, sdf > 0)


def _edge_cases(pybullet_dir) -> list[trimesh.Trimesh]:
    cases = [trimesh.creation.icosphere(3), trimesh.creation.box()]
    flipped = trimesh.creation.box()
    faces = flipped.faces.copy()
    faces[0] = faces[0, ::-1]
    cases.append(trimesh.Trimesh(flipped.vertices, faces, process=False))
    opened = trimesh.creation.box()
    opened.update_faces(np.arange(1, 12))
    cases.append(opened)
    cases.append(load_mesh(pybullet_dir / "random_urdfs/000/000.obj").mesh)
    cases.append(make_watertight(load_mesh(pybullet_dir / "random_urdfs/000/000.obj").mesh, UDF).mesh)
    sphere = trimesh.creation.icosphere(2)  # a face and its reverse added: edges in three faces
    cases.append(trimesh.Trimesh(sphere.vertices, np.vstack([sphere.faces, sphere.faces[:1, ::-1]]), process=False))
    cases.append(load_mesh(pybullet_dir / "duck_vhacd.obj").mesh)  # many parts, many creases
    return cases


def test_edge_pairing_and_sharp_edges_match_trimesh(pybullet_dir):
    from craftsman_platform.geometry.meshops import edge_pairing, sharp_edges

    cases = _edge_cases(pybullet_dir)
    for mesh in cases:
        assert edge_pairing(mesh) == (mesh.is_watertight, mesh.is_winding_consistent)
        for angle in (15.0, 60.0):
            edges, faces = sharp_edges(mesh, angle)
            sharp = mesh.face_adjacency_angles > np.radians(angle)
            assert np.array_equal(edges, mesh.face_adjacency_edges[sharp])  # same rows, same order
            assert np.array_equal(faces, mesh.face_adjacency[sharp])
    assert [all(edge_pairing(m)) for m in cases] == [True, True, False, False, True, True, False, True]
    assert [edge_pairing(m)[1] for m in cases[2:4]] == [False, True]  # flipped face; open but consistent
    assert len(sharp_edges(cases[1], 15.0)[0]) == 12 and len(sharp_edges(cases[0], 15.0)[0]) == 0
    assert len(sharp_edges(cases[-1], 15.0)[0]) > 100


def test_grid_signs_are_the_corners_shared_sign_and_undecided_on_cell_faces():
    from craftsman_platform.geometry.sdf_grid import SdfGrid

    rng = np.random.default_rng(0)
    grid = SdfGrid(rng.normal(size=(9, 10, 11)).astype(np.float32), np.array([-1.0, -0.5, 0.25]), 0.2)
    grid.sdf[2:5, 3:6, 4:7] = -1.0  # a block of cells all inside
    pts = grid.origin + rng.uniform(-0.3, 2.3, size=(20_000, 3)) * grid.h * np.array([4, 4.5, 5])
    cell = np.floor((pts - grid.origin) / grid.h).astype(int)
    corners = np.stack(
        [grid.sdf[tuple((np.clip(cell, 0, np.array(grid.sdf.shape) - 2) + (i, j, k)).T)] for i in (0, 1)
         for j in (0, 1) for k in (0, 1)]
    )  # fmt: skip
    beyond = ((cell < 0) | (cell >= np.array(grid.sdf.shape) - 1)).any(axis=1)
    expected = np.where(beyond | (corners.min(0) > 0), 1, np.where(corners.max(0) < 0, -1, 0))
    got = grid.sign(pts)
    decided = got != 0
    assert np.array_equal(got[decided], expected[decided])
    assert (expected[~decided] == 0).mean() > 0.99  # only points on a cell's face are left extra
    assert (got == -1).sum() > 100 and (got == 1).sum() > 100
    # a point on a face between two all-inside cells is left undecided (the float32 cell index
    # might pick either cell); a twentieth of a voxel off the face, it is inside
    on_face = grid.origin + grid.h * np.array([[3.0, 4.5, 5.5], [3.05, 4.5, 5.5]])
    assert list(grid.sign(on_face)) == [0, -1]


def test_stored_distances_are_exact_against_libigl(pybullet_dir):
    # a converted real mesh (~100k faces at R=128): near-surface distances exact, volume
    # distances exact below the truncation and clipped at it; checked with libigl's AABB tree
    loaded = load_mesh(pybullet_dir / "random_urdfs/123/123.obj")
    wt = make_watertight(loaded.mesh, WatertightConfig(resolution=128, quality_samples=5000))
    cfg = SampleConfig(surface=1000, sharp_max=0, volume=20_000, near=10_000, vol_truncation=0.1)
    s = sample_object(wt.mesh, loaded.mesh, cfg, "exact", grid=wt.grid, sampler=wt.sampler, distance=wt.distance)
    V, F = np.asarray(wt.mesh.vertices, dtype=np.float64), np.asarray(wt.mesh.faces, dtype=np.int64)
    tree = igl.AABB()
    tree.init(V, F)
    near_d = np.sqrt(tree.squared_distance(V, F, s.near[:, :3].astype(np.float64))[0])
    assert np.abs(np.abs(s.near[:, 3]) - near_d).max() < 1e-5
    vol_d = np.sqrt(tree.squared_distance(V, F, s.vol[:, :3].astype(np.float64))[0])
    assert np.abs(np.abs(s.vol[:, 3]) - np.minimum(vol_d, 0.1)).max() < 1e-5
    assert (np.abs(s.vol[:, 3]) < 0.1).mean() > 0.05  # the exact band is really exercised
    winding = igl.fast_winding_number(V, F, s.vol[:, :3].astype(np.float64))
    assert np.mean((s.vol[:, 3] < 0) == (winding > 0.5)) > 0.9999


def test_per_point_search_radii_and_guesses_give_each_point_its_own_result():
    from craftsman_platform.geometry.distance import MeshDistance

    mesh = trimesh.creation.icosphere(4)
    rng = np.random.default_rng(0)
    pts = rng.uniform(-2, 2, size=(5000, 3)).astype(np.float32)  # > 1024: queried in Morton order
    radius = rng.uniform(0.05, 1.0, size=5000).astype(np.float32)
    got = MeshDistance(mesh).query(pts, radius, guess=radius / 4).dist
    exact = np.abs(np.linalg.norm(pts, axis=1) - 1.0)  # a unit sphere, within its faces' sag
    assert np.allclose(got, np.minimum(exact, radius), atol=0.01)
    assert ((exact > radius) & (got == radius)).sum() > 1000  # the radius really cut the search
