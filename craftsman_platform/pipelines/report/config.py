"""Config of `craft report`: rebuild OUT/report.html of a preprocessing output (local or a URL)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from craftsman_platform.logger import LoggerConfig

GALLERY = 240  # objects read for pictures, at most (the manifest part has no bound)


@dataclass
class ReportConfig:
    output_dir: str = MISSING  # the preprocessing output: a local folder or an fsspec URL
    storage_options: dict[str, Any] = field(default_factory=dict)
    gallery: int = GALLERY  # objects with pictures (the worst by Chamfer first, then a spread); 0: none
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # logger=wandb: the same tables to W&B
