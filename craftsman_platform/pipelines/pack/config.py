"""Config of `craft pack`: an archive (the output of `craft preprocess`) -> a pack for one task."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from craftsman_platform.raycluster import RayConfig


@dataclass
class EncodeConfig:
    """How a latents pack runs the VAE encoder."""

    device: str = "auto"  # auto: cuda when the encoder actors get a GPU, else cpu
    actors: Optional[int] = None  # encoder actors; unset: one per GPU of the cluster, 0 (none) without GPUs
    gpus_per_actor: float = 1.0  # when the cluster has GPUs
    batch_size: int = 16  # surface chunks per encoder forward
    dtype: str = "float16"  # how the posterior is stored: float16 (half the bytes) or float32


@dataclass
class PackConfig:
    kind: str = MISSING  # vae: points for the VAE step; latents: VAE posteriors + condition views
    source: str = MISSING  # the archive: output_dir of `craft preprocess` (a folder or an fsspec URL)
    output_dir: str = MISSING  # where the pack goes (a folder or an fsspec URL)
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options for source and output_dir
    select: Optional[str] = None  # objects to keep, by manifest columns: "select='chamfer < 0.02 and parts_lost == 0'"
    chunks: Optional[int] = None  # chunk series per object; unset: 16 (vae), the archive's view sets (latents)
    num_surface: Optional[int] = None  # surface points per chunk; unset: 4096 (vae), the VAE's num_inputs (latents)
    num_vol: int = 2048  # vae: volume queries per chunk
    num_near: int = 2048  # vae: near-surface queries per chunk
    image_size: int = 224  # latents: the conditioner's input size (views are stored through shapedata/views.py)
    vae_checkpoint: Optional[str] = None  # latents: the VAE (run dir or checkpoint); its EMA weights when present
    captions: Optional[str] = None  # latents: a captions file (uid, caption) whose captions replace the archive's
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    seed: int = 0  # which points go to which chunk
    ray: RayConfig = field(default_factory=RayConfig)
    workers: Optional[int] = None  # archive shards at once; unset: all the cluster's task slots
    memory_per_task_gb: float = 4.0  # Ray schedules pack tasks by this memory request
    timeout_s: float = 3600.0  # per archive shard; the worker is killed and the shard retried on the next run
    lock_stale_s: float = 120.0  # a lock on output_dir with no heartbeat for this long is taken over
