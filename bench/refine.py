"""Benchmark: the normal-based refiner (craft refine) on held-out real objects.

Held-out objects: a fixed seeded sample of pybullet meshes outside the demo's, preprocessed by the
real `craft preprocess` job (defaults: 20 views at 256 px with their normal renders). Per object,
two coarse meshes are refined with the archive's ground-truth normal renders:
  * vae:      the VAE's reconstruction (posterior mean, octree extraction) of the object, from a
              trained VAE run (--vae; `make demo` trains one);
  * smoothed: the ground truth split to edges of at most 0.08 and Taubin-smoothed (trimesh,
              30 passes: detail gone, little shrinking).
Scores against the ground-truth surface (the normalised source mesh, 100k points a side):
Chamfer, F-score at 0.01, normal consistency, before and after; the silhouette IoU the refiner
reports; seconds per mesh on this machine's CPU (torch threads as set).

    python bench/refine.py --count 8 --vae outputs/demo/runs/vae
    python bench/refine.py --prepare DIR     # the same objects as files, for a machine without Ray
    python bench/refine.py --from DIR --device cuda
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import trimesh
from PIL import Image

from craftsman_platform.corpora import DEMO_MESHES, fixed_sample
from craftsman_platform.evaluation.metrics import encoder_input, sample_surface, surface_metrics
from craftsman_platform.evaluation.objects import ObjectReader
from craftsman_platform.geometry.mesh_io import load_mesh
from craftsman_platform.inference.config import RefineSettings
from craftsman_platform.inference.normal_maps import views_from_folder, views_from_sample
from craftsman_platform.inference.pipeline import decode_meshes
from craftsman_platform.inference.refine import refine_mesh
from craftsman_platform.inference.runtime import resolve_device
from craftsman_platform.models.checkpoints import load_vae
from craftsman_platform.shapedata.sample import CAMERAS

METRICS = ("chamfer", "fscore@0.01", "normal_consistency")


def held_out(count: int) -> list[Path]:
    demo = {Path(rel).name for corpus, rel in DEMO_MESHES}
    return [p for p in fixed_sample(count + 8, seed=7) if p.name not in demo][:count]


def preprocess(paths: list[Path], out: Path) -> Path:
    listing = out / "meshes.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    cmd = [sys.executable, "-m", "craftsman_platform.cli", "preprocess", f"source.path={listing}",
           f"output_dir={out / 'data'}", "workers=2"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out / "data"


def smoothed(gt: trimesh.Trimesh) -> trimesh.Trimesh:
    """The ground truth split to edges <= 0.08 (the same surface), then Taubin-smoothed: its detail
    gone, its outline nearly kept."""
    v, f = trimesh.remesh.subdivide_to_size(gt.vertices, gt.faces, max_edge=0.08, max_iter=20)
    coarse = trimesh.Trimesh(v, f, process=True)
    return trimesh.smoothing.filter_taubin(coarse, iterations=30)


def vae_mesh(vae, sample: dict) -> trimesh.Trimesh:
    with torch.no_grad():
        latents = vae.encode(encoder_input(sample, vae.cfg.num_inputs), sample=False)
    return decode_meshes(vae, latents, depth=7)[1][0][0]


def scores(mesh: trimesh.Trimesh, gt_samples) -> dict[str, float]:
    return surface_metrics(sample_surface(mesh, 100_000, seed=1), gt_samples)


def archive_objects(args) -> Iterator[tuple[str, trimesh.Trimesh, dict[str, bytes], dict[str, trimesh.Trimesh]]]:
    """Per held-out object: uid, ground truth, the archive members of its views, its coarse meshes."""
    work = Path(tempfile.mkdtemp(prefix="bench-refine-"))
    data = preprocess(held_out(args.count), work)
    vae = load_vae(args.vae)[0] if args.vae.exists() else None
    if vae is None:
        print(f"no VAE run at {args.vae}: only the smoothed coarse meshes (make demo trains one)")
    for sample in ObjectReader(str(data / "shards" / "*.tar"), views=True):
        meta = json.loads(sample["meta.json"])
        gt = trimesh.util.concatenate(load_mesh(meta["source"]).parts)
        coarse = {"smoothed": smoothed(gt)}
        if vae is not None:
            coarse["vae"] = vae_mesh(vae, sample)
        members = {k: v for k, v in sample.items() if k == CAMERAS or k.startswith(("normal_", "rgb_"))}
        yield sample["__key__"], gt, members, coarse


def write_prepared(out: Path, uid: str, gt: trimesh.Trimesh, members: dict, coarse: dict) -> None:
    """One object as files a machine without the preprocessing stack reads (--from): meshes as PLY,
    the normal maps as a `craft refine normals=` folder (masks from the colour renders' alpha)."""
    d = out / uid
    (d / "views").mkdir(parents=True, exist_ok=True)
    gt.export(d / "gt.ply")
    for kind, mesh in coarse.items():
        mesh.export(d / f"coarse_{kind}.ply")
    for name, raw in members.items():
        if name.startswith("rgb_"):
            alpha = np.asarray(Image.open(io.BytesIO(raw)))[..., 3]
            Image.fromarray(((alpha > 127) * 255).astype(np.uint8)).save(d / "views" / name.replace("rgb_", "mask_"))
        else:
            (d / "views" / name).write_bytes(raw)


def prepared_objects(root: Path) -> Iterator[tuple[str, trimesh.Trimesh, list, dict[str, trimesh.Trimesh]]]:
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(d.glob("coarse_*.ply"))
        coarse = {p.stem.removeprefix("coarse_"): trimesh.load(p, process=False) for p in files}
        yield d.name, trimesh.load(d / "gt.ply", process=False), views_from_folder(d / "views"), coarse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--vae", type=Path, default=Path("outputs/demo/runs/vae"), help="a trained VAE run dir")
    ap.add_argument("--iterations", type=int, default=RefineSettings.iterations)
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    ap.add_argument("--prepare", type=Path, help="write the objects and coarse meshes here and exit")
    ap.add_argument("--from", dest="source", type=Path, help="refine objects written by --prepare")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a refiner setting (refiner.KEY)")
    ap.add_argument("--coarse", nargs="+", default=["vae", "smoothed"], help="which coarse meshes to refine")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    if args.prepare:
        for uid, gt, members, coarse in archive_objects(args):
            write_prepared(args.prepare, uid, gt, members, coarse)
        print(f"prepared: {args.prepare}")
        return
    if args.source:
        objects = prepared_objects(args.source)
    else:
        objects = ((uid, gt, views_from_sample(m, uid), c) for uid, gt, m, c in archive_objects(args))
    device = resolve_device(args.device)
    settings = RefineSettings(iterations=args.iterations)
    for item in args.set:
        key, _, value = item.partition("=")
        setattr(settings, key, type(getattr(settings, key))(value))
    rows = []
    for uid, gt, views, coarse in objects:
        gt_samples = sample_surface(gt, 100_000, seed=0)
        for kind, mesh in coarse.items():
            if len(mesh.faces) == 0 or kind not in args.coarse:
                continue
            start = time.perf_counter()
            refined, report = refine_mesh(mesh, views, settings, device, progress=False)
            rows.append({"uid": uid, "coarse": kind, "seconds": time.perf_counter() - start,
                         "before": scores(mesh, gt_samples), "after": scores(refined, gt_samples),
                         "iou_before": report.mask_iou_before, "iou_after": report.mask_iou_after,
                         "faces": [report.faces_in, report.faces_out]})  # fmt: skip
            r = rows[-1]
            print(f"{r['uid'][:28]:28s} {kind:8s} " + "  ".join(
                f"{m} {r['before'][m]:.4f} -> {r['after'][m]:.4f}" for m in METRICS)
                + f"  IoU {r['iou_before']:.3f} -> {r['iou_after']:.3f}  {r['seconds']:.1f} s", flush=True)  # fmt: skip
    threads = f"CPU, {torch.get_num_threads()} torch threads"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else threads
    print(f"\n## Refiner on held-out objects ({where}; the first mesh's seconds include Warp's kernel build)\n")
    print("| coarse | objects | median Chamfer before / after | median F@0.01 before / after "
          "| median NC before / after | NC and F@0.01 up | silhouette kept | median s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for kind in ("vae", "smoothed"):
        rs = [r for r in rows if r["coarse"] == kind]
        if not rs:
            continue
        med = {(m, w): statistics.median(r[w][m] for r in rs) for m in METRICS for w in ("before", "after")}
        up = sum(r["after"]["normal_consistency"] > r["before"]["normal_consistency"]
                 and r["after"]["fscore@0.01"] >= r["before"]["fscore@0.01"] for r in rs)  # fmt: skip
        kept = sum(r["iou_after"] >= r["iou_before"] - 0.005 for r in rs)
        cells = " | ".join(f"{med[(m, 'before')]:.4f} / {med[(m, 'after')]:.4f}" for m in METRICS)
        print(f"| {kind} | {len(rs)} | {cells} | {up}/{len(rs)} | {kept}/{len(rs)} | "
              f"{statistics.median(r['seconds'] for r in rs):.1f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
