"""Structured-config schema of `craft train` / `craft summary` (conf/train.yaml and its groups).

Every group file is validated against these dataclasses when Hydra composes: a misspelt key or a
wrong type fails at start, naming the key. The model part lives with the models (models/build.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from craftsman_platform.logger import LoggerConfig
from craftsman_platform.models.build import ModelConfig
from craftsman_platform.raycluster import RayConfig


@dataclass
class DataConfig:
    train_shards: Optional[str] = None  # glob, brace pattern, or comma-separated paths / URLs (fsspec or pipe:)
    batch_size: int = 8  # per rank, per micro-step
    num_workers: int = 2  # DataLoader worker processes per rank
    shuffle_buffer: int = 256  # samples held as raw bytes; decoded after the shuffle
    resampled: bool = True  # sample shards with replacement: an endless stream cut into virtual epochs
    epoch_samples: int = 10_000  # per rank, per virtual epoch
    num_surface: int = 4096  # surface points fed to the encoder
    num_vol: int = 1024  # volume queries
    num_near: int = 1024  # near-surface queries
    rotation_augment: bool = False  # one random rotation per sample for points and cameras together
    condition: str = "image"  # diffusion: what conditions it: image (views + cameras) or text (captions.json)
    views: int = 4  # condition views per sample (diffusion)
    view_set: str = "random"  # random: one of the rendered 4-view sets; canonical: the first
    image_size: int = 224
    seed: int = 0


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-6
    weight_decay: float = 0.0
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * this at max_steps, once (no restarts)
    grad_clip: float = 1.0
    grad_accum: int = 1
    precision: str = "bf16"  # bf16: fp32 weights, forward under bf16 autocast; fp32: no autocast
    ema_decay: Optional[float] = 0.999  # null: no EMA
    compile: bool = False  # torch.compile every transformer block (activation checkpointing: model.*.checkpointing)
    compile_backend: str = "inductor"  # torch.compile backend (aot_eager: trace without code generation)
    log_every: int = 10
    ckpt_every: int = 500
    keep_checkpoints: int = 3
    stop_grace_s: float = 90.0  # after SIGTERM/SIGINT/RUN_DIR/STOP: checkpoint within this or exit at once


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 1
    overlap_comm: bool = False
    contiguous_gradients: bool = True
    reduce_bucket_size: int = 50_000_000
    extra: dict[str, Any] = field(default_factory=dict)  # merged into the DeepSpeed JSON last


@dataclass
class LauncherConfig:
    kind: str = "local"  # local (one process), ray (Ray Train TorchTrainer), torchrun (under torchrun/srun)
    num_workers: int = 1
    use_gpu: Optional[bool] = None  # ray: one GPU per worker; null: when the Ray cluster has GPUs
    cpus_per_worker: int = 1
    max_failures: int = 2  # ray: restarts of the worker group from the latest checkpoint
    storage_path: Optional[str] = None  # ray: shared storage for checkpoints (default: RUN_DIR/ray)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    name: str = "run"  # the experiment's name (set by each experiment file)
    run_dir: Optional[str] = None  # required by `craft train`
    resume: str = "auto"  # auto: continue the run in run_dir if it has a checkpoint; never: refuse a used run_dir
    init_from: Optional[str] = None  # a new run starts from these weights and their model config (EMA when present)
    seed: int = 0


def to_train_config(cfg: DictConfig) -> TrainConfig:
    """The composed DictConfig as dataclasses (runs their __post_init__ checks)."""
    return OmegaConf.to_object(cfg)


@dataclass
class ConvertConfig:
    checkpoint: str = MISSING  # the reference's Lightning checkpoint (model.ckpt)
    config: Optional[str] = None  # its config.yaml (default: next to the checkpoint)
    output_dir: str = MISSING
    clip: Optional[str] = None  # CLIP ViT-L/14 weights (a directory or a cached id) when the checkpoint holds none
    replace: bool = False  # an output_dir holding another conversion: replace it whole (else refused)
