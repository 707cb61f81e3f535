"""Seconds per generated mesh, stage by stage, and octree against the reference's dense extraction.

1. Tiny configs (a trained `diffusion_tiny` checkpoint): `craft generate`'s path for a few step
   counts and octree depths (model load reported apart).
2. Full configs (random weights; CLIP ViT-L/14 architecture) on each device present (the CPU, and
   CUDA in bf16): conditioning 4 views, 50 DDIM steps with CFG, then decode + extraction at depth 7
   and 8, octree beside the reference's dense grid in the same run. A random decoder has no surface,
   so the field is a real shape's (a sphere and a torus in one object) computed beside the full
   decoder's own forward on every query point: the octree's real query count at the decoder's real
   cost. On the CPU, the full table projects the sampling loop from one step (it takes minutes).

    python bench/inference.py [--checkpoint RUN_DIR]   (default: outputs/demo/runs/diffusion)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from craftsman_platform.inference.pipeline import Generator
from craftsman_platform.inference.runtime import StageTimer, autocast, query_chunk
from craftsman_platform.models.build import ModelConfig, build_diffusion, build_vae
from craftsman_platform.models.conditioners import ConditionerConfig
from craftsman_platform.models.extraction import extract_meshes
from craftsman_platform.shapedata.cameras import canonical_c2w

ROOT = Path(__file__).resolve().parents[1]


def tiny_table(checkpoint: str, device: torch.device) -> None:
    start = time.perf_counter()
    gen = Generator.load(checkpoint, device=device)
    load_s = time.perf_counter() - start
    images = torch.randint(0, 256, (1, 4, 3, gen.image_size, gen.image_size), dtype=torch.uint8)
    c2w = torch.from_numpy(canonical_c2w())[None]
    print(f"## tiny configs on {device} ({checkpoint}, step {gen.step}; model load {load_s:.2f} s apart)")
    print(
        "| steps | depth | condition s | sampling s | decode + extraction s | queries | total s |\n"
        "|---|---|---|---|---|---|---|"
    )
    for steps, depth in ((20, 7), (50, 7), (50, 8)):
        timer = StageTimer(device)
        with timer("condition"):
            context = gen.condition(images, c2w)
        with timer("sampling"):
            latents = gen.sample(context, steps, seed=0)
        with timer("extract"):
            ((_, stats),) = gen.meshes(latents, depth)
        t = timer.seconds
        print(
            f"| {steps} | {depth} | {t['condition']:.2f} | {t['sampling']:.2f} | {t['extract']:.2f} | "
            f"{stats.queries:,} | "
            f"{sum(t.values()):.2f} |"
        )


def shape_field(vae, tokens: torch.Tensor):
    """A sphere and a torus (> 0 inside), plus the decoder's real forward on every point (its result
    weighted by 0, so it cannot be skipped and does not move the surface)."""

    def field(xyz: torch.Tensor) -> torch.Tensor:
        sphere = 0.45 - (xyz - xyz.new_tensor([0.0, 0.0, 0.35])).norm(dim=-1)
        ring = torch.stack([xyz[..., :2].norm(dim=-1) - 0.55, xyz[..., 2] + 0.3], dim=-1).norm(dim=-1)
        shape = torch.maximum(sphere, 0.18 - ring)
        return shape + 0.0 * vae.inside_field(tokens.expand(len(xyz), -1, -1), xyz).float()

    return field


@torch.no_grad()
def full_table(device: torch.device, sampling_steps: int = 50) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(kind="diffusion", conditioner=ConditionerConfig(pretrained=None))
    model = build_diffusion(cfg, load_weights=False).to(device).eval()
    vae = build_vae(cfg).to(device).eval()
    images = torch.randint(0, 256, (1, 4, 3, 224, 224), dtype=torch.uint8, device=device)
    c2w = torch.from_numpy(canonical_c2w())[None].to(device)
    cuda = device.type == "cuda"
    steps_run = sampling_steps if cuda else 1  # the CPU runs one step and projects
    timer = StageTimer(device)
    with autocast(device):
        model.encode_condition({"images": images, "c2w": c2w})  # warm-up
        with timer("condition"):
            context = model.encode_condition({"images": images, "c2w": c2w})
        with timer("sampling"):
            latents = model.sample_from_context(
                context, 256, 64, steps=steps_run, guidance_scale=3.0, generator=torch.Generator(device).manual_seed(0)
            )
        with timer("decode"):
            tokens = vae.decode(latents)
    sampling = timer.seconds["sampling"] * sampling_steps / steps_run
    print(
        f"\n## full configs on {torch.cuda.get_device_name(device) if cuda else 'CPU'} "
        f"({'bf16' if cuda else 'fp32'}, random weights)"
    )
    print(
        f"condition (CLIP ViT-L/14 + ModLN, 4 views): {timer.seconds['condition']:.2f} s; "
        f"{sampling_steps} DDIM steps with CFG: {sampling:.2f} s{'' if cuda else ' (projected from 1 step)'}; "
        f"VAE decode: {timer.seconds['decode']:.3f} s"
    )
    print("| depth | method | queries | decode + extraction s | seconds per mesh |\n|---|---|---|---|---|")
    for depth in (7, 8):
        for method in ("octree", "dense"):
            if method == "dense" and not cuda and depth == 8:
                continue  # ~17M full-width decoder queries: half an hour on 2 cores
            start = time.perf_counter()
            with autocast(device):
                ((_, stats),) = extract_meshes(
                    shape_field(vae, tokens), 1, depth, method, chunk=query_chunk(device), device=device
                )
            extract = time.perf_counter() - start
            total = timer.seconds["condition"] + sampling + timer.seconds["decode"] + extract
            print(f"| {depth} | {method} | {stats.queries:,} | {extract:.2f} | {total:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "outputs" / "demo" / "runs" / "diffusion"))
    ap.add_argument("--skip-full", action="store_true")
    args = ap.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for device in devices:
        if Path(args.checkpoint).exists():
            tiny_table(args.checkpoint, device)
        else:
            print(f"(no checkpoint at {args.checkpoint}: run `make demo` first for the tiny table)")
        if not args.skip_full:
            full_table(device)


if __name__ == "__main__":
    main()
