"""DeepSpeed engine: config from TrainConfig, AdamW, warmup + one cosine decay, EMA of fp32 masters."""
from __future__ import annotations

import math
import os

import torch
from torch import nn

from training.config import TrainConfig


def setup_distributed() -> tuple[int, int, int]:
    """Initialise torch.distributed from RANK / WORLD_SIZE / MASTER_* (set by Ray Train, torchrun or
    here for one local process); gloo without GPUs, NCCL with them. Returns (rank, world, local_rank)."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    import deepspeed

    for key, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, default)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
    # Ray Train has already made the torch process group; DeepSpeed then wraps it
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warmup to 1, then a single cosine to min_ratio at `total`; flat afterwards (no restarts)."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict:
    t, ds = cfg.trainer, cfg.deepspeed
    if t.precision not in ("bf16", "fp32"):
        raise ValueError(f"trainer.precision must be bf16 or fp32, got {t.precision!r}")
    if ds.zero_stage not in (0, 1, 2):
        raise ValueError(f"deepspeed.zero_stage must be 0, 1 or 2 (3 shards parameters: not needed at this size), got {ds.zero_stage}")
    config = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": cfg.data.batch_size * t.grad_accum * world_size,
        "gradient_clipping": t.grad_clip,  # explicit: DeepSpeed's default changed in 0.19.3
        "optimizer": {"type": "AdamW", "params": {"lr": t.lr, "betas": list(t.betas), "eps": t.eps,
                                                  "weight_decay": t.weight_decay, "torch_adam": True}},
        "zero_optimization": {"stage": ds.zero_stage, "contiguous_gradients": ds.contiguous_gradients,
                              "overlap_comm": ds.overlap_comm, "reduce_scatter": True,
                              "reduce_bucket_size": ds.reduce_bucket_size, "allgather_bucket_size": ds.reduce_bucket_size},
        "bf16": {"enabled": t.precision == "bf16"},
        "data_types": {"grad_accum_dtype": "fp32"},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    config.update(ds.extra)
    return config


def build_engine(model: nn.Module, cfg: TrainConfig, world_size: int):
    """(engine, lr_scheduler) for the trainable parameters of `model`."""
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad]
    t = cfg.trainer
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=params, config=deepspeed_config(cfg, world_size),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(t.warmup_steps, t.max_steps, t.min_lr_ratio)))
    return engine, scheduler


class EMA:
    """Exponential moving average of the fp32 master weights of the trainable parameters.

    With bf16 the engine's module holds bf16 copies; the fp32 values live in the (ZeRO-sharded)
    optimizer, so they are read with `safe_get_full_fp32_param`, a collective: every rank calls
    `update` after every `engine.step()`."""

    def __init__(self, engine, decay: float):
        from deepspeed.utils import safe_get_full_fp32_param

        self.decay, self._get = decay, safe_get_full_fp32_param
        self.names = [n for n, p in engine.module.named_parameters() if p.requires_grad]
        self.params = [p for p in engine.module.parameters() if p.requires_grad]
        self.shadow = {n: self._fp32(p).clone() for n, p in zip(self.names, self.params)}

    def _fp32(self, p: torch.Tensor) -> torch.Tensor:
        full = self._get(p)
        return (p if full is None else full).detach().float().cpu()

    @torch.no_grad()
    def update(self) -> None:
        for n, p in zip(self.names, self.params):
            self.shadow[n].lerp_(self._fp32(p), 1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:3]}...")
        for n in self.shadow:
            if state[n].shape != self.shadow[n].shape:
                raise ValueError(f"EMA {n}: shape {tuple(state[n].shape)} != {tuple(self.shadow[n].shape)}")
            self.shadow[n].copy_(state[n].float())  # copy, never rebind: the dtype stays fp32
