"""Configs of the geometry core (loading, watertight conversion, sampling, rendering) and of
`craft inspect`. The dataclasses are the schema and hold the defaults: Hydra validates every YAML
file and override against them, so a misspelt key or a wrong type fails at start, naming the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from craftsman_platform.shapedata.cameras import DEFAULT_DISTANCE, DEFAULT_FOV_DEG


@dataclass
class LoadConfig:
    """Mesh loading and normalisation."""

    bound: float = 0.95  # the longest bounding-box side spans [-bound, bound]
    max_faces: int = 5_000_000  # larger inputs are rejected (reason too_many_faces)


@dataclass
class WatertightConfig:
    """Narrow-band UDF + flood fill + marching cubes conversion."""

    resolution: int = 256  # voxels along [-1, 1]; 512 is supported
    eps_voxels: float = 0.5  # iso-level of the UDF, in voxels; >= 0.5 keeps the 6-connected flood leak-free
    fast_path: bool = True  # use already-clean watertight inputs as they are
    quality_samples: int = 100_000  # surface samples per side for the Chamfer distance


@dataclass
class SampleConfig:
    """Point sampling from the watertight mesh (counts per object)."""

    surface: int = 100_000
    sharp_max: int = 32_000
    sharp_angle_deg: float = 15.0
    sharp_spacing: float = 0.001  # at most one sharp sample per this much edge length
    volume: int = 200_000
    volume_bound: float = 1.05
    vol_truncation: Optional[float] = 0.1  # |sdf| of volume points clipped here (exact below); null: exact everywhere
    near: int = 100_000  # per sigma
    near_sigmas: list[float] = field(default_factory=lambda: [0.005, 0.05])
    seed: int = 0  # combined with the object's uid: each object gets its own fixed stream


@dataclass
class GeometryConfig:
    load: LoadConfig = field(default_factory=LoadConfig)
    watertight: WatertightConfig = field(default_factory=WatertightConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


@dataclass
class RenderConfig:
    """Multi-view condition images (geometry/render.py)."""

    resolution: int = 256  # square images
    extra_sets: int = 4  # sets of 4 views under one random rotation each, after the 4 canonical
    fov_deg: float = DEFAULT_FOV_DEG
    distance: float = DEFAULT_DISTANCE  # camera distance from the origin (normalised units)
    lambert: bool = True  # headlight shading; false gives flat base colours


@dataclass
class InspectConfig:
    inputs: list[str] = field(default_factory=list)  # mesh files or folders (recursive); empty: the demo meshes
    output_dir: str = "outputs/inspect"  # records.jsonl and the composed config (.hydra/) go here
    geometry: GeometryConfig = field(default_factory=GeometryConfig)


def compute_threads() -> int:
    """Threads for open3d queries in this process (0 = all cores); CRAFT_THREADS sets it."""
    return int(os.environ.get("CRAFT_THREADS", "0"))
