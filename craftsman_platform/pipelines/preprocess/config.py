"""Config of the preprocessing job (`craft preprocess`): sources, the job's resources and outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from craftsman_platform.geometry.config import GeometryConfig, RenderConfig
from craftsman_platform.logger import LoggerConfig
from craftsman_platform.raycluster import RayConfig

OBJAVERSE_URL = "https://huggingface.co/datasets/allenai/objaverse/resolve/main"
OBJAVERSE_XL_URL = "https://huggingface.co/datasets/allenai/objaverse-xl/resolve/main"
XL_SOURCES = ("sketchfab", "smithsonian", "thingiverse", "github")  # also the order copies are kept in
READABLE_TYPES = ("glb", "gltf", "obj", "ply", "stl", "off")  # what the geometry core loads


@dataclass
class SourceConfig:
    kind: str = "auto"  # auto (folder or list file from `path`), folder, list, objaverse, objaverse_xl
    path: Optional[str] = None  # folder of meshes, or a list file of paths / URLs
    uids: list[str] = field(default_factory=list)  # objaverse: these uids (empty: all, or by category)
    lvis_categories: list[str] = field(default_factory=list)  # objaverse: LVIS categories
    cache_dir: Optional[str] = None  # objaverse(_xl): the package's cache folder (its BASE_PATH; ~/.objaverse)
    annotations: bool = True  # objaverse(_xl): copy name/license/tags/categories (XL: metadata) into meta.json
    base_url: str = OBJAVERSE_URL  # Objaverse 1.0 GLBs (also Objaverse-XL's sketchfab objects): a mirror, a bucket
    xl_sources: list[str] = field(default_factory=lambda: list(XL_SOURCES))  # objaverse_xl: duplicates keep the first
    file_types: list[str] = field(default_factory=lambda: list(READABLE_TYPES))  # objaverse_xl: fileType in these
    licenses: list[str] = field(default_factory=list)  # objaverse_xl: license in these (empty: any)
    alignment: bool = False  # objaverse_xl: only the alignment (high-quality) subset (github, sketchfab)
    xl_url: str = OBJAVERSE_XL_URL  # objaverse_xl: where its annotation files are downloaded from
    github_url: str = "https://github.com"  # objaverse_xl: where GitHub repositories are cloned from
    thingiverse_url: str = "https://www.thingiverse.com"  # objaverse_xl: Thingiverse downloads
    group_max: int = 256  # GitHub objects one task slot takes from one clone (more: the repository is split)
    captions: Optional[str] = None  # a captions file or URL (CSV/TSV/parquet: uid, caption), or metadata (names, tags)
    limit: Optional[int] = None  # the first N listed objects only (after filters, before dedup)
    partition: Optional[str] = None  # "i/n": this job's share of n (crc32 of the content hash, else the uid)


@dataclass
class PreprocessConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    output_dir: str = MISSING  # a local folder or an fsspec URL (s3://bucket/prefix, gs://..., ...)
    storage_options: dict[str, Any] = field(default_factory=dict)  # passed to fsspec for output_dir
    workers: Optional[int] = None  # objects at once; unset: all the cluster's task slots, a number caps it
    timeout_s: float = 300.0  # per object; the worker is killed, the job goes on
    memory_per_task_gb: float = 3.0  # Ray schedules tasks by this memory request (measured peak 2.4 GB)
    max_retries: int = 2  # for transient errors (remote fetch, lost worker) only
    retry_failed: bool = False  # on resume, try objects recorded as failed again
    shard_max_bytes: int = 1_000_000_000
    threads_per_task: int = 1  # threads each object's geometry may use (1: one core per task)
    report_gallery: int = 240  # OUT/report.html at the end: objects with pictures (0: counts and histograms only)
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # logger=wandb: the report's tables to W&B too
    lock_stale_s: float = 120.0  # a lock on output_dir with no heartbeat for this long is taken over
