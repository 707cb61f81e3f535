"""Structured configs of the geometry core.

The dataclasses are the schema: Hydra validates every YAML file and command-line override
against them, so a misspelt key or a wrong type fails at start with the key named.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore

# The Hydra config tree. An absolute path: Hydra resolves relative ones against the *module*
# when a command runs as `python -m`, which would miss the repository's conf/.
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


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
    near: int = 100_000  # per sigma
    near_sigmas: list[float] = field(default_factory=lambda: [0.005, 0.05])
    seed: int = 0  # combined with the object's uid: each object gets its own fixed stream


@dataclass
class GeometryConfig:
    load: LoadConfig = field(default_factory=LoadConfig)
    watertight: WatertightConfig = field(default_factory=WatertightConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


def register_configs() -> None:
    """Register the schemas so YAML files can name them in their defaults list."""
    cs = ConfigStore.instance()
    cs.store(group="geometry", name="schema", node=GeometryConfig)
