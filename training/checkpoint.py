"""Checkpoints: atomic, keep-N, resumable, and readable without DeepSpeed for inference.

    RUN_DIR/checkpoints/step-000500/
        ds/                   DeepSpeed engine state (module, optimizer partitions, lr scheduler)
        rank-00000.pt         that rank's RNG state (tensors only: loads with weights_only=True)
        rank-00000.json       that rank's data-stream state and corrupt-sample count
        weights.safetensors   the trained module's weights (fp32; frozen pretrained CLIP left out)
        ema.safetensors       EMA of the trainable weights (when trainer.ema_decay is set)
        meta.json             step, W&B run id, latent scale, world size, the resolved config
    RUN_DIR/checkpoints/latest  the name of the newest complete checkpoint

Everything is written into `.tmp-step-N` and renamed once complete; a crash mid-save leaves the
previous checkpoint as `latest`.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from training.engine import barrier

PREFIX = "step-"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "meta.json").exists())


def latest_checkpoint(path: str | Path) -> Optional[Path]:
    """The newest complete checkpoint under a run dir, its checkpoints/ dir, or `path` itself if it is one."""
    path = Path(path)
    if (path / "meta.json").exists():
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    pointer = root / "latest"
    if pointer.exists() and (root / pointer.read_text().strip() / "meta.json").exists():
        return root / pointer.read_text().strip()
    found = list_checkpoints(root)
    return found[-1] if found else None


def read_meta(ckpt: Path) -> dict:
    return json.loads((ckpt / "meta.json").read_text())


def load_weights(path: str | Path, prefer_ema: bool = True) -> tuple[dict[str, torch.Tensor], dict, str]:
    """(state dict, meta, 'ema' or 'raw') of a checkpoint or a run's latest one; EMA values replace
    the raw ones of the trainable weights when present and `prefer_ema`."""
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint in {path} (expected RUN_DIR, RUN_DIR/checkpoints or a step-N dir)")
    state = load_file(ckpt / "weights.safetensors")
    which = "raw"
    if prefer_ema and (ckpt / "ema.safetensors").exists():
        state.update(load_file(ckpt / "ema.safetensors"))
        which = "ema"
    return state, read_meta(ckpt), which


def exportable_state(module: torch.nn.Module, skip_prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The module's state dict in fp32, contiguous, minus keys under `skip_prefixes`."""
    return {k: v.detach().float().cpu().contiguous() if v.is_floating_point() else v.detach().cpu().contiguous()
            for k, v in module.state_dict().items() if not k.startswith(skip_prefixes)}


class Checkpointer:
    def __init__(self, run_dir: str | Path, rank: int, keep: int):
        self.root = Path(run_dir) / "checkpoints"
        self.rank, self.keep = rank, keep
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
        barrier()

    def save(self, engine, step: int, rank_state: dict, meta: dict, ema=None,
             skip_prefixes: tuple[str, ...] = ()) -> Path:
        """Collective: every rank calls it at the same step."""
        name = f"{PREFIX}{step:07d}"
        tmp, final = self.root / f".tmp-{name}", self.root / name
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        engine.save_checkpoint(str(tmp), tag="ds", save_latest=False)
        torch.save({"torch_rng": torch.get_rng_state()}, tmp / f"rank-{self.rank:05d}.pt")
        (tmp / f"rank-{self.rank:05d}.json").write_text(json.dumps(rank_state))
        barrier()
        if self.rank == 0:
            save_file(exportable_state(engine.module, skip_prefixes), str(tmp / "weights.safetensors"))
            if ema is not None:  # training.engine.EMA: copied to the host here, and only here
                save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(tmp / "ema.safetensors"))
            _atomic_write(tmp / "meta.json", json.dumps({"step": step, **meta}, indent=1, default=str))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            _atomic_write(self.root / "latest", name)
            for old in list_checkpoints(self.root)[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        barrier()
        return final

    def load(self, engine, ckpt: Path) -> tuple[dict, dict]:
        """Restore engine + this rank's RNG; returns (meta, this rank's state dict from rank-N.json)."""
        engine.load_checkpoint(str(ckpt), tag="ds", load_optimizer_states=True, load_lr_scheduler_states=True)
        rank_file = ckpt / f"rank-{self.rank:05d}.pt"
        if rank_file.exists():
            torch.set_rng_state(torch.load(rank_file, weights_only=True)["torch_rng"])
        state_file = ckpt / f"rank-{self.rank:05d}.json"
        rank_state = json.loads(state_file.read_text()) if state_file.exists() else {}
        return read_meta(ckpt), rank_state
