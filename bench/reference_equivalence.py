"""Same function, not just same shapes: our converted modules against CraftsMan v1's own code.

Two sides, two Python environments (the reference wants transformers 4.x; none of its code is in
this repository, it is read from a checkout you give):

  1. reference side (an environment with the reference's dependencies):
       python bench/reference_equivalence.py reference --repo CRAFTSMAN_CHECKOUT --out DIR [--small]
     builds the reference's VAE, CLIP+ModLN conditioner and denoiser from its classes with random
     weights (ModLN made non-zero), saves them as a Lightning-style model.ckpt + config.yaml +
     clip_config.json, and records their outputs on fixed inputs: posterior mean, decoded tokens,
     occupancy logits, condition tokens for 4 views + cameras, the empty (null) embeds, one
     denoiser output, and 50 DDIM steps with CFG from a seeded noise.
  2. our side (this project's environment):
       python bench/reference_equivalence.py ours --out DIR
     runs `craft convert` on it, loads the result as `craft generate` / `craft evaluate` do, feeds
     the same inputs and prints the largest absolute differences (fp32, CPU).

The reference starts farthest point sampling at a random point (torch_cluster's default); here its
`fps` is given a start at index 0, as ours at evaluation, so both pick the same points.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SEED = 0


VAE_VARIANTS = {  # system.shape_model differences: qkv_bias, use_downsample (FPS queries), model type
    "released": (False, True, "michelangelo-autoencoder"),
    "autoencoder": (True, True, "michelangelo-autoencoder"),  # configs/shape-autoencoder/l256-e64-ne8-nd16.yaml
    "learned": (False, False, "michelangelo-autoencoder"),
    "aligned": (False, True, "michelangelo-aligned-autoencoder"),
}


def _configs(small: bool, vae: str = "released") -> tuple[dict, dict]:
    """(reference config.yaml as a dict, CLIP config): CraftsMan's released settings, or small ones."""
    width, heads, enc, dec, layers = (64, 4, 1, 2, 1) if small else (768, 12, 8, 16, 6)
    vision = (
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            patch_size=14,
            image_size=224,
        )
        if small
        else dict(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            patch_size=14,
            image_size=224,
        )
    )
    shape = {
        "num_latents": 256,
        "embed_dim": 64,
        "point_feats": 3,
        "out_dim": 1,
        "num_freqs": 8,
        "include_pi": False,
        "heads": heads,
        "width": width,
        "num_encoder_layers": enc,
        "num_decoder_layers": dec,
        "use_ln_post": True,
        "init_scale": 0.25,
        "qkv_bias": VAE_VARIANTS[vae][0],
        "use_flash": False,
        "use_checkpoint": False,
        "use_downsample": VAE_VARIANTS[vae][1],
    }
    sched = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
    }
    config = {
        "system_type": "shape-diffusion-system",
        "system": {
            "z_scale_factor": 1.0,
            "guidance_scale": 7.5,
            "num_inference_steps": 50,
            "snr_gamma": 5.0,
            "shape_model_type": VAE_VARIANTS[vae][2],
            "shape_model": shape,
            "condition_model_type": "clip-embedder",
            "condition_model": {
                "pretrained_model_name_or_path": "",
                "encode_camera": True,
                "camera_embeds_dim": 32,
                "n_views": 4,
                "empty_embeds_ratio": 0.1,
                "normalize_embeds": False,
                "zero_uncond_embeds": False,
            },
            "denoiser_model_type": "simple-denoiser",
            "denoiser_model": {
                "input_channels": 64,
                "output_channels": 64,
                "n_ctx": 256,
                "width": width,
                "layers": layers,
                "heads": heads,
                "context_dim": vision["hidden_size"],
                "init_scale": 1.0,
                "skip_ln": True,
                "use_checkpoint": False,
            },
            "noise_scheduler_type": "diffusers.schedulers.DDPMScheduler",
            "noise_scheduler": {**sched, "variance_type": "fixed_small"},
            "denoise_scheduler_type": "diffusers.schedulers.DDIMScheduler",
            "denoise_scheduler": {**sched, "set_alpha_to_one": False, "steps_offset": 1},
        },
    }
    return config, {"vision_config": vision}


def _inputs(context_dim: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    xyz = torch.rand(1, 4096, 3, generator=g) * 1.8 - 0.9
    normals = torch.nn.functional.normalize(torch.randn(1, 4096, 3, generator=g), dim=-1)
    return {
        "surface": torch.cat([xyz, normals], -1),
        "queries": torch.rand(1, 2048, 3, generator=g) * 2.1 - 1.05,
        "images": torch.rand(1, 4, 224, 224, 3, generator=g),
        "noisy": torch.randn(2, 256, 64, generator=g),
        "t": torch.tensor([17, 602]),
        "context": torch.randn(2, 4 * 257, context_dim, generator=g),
    }


# ----------------------------------------------------------------------------------------------
# The reference side
# ----------------------------------------------------------------------------------------------
def _fps_from_zero(pos: torch.Tensor, batch: torch.Tensor, ratio: float) -> torch.Tensor:
    """torch_cluster.fps's contract (flat points, batch vector, ratio -> flat indices) starting at each
    cloud's first point, the greedy farthest-point order."""
    out = []
    for b in batch.unique():
        idx = (batch == b).nonzero().flatten()
        pts = pos[idx]
        k = int(round(ratio * len(idx)))  # torch_cluster: ceil(ratio * n); exact here (256 / 4096)
        chosen = torch.zeros(k, dtype=torch.long)
        dist = torch.full((len(idx),), float("inf"))
        current = 0
        for i in range(k):
            chosen[i] = current
            dist = torch.minimum(dist, ((pts - pts[current]) ** 2).sum(-1))
            current = int(dist.argmax())
        out.append(idx[chosen])
    return torch.cat(out)


def _torchvision_stand_in() -> None:
    """The three torchvision transforms the reference's CLIP embedder applies to 224 px tensors."""
    import torch.nn.functional as F

    class Compose:
        def __init__(self, ts):
            self.ts = ts

        def __call__(self, x):
            for t in self.ts:
                x = t(x)
            return x

    class Resize:
        def __init__(self, size, *args, **kwargs):
            self.size = size

        def __call__(self, x):
            if min(x.shape[-2:]) == self.size:
                return x
            raise NotImplementedError("only 224 px inputs are compared")

    class CenterCrop(Resize):
        def __call__(self, x):
            assert tuple(x.shape[-2:]) == (self.size, self.size)
            return x

    class Normalize:
        def __init__(self, mean, std):
            self.mean, self.std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)

        def __call__(self, x):
            return (x - self.mean) / self.std

    import importlib.machinery

    tv = types.ModuleType("torchvision")
    tv.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    tr = types.ModuleType("torchvision.transforms")
    tr.Compose, tr.Resize, tr.CenterCrop, tr.Normalize = Compose, Resize, CenterCrop, Normalize
    tr.InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic")
    trt = types.ModuleType("torchvision.transforms.transforms")
    trt._interpolation_modes_from_int = lambda i: i
    tv.transforms, tr.transforms = tr, trt
    sys.modules.update({"torchvision": tv, "torchvision.transforms": tr, "torchvision.transforms.transforms": trt})
    del F


def reference_side(repo: Path, out: Path, small: bool, vae: str) -> None:
    import yaml
    from safetensors.torch import save_file

    # a stand-in for craftsman/__init__.py (it imports Lightning and every system): the registry only
    pkg = types.ModuleType("craftsman")
    pkg.__path__ = [str(repo / "craftsman")]
    registry: dict = {}
    pkg.register = lambda name: lambda cls: registry.setdefault(name, cls)
    pkg.find = lambda name: registry[name]
    sys.modules["craftsman"] = pkg
    sys.modules["torch_cluster"] = types.SimpleNamespace(fps=_fps_from_zero)
    from diffusers import DDIMScheduler  # before the stand-in: diffusers probes for the real torchvision

    _torchvision_stand_in()

    import dataclasses

    import craftsman.models  # noqa: F401  (registers the three model families)

    systems = types.ModuleType("craftsman.systems")  # its __init__ imports Lightning: only ddim_sample is needed
    systems.__path__ = [str(repo / "craftsman" / "systems")]
    base = types.ModuleType("craftsman.systems.base")
    base.BaseSystem = type("BaseSystem", (), {"Config": dataclasses.make_dataclass("Config", [])})
    sys.modules.update({"craftsman.systems": systems, "craftsman.systems.base": base})
    from craftsman.systems.shape_diffusion import ddim_sample

    out.mkdir(parents=True, exist_ok=True)
    config, clip_config = _configs(small, vae)
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    (out / "clip_config.json").write_text(json.dumps(clip_config))
    system = config["system"]
    torch.manual_seed(SEED)
    shape = registry[system["shape_model_type"]](system["shape_model"]).eval()
    cond_cfg = {**system["condition_model"], "config_path": str(out / "clip_config.json")}
    condition = registry["clip-embedder"](cond_cfg).eval()
    with torch.no_grad():  # ModLN is zero at initialisation: make it matter
        for name, p in condition.named_parameters():
            if "mod_norm" in name:
                p.normal_(std=0.02)
    denoiser = registry["simple-denoiser"](system["denoiser_model"]).eval()
    x = _inputs(clip_config["vision_config"]["hidden_size"])
    results = {}
    with torch.no_grad():
        _, mean, _ = shape.encode(x["surface"], sample_posterior=False)
        tokens = shape.decode(mean)
        results.update(posterior_mean=mean, tokens=tokens, logits=shape.query(x["queries"], tokens))
        cams = condition.cameras[:4]
        results["condition"] = condition.encode_image(x["images"][0], cameras=cams)  # (4, 257, hidden)
        results["empty"] = condition.empty_image_embeds
        results["denoiser"] = denoiser(x["noisy"], x["t"], x["context"])
        cond = results["condition"].reshape(1, -1, results["condition"].shape[-1])
        uncond = results["empty"].reshape(1, -1, cond.shape[-1])
        ddim = DDIMScheduler(**system["denoise_scheduler"])
        for latents, _ in ddim_sample(
            ddim,
            denoiser,
            (256, 64),
            torch.cat([uncond, cond]),
            50,
            guidance_scale=7.5,
            generator=torch.Generator().manual_seed(SEED),
            device="cpu",
        ):
            pass
        results["sampled"] = latents
    state = {f"shape_model.{k}": v for k, v in shape.state_dict().items()}
    state.update({f"condition.{k}": v for k, v in condition.state_dict().items()})
    state.update({f"denoiser_model.{k}": v for k, v in denoiser.state_dict().items()})
    torch.save({"state_dict": state, "epoch": 0, "global_step": 0}, out / "model.ckpt")
    save_file({k: v.contiguous() for k, v in {**x, **results}.items()}, str(out / "reference.safetensors"))
    print(f"reference outputs and checkpoint in {out}")


# ----------------------------------------------------------------------------------------------
# Our side
# ----------------------------------------------------------------------------------------------
def our_side(out: Path) -> dict:
    import subprocess

    from safetensors.torch import load_file

    from craftsman_platform.inference.pipeline import Generator

    converted = out / "converted"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "craftsman_platform.cli",
            "convert",
            f"checkpoint={out / 'model.ckpt'}",
            f"output_dir={converted}",
        ],
        cwd=ROOT,
        check=True,
    )
    ref = load_file(str(out / "reference.safetensors"))
    gen = Generator.load(converted / "diffusion", device="cpu")
    vae, model = gen.vae, gen.model
    diffs = {}
    with torch.no_grad():
        mean = vae.posterior(ref["surface"]).mean
        tokens = vae.decode(mean)
        diffs["posterior mean"] = (mean - ref["posterior_mean"]).abs().max()
        diffs["decoded tokens"] = (tokens - ref["tokens"]).abs().max()
        diffs["occupancy logits"] = (vae.query(tokens, ref["queries"]) - ref["logits"]).abs().max()
        from craftsman_platform.models.conditioners import opengl_unit  # noqa: F401  (the conversion in the conditioner)
        from craftsman_platform.shapedata.cameras import canonical_c2w

        images = ref["images"].permute(0, 1, 4, 2, 3)  # (1, 4, 3, 224, 224) floats in [0, 1]
        c2w = torch.from_numpy(canonical_c2w())[None]
        ctx = model.conditioner(images, c2w)
        diffs["condition tokens"] = (ctx - ref["condition"].reshape(1, -1, ctx.shape[-1])).abs().max()
        null = model.conditioner.null(1)
        diffs["null (empty) embeds"] = (null - ref["empty"].reshape(1, -1, ctx.shape[-1])).abs().max()
        diffs["denoiser output"] = (
            (model.denoiser(ref["noisy"], ref["t"], ref["context"]) - ref["denoiser"]).abs().max()
        )
        sampled = model.sample_from_context(
            ref["condition"].reshape(1, -1, ctx.shape[-1]),
            256,
            64,
            steps=50,
            guidance_scale=7.5,
            generator=torch.Generator().manual_seed(SEED),
        )
        diffs["sampler, 50 DDIM steps with CFG"] = (sampled * model.latent_scale - ref["sampled"]).abs().max()
    for name, value in diffs.items():
        limit = 1e-3 if name.startswith("sampler") else 1e-4
        print(
            f"{name:<36} max |ours - reference| = {float(value):.2e}  ({'ok' if value <= limit else 'OVER'} {limit:g})"
        )
    return {k: float(v) for k, v in diffs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("side", choices=("reference", "ours"))
    ap.add_argument("--repo", type=Path, help="a CraftsMan checkout at commit 2fc35ee (reference side)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--small", action="store_true", help="small widths (minutes less on a CPU)")
    ap.add_argument("--vae", choices=sorted(VAE_VARIANTS), default="released", help="the VAE variant (reference side)")
    args = ap.parse_args()
    if args.side == "reference":
        if not args.repo:
            raise SystemExit("--repo CRAFTSMAN_CHECKOUT is required on the reference side")
        reference_side(args.repo, args.out, args.small, args.vae)
    else:
        our_side(args.out)


if __name__ == "__main__":
    main()
