"""Config of `craft evaluate`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from craftsman_platform.logger import LoggerConfig
from craftsman_platform.models.extraction import DEFAULT_DEPTH


@dataclass
class EvalDataConfig:
    eval_shards: str = MISSING
    max_objects: Optional[int] = None


@dataclass
class EvalConfig:
    checkpoint: Optional[str] = None  # a checkpoint dir, or a run dir (its latest checkpoint)
    run_dir: Optional[str] = None  # watch mode: evaluate every checkpoint of this run as it appears
    output_dir: str = MISSING
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    ema: bool = True  # EMA weights when the checkpoint has them; false: the raw weights
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    batch_size: int = 8  # objects per forward pass (encode, sample, decode, octree queries)
    depth: int = DEFAULT_DEPTH  # octree depth of the extracted meshes ((2^depth + 1)^3 grid)
    surface_samples: int = 100_000  # points per side for Chamfer / F-score / normal consistency
    render_size: int = 192
    steps: Optional[int] = None  # diffusion: sampling steps (default: the model's config)
    guidance: Optional[float] = None
    sampler: Optional[str] = None
    seed: int = 0
    watch: bool = False
    poll_s: float = 10.0
    idle_timeout_s: float = 600.0  # watch mode ends after this long without a new checkpoint...
    stop_at_max_steps: bool = True  # ...or once the run's final checkpoint is evaluated
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # the logger group: W&B dashboard, offline by default
