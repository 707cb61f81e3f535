"""GPU speed: the bare model step beside the real `craft train` loop (same GPU, same batch), then
`craft generate` and `craft evaluate` with the checkpoints those runs wrote.

For the shape VAE (vae_craftsman) and the diffusion model (diffusion_craftsman: CLIP ViT-L/14 with
ModLN + the 104.8M denoiser, the frozen VAE's encode included in the real loop), eager and compiled:
- bare: forward + backward + torch AdamW under bf16 autocast on one real batch kept on the GPU;
- real: `craft train` in a subprocess (DeepSpeed ZeRO-1, EMA, the streamed shards, metrics);
each timed over `--steps` steps after `--warmup`. Reported: samples/s, ms/step, MFU (FLOPs counted
by torch.utils.flop_counter.FlopCounterMode on one bare step), peak memory, the EMA update's and
the data wait's share of the real step.

    python bench/gpu.py --make-shards DIR        # on a machine with the preprocessing dependencies
    python bench/gpu.py --shards 'DIR/shards/*.tar' [--batch 32] [--steps 50] [--warmup 10]

Without CUDA it prints one line and exits 0 (`--allow-cpu` runs the same procedure on the CPU with
the tiny experiments: a check of the script, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch.utils.flop_counter import FlopCounterMode

from craftsman_platform.models.build import build_diffusion, build_vae, compile_model
from craftsman_platform.models.shape_vae import vae_loss
from craftsman_platform.paths import CONF_DIR
from craftsman_platform.schemas import register
from craftsman_platform.shapedata.sample import expand_urls
from craftsman_platform.training.config import to_train_config
from craftsman_platform.training.data import SlotBatches
from craftsman_platform.training.engine import EMA

ROOT = Path(__file__).resolve().parents[1]

PEAK_TFLOPS = float(os.environ.get("PEAK_BF16_TFLOPS", "989"))  # H100 SXM dense bf16
BENCH_MESHES = [
    "duck.obj",
    "bunny.obj",
    "teddy2_VHACD_CHs.obj",
    "soccerball.obj",
    "textured_sphere_smooth.obj",
    *(f"random_urdfs/{i:03d}/{i:03d}.obj" for i in range(7)),
]


def make_bench_shards(out: Path) -> Path:
    """`craft preprocess` on 12 real pybullet meshes with reduced point counts and 8 views at 224 px
    (~1.5 MB per object, small enough to carry to a GPU machine); the loader subsamples as usual."""
    from craftsman_platform.corpora import pybullet_data_dir
    from craftsman_platform.geometry.config import SampleConfig
    from craftsman_platform.pipelines.preprocess.config import PreprocessConfig
    from craftsman_platform.pipelines.preprocess.job import preprocess

    out.mkdir(parents=True, exist_ok=True)
    listing = out / "meshes.txt"
    listing.write_text("\n".join(str(pybullet_data_dir() / m) for m in BENCH_MESHES) + "\n")
    cfg = PreprocessConfig(output_dir=str(out / "data"), shard_max_bytes=5_000_000)
    cfg.source.path = str(listing)
    cfg.geometry.sample = SampleConfig(surface=20_000, sharp_max=2_000, volume=20_000, near=10_000)
    cfg.render.resolution, cfg.render.extra_sets = 224, 1
    summary = preprocess(cfg)
    if summary["ok"] == 0:
        raise SystemExit(f"no object made it into the shards: {summary}")
    return out / "data" / "shards"


def train_config(experiment: str, overrides: list[str]):
    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return to_train_config(compose(config_name="train", overrides=[f"experiment={experiment}", *overrides]))


def synced(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, warmup: int, steps: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    synced(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synced(device)
    return (time.perf_counter() - start) / steps


# ----------------------------------------------------------------------------------------------
# The bare step (run in its own process: `--bare KIND`)
# ----------------------------------------------------------------------------------------------
def bare(args) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = train_config(args.experiment, args.overrides)
    kind = cfg.model.kind
    batch = next(SlotBatches(expand_urls(cfg.data.train_shards), cfg.data, kind, 0, 1, 1))
    b = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
    gen = torch.Generator(device).manual_seed(0)
    autocast = dict(device_type=device.type, dtype=torch.bfloat16)
    torch.manual_seed(0)
    if kind == "vae":
        model = build_vae(cfg.model).to(device).train()

        def loss_fn():
            return vae_loss(model, b["surface"], b["vol"], b["near"], cfg.model.vae_loss, gen)[0]
    else:
        vae = build_vae(cfg.model).to(device, torch.bfloat16).eval()
        with torch.no_grad():
            latents = vae.encode(b["surface"], generator=gen)
        del vae
        model = build_diffusion(cfg.model).to(device).train()
        cond = {"images": b["images"], "c2w": b["c2w"]}

        def loss_fn():
            return model(latents, cond, gen)[0]

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.trainer.lr, betas=tuple(cfg.trainer.betas), eps=cfg.trainer.eps)

    def step():
        with torch.autocast(**autocast):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:  # eager, before any compile: the model's FLOPs
        with torch.autocast(**autocast):
            loss = loss_fn()
        loss.backward()
    opt.zero_grad(set_to_none=True)
    if cfg.trainer.compile:
        compile_model(model, cfg.trainer.compile_backend)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = time_steps(step, args.warmup, args.steps, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    ema = EMA(model, 0.999)
    ema_s = time_steps(ema.update, 3, 20, device)
    return {
        "seconds": seconds,
        "flops": counter.get_total_flops(),
        "peak_gb": peak,
        "ema_s": ema_s,
        "batch": cfg.data.batch_size,
        "params_trainable": sum(p.numel() for p in params),
    }


# ----------------------------------------------------------------------------------------------
# The real loop: `craft train` as users run it
# ----------------------------------------------------------------------------------------------
def real(experiment: str, overrides: list[str], run_dir: Path, warmup: int, steps: int) -> dict:
    log_every = warmup  # the first line covers the warm-up (compile, loader start), the rest are timed
    if steps % log_every:
        raise SystemExit(f"--steps ({steps}) must be a multiple of --warmup ({warmup})")
    cmd = [
        sys.executable,
        "-m",
        "craftsman_platform.cli",
        "train",
        f"experiment={experiment}",
        *overrides,
        f"run_dir={run_dir}",
        f"trainer.max_steps={warmup + steps}",
        f"trainer.log_every={log_every}",
        "trainer.ckpt_every=1000000000",
        "logger=none",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"craft train failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r["step"] > warmup] or rows
    step_time = sum(r["step_time"] for r in timed) / len(timed)
    data_time = sum(r["data_time"] for r in timed) / len(timed)
    peak = rows[-1].get("mem_gpu_peak_gb", float("nan"))
    return {"seconds": step_time, "data_share": data_time / step_time, "peak_gb": peak, "loss": rows[-1]["loss"]}


def run_bare(experiment: str, overrides: list[str], args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--bare",
        experiment,
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--",
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"bare step failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


DEPTHS, CPU_DEPTHS = (7, 8), (5,)


# ----------------------------------------------------------------------------------------------
# Inference and evaluation with the trained checkpoints (real commands' code paths)
# ----------------------------------------------------------------------------------------------
def generation(args) -> dict:
    """Seconds per mesh through `craft generate`'s function, warm (model loaded once, reported apart)."""
    from craftsman_platform.inference.generate import GenerateConfig, generate
    from craftsman_platform.inference.images import export_views
    from craftsman_platform.inference.pipeline import Generator
    from craftsman_platform.inference.runtime import resolve_device

    views = Path(tempfile.mkdtemp(prefix="bench-views-"))
    export_views(args.shards, str(views))
    start = time.perf_counter()
    gen = Generator.load(args.generate, device=resolve_device("auto"))
    load_s = time.perf_counter() - start
    out = {"load_s": load_s}
    # on a CPU (--allow-cpu) the briefly trained tiny model's surface is noise: a coarse depth keeps
    # the procedure check short; CUDA measures the depths
    for depth in DEPTHS if torch.cuda.is_available() else CPU_DEPTHS:
        runs = [
            generate(
                GenerateConfig(
                    checkpoint=args.generate, images=[str(views)], output_dir=str(views / "out"), depth=depth, seed=i
                ),
                gen,
            )
            for i in range(3)
        ]
        out[f"depth{depth}"] = runs[-1]["stages_s"] | {
            "total": min(r["total_s"] for r in runs[1:]),
            "queries": runs[-1]["queries"],
        }
    return out


def evaluation(checkpoint: Path, shards: str, out: Path, max_objects: int | None) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "craftsman_platform.cli",
        "evaluate",
        f"checkpoint={checkpoint}",
        f"data.eval_shards={shards}",
        f"output_dir={out}",
        "logger=none",
        f"data.max_objects={max_objects or 'null'}",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"craft evaluate failed:\n{proc.stderr[-3000:]}")
    wall = time.perf_counter() - start
    result = json.loads((out / "metrics.json").read_text())
    return {"objects": result["objects"], "wall_s": wall, "per_object_s": result["metrics"]["seconds"]}


def inference_rows(vae_ckpt: Path, diffusion_ckpt: Path, shards: str, tmp: Path, max_objects: int | None) -> None:
    proc = subprocess.run(
        [sys.executable, __file__, "--shards", shards, "--generate", str(diffusion_ckpt)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise RuntimeError(f"generation failed:\n{proc.stderr[-3000:]}")
    g = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\n`craft generate` (4 views -> GLB + OBJ, warm; model load {g['load_s']:.1f} s apart):")
    print(
        "| depth | condition s | sampling s | decode + extraction s | export s | queries | seconds per mesh |\n"
        "|---|---|---|---|---|---|---|"
    )
    for depth in sorted(int(k.removeprefix("depth")) for k in g if k.startswith("depth")):
        d = g[f"depth{depth}"]
        print(
            f"| {depth} | {d['condition']:.2f} | {d['sampling']:.2f} | {d['decode + extraction']:.2f} | "
            f"{d['export']:.2f} | "
            f"{d['queries']:,} | {d['total']:.2f} |"
        )
    print("\n`craft evaluate` (IoU, Chamfer, F-score, renders; model load included in the wall time):")
    print("| checkpoint | objects | seconds per object | wall s | 100 objects, projected s |\n|---|---|---|---|---|")
    for name, ckpt in (("vae", vae_ckpt), ("diffusion", diffusion_ckpt)):
        e = evaluation(ckpt, shards, tmp / f"eval-{name}", max_objects)
        print(
            f"| {name} | {e['objects']} | {e['per_object_s']:.2f} | {e['wall_s']:.1f} | {100 * e['per_object_s']:.0f} |"
        )


def row(name: str, mode: str, r: dict, flops: float, batch: int, extra: str = "") -> str:
    mfu = flops / r["seconds"] / (PEAK_TFLOPS * 1e12)
    return (
        f"| {name} | {mode} | {batch / r['seconds']:.1f} | {1000 * r['seconds']:.1f} | {mfu:.1%} | "
        f"{r['peak_gb']:.1f} | {extra} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", help="shard glob made by `craft preprocess` (see --make-shards)")
    ap.add_argument("--make-shards", metavar="DIR", help="write a small real shard set to DIR and exit")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--loader-workers", type=int, default=6)
    ap.add_argument("--clip", default=None, help="CLIP ViT-L/14 directory (default: its architecture, random weights)")
    ap.add_argument("--only", choices=("vae", "diffusion"), default=None)
    ap.add_argument(
        "--vae-checkpoint", default=None, help="the frozen VAE of the diffusion runs (default: the VAE run's)"
    )
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--allow-cpu", action="store_true", help="run the procedure on the CPU with the tiny experiments")
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    ap.add_argument("--no-inference", action="store_true", help="skip the generate / evaluate timings")
    ap.add_argument(
        "--inference-only",
        action="store_true",
        help="only the generate / evaluate timings, with checkpoints from one-step `craft train` runs",
    )
    ap.add_argument("--eval-objects", type=int, default=None, help="evaluate at most this many objects")
    ap.add_argument("--bare", default=None, help=argparse.SUPPRESS)  # internal: one bare measurement
    ap.add_argument("--generate", default=None, help=argparse.SUPPRESS)  # internal: generation timings
    ap.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare:
        args.experiment = args.bare
        print(json.dumps(bare(args)))
        return
    if args.generate:
        print(json.dumps(generation(args)))
        return
    if args.make_shards:
        print(f"shards: {make_bench_shards(Path(args.make_shards))}/*.tar")
        return
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print(f"bench/gpu.py: no CUDA device here (torch {torch.__version__}); nothing measured")
        return
    if not args.shards:
        raise SystemExit("--shards GLOB is required (make one with --make-shards DIR)")
    name = torch.cuda.get_device_name() if cuda else "CPU (procedure check with the tiny experiments)"
    experiments = (
        {"vae": "vae_craftsman", "diffusion": "diffusion_craftsman"}
        if cuda
        else {"vae": "vae_tiny", "diffusion": "diffusion_tiny"}
    )
    common = [
        f"data.train_shards={args.shards}",
        f"data.batch_size={args.batch}",
        "trainer.precision=bf16",
        f"data.num_workers={args.loader_workers}",
    ]
    kinds = [args.only] if args.only else ["vae", "diffusion"]
    modes = (False,) if args.no_compile else (False, True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    if args.inference_only:  # untrained weights: the octree extraction sees a noisy surface (its worst case)
        print(f"# bench/gpu.py --inference-only on {name}, torch {torch.__version__}")
        vae = Path(args.vae_checkpoint) if args.vae_checkpoint else tmp / "vae"
        if not args.vae_checkpoint:
            real(experiments["vae"], common, vae, 1, 0)
        clip = f"model.conditioner.pretrained={args.clip or 'null'}"
        real(experiments["diffusion"], common + [f"model.vae_checkpoint={vae}", clip], tmp / "diffusion", 1, 0)
        inference_rows(vae, tmp / "diffusion", args.shards, tmp, args.eval_objects)
        return
    vae_checkpoint = args.vae_checkpoint
    if "diffusion" in kinds and "vae" not in kinds and vae_checkpoint is None:  # the frozen VAE: a 1-step run
        vae_checkpoint = tmp / "vae-for-diffusion"
        real(experiments["vae"], common, vae_checkpoint, 1, 0)
    print(
        f"# bench/gpu.py on {name}, torch {torch.__version__}, batch {args.batch}, bf16, "
        f"{args.steps} timed steps after {args.warmup}"
    )
    print("| model | loop | samples/s | ms/step | MFU | peak GB | notes |\n|---|---|---|---|---|---|---|")
    results = {}
    for kind in kinds:
        overrides = list(common)
        if kind == "diffusion":
            overrides += [
                f"model.vae_checkpoint={vae_checkpoint}",
                f"model.conditioner.pretrained={args.clip or 'null'}",
            ]
        for compiled in modes:
            mode = "compiled" if compiled else "eager"
            o = overrides + [f"trainer.compile={str(compiled).lower()}"]
            b = run_bare(experiments[kind], o, args)
            r = real(experiments[kind], o, tmp / f"{kind}-{mode}", args.warmup, args.steps)
            if kind == "vae" and vae_checkpoint is None:
                vae_checkpoint = tmp / f"{kind}-{mode}"
            ratio = b["seconds"] / r["seconds"]
            print(row(kind, f"bare, {mode}", b, b["flops"], args.batch), flush=True)
            print(
                row(
                    kind,
                    f"craft train, {mode}",
                    r,
                    b["flops"],
                    args.batch,
                    f"{ratio:.0%} of bare; EMA {b['ema_s'] / r['seconds']:.1%} of the step, "
                    f"data wait {r['data_share']:.0%}",
                ),
                flush=True,
            )
            results[f"{kind}-{mode}"] = {"bare": b, "real": r, "ratio": ratio}
    if not args.no_inference and not args.only:
        inference_rows(Path(vae_checkpoint), tmp / "diffusion-eager", args.shards, tmp, args.eval_objects)
    if args.out:
        Path(args.out).write_text(json.dumps({"device": name, "results": results}, indent=1))


if __name__ == "__main__":
    main()
