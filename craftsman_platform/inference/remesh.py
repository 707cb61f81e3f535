"""Remeshing for the refiner: more vertices where the normals show detail the mesh cannot hold.

Two splits, both midpoint splits (the new vertices lie on the current surface, so the surface does
not change when they are made):
  * `split_uniform`: every face into 4 until the mean edge reaches a length (the start: a mesh fine
    enough to move at all);
  * `split_marked`: red-green refinement of chosen faces: a marked face splits into 4 (red); a
    neighbour that shares one split edge is bisected (green), one that shares two or three is split
    into 4 as well, so the result is conforming (no T-junctions, no cracks when vertices move).
Every vertex array passed along (the current positions, the coarse mesh's) gets the midpoints too.
Edges are never collapsed: the coarse mesh's vertices all stay.
"""

from __future__ import annotations

import numpy as np
import trimesh


def mean_edge(vertices: np.ndarray, faces: np.ndarray) -> float:
    e = vertices[faces] - vertices[np.roll(faces, -1, axis=1)]
    return float(np.linalg.norm(e, axis=2).mean())


def face_pairs(faces: np.ndarray) -> np.ndarray:
    """(E, 2) faces sharing an edge."""
    return trimesh.Trimesh(vertices=np.zeros((int(faces.max()) + 1, 3)), faces=faces, process=False).face_adjacency


def split_uniform(
    vertices: list[np.ndarray], faces: np.ndarray, edge: float, max_faces: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Split every face into 4 until the mean edge (of vertices[0]) is <= `edge` or the next split
    would pass `max_faces`."""
    while mean_edge(vertices[0], faces) > edge and 4 * len(faces) <= max_faces:
        vertices, faces = split_marked(vertices, faces, np.ones(len(faces), dtype=bool))
    return vertices, faces


def _edges(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique undirected edges (E, 2) and each face's edge ids (F, 3): edge k joins corners k, k+1."""
    directed = np.stack([faces, np.roll(faces, -1, axis=1)], axis=2).reshape(-1, 2)
    unique, inverse = np.unique(np.sort(directed, axis=1), axis=0, return_inverse=True)
    return unique, inverse.reshape(-1, 3)


def split_marked(
    vertices: list[np.ndarray], faces: np.ndarray, marked: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray]:
    """Red-green split of the `marked` faces (bool per face); see the module's docstring."""
    edges, face_edges = _edges(faces)
    split = np.zeros(len(edges), dtype=bool)
    split[face_edges[marked].ravel()] = True
    while True:  # closure: a face with two split edges would need a T-junction: split it whole
        count = split[face_edges].sum(axis=1)
        grow = count == 2
        if not grow.any():
            break
        split[face_edges[grow].ravel()] = True
    n = len(vertices[0])
    mid = np.full(len(edges), -1, dtype=np.int64)
    mid[split] = n + np.arange(int(split.sum()))
    vertices = [np.concatenate([v, 0.5 * (v[edges[split, 0]] + v[edges[split, 1]])]) for v in vertices]

    count = split[face_edges].sum(axis=1)
    keep = faces[count == 0]
    red = count == 3
    a, b, c = faces[red].T
    ab, bc, ca = mid[face_edges[red]].T
    reds = np.concatenate([np.stack(t, axis=1) for t in ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))])
    green = np.nonzero(count == 1)[0]
    k = np.argmax(split[face_edges[green]], axis=1)  # the split edge: corners k, k + 1
    rows = np.arange(len(green))
    f = faces[green]
    p, q, r = f[rows, k], f[rows, (k + 1) % 3], f[rows, (k + 2) % 3]
    m = mid[face_edges[green][rows, k]]
    greens = np.concatenate([np.stack([p, m, r], axis=1), np.stack([m, q, r], axis=1)])
    return vertices, np.concatenate([keep, reds, greens]).astype(faces.dtype)
