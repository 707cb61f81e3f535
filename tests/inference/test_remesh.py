"""The refiner's remeshing: midpoint splits that keep the surface and stay conforming."""

from __future__ import annotations

import numpy as np
import trimesh

from craftsman_platform.inference.remesh import mean_edge, split_marked, split_uniform


def _closed(vertices: np.ndarray, faces: np.ndarray) -> trimesh.Trimesh:
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent  # no T-junction, no flipped face
    return mesh


def test_a_marked_split_is_conforming_keeps_the_surface_and_carries_every_array():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    marked = np.random.default_rng(0).random(len(sphere.faces)) < 0.15
    (v, doubled), f = split_marked([sphere.vertices, 2 * sphere.vertices], sphere.faces, marked)
    mesh = _closed(v, f)
    assert np.isclose(mesh.area, sphere.area) and np.allclose(doubled, 2 * v)
    assert len(sphere.faces) + 3 * marked.sum() <= len(f) < 4 * len(sphere.faces)
    assert np.allclose(v[: len(sphere.vertices)], sphere.vertices)  # no vertex of the input moves


def test_a_face_between_two_split_neighbours_is_split_whole():
    box = trimesh.creation.box()
    centre = 0
    pairs = box.face_adjacency[(box.face_adjacency == centre).any(axis=1)]
    neighbours = pairs[pairs != centre]
    marked = np.zeros(len(box.faces), dtype=bool)
    marked[neighbours[:2]] = True  # two of the centre face's three edges get split
    (v,), f = split_marked([box.vertices], box.faces, marked)
    _closed(v, f)
    corners = box.vertices[box.faces[centre]]
    midpoints = 0.5 * (corners + np.roll(corners, -1, axis=0))
    # all three of its edges split (red): the third midpoint exists, the face is gone
    assert all(np.isclose(np.linalg.norm(v - m, axis=1), 0).any() for m in midpoints)
    assert not (np.sort(f, axis=1) == np.sort(box.faces[centre])).all(axis=1).any()


def test_uniform_splits_halve_the_edges_until_the_length():
    sphere = trimesh.creation.icosphere(subdivisions=1)
    (v,), f = split_uniform([sphere.vertices], sphere.faces, 0.3 * mean_edge(sphere.vertices, sphere.faces), 10**6)
    assert len(f) == 16 * len(sphere.faces)
    _closed(v, f)
    (v,), f = split_uniform([sphere.vertices], sphere.faces, 1e-6, 4 * len(sphere.faces))  # capped by max_faces
    assert len(f) == 4 * len(sphere.faces)
