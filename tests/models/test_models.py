"""Models: shapes, full-size parameter counts, attention backends, checkpointing, conditioners, diffusion."""

from __future__ import annotations

import string
import subprocess
import sys

import pytest
import torch
from helpers import save_tiny_clip_vision
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionModel

from craftsman_platform.models.build import ModelConfig, build_vae, count_parameters
from craftsman_platform.models.conditioners import (
    ClipArchitecture,
    ConditionerConfig,
    MultiViewImageEncoder,
    TextEncoder,
    WeightsNotFound,
    camera_embedding,
    drop_conditions,
)
from craftsman_platform.models.denoiser import DenoiserConfig, build_denoiser
from craftsman_platform.models.shape_vae import ShapeVAE, VAEConfig, VAELossConfig, farthest_point_indices, vae_loss
from craftsman_platform.models.transformer import set_attention_backend

TINY_VAE = dict(num_inputs=256, num_latents=16, embed_dim=8, width=64, heads=4, encoder_layers=1, decoder_layers=2)
TINY_DENOISER = dict(latent_dim=8, num_latents=16, context_dim=32, width=64, heads=4, encoder_layers=1)


def random_surface(b: int, n: int) -> torch.Tensor:
    xyz = torch.rand(b, n, 3) * 2 - 1
    normals = torch.nn.functional.normalize(torch.randn(b, n, 3), dim=-1)
    return torch.cat([xyz, normals], dim=-1)


# ----------------------------------------------------------------------------------------------
# Shape VAE
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("query_mode", ["fps", "learned"])
@pytest.mark.parametrize("head", ["occupancy", "sdf"])
def test_vae_shapes_and_loss(query_mode, head):
    torch.manual_seed(0)
    vae = ShapeVAE(VAEConfig(**TINY_VAE, query_mode=query_mode, head=head))
    surface = random_surface(2, 256)
    post = vae.posterior(surface)
    assert post.mean.shape == (2, 16, 8) and post.kl().shape == (2,)
    tokens = vae.decode(vae.encode(surface, sample=False))
    assert tokens.shape == (2, 16, 64)
    assert vae.query(tokens, torch.rand(2, 100, 3)).shape == (2, 100)
    vol, near = torch.rand(2, 50, 4) - 0.5, torch.rand(2, 30, 4) - 0.5
    loss, parts = vae_loss(vae, surface, vol, near, VAELossConfig())
    loss.backward()
    assert torch.isfinite(loss) and set(parts) >= {"loss_vol", "loss_near", "loss_kl", "iou_vol", "iou_near"}
    assert all(p.grad is not None for p in vae.parameters() if p.requires_grad)


def test_logvar_is_clamped():
    vae = ShapeVAE(VAEConfig(**TINY_VAE))
    with torch.no_grad():
        vae.pre_kl.bias[8:] = 1e4  # huge log-variance
    post = vae.posterior(random_surface(1, 256))
    assert float(post.logvar.max().detach()) == pytest.approx(20.0)


def test_farthest_point_sampling_spreads_out():
    xyz = torch.cat([torch.zeros(1, 500, 3), torch.eye(3)[None], -torch.eye(3)[None]], dim=1)  # a clump + 6 far points
    idx = farthest_point_indices(xyz, 7)
    picked = set(idx[0].tolist())
    assert set(range(500, 506)) <= picked and len(picked) == 7


def test_bad_vae_config_names_the_key():
    with pytest.raises(ValueError, match="model.vae.query_mode"):
        VAEConfig(query_mode="random")


def test_full_size_parameter_counts_match_the_reference():
    cfg = ModelConfig()
    with torch.device("meta"):
        vae = build_vae(cfg)
        denoiser = build_denoiser(DenoiserConfig())
        dit = build_denoiser(DenoiserConfig(kind="dit"))
    assert count_parameters(vae)[0] == 184_522_113
    assert count_parameters(denoiser)[0] == 104_816_448
    assert 104e6 <= count_parameters(denoiser)[0] <= 106e6
    assert count_parameters(dit)[0] > 150e6  # the scaling variant builds at full width too


def test_summary_command_prints_every_module():
    out = subprocess.run(
        [sys.executable, "-m", "craftsman_platform.cli", "summary", "experiment=diffusion_craftsman"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "denoiser: 104,816,448 parameters (104,816,448 trainable)" in out
    assert "vae (frozen): 184,522,113 parameters (0 trainable)" in out
    # CLIP ViT-L/14 vision tower (303,179,776) + ModLN in 24 layers x 2 norms x Linear(32, 2048)
    assert "conditioner (image): 306,423,808 parameters (3,244,032 trainable)" in out


def test_sdpa_and_einsum_attention_agree():
    torch.manual_seed(0)
    vae = ShapeVAE(VAEConfig(**TINY_VAE)).eval()
    surface, queries = random_surface(2, 256), torch.rand(2, 64, 3)
    a, _ = vae(surface, queries, sample=False)
    set_attention_backend(vae, "einsum")
    b, _ = vae(surface, queries, sample=False)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    den = build_denoiser(DenoiserConfig(**TINY_DENOISER))
    x, t, ctx = torch.randn(2, 16, 8), torch.tensor([3, 700]), torch.randn(2, 5, 32)
    den(x, t, ctx).square().mean().backward()
    plain = [p.grad.clone() for p in den.parameters()]
    den.zero_grad()
    den.cfg.checkpointing = True
    den(x, t, ctx).square().mean().backward()
    for g, p in zip(plain, den.parameters()):
        torch.testing.assert_close(g, p.grad)


@pytest.mark.parametrize("kind", ["unet_transformer", "dit"])
def test_denoiser_shapes(kind):
    den = build_denoiser(DenoiserConfig(**TINY_DENOISER, kind=kind))
    out = den(torch.randn(3, 16, 8), torch.tensor([0, 10, 999]), torch.randn(3, 7, 32))
    assert out.shape == (3, 16, 8)


# ----------------------------------------------------------------------------------------------
# Conditioners
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A small random CLIP (vision + text towers, tokenizer) written with save_pretrained."""
    root = tmp_path_factory.mktemp("clip")
    save_tiny_clip_vision(root)
    text_dir = root / "text"
    CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=60,
            max_position_embeddings=16,
        )
    ).save_pretrained(text_dir)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase:
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(text_dir)
    return root


def test_modln_at_initialisation_is_plain_clip(clip_dir):
    enc = MultiViewImageEncoder(ConditionerConfig(pretrained=str(clip_dir), num_views=2))
    plain = CLIPVisionModel.from_pretrained(clip_dir)
    images, c2w = torch.rand(3, 2, 3, 32, 32), torch.randn(3, 2, 4, 4)
    tokens = enc(images, c2w)
    assert tokens.shape == (3, 2 * 17, 32)
    expected = plain(pixel_values=(images.flatten(0, 1) - enc.mean) / enc.std).last_hidden_state
    torch.testing.assert_close(tokens, expected.reshape(3, 34, 32), atol=1e-5, rtol=1e-4)
    # only the modulation trains; once it is non-zero the camera changes the tokens
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable and all(".modulation." in n for n in trainable)
    assert count_parameters(enc)[1] == 2 * 2 * (32 * 64 + 64)
    with torch.no_grad():
        for n, p in enc.named_parameters():
            if ".modulation." in n:
                p.normal_(std=0.1)
    a, b = enc(images, c2w), enc(images, c2w + 0.5)
    assert (a - b).abs().max() > 1e-3
    a.square().mean().backward()  # gradients reach the modulation through the frozen tower
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters() if p.requires_grad)


def test_missing_weights_fail_with_the_path(tmp_path):
    missing = tmp_path / "no-clip-here"
    missing.mkdir()
    with pytest.raises(WeightsNotFound, match="no-clip-here"):
        MultiViewImageEncoder(ConditionerConfig(pretrained=str(missing)))
    with pytest.raises(WeightsNotFound, match="cache"):
        MultiViewImageEncoder(ConditionerConfig(pretrained="someone/not-downloaded-model"))


def test_text_conditioner_and_its_null(clip_dir):
    enc = TextEncoder(ConditionerConfig(kind="text", pretrained=str(clip_dir / "text")))
    ids = enc.tokenize(["a red chair", "duck"])
    out = enc(ids)
    assert out.shape == (2, 16, 32)
    null = enc.null(2)
    torch.testing.assert_close(null[0], enc(enc.tokenize([""]))[0])
    assert (out - null).abs().max() > 1e-4


def test_clip_bpe_is_clips_own_vocabulary_for_a_tower_without_weights():
    arch = ClipArchitecture(text_hidden_size=32, text_layers=1, text_heads=2, text_intermediate_size=64)
    enc = TextEncoder(ConditionerConfig(kind="text", pretrained=None, tokenizer="clip_bpe", architecture=arch))
    ids = enc.tokenize(["a photo of a cat", "une chaise en bois, café"])
    assert ids.shape == (2, 77) and len(enc.tokenizer) == 49408
    assert ids[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 49407]  # CLIP's own ids, padded
    assert enc(ids).shape == (2, 77, 32) and enc.null(2).shape == (2, 77, 32)


def test_cfg_dropout_is_drawn_per_sample():
    ctx, null = torch.ones(512, 3, 4), torch.zeros(1, 3, 4)
    out = drop_conditions(ctx, null, 0.3, torch.Generator().manual_seed(0))
    dropped = (out == 0).all(dim=(1, 2))
    kept = (out == 1).all(dim=(1, 2))
    assert bool((dropped | kept).all())  # whole samples, never parts of one
    assert 0.2 < dropped.float().mean() < 0.4  # a mix inside one batch
    assert torch.equal(drop_conditions(ctx, null, 0.0), ctx)


def test_camera_embedding_is_sin_cos_of_c2w():
    c2w = torch.eye(4)
    emb = camera_embedding(c2w)
    assert emb.shape == (32,)
    torch.testing.assert_close(emb[:16], c2w.flatten().sin())
