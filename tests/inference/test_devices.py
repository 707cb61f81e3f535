"""Where inference runs: the `device` key, generators on the device they feed."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_diffusion_config

from craftsman_platform.inference.pipeline import Generator
from craftsman_platform.inference.runtime import device_generator, resolve_device
from craftsman_platform.models.build import build_diffusion, build_vae


def test_device_key():
    assert resolve_device("auto") == (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    assert resolve_device("cpu") == torch.device("cpu")
    for bad, message in (("tpu", "expected auto, cpu, cuda"), ("gpu0", "expected auto, cpu, cuda")):
        with pytest.raises(ValueError, match=message):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device=cuda:1: no CUDA device here"):
            resolve_device("cuda:1")


def test_sampling_refuses_a_generator_from_another_device():
    """The H100 bug: a CPU generator fed to a CUDA model. Here the model sits on the meta device."""
    with torch.device("meta"):
        model = build_diffusion(tiny_diffusion_config(), load_weights=False)
    context = torch.zeros(1, 2 * 17, 32, device="meta")
    with pytest.raises(ValueError, match="generator is on cpu but the model runs on meta"):
        model.sample_from_context(context, 16, 8, steps=2, generator=torch.Generator().manual_seed(0))


def test_generator_makes_its_random_stream_on_the_models_device(monkeypatch):
    cfg = tiny_diffusion_config()
    gen = Generator(
        build_diffusion(cfg, load_weights=False).eval(),
        build_vae(cfg).eval(),
        cfg,
        0,
        "raw",
        torch.device("cpu"),
    )
    seen = []
    original = gen.model.sample_from_context

    def spy(context, *args):
        seen.append((args[-1].device, context.device))
        return original(context, *args)

    monkeypatch.setattr(gen.model, "sample_from_context", spy)
    images, c2w = torch.randint(0, 256, (2, 2, 3, 32, 32), dtype=torch.uint8), torch.randn(2, 2, 4, 4)
    a = gen.latents(images, c2w, steps=2, seed=5)
    b = gen.latents(images, c2w, steps=2, seed=5)
    assert seen == [(gen.device, gen.device)] * 2 and a.shape == (2, 16, 8)
    torch.testing.assert_close(a, b)  # seeded: the same noise
    assert device_generator(torch.device("cpu"), 1).device == torch.device("cpu")
