"""DeepSpeed engine: process group, config from TrainConfig, AdamW, warmup + one cosine decay, EMA.

Precision (docs/training.md): the weights stay fp32 and `trainer.precision=bf16` runs the model's
forward under `torch.autocast(bfloat16)` through DeepSpeed's `torch_autocast` section. DeepSpeed's
own `bf16` mode (a bf16 module with fp32 masters in the optimizer) is not used: it casts every
input-facing layer to bf16 (Fourier features of 2^7 pi x do not survive that), and the EMA would
have to gather fp32 masters from the optimizer partitions every step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile

import torch
import torch.distributed as dist
from torch import nn

from craftsman_platform.errors import ConfigError
from craftsman_platform.training.config import TrainConfig

PRECISIONS = ("bf16", "fp32")
log = logging.getLogger("craft.train")


# ----------------------------------------------------------------------------------------------
# Process group and device
# ----------------------------------------------------------------------------------------------
def setup_distributed() -> tuple[int, int, int, torch.device]:
    """Initialise torch.distributed from RANK / WORLD_SIZE / MASTER_* (set by Ray Train, torchrun or
    here for one local process): NCCL with the rank's GPU (LOCAL_RANK) bound, gloo without GPUs.
    Returns (rank, world, local_rank, device)."""
    cuda = torch.cuda.is_available()
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cuda else "cpu")
    import deepspeed

    for key, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, default)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    with library_chatter():
        if not dist.is_initialized():  # Ray Train has made the group already (it binds the device itself)
            # device_id binds the communicator to this rank's GPU (else NCCL guesses it from the global rank)
            dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)  # wraps the group
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), local_rank, device


@contextlib.contextmanager
def library_chatter():
    """DeepSpeed's start-up output (compiler lines of its op builds, info banners) goes to the
    debug log instead of the console; shown in full when the step fails, or with --verbose."""
    if os.environ.get("CRAFT_VERBOSE") == "1":
        yield
        return
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            text = sink.read().decode(errors="replace")
            if failed:
                sys.stderr.write(text)
            elif text.strip():
                log.debug("library output:\n%s", text)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def barrier() -> None:
    """A barrier on the rank's own device (NCCL needs it named) when distributed; nothing otherwise."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def collective_device() -> torch.device:
    """Where tensors for collectives must live: the GPU under NCCL, the CPU under gloo."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# DeepSpeed
# ----------------------------------------------------------------------------------------------
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
    if t.precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision must be one of {PRECISIONS}, got {t.precision!r}")
    if ds.zero_stage not in (0, 1, 2):
        raise ConfigError(
            f"deepspeed.zero_stage must be 0, 1 or 2 (3 shards parameters: not needed at this size), "
            f"got {ds.zero_stage}"
        )
    for key in ("bf16", "fp16", "torch_autocast"):
        if key in ds.extra:
            raise ConfigError(
                f"deepspeed.extra.{key}: precision is set by trainer.precision (fp32 weights, bf16 autocast); "
                "remove the key"
            )
    config = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": cfg.data.batch_size * t.grad_accum * world_size,
        "gradient_clipping": t.grad_clip,  # explicit: DeepSpeed's default changed in 0.19.3
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": t.lr,
                "betas": list(t.betas),
                "eps": t.eps,
                "weight_decay": t.weight_decay,
                "torch_adam": True,
            },
        },
        "zero_optimization": {
            "stage": ds.zero_stage,
            "contiguous_gradients": ds.contiguous_gradients,
            "overlap_comm": ds.overlap_comm,
            "reduce_scatter": True,
            "reduce_bucket_size": ds.reduce_bucket_size,
            "allgather_bucket_size": ds.reduce_bucket_size,
        },
        # fp32 weights and gradients; the forward under autocast. An empty module list keeps every
        # gradient reduction in fp32 (DeepSpeed would otherwise reduce Linear gradients in bf16).
        "bf16": {"enabled": False},
        "torch_autocast": {"enabled": t.precision == "bf16", "dtype": "bfloat16", "lower_precision_safe_modules": []},
        "data_types": {"grad_accum_dtype": "fp32"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    config.update(ds.extra)
    return config


def build_engine(model: nn.Module, cfg: TrainConfig, world_size: int):
    """(engine, lr_scheduler) for the trainable parameters of `model`."""
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad]
    t = cfg.trainer
    config = deepspeed_config(cfg, world_size)
    with library_chatter():
        engine, _, _, scheduler = deepspeed.initialize(
            model=model,
            model_parameters=params,
            config=config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
                opt, lr_lambda(t.warmup_steps, t.max_steps, t.min_lr_ratio)
            ),
        )
    return engine, scheduler


# ----------------------------------------------------------------------------------------------
# EMA
# ----------------------------------------------------------------------------------------------
class EMA:
    """Exponential moving average of the trainable weights, kept on their device in fp32.

    The engine's weights are fp32 and complete on every rank (ZeRO 1/2 shard optimizer state and
    gradients, not weights), so an update is one fused `_foreach_lerp_` over local tensors: no
    collective, no host copy. Host copies happen only when a checkpoint is written."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if any(p.dtype != torch.float32 for _, p in named):
            raise TypeError("EMA expects fp32 weights (trainer.precision keeps them fp32)")
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.shadow, self.params, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Host copies for saving."""
        return {n: s.detach().cpu() for n, s in zip(self.names, self.shadow)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.names) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:3]}...")
        for n, s in zip(self.names, self.shadow):
            if state[n].shape != s.shape:
                raise ValueError(f"EMA {n}: shape {tuple(state[n].shape)} != {tuple(s.shape)}")
            s.copy_(state[n])  # copy, never rebind: device and dtype stay the shadow's
