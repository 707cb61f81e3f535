"""The training loop one rank runs (locally, under Ray Train, or under torchrun/srun).

Nothing in a step waits for the GPU: losses stay on the device and are summed there; the host reads
them (one transfer, one collective) only on logging steps.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from craftsman_platform.errors import ConfigError
from craftsman_platform.models.build import compile_model
from craftsman_platform.models.checkpoints import latest_checkpoint, load_weights
from craftsman_platform.shapedata.manifest import MANIFEST_DIR, MANIFEST_FILE
from craftsman_platform.training import stop
from craftsman_platform.training.checkpoint import Checkpointer
from craftsman_platform.training.config import TrainConfig
from craftsman_platform.training.data import SlotBatches, TrainingData
from craftsman_platform.training.engine import EMA, build_engine, collective_device, setup_distributed
from craftsman_platform.training.metrics import MetricsLogger, ProgressLine, memory_stats
from craftsman_platform.training.tasks import make_task

log = logging.getLogger("craft.train")
DAMAGE_KEYS = ("corrupt_skipped", "shards_damaged", "shards_unreadable")


def config_from_dict(cfg_dict: dict) -> TrainConfig:
    """A resolved plain dict (what the driver sends to workers) -> validated dataclasses."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg_dict))


def _distributed() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


class StopFlag:
    """Whether this rank, or any rank, was asked to stop (see training/stop.py): checkpoint and leave."""

    def __init__(self, run_dir: Path, rank: int, grace_s: float):
        stop.install(grace_s)  # off the main thread (Ray Train) the worker setup hook installed it
        self.stop_file = stop.stop_file(run_dir) if rank == 0 else None  # one reader; the agreement tells the rest

    def local(self) -> bool:
        if not stop.requested() and self.stop_file is not None and self.stop_file.exists():
            stop.request(f"{self.stop_file} ({self.stop_file.read_text().strip() or 'no reason given'})")
        return stop.requested()

    def agreed(self) -> bool:
        """Any rank stopping stops all (a collective when distributed: call it on the same steps everywhere)."""
        if not _distributed():
            return self.local()
        flag = torch.tensor([int(self.local())], device=collective_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


class Window:
    """Sums since the last log line: loss parts on the device, times and counts on the host."""

    def __init__(self):
        self.losses: torch.Tensor | None = None
        self.keys: list[str] = []
        self.micro_steps = self.steps = 0
        self.data_time = self.step_time = 0.0

    def add_losses(self, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        values = torch.stack([loss.detach().float(), *(v.detach().float() for v in parts.values())])
        if self.losses is None:
            self.keys, self.losses = ["loss", *parts], values
        else:
            self.losses += values
        self.micro_steps += 1

    def means(self, damage: tuple[int, int, int]) -> dict[str, float]:
        """Means over the window's steps and over ranks (one transfer and one all-reduce); the damage
        counts (lost samples, damaged and unreadable shards) are sums over ranks."""
        device = self.losses.device if self.losses is not None else collective_device()
        times = [self.data_time / self.steps, self.step_time / self.steps]
        host = torch.tensor([*times, *map(float, damage)], device=device)
        packed = torch.cat([self.losses / self.micro_steps, host]) if self.losses is not None else host
        if _distributed():
            packed = packed.to(collective_device())
            dist.all_reduce(packed)
            packed /= dist.get_world_size()
        values = packed.tolist()
        out = dict(zip([*self.keys, "data_time", "step_time", *DAMAGE_KEYS], values))
        for key in DAMAGE_KEYS:  # a sum over ranks, not a mean
            out[key] = round(out[key] * (dist.get_world_size() if _distributed() else 1))
        return out


def train_worker(cfg_dict: dict) -> dict:
    """Train until trainer.max_steps (or SIGTERM); returns a summary of what happened."""
    cfg = config_from_dict(cfg_dict)
    rank, world, _, device = setup_distributed()
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING, format="%(asctime)s %(name)s: %(message)s"
    )
    run_dir = Path(cfg.run_dir)
    (run_dir / "workers").mkdir(parents=True, exist_ok=True)
    pid_file = run_dir / "workers" / f"rank-{rank}.pid"  # whole or absent for readers: written, then renamed
    pid_file.with_suffix(".pid.tmp").write_text(str(os.getpid()))
    os.replace(pid_file.with_suffix(".pid.tmp"), pid_file)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    data = TrainingData(cfg.data.train_shards, cfg.data, cfg.model.kind)
    task = make_task(cfg, device, data)
    resuming = cfg.resume == "auto" and latest_checkpoint(run_dir) is not None
    initialised = bool(cfg.init_from) and not resuming
    if initialised:
        initialise(task, cfg.init_from)
    elif cfg.init_from:
        log.info("init_from=%s ignored: resuming the run in %s", cfg.init_from, run_dir)
    if cfg.trainer.compile:
        log.info(
            "compiled %d blocks (%s)",
            compile_model(task.model, cfg.trainer.compile_backend),
            cfg.trainer.compile_backend,
        )
    engine, scheduler = build_engine(task.model, cfg, world)
    ema = EMA(engine.module, cfg.trainer.ema_decay) if cfg.trainer.ema_decay else None
    checkpointer = Checkpointer(run_dir, rank, cfg.trainer.keep_checkpoints)

    step, rank_state, run_id, extra_meta = 0, {}, None, {}
    restored = checkpointer.restore(engine, ema) if cfg.resume == "auto" else None
    latest = restored[0] if restored else None
    if restored is not None:
        latest, meta, rank_state = restored
        step, run_id = meta["step"], meta.get("wandb_run_id")
        extra_meta = {k: meta[k] for k in ("latent_scale",) if k in meta}
        log.info("resumed from %s at step %d", latest, step)
    batches = SlotBatches(
        data,
        cfg.data,
        task.kind,
        rank,
        world,
        cfg.trainer.grad_accum,
        rank_state.get("data"),
        pin_memory=device.type == "cuda",
        stop_delay_s=cfg.trainer.stop_grace_s,
    )
    if latest is not None and not batches.restored:
        log.warning("data streams restarted: the checkpoint was written with another world size or grad_accum")
    if latest is None and not initialised:
        extra_meta.update(task.prepare(batches))
    if initialised and task.kind == "diffusion":  # fine-tuning keeps the released model's latent scale
        extra_meta["latent_scale"] = float(task.model.latent_scale)
    if task.kind == "diffusion":
        extra_meta["vae_checkpoint"] = task.vae_source
    logger = MetricsLogger(run_dir, rank, cfg.logger.wandb, cfg_dict, run_id, start_step=step)
    progress = ProgressLine(cfg.trainer.max_steps, step) if rank == 0 else None
    stop_flag = StopFlag(run_dir, rank, cfg.trainer.stop_grace_s)
    global_batch = cfg.data.batch_size * cfg.trainer.grad_accum * world
    manifest = _manifest_of(data, cfg.data.train_shards)

    def save(at: int) -> Path:
        meta = {"wandb_run_id": logger.run_id, "world_size": world, "config": cfg_dict, "kind": task.kind, **extra_meta}
        path = checkpointer.save(engine, at, {"data": batches.state_dict()}, meta, ema, task.frozen_pretrained_keys)
        logger.log_checkpoint(path, at, manifest, cfg.logger.wandb.log_checkpoints)
        return path

    try:
        engine.train()
        window = Window()
        status, path = "finished", None
        while step < cfg.trainer.max_steps:
            t0 = time.perf_counter()
            for _ in range(cfg.trainer.grad_accum):
                td = time.perf_counter()
                batch = next(batches)
                window.data_time += time.perf_counter() - td
                loss, parts = task.loss(engine, batch)
                engine.backward(loss)
                engine.step()
                window.add_losses(loss, parts)
            if ema is not None:
                ema.update()
            step += 1
            window.step_time += time.perf_counter() - t0
            window.steps += 1
            at_log = step % cfg.trainer.log_every == 0 or step == cfg.trainer.max_steps
            at_ckpt = step % cfg.trainer.ckpt_every == 0 or step == cfg.trainer.max_steps
            if at_log:
                metrics = window.means(batches.damage_counts())  # the step's only host sync
                grad_norm = engine.get_global_grad_norm()
                metrics.update(
                    {
                        "lr": scheduler.get_last_lr()[0],
                        "grad_norm": float(grad_norm if grad_norm is not None else float("nan")),
                        "samples_per_s": global_batch / metrics["step_time"],
                        **memory_stats(device),
                    }
                )
                logger.log(step, metrics)
                if progress is not None:
                    progress.update(step, metrics)
                _ray_report(step, metrics)
                window = Window()
            # ranks agree on a stop where they already synchronise (one process: every step, for free)
            stopping = stop_flag.agreed() if (at_log or at_ckpt or not _distributed()) else False
            if at_ckpt or stopping:
                path = save(step)
                log.info("step %d: checkpoint %s", step, path)
            if stopping:
                status = "preempted"
                log.warning("preempted at step %d (%s): checkpoint %s", step, stop.reason() or "another rank", path)
                break
        logger.close()
    finally:  # loader workers ignore SIGTERM: end them through the DataLoader, also on an error
        batches.close()
        stop.finish()
    return {
        "status": status,
        "step": step,
        "rank": rank,
        "checkpoint": str(path) if path else None,
        "param_checksum": _checksum(engine.module),
    }


def initialise(task, path: str) -> None:
    """Start from trained (or converted) weights: EMA where the checkpoint has it; a fresh optimizer,
    schedule and step count (not a resume). Frozen pretrained CLIP weights may be absent."""
    state, meta, which = load_weights(path, prefer_ema=True)
    missing, unexpected = task.model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in task.frozen_pretrained_keys]
    if missing or unexpected:
        raise ConfigError(
            f"init_from={path}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    log.info(
        "initialised from %s (step %s of that run, %s weights); optimizer, schedule and step count start fresh",
        path,
        meta.get("step"),
        which,
    )


def _checksum(module: torch.nn.Module) -> float:
    """Sum of trainable weights: equal on every rank when the replicas are in sync."""
    return float(sum(p.detach().double().sum() for p in module.parameters() if p.requires_grad))


def _manifest_of(data: TrainingData, shards: str | None) -> str | None:
    """The local manifest of the training data, for lineage: a pack's own, or the one next to archive
    shards (OUT/shards/*.tar -> OUT/manifest/, or OUT/manifest.parquet of older outputs)."""
    first = (shards or "").split(",")[0]
    if data.pack is not None:
        root = Path(data.pack.root)
    elif "://" in first or first.startswith("pipe:"):
        return None
    else:
        root = Path(first).parent.parent
    if "://" in str(root):
        return None
    found = [c for c in (root / MANIFEST_DIR, root / MANIFEST_FILE) if c.exists()]
    return str(found[0]) if found else None


def _ray_report(step: int, metrics: dict) -> None:
    """Under Ray Train every rank reports the same number of times (a rank-conditional report hangs)."""
    try:
        import ray.train

        ray.train.get_context()
    except Exception:  # not under Ray Train
        return
    ray.train.report({"step": step, **metrics})
