"""Latent diffusion over VAE latent sets, with `diffusers` schedulers.

Training: DDPM noise (scaled_linear 0.00085 -> 0.012, 1000 steps), epsilon or v prediction, min-SNR
weighting only when `min_snr_gamma` is set (the reference switched it on by a hidden default), CFG
dropout per sample. Sampling: DDIM or DPM-Solver++ with the conditional and unconditional passes in
one batch. Latents are multiplied by `latent_scale` (1 / std measured on the data) before diffusion;
the scale is a buffer, so it is saved in every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from torch import nn

from craftsman_platform.errors import ConfigError
from craftsman_platform.models.conditioners import drop_conditions

PREDICTIONS = ("epsilon", "v_prediction")
SAMPLERS = {"ddim": DDIMScheduler, "dpmsolver++": DPMSolverMultistepScheduler, "ddpm": DDPMScheduler}


@dataclass
class DiffusionConfig:
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction_type: str = "epsilon"
    min_snr_gamma: Optional[float] = None  # e.g. 5.0 (the reference's); null: plain MSE
    sampler: str = "ddim"
    sampling_steps: int = 50
    guidance_scale: float = 7.5
    set_alpha_to_one: bool = True  # DDIM's last step returns the predicted x0 (CraftsMan: false)
    steps_offset: int = 1  # DDIM/DPM-Solver timestep offset (diffusers), as CraftsMan

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTIONS:
            raise ConfigError(
                f"model.diffusion.prediction_type must be one of {PREDICTIONS}, got {self.prediction_type!r}"
            )
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"model.diffusion.sampler must be one of {sorted(SAMPLERS)}, got {self.sampler!r}")


def make_scheduler(cfg: DiffusionConfig, kind: str = "ddpm"):
    """A diffusers scheduler with the training noise schedule; `kind` in ddpm / ddim / dpmsolver++."""
    if kind not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {sorted(SAMPLERS)}, got {kind!r}")
    common = dict(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        prediction_type=cfg.prediction_type,
    )
    if kind == "ddim":
        # set_alpha_to_one: the last step returns the predicted x0, not x0 plus the t=0 noise level
        return DDIMScheduler(
            **common, clip_sample=False, set_alpha_to_one=cfg.set_alpha_to_one, steps_offset=cfg.steps_offset
        )
    if kind == "dpmsolver++":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
    return DDPMScheduler(**common, clip_sample=False)


def snr_weights(
    alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: Optional[float], prediction_type: str
) -> torch.Tensor:
    """Per-sample loss weights: min(SNR, gamma) / SNR (epsilon) or / (SNR + 1) (v); ones without gamma."""
    if gamma is None:
        return torch.ones(t.shape, device=t.device)
    a = alphas_cumprod.to(t.device)[t]
    snr = a / (1 - a)
    clipped = snr.clamp(max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


class LatentDiffusion(nn.Module):
    """Denoiser + conditioner + schedule; the VAE stays outside (frozen, loaded by the trainer)."""

    def __init__(self, denoiser: nn.Module, conditioner: nn.Module, cfg: DiffusionConfig, cfg_dropout: float = 0.1):
        super().__init__()
        self.denoiser, self.conditioner, self.cfg, self.cfg_dropout = denoiser, conditioner, cfg, cfg_dropout
        self.train_scheduler = make_scheduler(cfg, "ddpm")
        self.register_buffer("latent_scale", torch.ones(()))

    @torch.no_grad()
    def set_latent_scale(self, latents: torch.Tensor) -> float:
        """Measure 1 / std of (unscaled) VAE latents and store it; returns the value."""
        return self.set_latent_scale_from_std(float(latents.float().std()))

    @torch.no_grad()
    def set_latent_scale_from_std(self, std: float) -> float:
        self.latent_scale.fill_(1.0 / max(std, 1e-6))
        return float(self.latent_scale)

    def encode_condition(self, cond: dict) -> torch.Tensor:
        """{'images', 'c2w'[, 'view_mask']} or {'input_ids'} -> context tokens; the tokens of views
        whose mask is False are replaced by the null condition's."""
        if "images" not in cond:
            return self.conditioner(cond["input_ids"])
        ctx = self.conditioner(cond["images"], cond["c2w"])
        mask = cond.get("view_mask")
        if mask is not None:
            b, v = mask.shape
            per_view = ctx.view(b, v, -1, ctx.shape[-1])
            null = self.conditioner.null(b).to(ctx).view(b, v, -1, ctx.shape[-1])
            ctx = torch.where(mask.to(ctx.device)[..., None, None], per_view, null).flatten(1, 2)
        return ctx

    def forward(
        self, latents: torch.Tensor, cond: dict, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict]:
        """The training loss: what a training engine calls (`engine(latents, cond, generator)`)."""
        return self.training_loss(latents, cond, generator)

    def training_loss(
        self, latents: torch.Tensor, cond: dict, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict]:
        """latents: unscaled VAE latents (B, L, C); cond: {'images', 'c2w'} or {'input_ids'}.

        The schedule (noising, targets, SNR weights) and the loss run in fp32 whatever the autocast."""
        b, device = latents.shape[0], latents.device
        x0 = latents.float() * self.latent_scale
        context = self.encode_condition(cond)
        context = drop_conditions(
            context, self.conditioner.null(b).to(device), self.cfg_dropout if self.training else 0.0, generator
        )
        t = torch.randint(0, self.cfg.num_train_timesteps, (b,), device=device, generator=generator)
        noise = torch.randn(x0.shape, device=device, generator=generator, dtype=x0.dtype)
        xt = self.train_scheduler.add_noise(x0, noise, t)
        target = noise if self.cfg.prediction_type == "epsilon" else self.train_scheduler.get_velocity(x0, noise, t)
        pred = self.denoiser(xt, t, context)
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2))
        weights = snr_weights(self.train_scheduler.alphas_cumprod, t, self.cfg.min_snr_gamma, self.cfg.prediction_type)
        loss = (per_sample * weights).mean()
        return loss, {"loss_mse": per_sample.mean().detach()}

    @torch.no_grad()
    def sample(
        self,
        cond: dict,
        num_latents: int,
        latent_dim: int,
        steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        sampler: Optional[str] = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Unscaled latents (B, num_latents, latent_dim) for the VAE decoder."""
        return self.sample_from_context(
            self.encode_condition(cond), num_latents, latent_dim, steps, guidance_scale, sampler, generator
        )

    @torch.no_grad()
    def sample_from_context(
        self,
        context: torch.Tensor,
        num_latents: int,
        latent_dim: int,
        steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        sampler: Optional[str] = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The sampling loop on encoded conditions. Nothing in it waits for the device: the scheduler's
        tables stay on the host, the denoiser's timesteps are moved to the device once."""
        scheduler = make_scheduler(self.cfg, sampler or self.cfg.sampler)
        scheduler.set_timesteps(steps or self.cfg.sampling_steps)
        guidance = self.cfg.guidance_scale if guidance_scale is None else guidance_scale
        b, device = context.shape[0], context.device
        if generator is not None and generator.device.type != device.type:
            raise ValueError(
                f"the generator is on {generator.device} but the model runs on {device}: "
                "create it on the model's device"
            )
        if guidance != 1.0:  # one batch: [conditional ; unconditional]
            context = torch.cat([context, self.conditioner.null(b).to(device, context.dtype)])
        x = torch.randn((b, num_latents, latent_dim), generator=generator, device=device) * scheduler.init_noise_sigma
        timesteps = scheduler.timesteps.to(device)
        for i, t in enumerate(scheduler.timesteps):
            x_in = torch.cat([x, x]) if guidance != 1.0 else x
            x_in = scheduler.scale_model_input(x_in, t)
            pred = self.denoiser(x_in, timesteps[i].expand(x_in.shape[0]), context).float()
            if guidance != 1.0:
                cond_pred, uncond_pred = pred.chunk(2)
                pred = uncond_pred + guidance * (cond_pred - uncond_pred)
            x = scheduler.step(pred, t, x).prev_sample
        return x / self.latent_scale
