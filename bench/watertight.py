"""Benchmark: our watertight conversion vs point-cloud-utils' Manifold, side by side, same meshes.

For each mesh of a fixed sample of real meshes (pybullet_data + assimp test models): load and
normalise once, then time
  * ours: `make_watertight` (fast path or narrow-band UDF at --resolution), per stage;
  * pcu:  `point_cloud_utils.make_mesh_watertight` (the Manifold method used by 3DShape2VecSet's
          data preparation) at its default resolution 20,000,
and score both outputs with the same code: watertight + consistently wound (trimesh), two-sided
point-to-surface Chamfer to the source (--quality-samples per side), and source parts lost.

    python bench/watertight.py --count 60 --resolution 256
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import point_cloud_utils as pcu
import trimesh
from tqdm import tqdm

from craftsman_platform.corpora import ASSIMP_BENCH_MESHES, assimp_models_dir, fixed_sample
from craftsman_platform.geometry.config import WatertightConfig
from craftsman_platform.geometry.mesh_io import MeshRejected, load_mesh
from craftsman_platform.geometry.meshops import signed_volume
from craftsman_platform.geometry.watertight import make_watertight, surface_fidelity


def run_pcu(mesh: trimesh.Trimesh) -> tuple[trimesh.Trimesh, float]:
    t = time.perf_counter()
    v, f = pcu.make_mesh_watertight(
        np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int32), 20_000, 0
    )
    seconds = time.perf_counter() - t
    out = trimesh.Trimesh(v, f, process=False)
    if len(out.faces) and signed_volume(out) < 0:
        out.invert()
    return out, seconds


def med(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=60, help="pybullet meshes in the fixed sample (plus 5 assimp ones)")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--quality-samples", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    files = fixed_sample(args.count, args.seed) + [assimp_models_dir() / p for p in ASSIMP_BENCH_MESHES]
    cfg = WatertightConfig(resolution=args.resolution, quality_samples=args.quality_samples)
    tol = (cfg.eps_voxels + 2.0) * 2.0 / cfg.resolution
    rows = []
    for path in tqdm(files, desc="meshes", unit="mesh"):
        try:
            src = load_mesh(path).mesh
        except MeshRejected as e:
            print(f"skip {path.name}: {e}")
            continue
        ours = make_watertight(src, cfg, seed=args.seed)
        theirs, pcu_seconds = run_pcu(src)
        pcu_wt = bool(len(theirs.faces) and theirs.is_watertight and theirs.is_winding_consistent)
        pcu_chamfer, pcu_lost = (
            surface_fidelity(src, theirs, args.quality_samples, np.random.default_rng(args.seed), tol)
            if len(theirs.faces)
            else (float("nan"), -1)
        )
        rows.append(
            dict(
                name=path.name,
                faces=len(src.faces),
                method=ours.method,
                ours_s=ours.seconds,
                ours_wt=ours.is_watertight,
                ours_chamfer=ours.chamfer,
                ours_lost=ours.parts_lost,
                parts=ours.parts_in,
                pcu_s=pcu_seconds,
                pcu_wt=pcu_wt,
                pcu_chamfer=pcu_chamfer,
                pcu_lost=pcu_lost,
                **{f"stage_{k}": v for k, v in ours.timings.items() if isinstance(v, float)},
            )
        )

    n = len(rows)
    udf = [r for r in rows if r["method"] == "udf"]
    print(f"\n{n} real meshes, resolution {args.resolution}, {args.quality_samples:,} quality samples per side\n")
    print("| | ours (all) | ours (UDF path only) | point-cloud-utils Manifold |")
    print("|---|---|---|---|")

    def row(name: str, *cells: str) -> None:
        print(f"| {name} | " + " | ".join(cells) + " |")

    mean = statistics.fmean
    row(
        "median seconds",
        f"{med(r['ours_s'] for r in rows):.3f}",
        f"{med(r['ours_s'] for r in udf):.3f}",
        f"{med(r['pcu_s'] for r in rows):.3f} (UDF subset {med(r['pcu_s'] for r in udf):.3f})",
    )
    row(
        "mean seconds",
        f"{mean(r['ours_s'] for r in rows):.3f}",
        f"{mean(r['ours_s'] for r in udf) if udf else float('nan'):.3f}",
        f"{mean(r['pcu_s'] for r in rows):.3f}",
    )
    row(
        "median Chamfer",
        f"{med(r['ours_chamfer'] for r in rows):.4f}",
        f"{med(r['ours_chamfer'] for r in udf):.4f}",
        f"{med(r['pcu_chamfer'] for r in rows):.4f} (UDF subset {med(r['pcu_chamfer'] for r in udf):.4f})",
    )
    row(
        "watertight outputs",
        f"{sum(r['ours_wt'] for r in rows)}/{n}",
        f"{sum(r['ours_wt'] for r in udf)}/{len(udf)}",
        f"{sum(r['pcu_wt'] for r in rows)}/{n}",
    )
    row(
        "meshes with a part lost",
        f"{sum(r['ours_lost'] > 0 for r in rows)}",
        f"{sum(r['ours_lost'] > 0 for r in udf)}",
        f"{sum(r['pcu_lost'] != 0 for r in rows)}",
    )
    print(
        f"\nmethods: {sum(r['method'] == 'fast_path' for r in rows)} fast path, {len(udf)} UDF; "
        f"multi-part inputs: {sum(r['parts'] > 1 for r in rows)}"
    )
    stages = sorted({k for r in udf for k in r if k.startswith("stage_")})
    print("UDF-path stage medians (s): " + ", ".join(f"{k[6:]} {med(r.get(k) for r in udf):.3f}" for k in stages))
    ratio = med(r["ours_s"] for r in rows) / med(r["pcu_s"] for r in rows)
    ratio_udf = med(r["ours_s"] for r in udf) / med(r["pcu_s"] for r in udf) if udf else float("nan")
    print(f"median time ratio ours/pcu: {ratio:.3f} (all), {ratio_udf:.3f} (UDF subset)")


if __name__ == "__main__":
    main()
