"""What is trained: the shape VAE, or the latent diffusion model on a frozen VAE."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from craftsman_platform.errors import ConfigError
from craftsman_platform.models.build import ModelConfig, build_diffusion, build_vae, pretrained_frozen_keys
from craftsman_platform.models.checkpoints import find_vae_checkpoint, load_weights, weights_identity
from craftsman_platform.models.shape_vae import DiagonalGaussian, vae_loss
from craftsman_platform.training.config import TrainConfig
from craftsman_platform.training.engine import collective_device


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _generator(batch: dict, device: torch.device) -> torch.Generator:
    """The batch's random stream (posterior samples, FPS starts, timesteps, noise, CFG dropout)."""
    return torch.Generator(device).manual_seed(batch["seed"])


class VAETask:
    kind = "vae"
    frozen_pretrained_keys: frozenset[str] = frozenset()

    def __init__(self, cfg: TrainConfig, device: torch.device, data=None):
        self.cfg, self.device = cfg, device
        self.model = build_vae(cfg.model)

    def prepare(self, batches) -> dict:
        return {}

    def loss(self, engine, batch: dict) -> tuple[torch.Tensor, dict]:
        b = _to(batch, self.device)
        return vae_loss(
            engine, b["surface"], b["vol"], b["near"], self.cfg.model.vae_loss, _generator(batch, self.device)
        )


def check_vae_checkpoint(model_cfg: ModelConfig) -> Path:
    """The VAE checkpoint a diffusion run needs: present, complete, and shaped like model.vae."""
    ckpt, trained = find_vae_checkpoint(model_cfg.vae_checkpoint, "model.vae_checkpoint", "model.kind=diffusion")
    ours = {k: v for k, v in vars(model_cfg.vae).items() if k not in ("checkpointing", "logvar_init")}
    wrong = {k: (v, trained["vae"].get(k)) for k, v in ours.items() if trained["vae"].get(k) != v}
    if wrong:
        raise ConfigError(
            f"model.vae does not match the VAE in {ckpt}: "
            + ", ".join(f"model.vae.{k}={a} (checkpoint: {b})" for k, (a, b) in wrong.items())
        )
    return ckpt


class DiffusionTask:
    kind = "diffusion"

    def __init__(self, cfg: TrainConfig, device: torch.device, data=None):
        self.cfg, self.device = cfg, device
        ckpt = check_vae_checkpoint(cfg.model)
        self.vae_source = str(ckpt)
        self.vae = None  # a latents pack holds the posteriors: no VAE is built, none runs
        self.from_pack = data is not None and data.sample_kind == "latents"
        if self.from_pack:
            check_pack_vae(data.pack, ckpt)
        else:
            self.vae = build_vae(cfg.model)
            state, _, _ = load_weights(ckpt, prefer_ema=True)
            self.vae.load_state_dict(state)
            # frozen, and only encodes: bf16 weights when training in bf16 (the model casts its inputs)
            dtype = torch.bfloat16 if cfg.trainer.precision == "bf16" else torch.float32
            self.vae.requires_grad_(False).eval().to(device, dtype)
        self.text = cfg.model.conditioner.kind == "text"
        if self.text != (cfg.data.condition == "text"):
            raise ConfigError(
                f"model.conditioner.kind={cfg.model.conditioner.kind} but data.condition={cfg.data.condition}: "
                "a text conditioner trains on captions (data.condition=text), an image one on views (image)"
            )
        self.model = build_diffusion(cfg.model)
        size = getattr(self.model.conditioner, "image_size", cfg.data.image_size)
        if size != cfg.data.image_size and not self.text:
            raise ConfigError(f"data.image_size={cfg.data.image_size} but the conditioner takes {size} px views")
        # a frozen pretrained CLIP is reloaded from model.conditioner.pretrained, not copied into every
        # checkpoint; its trained parts (the ModLN modulation) are
        self.frozen_pretrained_keys = frozenset(
            pretrained_frozen_keys(self.model) if cfg.model.conditioner.pretrained else ()
        )

    @torch.no_grad()
    def _latents(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """Posterior samples: from the pack's stored posterior, or the frozen VAE's (no graph kept)."""
        if self.from_pack:
            vae = self.cfg.model.vae
            moments = torch.cat([batch["mean"], batch["logvar"]], dim=-1).to(self.device)
            return DiagonalGaussian(moments, vae.logvar_min, vae.logvar_max).sample(generator)
        return self.vae.encode(batch["surface"].to(self.device), sample=True, generator=generator)

    @torch.no_grad()
    def prepare(self, batches, n_batches: int = 4) -> dict:
        """Measure the latent scale (1 / std of VAE latents) on a few batches, averaged over ranks."""
        lat = torch.cat([self._latents(next(batches)) for _ in range(n_batches)])
        var = lat.float().var()
        if dist.is_initialized():
            var = var.to(collective_device())
            dist.all_reduce(var)
            var /= dist.get_world_size()
        scale = self.model.set_latent_scale_from_std(float(var.sqrt()))
        return {"latent_scale": scale}

    def loss(self, engine, batch: dict) -> tuple[torch.Tensor, dict]:
        b = _to(batch, self.device)
        gen = _generator(batch, self.device)
        if self.text:  # one of each object's captions, drawn by the loader; CFG drops to the empty prompt
            cond = {"input_ids": self.model.conditioner.tokenize(batch["caption"]).to(self.device)}
        else:
            cond = {"images": b["images"], "c2w": b["c2w"]}  # uint8 views: the conditioner scales them
        return engine(self._latents(b, gen), cond, gen)


def check_pack_vae(pack, ckpt: Path) -> None:
    """A latents pack is used only with the VAE that encoded it (the same weight files)."""
    made_with = pack.info["vae"]
    ours = weights_identity(ckpt, prefer_ema=True)
    if made_with["sha256"] != ours["sha256"]:
        raise ConfigError(
            f"the latents pack {pack.root} was encoded by the VAE {made_with['checkpoint']} (step {made_with['step']}, "
            f"{made_with['weights']} weights, sha256 {made_with['sha256'][:12]}), but model.vae_checkpoint is "
            f"{ours['checkpoint']} (step {ours['step']}, {ours['weights']}, sha256 {ours['sha256'][:12]}): "
            "train with that VAE, or repack with this one"
        )


def make_task(cfg: TrainConfig, device: torch.device, data=None):
    """The run's task; `data` (training.data.TrainingData) tells a diffusion task whether it reads a latents pack."""
    return (VAETask if cfg.model.kind == "vae" else DiffusionTask)(cfg, device, data)
