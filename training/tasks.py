"""What is trained: the shape VAE, or the latent diffusion model on a frozen VAE."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from models.build import ModelConfig, build_diffusion, build_vae
from models.shape_vae import vae_loss
from models.transformer import set_checkpointing
from training.checkpoint import latest_checkpoint, load_weights, read_meta
from training.config import TrainConfig


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _generator(batch: dict, device: torch.device) -> torch.Generator:
    """The batch's random stream (posterior samples, FPS starts, timesteps, noise, CFG dropout)."""
    return torch.Generator(device).manual_seed(batch["seed"])


class VAETask:
    kind = "vae"
    skip_prefixes: tuple[str, ...] = ()

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.model = build_vae(cfg.model)
        set_checkpointing(self.model, cfg.trainer.activation_checkpointing)

    def prepare(self, batches, device: torch.device) -> dict:
        return {}

    def loss(self, engine, batch: dict, device: torch.device) -> tuple[torch.Tensor, dict]:
        b = _to(batch, device)
        return vae_loss(engine, b["surface"], b["vol"], b["near"], self.cfg.model.vae_loss, _generator(batch, device))


def check_vae_checkpoint(model_cfg: ModelConfig) -> Path:
    """The VAE checkpoint a diffusion run needs: present, complete, and shaped like model.vae."""
    if not model_cfg.vae_checkpoint:
        raise ValueError("model.vae_checkpoint is required for model.kind=diffusion: the run dir or checkpoint of a trained VAE")
    ckpt = latest_checkpoint(model_cfg.vae_checkpoint)
    if ckpt is None:
        raise FileNotFoundError(f"model.vae_checkpoint={model_cfg.vae_checkpoint}: no checkpoint there")
    trained = read_meta(ckpt)["config"]["model"]
    if trained["kind"] != "vae":
        raise ValueError(f"model.vae_checkpoint={ckpt} is a {trained['kind']} checkpoint, not a VAE")
    ours = {k: v for k, v in vars(model_cfg.vae).items() if k not in ("checkpointing", "logvar_init")}
    wrong = {k: (v, trained["vae"].get(k)) for k, v in ours.items() if trained["vae"].get(k) != v}
    if wrong:
        raise ValueError(f"model.vae does not match the VAE in {ckpt}: " +
                         ", ".join(f"model.vae.{k}={a} (checkpoint: {b})" for k, (a, b) in wrong.items()))
    return ckpt


class DiffusionTask:
    kind = "diffusion"

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        ckpt = check_vae_checkpoint(cfg.model)
        self.vae = build_vae(cfg.model)
        state, _, self.vae_weights = load_weights(ckpt, prefer_ema=True)
        self.vae.load_state_dict(state)
        self.vae.requires_grad_(False).eval()
        self.vae_source = str(ckpt)
        self.model = build_diffusion(cfg.model)
        set_checkpointing(self.model.denoiser, cfg.trainer.activation_checkpointing)
        # a frozen pretrained CLIP is reloaded from model.conditioner.pretrained, not copied into checkpoints
        self.skip_prefixes = ("conditioner.clip.",) if cfg.model.conditioner.pretrained else ()

    @torch.no_grad()
    def _latents(self, surface: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.vae.encode(surface, sample=True, generator=generator)

    @torch.no_grad()
    def prepare(self, batches, device: torch.device, n_batches: int = 4) -> dict:
        """Measure the latent scale (1 / std of VAE latents) on a few batches, averaged over ranks."""
        self.vae.to(device)
        lat = torch.cat([self._latents(next(batches)["surface"].to(device)) for _ in range(n_batches)])
        var = lat.float().var()
        if dist.is_initialized():
            dist.all_reduce(var)
            var /= dist.get_world_size()
        scale = self.model.set_latent_scale_from_std(float(var.sqrt()))
        return {"latent_scale": scale}

    def loss(self, engine, batch: dict, device: torch.device) -> tuple[torch.Tensor, dict]:
        self.vae.to(device)
        b = _to(batch, device)
        cond = {"images": b["images"].float() / 255.0, "c2w": b["c2w"]}
        gen = _generator(batch, device)
        return engine.module.training_loss(self._latents(b["surface"], gen), cond, gen)


def make_task(cfg: TrainConfig):
    return VAETask(cfg) if cfg.model.kind == "vae" else DiffusionTask(cfg)
