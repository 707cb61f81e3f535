"""Training throughput, side by side in one run.

1. Loader: samples/s of one loader core (num_workers=0) on real shards written by `craft preprocess`
   with its default (full-size) settings, for VAE samples (points only) and diffusion samples
   (points + 4 decoded, resized views), and the bytes each sample reads.
2. Trainer: steps/s and samples/s of the tiny recipes on CPU through `craft train` (DeepSpeed,
   ZeRO-1), 1 local worker versus 2 Ray Train workers at the same global batch.
3. Archive vs pack: the same full-size objects packed by `craft pack` (kind=vae at vae_craftsman's
   step sizes; kind=latents with a full-size, randomly initialised vae_craftsman encoder): bytes
   read per sample, loader samples/s per core beside the archive's, and pack build objects/s per core.
4. Capacity plan for 32 GPUs, from the measured loader figures (printed; see docs/benchmarks.md).

    python bench/training.py [--shards 'OUT/shards/*.tar'] [--steps 40] [--skip-trainer]
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

from craftsman_platform.pipelines.preprocess.tiny_shards import make_tiny_shards
from craftsman_platform.shapedata.sample import expand_urls
from craftsman_platform.training.config import DataConfig
from craftsman_platform.training.data import BatchIterator, ShardStream, TrainingData

ROOT = Path(__file__).resolve().parents[1]


def make_full_shards(out: Path, n: int) -> str:
    """n real pybullet meshes through `craft preprocess` with the default settings."""
    from craftsman_platform.corpora import fixed_sample

    listing = out / "meshes.txt"
    out.mkdir(parents=True, exist_ok=True)
    listing.write_text("\n".join(map(str, fixed_sample(n, seed=1))) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "craftsman_platform.cli",
            "preprocess",
            f"source.path={listing}",
            f"output_dir={out / 'data'}",
        ],
        check=True,
        capture_output=True,
    )
    return str(out / "data" / "shards" / "*.tar")


def loader_rate(urls: list[str], kind: str, samples: int, pack: str | None = None) -> tuple[float, float]:
    """(samples/s on one core, MB read per sample) of archive shards `urls`, or of the pack `pack`
    (each sample is read whole: a streamed tar read touches every byte of it)."""
    cfg = DataConfig(
        batch_size=4,
        num_workers=0,
        shuffle_buffer=16,
        epoch_samples=10**6,
        num_surface=4096,
        num_vol=2048,
        num_near=2048,
        views=4,
        image_size=224,
    )
    data = TrainingData(pack, cfg, kind) if pack else urls
    it = BatchIterator(ShardStream(data, cfg, kind))
    next(it)  # warm-up (opens a shard, fills the buffer)
    start = time.perf_counter()
    for _ in range(samples // cfg.batch_size):
        next(it)
    rate = samples / (time.perf_counter() - start)
    if pack:
        urls = [str(p) for p in Path(pack, "shards").glob("*.tar")]
    total = sum(os.path.getsize(u) for u in urls)
    return rate, total / max(1, _count(urls)) / 1e6


def _count(urls: list[str]) -> int:
    import webdataset as wds

    return sum(1 for _ in wds.WebDataset(urls, shardshuffle=False, empty_check=False).to_tuple("__key__"))


def train_rate(shards: str, experiment: str, steps: int, extra: list[str], vae_run: str | None) -> float:
    """Samples/s over the last half of a short `craft train` run."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            f"experiment={experiment}",
            f"data.train_shards={shards}",
            f"run_dir={tmp}/run",
            "logger=none",
            f"trainer.max_steps={steps}",
            f"trainer.log_every={steps // 2}",
            f"trainer.ckpt_every={10 * steps}",
            *extra,
        ]
        if vae_run:
            args.append(f"model.vae_checkpoint={vae_run}")
        env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        subprocess.run(
            [sys.executable, "-m", "craftsman_platform.cli", "train", *args], check=True, capture_output=True, env=env
        )
        rows = [json.loads(x) for x in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
        return rows[-1]["samples_per_s"]


def craft(*args: str) -> None:
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    subprocess.run([sys.executable, "-m", "craftsman_platform.cli", *args], check=True, capture_output=True, env=env)


def build_pack(archive: Path, out: Path, *args: str) -> dict:
    """`craft pack` on 2 workers; its pack.json, with objects/s per core (after Ray's start)."""
    craft("pack", f"source={archive}", f"output_dir={out}", "workers=2", *args)
    info = json.loads((out / "pack.json").read_text())
    run = info["this_run"]
    cores = min(2, run["parts"])  # one task per archive shard: fewer shards than workers leave cores idle
    info["objects_per_s_core"] = run["objects"] / run["seconds"] / cores
    return info


def full_vae(archive: Path, run: Path) -> Path:
    """vae_craftsman (184.5M), one step at batch 1: full-size weights to encode with (untrained)."""
    craft("train", "experiment=vae_craftsman", f"data.train_shards={archive / 'shards' / '*.tar'}", f"run_dir={run}",
          "logger=none", "trainer.max_steps=1", "data.batch_size=1", "data.num_workers=0",
          "trainer.precision=fp32", "trainer.warmup_steps=1")  # fmt: skip
    return run


def pack_section(archive: Path, work: Path, rates: dict, samples: int) -> dict:
    """Archive vs pack, side by side: (loader rate, MB per sample) per pack kind."""
    print("\n## archive vs pack (same objects), loader one core; pack build on 2 workers")
    vae = build_pack(archive, work / "pack-vae", "kind=vae")
    vae_rate, vae_mb = loader_rate([], "vae", samples, str(work / "pack-vae"))
    encoder = full_vae(archive, work / "vae-full")
    lat = build_pack(archive, work / "pack-latents", "kind=latents", f"vae_checkpoint={encoder}")
    lat_rate, lat_mb = loader_rate([], "diffusion", samples, str(work / "pack-latents"))
    rows = [("vae", vae, vae_rate, vae_mb, rates["vae"]), ("latents", lat, lat_rate, lat_mb, rates["diffusion"])]
    for kind, info, rate, mb, archive_rate in rows:
        print(
            f"{kind:<8} pack: {rate:7.1f} samples/s/core ({rate / archive_rate:5.1f}x the archive's {archive_rate:.1f})"
            f"   {mb * 1e3:6.1f} KB read per sample   build {info['objects_per_s_core']:.3f} objects/s/core"
            f"   ({info['objects']} objects x {info['recipe']['chunks']} chunks, {info['bytes'] / 1e6:.1f} MB)"
        )
    return {"vae": (vae_rate, vae_mb), "latents": (lat_rate, lat_mb)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", help="full-size shards (default: preprocess 24 real meshes first)")
    ap.add_argument("--tiny-shards", help="small shards for the trainer runs (default: the tests' recipe)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--skip-trainer", action="store_true", help="loader and pack figures only")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-training-"))
    shards = args.shards or make_full_shards(work / "full", 24)
    urls = expand_urls(shards)
    print(f"## loader, one core, {len(urls)} shards of full-size samples")
    rates = {}
    for kind in ("vae", "diffusion"):
        rates[kind], mb = loader_rate(urls, kind, args.samples)
        print(f"{kind:<10} {rates[kind]:7.1f} samples/s/core   {mb:.2f} MB read per sample")

    pack_section(Path(urls[0]).parent.parent, work, rates, args.samples)
    if args.skip_trainer:
        return
    tiny = args.tiny_shards or str(make_tiny_shards(work / "tiny") / "shards" / "*.tar")
    print(f"\n## trainer on CPU, {args.steps} steps, global batch 8, DeepSpeed ZeRO-1, fp32")
    one = train_rate(tiny, "vae_tiny", args.steps, ["data.batch_size=8"], None)
    two = train_rate(
        tiny,
        "vae_tiny",
        args.steps,
        ["data.batch_size=4", "launcher=ray", "launcher.num_workers=2", "data.num_workers=1"],
        None,
    )
    print(
        f"vae_tiny   1 worker {one:6.1f} samples/s ({one / 8:.2f} steps/s)   2 Ray workers {two:6.1f} samples/s "
        f"({two / 8:.2f} steps/s)   ratio {two / one:.2f}x"
    )
    vae_run = work / "vae"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "craftsman_platform.cli",
            "train",
            "experiment=vae_tiny",
            f"data.train_shards={tiny}",
            f"run_dir={vae_run}",
            "logger=none",
            "trainer.max_steps=2",
        ],
        check=True,
        capture_output=True,
    )
    diff = train_rate(tiny, "diffusion_tiny", args.steps, ["data.batch_size=8"], str(vae_run))
    print(f"diffusion_tiny 1 worker {diff:6.1f} samples/s ({diff / 8:.2f} steps/s)")
    print(
        f"\nloader cores per GPU at G samples/s per GPU: G / {rates['diffusion']:.1f} (diffusion), "
        f"G / {rates['vae']:.1f} (VAE); see docs/benchmarks.md for the 32-GPU plan"
    )


if __name__ == "__main__":
    main()
