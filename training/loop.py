"""The training loop one rank runs (locally, under Ray Train, or under torchrun/srun)."""
from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from safetensors.torch import load_file

from training.checkpoint import Checkpointer, latest_checkpoint
from training.config import TrainConfig
from training.data import SlotBatches, expand_urls
from training.engine import EMA, build_engine, setup_distributed
from training.metrics import MetricsLogger, memory_stats
from training.tasks import make_task

log = logging.getLogger("craft.train")


def config_from_dict(cfg_dict: dict) -> TrainConfig:
    """A resolved plain dict (what the driver sends to workers) -> validated dataclasses."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg_dict))


class StopFlag:
    """Set by SIGTERM (preemption, scancel, Ray shutdown): checkpoint at the next step and leave."""

    def __init__(self):
        self.set = False
        try:
            signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread (some launchers): preemption then ends the process
            pass

    def _handler(self, signum, frame) -> None:
        log.warning("SIGTERM: checkpointing at the end of this step")
        self.set = True

    def agreed(self) -> bool:
        """Any rank stopping stops all (a collective when distributed)."""
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return self.set
        flag = torch.tensor([int(self.set)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def _mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def train_worker(cfg_dict: dict) -> dict:
    """Train until trainer.max_steps (or SIGTERM); returns a summary of what happened."""
    cfg = config_from_dict(cfg_dict)
    rank, world, local_rank = setup_distributed()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    run_dir = Path(cfg.run_dir)
    (run_dir / "workers").mkdir(parents=True, exist_ok=True)
    (run_dir / "workers" / f"rank-{rank}.pid").write_text(str(os.getpid()))
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    task = make_task(cfg)
    if cfg.trainer.compile:
        task.model.compile()  # in place: parameter names (and checkpoints) stay the same
    engine, scheduler = build_engine(task.model, cfg, world)
    ema = EMA(engine, cfg.trainer.ema_decay) if cfg.trainer.ema_decay else None
    checkpointer = Checkpointer(run_dir, rank, cfg.trainer.keep_checkpoints)

    step, rank_state, run_id, extra_meta = 0, {}, None, {}
    latest = latest_checkpoint(run_dir) if cfg.resume == "auto" else None
    if latest is not None:
        meta, rank_state = checkpointer.load(engine, latest)
        step, run_id = meta["step"], meta.get("wandb_run_id")
        extra_meta = {k: meta[k] for k in ("latent_scale",) if k in meta}
        if ema is not None and (latest / "ema.safetensors").exists():
            ema.load_state_dict(load_file(latest / "ema.safetensors"))
        log.info("resumed from %s at step %d", latest, step)
    batches = SlotBatches(expand_urls(cfg.data.train_shards), cfg.data, task.kind, rank, world, cfg.trainer.grad_accum,
                          rank_state.get("data"))
    if latest is not None and not batches.restored:
        log.warning("data streams restarted: the checkpoint was written with another world size or grad_accum")
    if latest is None:
        extra_meta.update(task.prepare(batches, device))
    if task.kind == "diffusion":
        extra_meta["vae_checkpoint"] = task.vae_source
    logger = MetricsLogger(run_dir, rank, cfg.logger.wandb, cfg_dict, run_id)
    stop = StopFlag()
    global_batch = cfg.data.batch_size * cfg.trainer.grad_accum * world
    manifest = _manifest_of(cfg.data.train_shards)

    def save(at: int) -> Path:
        meta = {"wandb_run_id": logger.run_id, "world_size": world, "config": cfg_dict, "kind": task.kind, **extra_meta}
        path = checkpointer.save(engine, at, {"data": batches.state_dict()}, meta,
                                 ema.state_dict() if ema else None, task.skip_prefixes)
        logger.log_checkpoint(path, at, manifest, cfg.logger.wandb.log_checkpoints)
        return path

    engine.train()
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.trainer.precision == "bf16")
    window = {"data_time": 0.0, "step_time": 0.0, "steps": 0}
    status = "finished"
    while step < cfg.trainer.max_steps:
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        for _ in range(cfg.trainer.grad_accum):
            td = time.perf_counter()
            batch = next(batches)
            window["data_time"] += time.perf_counter() - td
            with torch.autocast(**autocast):
                loss, parts = task.loss(engine, batch, device)
            engine.backward(loss)
            engine.step()
            for k, v in {"loss": loss.detach(), **parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v) / cfg.trainer.grad_accum
        if ema is not None:
            ema.update()
        step += 1
        window["step_time"] += time.perf_counter() - t0
        window["steps"] += 1
        for k, v in sums.items():
            window[k] = window.get(k, 0.0) + v
        if step % cfg.trainer.log_every == 0 or step == cfg.trainer.max_steps:
            # means over the steps since the last log line, and over ranks
            metrics = _mean_over_ranks({**{k: window[k] / window["steps"] for k in sums},
                                        "data_time": window["data_time"] / window["steps"],
                                        "step_time": window["step_time"] / window["steps"],
                                        "corrupt_skipped": float(batches.corrupt_skipped)})
            metrics["corrupt_skipped"] *= world  # a sum over ranks, not a mean
            grad_norm = engine.get_global_grad_norm()
            metrics.update({"lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm if grad_norm is not None else float("nan")),
                            "samples_per_s": global_batch / metrics["step_time"], **memory_stats()})
            logger.log(step, metrics)
            _ray_report(step, metrics)
            window = {"data_time": 0.0, "step_time": 0.0, "steps": 0}
        stopping = stop.agreed()
        if step % cfg.trainer.ckpt_every == 0 or step == cfg.trainer.max_steps or stopping:
            path = save(step)
            log.info("step %d: checkpoint %s", step, path)
        if stopping:
            status = "preempted"
            break
    logger.close()
    return {"status": status, "step": step, "rank": rank, "param_checksum": _checksum(engine.module)}


def _checksum(module: torch.nn.Module) -> float:
    """Sum of trainable weights: equal on every rank when the replicas are in sync."""
    return float(sum(p.detach().double().sum() for p in module.parameters() if p.requires_grad))


def _manifest_of(shards: str | None) -> str | None:
    """The manifest next to local shards (OUT/shards/*.tar -> OUT/manifest.parquet), for lineage."""
    first = (shards or "").split(",")[0]
    if "://" in first or first.startswith("pipe:"):
        return None
    candidate = Path(first).parent.parent / "manifest.parquet"
    return str(candidate) if candidate.exists() else None


def _ray_report(step: int, metrics: dict) -> None:
    """Under Ray Train every rank reports the same number of times (a rank-conditional report hangs)."""
    try:
        import ray.train

        ray.train.get_context()
    except Exception:  # not under Ray Train
        return
    ray.train.report({"step": step, **metrics})
