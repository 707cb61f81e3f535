"""Metrics from rank 0: RUN_DIR/metrics.jsonl (one JSON line per logged step) and W&B.

W&B is offline by default: the run is written under RUN_DIR/wandb and can be uploaded later with
`wandb sync RUN_DIR/wandb/offline-run-*`. The run id is kept in every checkpoint, so a resumed run
continues the same W&B run.
"""

from __future__ import annotations

import json
import logging
import os
import resource
from pathlib import Path
from typing import Optional

import torch

from craftsman_platform.logger import WandbConfig, wandb_init


def memory_stats(device: torch.device) -> dict[str, float]:
    """Peak memory: the GPU allocator's on CUDA, else this process's max RSS (GB)."""
    if device.type == "cuda":
        return {"mem_gpu_peak_gb": torch.cuda.max_memory_allocated(device) / 2**30}
    return {"mem_rss_peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


class ProgressLine:
    """Rank 0's console: one line per logged step (step/max, loss, lr, samples/s, data share, ETA)."""

    def __init__(self, max_steps: int, start_step: int, log: logging.Logger | None = None):
        self.max_steps, self.start_step = max_steps, start_step
        self.log = log or logging.getLogger("craft.train")
        self.width = len(str(max_steps))

    def format(self, step: int, m: dict[str, float]) -> str:
        eta = (self.max_steps - step) * m["step_time"]
        line = (
            f"step {step:>{self.width}}/{self.max_steps} | loss {m['loss']:.4f} | lr {m['lr']:.2e} | "
            f"{m['samples_per_s']:.1f} samples/s | data {m['data_time'] / m['step_time']:.0%} | ETA {_duration(eta)}"
        )
        if m.get("corrupt_skipped") or m.get("shards_damaged") or m.get("shards_unreadable"):
            line += (
                f" | skipped {int(m.get('corrupt_skipped', 0))} unreadable samples"
                f" ({int(m.get('shards_damaged', 0))} damaged, {int(m.get('shards_unreadable', 0))} unreadable shards)"
            )
        return line

    def update(self, step: int, metrics: dict[str, float]) -> None:
        self.log.info(self.format(step, metrics))


def _step_of(line: str) -> Optional[int]:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None  # a torn last line


class MetricsLogger:
    """`start_step`: where this run starts (0, or the step it resumed from). Rows of metrics.jsonl past
    it were logged by a run that stopped before its next checkpoint; they are dropped, so the file
    holds one row per logged step after any resume."""

    def __init__(
        self,
        run_dir: str | Path,
        rank: int,
        wandb_cfg: WandbConfig,
        config: dict,
        run_id: Optional[str] = None,
        start_step: int = 0,
    ):
        self.rank, self.run_dir = rank, Path(run_dir)
        self.run = None
        self.run_id = run_id
        if rank != 0:
            return
        path = self.run_dir / "metrics.jsonl"
        if path.exists():
            rows = path.read_text().splitlines()
            kept = [r for r in rows if _step_of(r) is not None and _step_of(r) <= start_step]
            if len(kept) != len(rows):
                tmp = path.with_suffix(".jsonl.tmp")
                tmp.write_text("".join(r + "\n" for r in kept))
                os.replace(tmp, path)
        self.file = open(path, "a")
        self.run = wandb_init(wandb_cfg, self.run_dir, config.get("name", "train"), run_id, config=config)
        if self.run is not None:
            self.run_id = self.run.id

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.rank != 0:
            return
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_checkpoint(self, path: Path, step: int, manifest: Optional[str], enabled: bool) -> None:
        """Online runs only (artifacts cannot be made offline): the checkpoint, with the dataset manifest as lineage."""
        if self.rank != 0 or self.run is None or not enabled or self.run.settings.mode != "online":
            return
        import wandb

        if manifest and Path(manifest).exists():
            data = wandb.Artifact("dataset-manifest", type="dataset")
            (data.add_dir if Path(manifest).is_dir() else data.add_file)(manifest)  # parts, or one file
            self.run.use_artifact(data)
        art = wandb.Artifact(f"{self.run.name or 'run'}-checkpoint", type="model", metadata={"step": step})
        art.add_dir(str(path))
        self.run.log_artifact(art, aliases=["latest", f"step-{step}"])

    def close(self) -> None:
        if self.rank != 0:
            return
        self.file.close()
        if self.run is not None:
            self.run.finish()
