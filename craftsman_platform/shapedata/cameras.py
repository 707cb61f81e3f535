"""Cameras of the shards and of the models: OpenCV axes (x right, y down, looking along +z), `c2w`
mapping camera to the normalised object frame, Z up (docs/data-format.md, "Cameras").

Views 0-3 of every object are CraftsMan's canonical front, right, back and left cameras; training
(view_set=canonical), evaluation, generation and the app all take them from here.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

DEFAULT_DISTANCE = 4.5  # camera distance from the origin, normalised units (render.distance)
DEFAULT_FOV_DEG = 40.0  # horizontal field of view (render.fov_deg)

# CraftsMan's canonical views, Z up: front, right, back, left (azimuth 0, 90, 180, 270).
CANONICAL_DIRECTIONS = np.array([[0, -1, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0]], dtype=np.float64)


def look_at(
    eye: np.ndarray, target: np.ndarray = np.zeros(3), up: np.ndarray = np.array([0.0, 0.0, 1.0])
) -> np.ndarray:
    """4x4 OpenCV camera-to-world matrix of a camera at `eye` looking at `target`."""
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-8:  # looking straight up or down
        right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye
    return c2w


def intrinsics(width: int, height: int, fov_deg: float = DEFAULT_FOV_DEG) -> np.ndarray:
    """3x3 pixel intrinsics with a horizontal field of view of fov_deg; pixel centres at integers."""
    f = 0.5 * width / np.tan(np.radians(fov_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def canonical_c2w(distance: float = DEFAULT_DISTANCE) -> np.ndarray:
    """(4, 4, 4) float32 camera-to-world of the front, right, back and left views the models train on."""
    return np.stack([look_at(d * distance) for d in CANONICAL_DIRECTIONS]).astype(np.float32)


def view_cameras(extra_sets: int, distance: float, rng: np.random.Generator) -> list[np.ndarray]:
    """The 4 canonical views, then `extra_sets` sets of 4 under one random rotation per set."""
    base = [look_at(d * distance) for d in CANONICAL_DIRECTIONS]
    views = list(base)
    for _ in range(extra_sets):
        rot = np.eye(4)
        rot[:3, :3] = Rotation.random(random_state=rng).as_matrix()
        views += [rot @ c2w for c2w in base]
    return views
