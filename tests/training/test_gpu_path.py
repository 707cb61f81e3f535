"""CPU tests that guard the GPU training path: dtypes, devices, graphs and host syncs.

GPU-only failures (a module cast to bf16, an EMA on the host, a graph kept through the frozen VAE)
show up here without a GPU: bf16 runs on the CPU too, the EMA is checked on the meta device, and the
operations an update dispatches are counted.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TINY_VAE, craft, save_tiny_clip_vision, shard_glob, tiny_diffusion_config
from torch.utils._python_dispatch import TorchDispatchMode

from craftsman_platform.models.build import ModelConfig, build_diffusion, compile_model
from craftsman_platform.models.checkpoints import latest_checkpoint, load_weights
from craftsman_platform.models.conditioners import ConditionerConfig, MultiViewImageEncoder
from craftsman_platform.models.shape_vae import ShapeVAE, VAEConfig, VAELossConfig, vae_loss
from craftsman_platform.training.config import TrainConfig
from craftsman_platform.training.engine import EMA, deepspeed_config
from craftsman_platform.training.tasks import DiffusionTask
from craftsman_platform.training.train import ray_resources


def surface(b: int, n: int) -> torch.Tensor:
    return torch.cat([torch.rand(b, n, 3) * 2 - 1, torch.nn.functional.normalize(torch.randn(b, n, 3), dim=-1)], -1)


# ----------------------------------------------------------------------------------------------
# Precision
# ----------------------------------------------------------------------------------------------
def test_models_train_with_weights_cast_to_bf16():
    """DeepSpeed's bf16 mode casts the module itself: fp32 inputs must not meet bf16 weights (the
    H100 crash `mat1 and mat2 must have the same dtype` at step 1)."""
    torch.manual_seed(0)
    vae = ShapeVAE(VAEConfig(**TINY_VAE)).to(torch.bfloat16)
    vol, near = torch.rand(2, 40, 4) - 0.5, torch.rand(2, 40, 4) - 0.5
    loss, parts = vae_loss(vae, surface(2, 128), vol, near, VAELossConfig())
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in vae.parameters())
    model = build_diffusion(tiny_diffusion_config(), load_weights=False).to(torch.bfloat16)
    cond = {"images": torch.rand(2, 2, 3, 32, 32), "c2w": torch.randn(2, 2, 4, 4)}
    loss, _ = model(torch.randn(2, 16, 8), cond, torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert model.denoiser.out.weight.grad is not None


def test_bf16_autocast_keeps_precision_sensitive_parts_in_fp32():
    torch.manual_seed(0)
    vae = ShapeVAE(VAEConfig(**TINY_VAE))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        post = vae.posterior(surface(2, 128))
        tokens = vae.decode(post.mean)
    assert post.mean.dtype == post.logvar.dtype == post.kl().dtype == torch.float32
    assert tokens.dtype == torch.bfloat16  # the blocks themselves do run in bf16
    model = build_diffusion(tiny_diffusion_config(), load_weights=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, parts = model(
            torch.randn(2, 16, 8), {"images": torch.rand(2, 2, 3, 32, 32), "c2w": torch.randn(2, 2, 4, 4)}
        )
    assert loss.dtype == parts["loss_mse"].dtype == torch.float32


def test_deepspeed_keeps_fp32_weights_and_autocasts_the_forward():
    cfg = TrainConfig()
    ds = deepspeed_config(cfg, world_size=1)
    assert ds["bf16"]["enabled"] is False
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    cfg.trainer.precision = "fp32"
    assert deepspeed_config(cfg, world_size=1)["torch_autocast"]["enabled"] is False
    cfg.deepspeed.extra = {"bf16": {"enabled": True}}
    with pytest.raises(ValueError, match="deepspeed.extra.bf16"):
        deepspeed_config(cfg, world_size=1)


# ----------------------------------------------------------------------------------------------
# EMA
# ----------------------------------------------------------------------------------------------
class OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_ema_is_one_fused_update_on_the_parameters_device():
    with torch.device("meta"):  # a device that is not the host: any copy to the CPU would show
        vae = ShapeVAE(VAEConfig(**TINY_VAE))
    vae.post_kl.requires_grad_(False)
    ema = EMA(vae, 0.99)
    assert len(ema.shadow) == len([p for p in vae.parameters() if p.requires_grad]) > 20
    assert all(s.device.type == "meta" and s.dtype == torch.float32 for s in ema.shadow)
    with OpLog() as log:
        ema.update()
    assert log.ops == ["aten._foreach_lerp_.Scalar"]  # no per-parameter op, copy or collective
    assert "post_kl.weight" not in ema.names and "pre_kl.weight" in ema.names


def test_ema_values_and_state_round_trip():
    lin = torch.nn.Linear(3, 2)
    ema = EMA(lin, 0.9)
    before = lin.weight.detach().clone()
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update()
    torch.testing.assert_close(ema.state_dict()["weight"], before + 0.1)
    other = EMA(torch.nn.Linear(3, 2), 0.9)
    other.load_state_dict(ema.state_dict())
    torch.testing.assert_close(other.shadow[0], ema.shadow[0])
    with pytest.raises(TypeError, match="fp32"):
        EMA(torch.nn.Linear(3, 2).to(torch.bfloat16), 0.9)


# ----------------------------------------------------------------------------------------------
# Memory: activation checkpointing, the frozen VAE
# ----------------------------------------------------------------------------------------------
def test_clip_checkpointing_recomputes_and_gives_the_same_gradients(tmp_path):
    save_tiny_clip_vision(tmp_path)
    images, c2w = torch.rand(2, 2, 3, 32, 32), torch.randn(2, 2, 4, 4)
    grads, calls = [], []
    for checkpointing in (False, True):
        enc = MultiViewImageEncoder(
            ConditionerConfig(pretrained=str(tmp_path), num_views=2, checkpointing=checkpointing)
        )
        enc.train()
        assert not enc._tower().encoder.layers[0].self_attn.training  # no dropout under checkpointing
        with torch.no_grad():
            for n, p in enc.named_parameters():
                if ".modulation." in n:
                    p.copy_(torch.linspace(-0.1, 0.1, p.numel()).view_as(p))
        count = [0]
        enc._tower().encoder.layers[1].layer_norm1.register_forward_hook(lambda *a: count.__setitem__(0, count[0] + 1))
        enc(images, c2w).square().mean().backward()
        grads.append([p.grad.clone() for p in enc.parameters() if p.requires_grad])
        calls.append(count[0])
    assert calls == [1, 2]  # recomputed in the backward pass
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_diffusion_task_encodes_without_a_graph(vae_run, tiny_shards):
    cfg = TrainConfig()
    cfg.model = ModelConfig(**{**vars(tiny_diffusion_config()), "vae_checkpoint": str(vae_run)})
    cfg.model.vae = load_vae_config(vae_run)
    cfg.model.denoiser.latent_dim, cfg.model.denoiser.num_latents = cfg.model.vae.embed_dim, cfg.model.vae.num_latents
    cfg.trainer.precision, cfg.data.image_size = "bf16", 32
    task = DiffusionTask(cfg, torch.device("cpu"))
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in task.vae.parameters())
    pts = surface(2, cfg.model.vae.num_inputs)
    latents = task._latents({"surface": pts}, torch.Generator().manual_seed(0))
    assert latents.grad_fn is None and not latents.requires_grad and latents.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = task.model(latents, {"images": torch.rand(2, 2, 3, 32, 32), "c2w": torch.randn(2, 2, 4, 4)})
    loss.backward()
    assert all(p.grad is None for p in task.vae.parameters())


def load_vae_config(run) -> VAEConfig:
    _, meta, _ = load_weights(run)
    return VAEConfig(**meta["config"]["model"]["vae"])


# ----------------------------------------------------------------------------------------------
# Compile, launch
# ----------------------------------------------------------------------------------------------
def test_compile_wraps_the_blocks_and_keeps_parameter_names():
    model = build_diffusion(tiny_diffusion_config(), load_weights=False)
    names = [n for n, _ in model.named_parameters()]
    assert compile_model(model, "eager") == 3 + 2  # denoiser 1 + 1 + 1 blocks, 2 CLIP layers
    assert [n for n, _ in model.named_parameters()] == names
    loss, _ = model(torch.randn(2, 16, 8), {"images": torch.rand(2, 2, 3, 32, 32), "c2w": torch.randn(2, 2, 4, 4)})
    loss.backward()


def test_ray_asks_for_a_gpu_per_worker_when_the_cluster_has_them():
    cfg = TrainConfig()
    assert ray_resources(cfg.launcher, cluster_gpus=8) == (True, {"CPU": 1, "GPU": 1})
    assert ray_resources(cfg.launcher, cluster_gpus=0) == (False, {"CPU": 1})
    cfg.launcher.use_gpu = False
    assert ray_resources(cfg.launcher, cluster_gpus=8) == (False, {"CPU": 1})


@pytest.mark.slow
def test_craft_train_bf16_compiled_follows_fp32(tiny_shards, vae_run, tmp_path):
    """Real engines on the CPU in bf16 with compiled, checkpointed blocks: both models train, the
    weights stay fp32 in the checkpoint, and the VAE's loss follows the fp32 run (stated: 2%)."""
    common = [
        "experiment=vae_tiny",
        f"data.train_shards={shard_glob(tiny_shards)}",
        "trainer.max_steps=4",
        "trainer.log_every=1",
        "logger=none",
        "data.batch_size=2",
    ]
    craft("train", *common, f"run_dir={tmp_path / 'fp32'}")
    proc = craft(
        "train",
        *common,
        f"run_dir={tmp_path / 'bf16'}",
        "trainer.precision=bf16",
        "trainer.compile=true",
        "trainer.compile_backend=aot_eager",
        "model.vae.checkpointing=true",
    )
    assert "step 4/4 | loss" in proc.stdout  # the console shows progress
    curves = [
        [json.loads(x)["loss"] for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
        for r in ("fp32", "bf16")
    ]
    assert len(curves[1]) == 4 and curves[1] == pytest.approx(curves[0], rel=0.02)
    state, _, _ = load_weights(tmp_path / "bf16")
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    craft(
        "train",
        "experiment=diffusion_tiny",
        f"data.train_shards={shard_glob(tiny_shards)}",
        f"model.vae_checkpoint={vae_run}",
        f"run_dir={tmp_path / 'diff'}",
        "trainer.max_steps=2",
        "logger=none",
        "data.batch_size=2",
        "trainer.precision=bf16",
        "trainer.compile=true",
        "trainer.compile_backend=aot_eager",
        "model.denoiser.checkpointing=true",
        "model.conditioner.checkpointing=true",
    )
    assert latest_checkpoint(tmp_path / "diff") is not None
