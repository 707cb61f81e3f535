"""Seconds per generated mesh, split into sampling, decode and extraction.

1. Tiny configs (a trained `diffusion_tiny` checkpoint): `craft generate`'s path end to end for a few
   step counts and octree depths.
2. Full configs on this machine (random weights; CLIP ViT-L/14 architecture): the condition encoder,
   one denoiser evaluation with CFG (batch 2), the VAE decode and octree extraction at depth 8,
   projected to 50 DDIM steps. On a GPU the same measurement runs in bf16.

    python bench/inference.py [--checkpoint RUN_DIR]   (default: outputs/demo/runs/diffusion)
"""
from __future__ import annotations

import sys
from pathlib import Path

# run as `python bench/X.py`, this folder comes first on sys.path and this file's name would shadow
# the package of the same name: look in the repository instead
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import time

import torch

from inference.pipeline import Generator, canonical_c2w
from models.build import ModelConfig, build_diffusion, build_vae
from models.conditioners import ConditionerConfig
from bench.shapes import duck_field
from models.extraction import octree_grid

ROOT = Path(__file__).resolve().parents[1]


def tiny_table(checkpoint: str) -> None:
    gen = Generator.load(checkpoint)
    size = gen.cfg.data.image_size
    images = torch.rand(1, 4, 3, size, size)
    c2w = torch.from_numpy(canonical_c2w())[None]
    print(f"## tiny configs on CPU ({checkpoint}, step {gen.step})")
    print(f"{'steps':>6}{'depth':>7}{'sample s':>10}{'decode s':>10}{'extract s':>11}{'queries':>11}{'total s':>9}")
    for steps, depth in ((20, 7), (50, 7), (50, 8)):
        start = time.perf_counter()
        latents = gen.latents(images, c2w, steps=steps, seed=0)
        sample_s = time.perf_counter() - start
        _, stats = gen.mesh(latents, depth)
        total = time.perf_counter() - start
        print(f"{steps:>6}{depth:>7}{sample_s:>10.2f}{stats['decode_s']:>10.3f}{stats['extract_s']:>11.2f}"
              f"{stats['queries']:>11,}{total:>9.2f}")


@torch.no_grad()
def full_table(device: torch.device, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(kind="diffusion", conditioner=ConditionerConfig(pretrained=None))
    model = build_diffusion(cfg, load_weights=False).to(device).eval()
    vae = build_vae(cfg).to(device).eval()
    images = torch.rand(1, 4, 3, 224, 224, device=device)
    c2w = torch.from_numpy(canonical_c2w())[None].to(device)
    auto = dict(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32)

    def timed(fn):
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    with torch.autocast(**auto):
        ctx, t_cond = timed(lambda: model.encode_condition({"images": images, "c2w": c2w}))
        ctx2 = torch.cat([ctx, model.conditioner.null(1).to(ctx)])
        x = torch.randn(2, 256, 64, device=device)
        _, t_step = timed(lambda: model.denoiser(x, torch.tensor([500, 500], device=device), ctx2))
        tokens, t_dec = timed(lambda: vae.decode(torch.randn(1, 256, 64, device=device)))
        xyz = torch.rand(1, 65536, 3, device=device) * 2 - 1
        _, t_q = timed(lambda: vae.query(tokens, xyz))
    # a random-weight decoder has no surface worth refining: take the octree's query count on a real
    # shape (pybullet's duck, exact sdf; see bench/models.py) and the full decoder's measured rate
    _, stats = octree_grid(duck_field(), 8, coarse_depth=5)
    t_ext = stats.queries / (xyz.shape[1] / t_q)
    print(f"\n## full configs ({device.type}, {str(dtype).split('.')[-1]}, random weights)")
    print(f"condition encoder (CLIP ViT-L/14 + ModLN, 4 views): {t_cond:.2f} s")
    print(f"denoiser, one step with CFG (batch 2):            {t_step:.2f} s  -> 50 DDIM steps {50 * t_step:.1f} s")
    print(f"VAE decode (16 blocks):                           {t_dec:.2f} s")
    print(f"octree extraction at depth 8: {stats.queries:,} queries (duck) at {xyz.shape[1] / t_q:,.0f} queries/s: {t_ext:.1f} s")
    print(f"projected seconds per mesh (50 steps, depth 8): {t_cond + 50 * t_step + t_dec + t_ext:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "outputs" / "demo" / "runs" / "diffusion"))
    ap.add_argument("--skip-full", action="store_true")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if Path(args.checkpoint).exists():
        tiny_table(args.checkpoint)
    else:
        print(f"(no checkpoint at {args.checkpoint}: run `make demo` first for the tiny table)")
    if not args.skip_full:
        full_table(torch.device("cpu"), torch.float32)
        if torch.cuda.is_available():
            full_table(torch.device("cuda"), torch.bfloat16)


if __name__ == "__main__":
    main()
