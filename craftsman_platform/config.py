"""Structured configs of the geometry core.

The dataclasses are the schema: Hydra validates every YAML file and command-line override
against them, so a misspelt key or a wrong type fails at start with the key named.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# The Hydra config tree, shipped inside the package. An absolute path: Hydra resolves relative ones
# against the *module* when a command runs as `python -m`.
CONF_DIR = str(Path(__file__).resolve().parent / "conf")


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


def register_configs() -> None:
    """Register the schemas so YAML files can name them in their defaults list."""
    cs = ConfigStore.instance()
    cs.store(group="geometry", name="schema", node=GeometryConfig)
    cs.store(name="preprocess_schema", node=PreprocessConfig)


# ---------------------------------------------------------------------------------------------
# Preprocessing job
# ---------------------------------------------------------------------------------------------


@dataclass
class RenderConfig:
    """Multi-view condition images (geometry/render.py)."""

    resolution: int = 256  # square images
    extra_sets: int = 4  # sets of 4 views under one random rotation each, after the 4 canonical
    fov_deg: float = 40.0
    distance: float = 4.5  # camera distance from the origin (normalised units)
    lambert: bool = True  # headlight shading; false gives flat base colours


@dataclass
class SourceConfig:
    kind: str = "auto"  # auto (folder or list file from `path`), folder, list, objaverse
    path: Optional[str] = None  # folder of meshes, or a list file of paths / URLs
    uids: list[str] = field(default_factory=list)  # objaverse: these uids (empty: all, or by category)
    lvis_categories: list[str] = field(default_factory=list)  # objaverse: LVIS categories
    cache_dir: Optional[str] = None  # objaverse cache (the package's BASE_PATH; default ~/.objaverse)
    annotations: bool = True  # objaverse: copy name/license/tags/categories into meta.json
    download_processes: int = 1
    limit: Optional[int] = None  # first N objects only
    partition: Optional[str] = None  # "i/n": only objects with crc32(uid) % n == i (one of n parallel jobs)


@dataclass
class RayConfig:
    address: Optional[str] = None  # None: start a local Ray; "auto" or "ray://host:10001": a cluster
    dashboard: bool = False
    dashboard_host: str = "127.0.0.1"  # never exposed beyond this machine unless configured


@dataclass
class PreprocessConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    output_dir: str = MISSING
    workers: int = 2  # concurrent objects (CPU cores); on a cluster, its CPUs unless set lower
    timeout_s: float = 300.0  # per object; the worker is killed, the job goes on
    memory_per_task_gb: float = 3.0  # Ray schedules tasks by this memory request (measured peak 2.4 GB)
    max_retries: int = 2  # for transient errors (remote fetch, lost worker) only
    retry_failed: bool = False  # on resume, try objects recorded as failed again
    shard_max_bytes: int = 1_000_000_000
    threads_per_task: int = 1  # threads each object's geometry may use (1: one core per task)
    lock_stale_s: float = 120.0  # a lock on output_dir with no heartbeat for this long is taken over


def compute_threads() -> int:
    """Threads for open3d queries in this process (0 = all cores); CRAFT_THREADS sets it."""
    return int(os.environ.get("CRAFT_THREADS", "0"))
