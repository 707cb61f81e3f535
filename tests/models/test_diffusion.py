"""Diffusion: diffusers schedules, min-SNR weights, CFG batching, latent scale in the state dict."""

from __future__ import annotations

import pytest
import torch

from craftsman_platform.models.build import ModelConfig, build_diffusion
from craftsman_platform.models.conditioners import ClipArchitecture, ConditionerConfig
from craftsman_platform.models.denoiser import DenoiserConfig
from craftsman_platform.models.diffusion import DiffusionConfig, LatentDiffusion, make_scheduler, snr_weights
from craftsman_platform.models.shape_vae import VAEConfig


class Oracle(torch.nn.Module):
    """Predicts the exact epsilon (or v) of a known x0: the scheduler must then return x0."""

    def __init__(self, x0: torch.Tensor, scheduler, prediction: str):
        super().__init__()
        self.x0, self.a, self.prediction = x0, scheduler.alphas_cumprod, prediction

    def forward(self, x, t, context):
        a = self.a[t.long()].view(-1, 1, 1)
        x0 = self.x0.repeat(x.shape[0] // self.x0.shape[0], 1, 1)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return eps if self.prediction == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0


class ZeroCondition(torch.nn.Module):
    hidden_size = 4

    def forward(self, images, c2w):
        return torch.zeros(images.shape[0], 2, 4)

    def null(self, b):
        return torch.zeros(b, 2, 4)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++"])
def test_add_noise_then_sampling_with_the_true_noise_returns_x0(prediction, sampler):
    cfg = DiffusionConfig(prediction_type=prediction, sampler=sampler, sampling_steps=25, guidance_scale=1.0)
    x0 = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0))
    model = LatentDiffusion(Oracle(x0, make_scheduler(cfg), prediction), ZeroCondition(), cfg)
    out = model.sample(
        {"images": torch.zeros(2, 1), "c2w": torch.zeros(2, 1)}, 16, 8, generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(out, x0, atol=2e-3, rtol=1e-3)


def test_training_noise_matches_the_reference_schedule():
    s = make_scheduler(DiffusionConfig())
    assert s.config.num_train_timesteps == 1000 and s.config.beta_schedule == "scaled_linear"
    assert float(s.betas[0]) == pytest.approx(0.00085) and float(s.betas[-1]) == pytest.approx(0.012)
    x0, noise, t = torch.randn(4, 3, 2), torch.randn(4, 3, 2), torch.tensor([0, 10, 500, 999])
    a = s.alphas_cumprod[t].view(-1, 1, 1)
    torch.testing.assert_close(s.add_noise(x0, noise, t), a.sqrt() * x0 + (1 - a).sqrt() * noise)


def test_min_snr_weights_are_explicit():
    a = make_scheduler(DiffusionConfig()).alphas_cumprod
    t = torch.arange(0, 1000, 50)
    assert torch.equal(snr_weights(a, t, None, "epsilon"), torch.ones(len(t)))
    w = snr_weights(a, t, 5.0, "epsilon")
    snr = a[t] / (1 - a[t])
    torch.testing.assert_close(w, torch.minimum(snr, torch.tensor(5.0)) / snr)
    assert float(w.max()) <= 1.0 and bool((w[snr < 5] == 1).all())


def tiny_diffusion() -> LatentDiffusion:
    torch.manual_seed(0)
    cfg = ModelConfig(
        kind="diffusion",
        vae=VAEConfig(
            num_inputs=64, num_latents=16, embed_dim=8, width=32, heads=2, encoder_layers=1, decoder_layers=1
        ),
        denoiser=DenoiserConfig(latent_dim=8, num_latents=16, context_dim=32, width=32, heads=2, encoder_layers=1),
        conditioner=ConditionerConfig(
            pretrained=None,
            num_views=2,
            architecture=ClipArchitecture(
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=64,
                patch_size=16,
                image_size=32,
            ),
        ),
    )
    return build_diffusion(cfg)


def test_guidance_runs_conditional_and_unconditional_in_one_batch():
    model = tiny_diffusion().eval()
    batches = []
    model.denoiser.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    cond = {"images": torch.rand(3, 2, 3, 32, 32), "c2w": torch.randn(3, 2, 4, 4)}
    out = model.sample(cond, 16, 8, steps=4, guidance_scale=3.0)
    assert out.shape == (3, 16, 8) and batches == [6] * 4
    batches.clear()
    model.sample(cond, 16, 8, steps=4, guidance_scale=1.0)
    assert batches == [3] * 4


def test_training_loss_and_latent_scale_in_the_state_dict():
    model = tiny_diffusion().train()
    latents = torch.randn(4, 16, 8) * 3
    assert model.set_latent_scale(latents) == pytest.approx(1 / float(latents.std()), rel=1e-5)
    cond = {"images": torch.rand(4, 2, 3, 32, 32), "c2w": torch.randn(4, 2, 4, 4)}
    loss, parts = model.training_loss(latents, cond, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and "loss_mse" in parts
    assert model.denoiser.out.weight.grad is not None
    state = model.state_dict()
    assert float(state["latent_scale"]) == pytest.approx(1 / float(latents.std()), rel=1e-5)
    fresh = tiny_diffusion()
    fresh.load_state_dict(state)
    assert float(fresh.latent_scale) == float(model.latent_scale)
