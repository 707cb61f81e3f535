"""The `logger` group of `craft train` and `craft evaluate`: W&B from rank 0, offline by default."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from craftsman_platform.errors import ConfigError


@dataclass
class WandbConfig:
    enabled: bool = True
    mode: str = "offline"  # offline (default; `wandb sync RUN_DIR/wandb/...` later), online, disabled
    project: str = "craftsman-platform"
    entity: Optional[str] = None
    name: Optional[str] = None  # default: the experiment's name (train) or "evaluate"
    tags: list[str] = field(default_factory=list)
    log_checkpoints: bool = True  # online only: checkpoints as artifacts, the manifest as lineage


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


def wandb_init(cfg: WandbConfig, out: Path, name: str, run_id: Optional[str], **kwargs):
    """A W&B run under `out/wandb` (resumed when `run_id` is given), or None when the logger is off."""
    if not cfg.enabled or cfg.mode == "disabled":
        return None
    import wandb

    if cfg.mode == "online" and not (os.environ.get("WANDB_API_KEY") or Path("~/.netrc").expanduser().exists()):
        raise ConfigError("logger.wandb.mode=online needs WANDB_API_KEY (or `wandb login`); use mode=offline")
    return wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        name=cfg.name or name,
        tags=list(cfg.tags),
        dir=str(out),
        mode=cfg.mode,
        id=run_id,
        resume="allow",
        settings=wandb.Settings(silent=True, console="off"),
        **kwargs,
    )
