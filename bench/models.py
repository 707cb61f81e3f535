"""Model speed, side by side in one run.

1. Forward + backward per training step of the full-width shape VAE (184.5M) and denoiser (104.8M),
   with fused SDPA attention versus the reference's einsum attention.
2. Mesh extraction: octree versus the reference's dense (2^d + 1)^3 grid, on a real shape (pybullet's
   duck, made watertight; its exact signed distance as the field): queries, seconds, IoU; and the
   decoder cost of both at full width, projected from measured decoder queries per second.
3. On a GPU (when one is present): samples/s and model FLOPs utilisation in bf16.

    python bench/models.py [--batch 2] [--steps 3] [--depth 8]
"""

from __future__ import annotations

import argparse
import time

import torch
from shapes import duck_field

from craftsman_platform.models.build import ModelConfig, build_vae
from craftsman_platform.models.denoiser import DenoiserConfig, build_denoiser
from craftsman_platform.models.extraction import dense_grid, grid_iou, octree_grid
from craftsman_platform.models.transformer import set_attention_backend


def timed_steps(step, steps: int) -> float:
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def vae_step(vae, batch: int, device, dtype):
    surface = torch.randn(batch, vae.cfg.num_inputs, 6, device=device)
    queries = torch.rand(batch, 2048, 3, device=device) * 2 - 1

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out, kl = vae(surface, queries)
            loss = out.float().square().mean() + kl.mean()
        loss.backward()
        vae.zero_grad(set_to_none=True)

    return step


def denoiser_step(den, batch: int, device, dtype, context_tokens: int = 4 * 257):
    x = torch.randn(batch, 256, 64, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    ctx = torch.randn(batch, context_tokens, 1024, device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = den(x, t, ctx).float().square().mean()
        loss.backward()
        den.zero_grad(set_to_none=True)

    return step


def attention_table(batch: int, steps: int, device, dtype) -> None:
    print(f"\n## forward + backward per step, batch {batch}, {device.type}, {str(dtype).split('.')[-1]}")
    print(f"{'model':<26}{'sdpa s/step':>12}{'einsum s/step':>15}{'speed-up':>10}")
    torch.manual_seed(0)
    models = {
        "shape VAE (184.5M)": (build_vae(ModelConfig()), vae_step),
        "denoiser (104.8M)": (build_denoiser(DenoiserConfig()), denoiser_step),
    }
    for name, (model, make_step) in models.items():
        model.to(device).train()
        times = {}
        for backend in ("sdpa", "einsum"):
            set_attention_backend(model, backend)
            times[backend] = timed_steps(make_step(model, batch, device, dtype), steps)
        print(f"{name:<26}{times['sdpa']:>12.3f}{times['einsum']:>15.3f}{times['einsum'] / times['sdpa']:>9.2f}x")
        del model


@torch.no_grad()
def decoder_queries_per_second(device) -> float:
    vae = build_vae(ModelConfig()).to(device).eval()
    tokens = torch.randn(1, 256, 768, device=device)
    xyz = torch.rand(1, 65536, 3, device=device)
    vae.query(tokens, xyz[:, :4096])
    start = time.perf_counter()
    vae.query(tokens, xyz)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return xyz.shape[1] / (time.perf_counter() - start)


def extraction_table(depth: int, device) -> None:
    field = duck_field()
    start = time.perf_counter()
    octree, so = octree_grid(field, depth, coarse_depth=5, chunk=262144)
    t_octree = time.perf_counter() - start
    start = time.perf_counter()
    dense, sd = dense_grid(field, depth, chunk=262144)
    t_dense = time.perf_counter() - start
    qps = decoder_queries_per_second(device)
    print(f"\n## extraction at depth {depth} ({sd.resolution}^3 grid), pybullet duck, exact sdf field")
    print(f"{'method':<10}{'queries':>12}{'field s':>10}{'full-width decoder s (projected)':>34}")
    print(f"{'dense':<10}{sd.queries:>12,}{t_dense:>10.2f}{sd.queries / qps:>34.1f}")
    print(f"{'octree':<10}{so.queries:>12,}{t_octree:>10.2f}{so.queries / qps:>34.1f}")
    print(
        f"query ratio {sd.queries / so.queries:.1f}x, grid IoU octree vs dense {grid_iou(octree, dense):.5f}, "
        f"full-width decoder {qps:,.0f} queries/s on {device.type}"
    )


def gpu_throughput(batch: int, steps: int) -> None:
    if not torch.cuda.is_available():
        print("\n(no GPU here: samples/s and MFU in bf16 need one; run this script on the lent device)")
        return
    device = torch.device("cuda")
    peak = float(__import__("os").environ.get("PEAK_BF16_TFLOPS", "989"))  # H100 SXM dense bf16
    print(f"\n## GPU bf16, batch {batch}: samples/s and MFU (6 x params x tokens approximation, peak {peak} TFLOPS)")
    for name, model, make_step, tokens in (
        ("shape VAE", build_vae(ModelConfig()), vae_step, 256 + 2048),
        ("denoiser", build_denoiser(DenoiserConfig()), denoiser_step, 1 + 4 * 257 + 256),
    ):
        model.to(device).train()
        step = make_step(model, batch, device, torch.bfloat16)
        torch.cuda.synchronize()
        seconds = timed_steps(lambda: (step(), torch.cuda.synchronize()), steps)
        params = sum(p.numel() for p in model.parameters())
        flops = 6 * params * tokens * batch
        print(f"{name:<12} {batch / seconds:8.1f} samples/s  MFU {flops / seconds / (peak * 1e12):.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--gpu-batch", type=int, default=32)
    args = ap.parse_args()
    device = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    attention_table(args.batch, args.steps, device, torch.float32)
    extraction_table(args.depth, device)
    gpu_throughput(args.gpu_batch, args.steps)


if __name__ == "__main__":
    main()
