"""Benchmark: does a text-conditioned model use its prompt? For every object of an archive that has
captions, a mesh is generated from each of its captions and its Chamfer distance taken to every
object of the archive: the condition is used when the mesh is closer to its own object than to the
others. Also: bytes per sample of a latents pack with captions against one without (same objects).

After `make demo` (its archive has captions; runs/text is a text_diffusion_tiny run on them):

  python bench/text.py --data outputs/demo/data --run outputs/demo/runs/text --pack outputs/demo/packs/latents
  python bench/text.py --craftsman-pack      # a latents pack of the same objects at the craftsman recipe

The craftsman-recipe pack is encoded by a VAE of vae_craftsman's shape with random weights (the
bytes of a posterior do not depend on the weights), its views at 224 px.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from craftsman_platform.evaluation.metrics import sample_surface
from craftsman_platform.inference.pipeline import Generator
from craftsman_platform.shapedata.captions import decode_captions
from craftsman_platform.shapedata.sample import CAPTIONS, SURFACE, read_npy


def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric mean nearest-neighbour distance (as the evaluation's), brute force in chunks."""
    ta, tb = torch.from_numpy(a).float(), torch.from_numpy(b).float()

    def one_way(x, y):
        return torch.cat([torch.cdist(x[i : i + 4096], y).min(dim=1).values for i in range(0, len(x), 4096)]).mean()

    return float(one_way(ta, tb) + one_way(tb, ta))


def objects(data: Path, points: int) -> dict[str, dict]:
    """{uid: {"captions", "surface"}} of the archive's captioned objects."""
    found = {}
    for s in wds.WebDataset(sorted(glob.glob(str(data / "shards" / "*.tar"))), shardshuffle=False):
        captions = decode_captions(s.get(CAPTIONS))
        if captions:
            surface = read_npy(s[SURFACE])[:, :3].astype(np.float32)
            pick = np.random.default_rng(0).choice(len(surface), min(points, len(surface)), replace=False)
            found[s["__key__"]] = {"captions": captions, "surface": surface[pick]}
    return found


def pack_bytes(pack: Path) -> tuple[float, float]:
    """(bytes per sample, of which captions) of a latents pack."""
    total, caption, samples = 0, 0, 0
    for shard in sorted(glob.glob(str(pack / "shards" / "*.tar"))):
        total += os.path.getsize(shard)
        for s in wds.WebDataset(shard, shardshuffle=False):
            samples += 1
            caption += len(s.get(CAPTIONS, b""))
    return total / max(1, samples), caption / max(1, samples)


def craftsman_pack(data: Path, work: Path) -> Path:
    """A latents pack of `data` at the craftsman recipe (224 px views, vae_craftsman's posterior)."""
    from dataclasses import asdict

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from craftsman_platform.models.build import build_vae
    from craftsman_platform.paths import CONF_DIR
    from craftsman_platform.schemas import register

    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = OmegaConf.to_object(compose(config_name="train", overrides=["experiment=vae_craftsman"]))
    ckpt = work / "vae" / "checkpoints" / "step-0000000"
    ckpt.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in build_vae(cfg.model).state_dict().items()}, ckpt / "weights.safetensors")
    (ckpt / "meta.json").write_text(json.dumps({"step": 0, "kind": "vae", "config": {"model": asdict(cfg.model)}}))
    out = work / "pack"
    subprocess.run([sys.executable, "-m", "craftsman_platform.cli", "pack", "kind=latents", f"source={data}",
                    f"vae_checkpoint={work / 'vae'}", f"output_dir={out}", "workers=2", "encode.batch_size=4"],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="outputs/demo/data")
    ap.add_argument("--run", default="outputs/demo/runs/text")
    ap.add_argument("--pack", default="outputs/demo/packs/latents")
    ap.add_argument("--seeds", type=int, default=2, help="meshes per caption")
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--points", type=int, default=5000)
    ap.add_argument("--guidance", type=float, default=None, help="default: the checkpoint's")
    ap.add_argument("--craftsman-pack", action="store_true", help="only measure a craftsman-recipe pack's bytes")
    args = ap.parse_args()
    if args.craftsman_pack:
        with tempfile.TemporaryDirectory() as work:
            pack = craftsman_pack(Path(args.data), Path(work))
            per, caption = pack_bytes(pack)
            print(f"craftsman recipe (224 px views, 256 x 64 float16 posterior): {per / 1e3:.1f} KB per sample, of "
                  f"which captions {caption:.0f} bytes")  # fmt: skip
        return
    objs = objects(Path(args.data), args.points)
    uids = sorted(objs)
    gen = Generator.load(args.run, True, "cpu")
    prompts = [(u, c) for u in uids for c in objs[u]["captions"]]
    t0 = time.perf_counter()
    rows = []
    for seed in range(args.seeds):
        context = gen.condition_text([c for _, c in prompts])
        meshes = gen.meshes(gen.sample(context, guidance=args.guidance, seed=seed), args.depth)
        for (uid, caption), (mesh, _) in zip(prompts, meshes):
            pts = sample_surface(mesh, args.points, seed)[0] if len(mesh.faces) else np.zeros((1, 3), np.float32)
            dist = {other: chamfer(pts, objs[other]["surface"]) for other in uids}
            rank = sorted(dist, key=dist.get).index(uid)
            rows.append({"uid": uid, "caption": caption, "seed": seed, "own": dist[uid], "rank": rank,
                         "nearest_other": min(v for k, v in dist.items() if k != uid)})  # fmt: skip
    seconds = time.perf_counter() - t0
    closest = sum(r["rank"] == 0 for r in rows)
    print(f"{len(uids)} objects, {len(prompts)} captions x {args.seeds} seeds = {len(rows)} meshes ({seconds:.0f} s)")
    print("| object | caption | seed | Chamfer to its own object | to the nearest other | rank of its own |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['uid'][:28]} | {r['caption']} | {r['seed']} | {r['own']:.4f} | {r['nearest_other']:.4f} | "
              f"{r['rank'] + 1} of {len(uids)} |")  # fmt: skip
    per_object = {u: np.mean([r["rank"] == 0 for r in rows if r["uid"] == u]) for u in uids}
    print(
        f"closest to its own object: {closest} of {len(rows)} meshes ({closest / len(rows):.0%}); objects whose "
        f"meshes are closest to them more often than not: {sum(v > 0.5 for v in per_object.values())} of "
        f"{len(uids)}; median rank {np.median([r['rank'] + 1 for r in rows]):.0f}; chance: 1 in {len(uids)}"
    )
    if Path(args.pack, "pack.json").exists():
        per, caption = pack_bytes(Path(args.pack))
        info = json.loads(Path(args.pack, "pack.json").read_text())
        print(f"pack {args.pack}: {per / 1e3:.1f} KB per sample at {info['recipe']['image_size']} px, of which "
              f"captions {caption:.0f} bytes")  # fmt: skip


if __name__ == "__main__":
    main()
