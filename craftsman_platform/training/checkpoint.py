"""Checkpoints: atomic, keep-N, resumable, verified, never unpickled, and readable without DeepSpeed.

    RUN_DIR/checkpoints/step-000500/
        ds/                    DeepSpeed engine state (module, optimizer partitions, lr scheduler)
        rank-00000.safetensors that rank's RNG state
        rank-00000.json        that rank's data-stream state and what it could not read
        weights.safetensors    the trained module's weights (fp32; frozen pretrained CLIP left out)
        ema.safetensors        EMA of the trainable weights (when trainer.ema_decay is set)
        meta.json              step, W&B run id, latent scale, world size, the resolved config, and
                               the size of every other file (written last)
    RUN_DIR/checkpoints/latest   the name of the newest complete checkpoint

Everything is written into `.tmp-step-N` and renamed once complete; a crash mid-save leaves the
previous checkpoint as `latest`. On resume a checkpoint whose files do not have their recorded
sizes, or that fails to load, is reported by name and the previous one is used.

Run dirs live on shared storage, so nothing in them is trusted: DeepSpeed's own files (pickles)
are read with `torch.load(weights_only=True)` and an allow-list of the three plain DeepSpeed types
they hold; everything else is safetensors or JSON.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from craftsman_platform.errors import MissingInput, raise_if_disk_full
from craftsman_platform.models.checkpoints import PREFIX, list_checkpoints, read_meta
from craftsman_platform.training.engine import barrier, collective_device

log = logging.getLogger("craft.train")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def exportable_state(module: torch.nn.Module, skip: frozenset[str] = frozenset()) -> dict[str, torch.Tensor]:
    """The module's state dict in fp32, contiguous, minus the keys in `skip`."""
    return {
        k: v.detach().float().cpu().contiguous() if v.is_floating_point() else v.detach().cpu().contiguous()
        for k, v in module.state_dict().items()
        if k not in skip
    }


class Checkpointer:
    def __init__(self, run_dir: str | Path, rank: int, keep: int):
        self.root = Path(run_dir) / "checkpoints"
        self.rank, self.keep = rank, keep
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for torn in self.root.glob(f".tmp-{PREFIX}*"):  # a save that failed (full disk, a kill) left it
                log.warning("removing %s, left by a checkpoint save that did not finish", torn)
                shutil.rmtree(torn, ignore_errors=True)
        barrier()

    def save(
        self, engine, step: int, rank_state: dict, meta: dict, ema=None, skip: frozenset[str] = frozenset()
    ) -> Path:
        """Collective: every rank calls it at the same step. A full disk is reported as such, naming the
        folder; the partial `.tmp-step-N` is removed (and would be on the next start)."""
        name = f"{PREFIX}{step:07d}"
        try:
            return self._save(engine, name, step, rank_state, meta, ema, skip)
        except (OSError, RuntimeError) as err:
            shutil.rmtree(self.root / f".tmp-{name}", ignore_errors=True)
            raise_if_disk_full(err, self.root)
            raise

    def _save(self, engine, name: str, step: int, rank_state: dict, meta: dict, ema, skip) -> Path:
        tmp, final = self.root / f".tmp-{name}", self.root / name
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        engine.save_checkpoint(str(tmp), tag="ds", save_latest=False)
        save_file({"torch_rng": torch.get_rng_state()}, str(tmp / f"rank-{self.rank:05d}.safetensors"))
        (tmp / f"rank-{self.rank:05d}.json").write_text(json.dumps(rank_state))
        barrier()
        if self.rank == 0:
            save_file(exportable_state(engine.module, skip), str(tmp / "weights.safetensors"))
            if ema is not None:  # craftsman_platform.training.engine.EMA: copied to the host here, and only here
                save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(tmp / "ema.safetensors"))
            files = _file_sizes(tmp)  # every rank's files are in place (barrier above)
            _atomic_write(tmp / "meta.json", json.dumps({"step": step, **meta, "files": files}, indent=1, default=str))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            _atomic_write(self.root / "latest", name)
            for old in list_checkpoints(self.root)[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        barrier()
        return final

    def load(self, engine, ckpt: Path) -> tuple[dict, dict]:
        """Restore engine + this rank's RNG; returns (meta, this rank's state dict from rank-N.json)."""
        with deepspeed_files_without_pickle():
            engine.load_checkpoint(str(ckpt), tag="ds", load_optimizer_states=True, load_lr_scheduler_states=True)
        rng = ckpt / f"rank-{self.rank:05d}.safetensors"
        if rng.exists():
            torch.set_rng_state(load_file(rng)["torch_rng"])
        state_file = ckpt / f"rank-{self.rank:05d}.json"
        rank_state = json.loads(state_file.read_text()) if state_file.exists() else {}
        return read_meta(ckpt), rank_state

    def restore(self, engine, ema=None) -> Optional[tuple[Path, dict, dict]]:
        """Resume from the newest checkpoint that verifies and loads on every rank: (checkpoint,
        meta, this rank's state), or None for a fresh run. A bad one is named, then the previous
        is tried; a run dir whose checkpoints are all bad is an error, not a silent fresh start."""
        found = list_checkpoints(self.root)
        for ckpt in reversed(found):
            problem = verify(ckpt)
            if problem is None:
                try:
                    meta, rank_state = self.load(engine, ckpt)
                    if ema is not None and (ckpt / "ema.safetensors").exists():
                        ema.load_state_dict(load_file(ckpt / "ema.safetensors"))
                except Exception as err:  # noqa: BLE001 - any failure to read means: not this checkpoint
                    problem = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
            if _all_ranks_ok(problem is None):
                return ckpt, meta, rank_state
            log.warning("checkpoint %s is unreadable (%s): trying the previous one", ckpt, problem or "on another rank")
        if found:
            raise MissingInput(
                f"no readable checkpoint in {self.root} ({len(found)} found, all damaged): move them away to start over"
            )
        return None


def write_weights_checkpoint(
    run_dir: str | Path, step: int, state: dict[str, torch.Tensor], meta: dict, config: Optional[dict] = None
) -> Path:
    """A weights-only checkpoint (no engine state) in the same layout: what `craft convert` writes and
    what evaluation, generation and `craft train init_from=` read."""
    root = Path(run_dir) / "checkpoints"
    name = f"{PREFIX}{step:07d}"
    tmp, final = root / f".tmp-{name}", root / name
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(
        {k: v.detach().float().contiguous() if v.is_floating_point() else v.contiguous() for k, v in state.items()},
        str(tmp / "weights.safetensors"),
    )
    _atomic_write(
        tmp / "meta.json", json.dumps({"step": step, **meta, "files": _file_sizes(tmp)}, indent=1, default=str)
    )
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _atomic_write(root / "latest", name)
    if config is not None:
        import yaml

        (Path(run_dir) / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return final


def verify(ckpt: Path) -> Optional[str]:
    """What is wrong with a checkpoint's files (sizes against meta.json), or None."""
    try:
        files = read_meta(ckpt).get("files")
    except (OSError, ValueError) as err:
        return f"meta.json: {err}"
    for name, size in (files or {}).items():
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    return None


def _all_ranks_ok(ok: bool) -> bool:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return ok
    flag = torch.tensor([int(ok)], device=collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _file_sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def _deepspeed_safe_globals() -> list:
    """The only non-tensor types DeepSpeed (ZeRO 1/2) pickles into its checkpoint files."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, fragment_address]


@contextlib.contextmanager
def deepspeed_files_without_pickle():
    """Every `torch.load` DeepSpeed makes while loading becomes `weights_only=True` with the allow-list:
    a planted pickle is refused instead of executed."""
    original = torch.load

    def safe_load(f, map_location=None, *args, weights_only=None, **kwargs):
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            return original(f, map_location, *args, weights_only=True, **kwargs)

    torch.load = safe_load
    try:
        yield
    finally:
        torch.load = original
