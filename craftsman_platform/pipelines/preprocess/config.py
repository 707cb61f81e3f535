"""Config of the preprocessing job (`craft preprocess`): sources, the job's resources and outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from craftsman_platform.geometry.config import GeometryConfig, RenderConfig
from craftsman_platform.logger import LoggerConfig
from craftsman_platform.pipelines.preprocess.sources import OBJAVERSE_URL
from craftsman_platform.raycluster import RayConfig


@dataclass
class SourceConfig:
    kind: str = "auto"  # auto (folder or list file from `path`), folder, list, objaverse
    path: Optional[str] = None  # folder of meshes, or a list file of paths / URLs
    uids: list[str] = field(default_factory=list)  # objaverse: these uids (empty: all, or by category)
    lvis_categories: list[str] = field(default_factory=list)  # objaverse: LVIS categories
    cache_dir: Optional[str] = None  # objaverse cache (the package's BASE_PATH; default ~/.objaverse)
    annotations: bool = True  # objaverse: copy name/license/tags/categories into meta.json
    base_url: str = OBJAVERSE_URL  # objaverse: where the tasks fetch GLBs (a mirror, or a bucket URL)
    limit: Optional[int] = None  # first N objects only
    partition: Optional[str] = None  # "i/n": only objects with crc32(uid) % n == i (one of n parallel jobs)


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
