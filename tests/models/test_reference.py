"""Released CraftsMan v1 weights in our modules, tested without the reference's code: its key names
and shapes (written out here from its module layout), its attention layouts computed by hand, and
the places where its behaviour differs from ours (time embedding, cameras, null condition, DDIM)."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
import yaml
from diffusers.models.embeddings import Timesteps
from helpers import craft, shard_glob
from transformers import CLIPVisionConfig, CLIPVisionModel

from craftsman_platform.models.build import ModelConfig, build_diffusion, build_vae
from craftsman_platform.models.conditioners import (
    ClipArchitecture,
    ConditionerConfig,
    MultiViewImageEncoder,
    opengl_unit,
)
from craftsman_platform.models.denoiser import DenoiserConfig, build_denoiser
from craftsman_platform.models.diffusion import DiffusionConfig, make_scheduler
from craftsman_platform.models.reference import (
    convert_conditioner,
    convert_denoiser,
    convert_vae,
    qkv_rows,
    qkv_rows_back,
    swap_halves,
)
from craftsman_platform.models.shape_vae import VAEConfig
from craftsman_platform.models.transformer import CrossAttention, SelfAttention, timestep_embedding
from craftsman_platform.shapedata.cameras import canonical_c2w

W, H, C, L, F, CTX = 64, 4, 8, 16, 8, 32


# ----------------------------------------------------------------------------------------------
# The reference's state dicts, written out from its module layout
# ----------------------------------------------------------------------------------------------
def _linear(out: int, inp: int, bias: bool = True, name: str = "") -> dict:
    d = {f"{name}weight": torch.randn(out, inp) * 0.05}
    if bias:
        d[f"{name}bias"] = torch.randn(out) * 0.05
    return d


def _ln(name: str, width: int = W) -> dict:
    return {f"{name}weight": 1 + 0.1 * torch.randn(width), f"{name}bias": 0.1 * torch.randn(width)}


def ref_self_block(p: str, qkv_bias: bool) -> dict:
    return {
        **_linear(3 * W, W, qkv_bias, f"{p}attn.c_qkv."),
        **_linear(W, W, True, f"{p}attn.c_proj."),
        **_ln(f"{p}ln_1."),
        **_ln(f"{p}ln_2."),
        **_linear(4 * W, W, True, f"{p}mlp.c_fc."),
        **_linear(W, 4 * W, True, f"{p}mlp.c_proj."),
    }


def ref_cross_block(p: str, qkv_bias: bool) -> dict:
    return {
        **_linear(W, W, qkv_bias, f"{p}attn.c_q."),
        **_linear(2 * W, W, qkv_bias, f"{p}attn.c_kv."),
        **_linear(W, W, True, f"{p}attn.c_proj."),
        **_ln(f"{p}ln_1."),
        **_ln(f"{p}ln_2."),
        **_ln(f"{p}ln_3."),
        **_linear(4 * W, W, True, f"{p}mlp.c_fc."),
        **_linear(W, 4 * W, True, f"{p}mlp.c_proj."),
    }


def ref_vae(qkv_bias=False, learned=True, ln_post=True, aligned=False, enc=1, dec=2) -> dict:
    emb = 3 * (2 * F + 1)
    p = "shape_model."
    d = {
        **_linear(W, emb + 3, True, f"{p}encoder.input_proj."),
        **ref_cross_block(f"{p}encoder.cross_attn.", qkv_bias),
        **_linear(2 * C, W, True, f"{p}pre_kl."),
        **_linear(W, C, True, f"{p}post_kl."),
        **_linear(W, emb, True, f"{p}decoder.query_proj."),
        **ref_cross_block(f"{p}decoder.cross_attn_decoder.", qkv_bias),
        **_ln(f"{p}decoder.ln_post."),
        **_linear(1, W, True, f"{p}decoder.output_proj."),
    }
    for i in range(enc):
        d.update(ref_self_block(f"{p}encoder.self_attn.resblocks.{i}.", qkv_bias))
    for i in range(dec):
        d.update(ref_self_block(f"{p}transformer.resblocks.{i}.", qkv_bias))
    if learned:
        d[f"{p}encoder.query"] = torch.randn(L + int(aligned), W) * 0.02
    if ln_post:
        d.update(_ln(f"{p}encoder.ln_post."))
    if aligned:
        d[f"{p}projection"] = torch.randn(W, 768)
    return d


def ref_denoiser(layers=1) -> dict:
    p = "denoiser_model."
    d = {
        **_linear(W, C, True, f"{p}input_proj."),
        **_linear(C, W, True, f"{p}output_proj."),
        **_ln(f"{p}ln_post."),
        **_linear(4 * W, W, True, f"{p}time_proj.c_fc."),
        **_linear(W, 4 * W, True, f"{p}time_proj.c_proj."),
        **_ln(f"{p}context_embed.0.", CTX),
        **_linear(W, CTX, True, f"{p}context_embed.1."),
        **ref_self_block(f"{p}backbone.middle_block.", False),
    }
    for i in range(layers):
        d.update(ref_self_block(f"{p}backbone.encoder.{i}.", False))
        d.update(ref_self_block(f"{p}backbone.decoder.{i}.0.", False))
        d.update(_linear(W, 2 * W, True, f"{p}backbone.decoder.{i}.1."))
        d.update(_ln(f"{p}backbone.decoder.{i}.2."))
    return d


CLIP = dict(
    hidden_size=CTX, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=8, image_size=32
)


def ref_condition() -> dict:
    """The reference's ConditionalCLIPModel: HF's CLIP vision names under model.vision_model, plus
    mod_norm1/2 per layer, the text tower and projections it also holds, its camera buffer."""
    torch.manual_seed(1)
    vision = CLIPVisionModel(CLIPVisionConfig(**CLIP)).state_dict()
    d = {"condition.model.vision_model." + k.removeprefix("vision_model."): v for k, v in vision.items()}
    for i in range(CLIP["num_hidden_layers"]):
        for n in (1, 2):
            d.update(_linear(2 * CTX, 32, True, f"condition.model.vision_model.encoder.layers.{i}.mod_norm{n}.mlp.1."))
    d.update(
        {
            "condition.model.text_model.embeddings.token_embedding.weight": torch.randn(10, 16),
            "condition.model.visual_projection.weight": torch.randn(8, CTX),
            "condition.model.text_projection.weight": torch.randn(8, 16),
            "condition.model.logit_scale": torch.tensor(2.0),
            "condition.cameras": REFERENCE_CAMERAS,
        }
    )
    return d


# the reference's canonical cameras (front, right, back, left): OpenGL axes, distance 1
REFERENCE_CAMERAS = torch.tensor(
    [
        [[1, 0, 0, 0], [0, 0, -1, -1], [0, 1, 0, 0], [0, 0, 0, 1]],
        [[0, 0, 1, 1], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]],
        [[-1, 0, 0, 0], [0, 0, 1, 1], [0, 1, 0, 0], [0, 0, 0, 1]],
        [[0, 0, -1, -1], [-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]],
    ],
    dtype=torch.float32,
)


def tiny_vae_config(**kw) -> VAEConfig:
    return VAEConfig(
        num_inputs=64,
        num_latents=L,
        embed_dim=C,
        width=W,
        heads=H,
        encoder_layers=1,
        decoder_layers=2,
        include_pi=False,
        **kw,
    )


# ----------------------------------------------------------------------------------------------
# Keys and shapes
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "variant", [dict(), dict(qkv_bias=True, learned=False), dict(ln_post=False), dict(aligned=True)]
)
def test_reference_vae_state_dicts_convert_and_load_strictly(variant):
    state = ref_vae(**variant)
    ours, ignored, unknown = convert_vae(state, H)
    assert not unknown and ignored == (["shape_model.projection"] if variant.get("aligned") else [])
    cfg = tiny_vae_config(
        qkv_bias=variant.get("qkv_bias", False),
        query_mode="fps" if variant.get("learned") is False else "learned",
        encoder_ln=variant.get("ln_post", True),
        shape_token=variant.get("aligned", False),
    )
    vae = build_vae(ModelConfig(vae=cfg))
    vae.load_state_dict(ours, strict=True)
    out, _ = vae.eval()(torch.rand(2, 64, 6), torch.rand(2, 10, 3), sample=False)
    assert out.shape == (2, 10)


def test_reference_diffusion_state_dicts_convert_and_load_strictly():
    den, ign, unknown = convert_denoiser(ref_denoiser(), H)
    assert not unknown and not ign
    enc = MultiViewImageEncoder(ConditionerConfig(pretrained=None, architecture=ClipArchitecture(**CLIP)), False)
    tower = "clip.vision_model." if hasattr(enc.clip, "vision_model") else "clip."
    cond, ignored, unknown = convert_conditioner(ref_condition(), tower)
    assert not unknown and "condition.cameras" in ignored and "condition.model.logit_scale" in ignored
    cfg = ModelConfig(
        kind="diffusion",
        vae=tiny_vae_config(),
        denoiser=DenoiserConfig(latent_dim=C, num_latents=L, context_dim=CTX, width=W, heads=H, encoder_layers=1),
        conditioner=ConditionerConfig(pretrained=None, architecture=ClipArchitecture(**CLIP)),
    )
    model = build_diffusion(cfg, load_weights=False)
    state = {
        **{f"denoiser.{k}": v for k, v in den.items()},
        **{f"conditioner.{k}": v for k, v in cond.items()},
        "latent_scale": torch.tensor(1.0),
    }
    model.load_state_dict(state, strict=True)


def test_unknown_keys_are_listed_not_dropped():
    state = {**ref_vae(), "shape_model.encoder.mystery.weight": torch.zeros(1)}
    _, _, unknown = convert_vae(state, H)
    assert unknown == ["shape_model.encoder.mystery.weight"]


# ----------------------------------------------------------------------------------------------
# Layouts that change the function, checked against what the reference layout computes
# ----------------------------------------------------------------------------------------------
def _reference_attention(q, k, v, heads):
    """The reference's attention on per-head-split tensors (B, N, H, D): scores / sqrt(D), softmax."""
    d = q.shape[-1]
    w = torch.einsum("bthc,bshc->bhts", q / d**0.25, k / d**0.25).softmax(-1)
    return torch.einsum("bhts,bshc->bthc", w, v).flatten(2)


def test_self_attention_qkv_rows_follow_the_reference_layout():
    torch.manual_seed(0)
    state = ref_self_block("", qkv_bias=True)
    x = torch.randn(2, 7, W)
    qkv = x @ state["attn.c_qkv.weight"].T + state["attn.c_qkv.bias"]
    q, k, v = qkv.view(2, 7, H, 3 * (W // H)).split(W // H, dim=-1)  # per head: [q_h, k_h, v_h]
    expected = _reference_attention(q, k, v, H) @ state["attn.c_proj.weight"].T + state["attn.c_proj.bias"]
    attn = SelfAttention(W, H, qkv_bias=True)
    attn.load_state_dict(
        {
            "qkv.weight": qkv_rows(state["attn.c_qkv.weight"], H, 3),
            "qkv.bias": qkv_rows(state["attn.c_qkv.bias"], H, 3),
            "proj.weight": state["attn.c_proj.weight"],
            "proj.bias": state["attn.c_proj.bias"],
        }
    )
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-4)
    naive = SelfAttention(W, H, qkv_bias=True)  # loading the rows as they are gives another function
    naive.load_state_dict(
        {
            "qkv.weight": state["attn.c_qkv.weight"],
            "qkv.bias": state["attn.c_qkv.bias"],
            "proj.weight": state["attn.c_proj.weight"],
            "proj.bias": state["attn.c_proj.bias"],
        }
    )
    assert (naive(x) - expected).abs().max() > 1e-2


def test_cross_attention_kv_rows_follow_the_reference_layout():
    torch.manual_seed(0)
    state = ref_cross_block("", qkv_bias=False)
    x, data = torch.randn(2, 5, W), torch.randn(2, 9, W)
    q = (x @ state["attn.c_q.weight"].T).view(2, 5, H, W // H)
    k, v = (data @ state["attn.c_kv.weight"].T).view(2, 9, H, 2 * (W // H)).split(W // H, dim=-1)
    expected = _reference_attention(q, k, v, H) @ state["attn.c_proj.weight"].T + state["attn.c_proj.bias"]
    attn = CrossAttention(W, H, qkv_bias=False)
    attn.load_state_dict(
        {
            "q.weight": state["attn.c_q.weight"],
            "kv.weight": qkv_rows(state["attn.c_kv.weight"], H, 2),
            "proj.weight": state["attn.c_proj.weight"],
            "proj.bias": state["attn.c_proj.bias"],
        }
    )
    torch.testing.assert_close(attn(x, data), expected, atol=1e-5, rtol=1e-4)


def test_skip_merge_takes_the_skip_first_as_the_reference():
    torch.manual_seed(0)
    ref = _linear(W, 2 * W, True, "")
    x, skip = torch.randn(3, W), torch.randn(3, W)
    expected = torch.cat([skip, x], -1) @ ref["weight"].T + ref["bias"]  # reference: cat([enc_outputs.pop(), x])
    ours = torch.cat([x, skip], -1) @ swap_halves(ref["weight"]).T + ref["bias"]
    torch.testing.assert_close(ours, expected)


def test_layout_maps_round_trip():
    w = torch.randn(3 * W, W)
    torch.testing.assert_close(qkv_rows_back(qkv_rows(w, H, 3), H, 3), w)
    torch.testing.assert_close(qkv_rows(qkv_rows_back(w, H, 3), H, 3), w)
    kv = torch.randn(2 * W)
    torch.testing.assert_close(qkv_rows_back(qkv_rows(kv, H, 2), H, 2), kv)
    torch.testing.assert_close(swap_halves(swap_halves(w.T)), w.T)


def test_sin_cos_time_embedding_and_gelu_mlp_are_the_references():
    t = torch.tensor([0, 1, 17, 999])
    ref = Timesteps(W, flip_sin_to_cos=False, downscale_freq_shift=0)(t)  # what the reference embeds with
    torch.testing.assert_close(timestep_embedding(t, W, order="sin_cos"), ref, atol=1e-5, rtol=1e-5)
    den = build_denoiser(
        DenoiserConfig(
            latent_dim=C,
            num_latents=L,
            context_dim=CTX,
            width=W,
            heads=H,
            encoder_layers=1,
            time_embedding="sin_cos",
            time_activation="gelu",
        )
    )
    assert isinstance(den.time_embed.mlp[1], torch.nn.GELU)


def test_canonical_cameras_in_the_references_frame():
    torch.testing.assert_close(opengl_unit(torch.from_numpy(canonical_c2w())), REFERENCE_CAMERAS, atol=1e-6, rtol=0)


def test_null_condition_is_plain_clip_on_zero_images(tmp_path):
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(**CLIP)).save_pretrained(tmp_path)
    enc = MultiViewImageEncoder(
        ConditionerConfig(pretrained=str(tmp_path), num_views=2, null_condition="clip_zero_images")
    )
    with torch.no_grad():
        for n, p in enc.named_parameters():
            if ".modulation." in n:
                p.normal_(std=0.5)  # a trained modulation must not change the null
    plain = CLIPVisionModel.from_pretrained(tmp_path)
    expected = plain(pixel_values=((torch.zeros(2, 3, 32, 32) - enc.mean) / enc.std)).last_hidden_state.reshape(
        1, 34, CTX
    )
    torch.testing.assert_close(enc.null(3), expected.expand(3, -1, -1), atol=1e-5, rtol=1e-4)


def test_ddim_can_keep_the_references_final_alpha():
    s = make_scheduler(DiffusionConfig(set_alpha_to_one=False, steps_offset=1), "ddim")
    assert s.config.set_alpha_to_one is False and s.config.steps_offset == 1
    assert float(s.final_alpha_cumprod) == pytest.approx(float(s.alphas_cumprod[0]))


# ----------------------------------------------------------------------------------------------
# craft convert, end to end
# ----------------------------------------------------------------------------------------------
def reference_config(kind: str) -> dict:
    shape = {
        "num_latents": L,
        "embed_dim": C,
        "point_feats": 3,
        "out_dim": 1,
        "num_freqs": F,
        "include_pi": False,
        "heads": H,
        "width": W,
        "num_encoder_layers": 1,
        "num_decoder_layers": 2,
        "use_ln_post": True,
        "qkv_bias": False,
        "use_downsample": False,
    }
    if kind == "vae":
        return {
            "system_type": "shape-autoencoder-system",
            "system": {"shape_model_type": "michelangelo-autoencoder", "shape_model": shape},
        }
    return {
        "system_type": "shape-diffusion-system",
        "system": {
            "z_scale_factor": 1.0,
            "guidance_scale": 7.5,
            "num_inference_steps": 50,
            "shape_model_type": "michelangelo-autoencoder",
            "shape_model": shape,
            "condition_model": {
                "pretrained_model_name_or_path": "",
                "encode_camera": True,
                "camera_embeds_dim": 32,
                "n_views": 4,
                "empty_embeds_ratio": 0.1,
                "normalize_embeds": False,
                "zero_uncond_embeds": False,
            },
            "denoiser_model": {
                "input_channels": C,
                "output_channels": C,
                "n_ctx": L,
                "width": W,
                "layers": 1,
                "heads": H,
                "context_dim": CTX,
                "skip_ln": True,
            },
            "noise_scheduler": {
                "num_train_timesteps": 1000,
                "beta_start": 0.00085,
                "beta_end": 0.012,
                "beta_schedule": "scaled_linear",
                "variance_type": "fixed_small",
                "clip_sample": False,
            },
            "denoise_scheduler": {
                "num_train_timesteps": 1000,
                "beta_start": 0.00085,
                "beta_end": 0.012,
                "beta_schedule": "scaled_linear",
                "clip_sample": False,
                "set_alpha_to_one": False,
                "steps_offset": 1,
            },
        },
    }


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A released diffusion model as the reference ships it: Lightning model.ckpt (with the
    hyper-parameters and loop state Lightning pickles beside the weights), config.yaml, clip_config.json."""
    from omegaconf import OmegaConf

    root = tmp_path_factory.mktemp("released")
    state = {**ref_vae(), **ref_denoiser(), **ref_condition()}
    torch.save(
        {
            "state_dict": state,
            "epoch": 3,
            "global_step": 12000,
            "pytorch-lightning_version": "2.1.0",
            "hyper_parameters": OmegaConf.create({"lr": 5e-5}),
        },
        root / "model.ckpt",
    )
    (root / "config.yaml").write_text(yaml.safe_dump(reference_config("diffusion")))
    (root / "clip_config.json").write_text(json.dumps({"vision_config": CLIP}))
    return root


@pytest.mark.slow
def test_craft_convert_then_generate_and_fine_tune(released, tmp_path, tiny_shards):
    out = tmp_path / "converted"
    craft("convert", f"checkpoint={released / 'model.ckpt'}", f"output_dir={out}")
    report = json.loads((out / "conversion.json").read_text())
    assert set(report["written"]) == {"vae", "diffusion"} and "condition.cameras" in report["ignored"]
    meta = json.loads((out / "diffusion" / "checkpoints" / "step-0000000" / "meta.json").read_text())
    model = meta["config"]["model"]
    assert (
        model["denoiser"]["time_embedding"] == "sin_cos"
        and model["conditioner"]["null_condition"] == "clip_zero_images"
    )
    assert (
        model["conditioner"]["camera_convention"] == "opengl_unit" and model["diffusion"]["set_alpha_to_one"] is False
    )
    views = tmp_path / "views"
    views.mkdir()
    from PIL import Image

    for name in ("front", "right", "back", "left"):
        Image.new("RGBA", (48, 48), (200, 100, 50, 255)).save(views / f"{name}.png")
    craft(
        "generate",
        f"checkpoint={out / 'diffusion'}",
        f"images=[{views}]",
        f"output_dir={tmp_path / 'mesh'}",
        "steps=2",
        "depth=5",
    )
    assert (tmp_path / "mesh" / "mesh.glb").exists()
    # the folder holds a conversion: a second one is refused before anything is written, or replaces it whole
    again = craft("convert", f"checkpoint={released / 'model.ckpt'}", f"output_dir={out}", check=False)
    assert again.returncode == 2 and "holds another conversion (vae, diffusion, conversion.json)" in again.stderr
    (out / "diffusion" / "stale").write_text("from the old conversion")
    craft("convert", f"checkpoint={released / 'model.ckpt'}", f"output_dir={out}", "replace=true")
    assert not (out / "diffusion" / "stale").exists() and json.loads((out / "conversion.json").read_text())["written"]
    tune = craft(
        "train",
        "experiment=vae_tiny",
        f"data.train_shards={shard_glob(tiny_shards)}",
        f"run_dir={tmp_path / 'ft'}",
        f"init_from={out / 'vae'}",
        "trainer.max_steps=2",
        "logger=none",
        "data.batch_size=2",
        "model.vae.checkpointing=true",
    )  # the weights' model, plus this command's model overrides
    assert "initialised from" in tune.stdout and "step 2/2" in tune.stdout
    tuned = yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())["model"]["vae"]
    assert tuned["width"] == W and tuned["include_pi"] is False and tuned["checkpointing"] is True


def test_convert_refuses_to_unpickle_anything_else(released, tmp_path):
    marker = tmp_path / "PAYLOAD-RAN"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    bad = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"shape_model.pre_kl.weight": torch.zeros(1)}, "callbacks": Evil()}, bad)
    (tmp_path / "config.yaml").write_text((released / "config.yaml").read_text())
    res = craft("convert", f"checkpoint={bad}", f"output_dir={tmp_path / 'out'}", check=False)
    assert res.returncode == 2 and "refusing to unpickle" in res.stderr and "system" in res.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_released_shapes_are_ours_at_full_size():
    """At full size the converted modules are the reference's parameter counts (184,522,113 VAE with
    qkv bias and FPS; 104,816,448 denoiser)."""
    with torch.device("meta"):
        vae = build_vae(ModelConfig())
        den = build_denoiser(DenoiserConfig(time_embedding="sin_cos", time_activation="gelu"))
    assert sum(p.numel() for p in vae.parameters()) == 184_522_113
    assert sum(p.numel() for p in den.parameters()) == 104_816_448


def test_convert_names_a_folder_and_a_legacy_file_in_its_own_words(released, tmp_path):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    (folder / "model.ckpt").write_bytes(b"")
    res = craft("convert", f"checkpoint={folder}", f"output_dir={tmp_path / 'out'}", check=False)
    assert res.returncode == 2 and "is a folder: give the checkpoint file itself (it holds model.ckpt)" in res.stderr
    legacy = tmp_path / "legacy.ckpt"  # a bare pickle (no torch zip container) holding a non-weight object
    legacy.write_bytes(pickle.dumps({"state_dict": {"shape_model.pre_kl.weight": complex(1, 2)}}))
    (tmp_path / "config.yaml").write_text((released / "config.yaml").read_text())
    res = craft("convert", f"checkpoint={legacy}", f"output_dir={tmp_path / 'out'}", check=False)
    assert res.returncode == 2 and "which craft convert never does" in res.stderr, res.stderr[-1000:]
    assert "weights_only` set to `False" not in res.stderr and not (tmp_path / "out").exists()
