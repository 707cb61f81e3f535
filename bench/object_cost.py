"""Benchmark: what one object costs on one core, this checkout beside a previous commit, in one run.

1. Real-mesh sample: the 65 meshes of bench/watertight.py (a fixed seeded 60 of pybullet_data plus
   5 assimp test models), default settings, through the worker's stages: load, watertight
   (incl. its Chamfer / parts-lost quality record), sample, render (20 views), write (encoding
   the members). Per stage medians, the whole object's median and mean, and quality: Chamfer of
   the watertight mesh (median), sign agreement (minimum), point counts.
2. Cost against size: real meshes subdivided (midpoint, 4x faces a level: the same surface with
   more faces) to ~1k, 10k, 100k and 1M faces, each object in its own process: stage seconds and
   the process's peak RSS (imports included).

Each side runs in child processes pinned to one core (CRAFT_THREADS=1), as the cluster plan counts
a task slot: this checkout and the baseline (a git worktree of --baseline) on the same meshes,
alternating in chunks of 8 (each process warms up on two small spheres, untimed).

    python bench/object_cost.py --baseline 17d1785
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (corpus, file, subdivision levels): ~1k, ~10k, ~100k, ~1M faces where the base mesh allows
LADDER = [
    ("pybullet", "bunny.obj", (0, 2, 4, 5)),  # 902 faces, closed: the fast path
    ("assimp", "OBJ/spider.obj", (0, 2, 3, 5)),  # 1,312 faces, 4 parts: the UDF path
    ("assimp", "glTF2/2CylinderEngine-glTF-Binary/2CylinderEngine.glb", (0, 2)),  # 110k faces, 115 parts
]
STAGES = ("load", "watertight", "sample", "render", "write")


# ---------------------------------------------------------------------------------------------
# Child: one checkout's code on a list of meshes (only APIs both sides have)
# ---------------------------------------------------------------------------------------------


def child(paths: list[str]) -> None:
    import resource
    import time

    from craftsman_platform.geometry.config import RenderConfig
    from craftsman_platform.geometry.mesh_io import MeshRejected
    from craftsman_platform.geometry.pipeline import process_mesh
    from craftsman_platform.geometry.render import Renderer
    from craftsman_platform.geometry.sampling import object_rng
    from craftsman_platform.pipelines.preprocess.config import PreprocessConfig
    from craftsman_platform.shapedata.cameras import view_cameras
    from craftsman_platform.shapedata.sample import encode_sample

    cfg = PreprocessConfig()
    rc: RenderConfig = cfg.render
    # warm-up, untimed, on two overlapping spheres (the UDF path, every kernel): the first object
    # of a process would also pay for loading kernels; small, so the peak memory stays the meshes'
    import trimesh

    with tempfile.TemporaryDirectory() as tmp:
        warm = Path(tmp) / "warm-up.obj"
        spheres = [trimesh.creation.icosphere(3).apply_translation([x, 0, 0]) for x in (0.0, 0.5)]
        trimesh.util.concatenate(spheres).export(warm)
        process_mesh(warm, "warm-up", cfg.geometry)
    for path in paths:
        uid = Path(path).name
        try:
            geo = process_mesh(path, uid, cfg.geometry)
        except MeshRejected as e:
            print(json.dumps({"path": path, "rejected": e.code}), flush=True)
            continue
        t = dict(geo.timings)
        t0 = time.perf_counter()
        renderer = Renderer(geo.loaded.parts, rc.resolution, rc.resolution, rc.fov_deg, rc.lambert)
        cams = view_cameras(rc.extra_sets, rc.distance, object_rng(cfg.geometry.sample.seed, uid + "/views"))
        views = [renderer.render(c2w) for c2w in cams]
        t["render"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        members = encode_sample(geo.samples.float16(), views)
        t["write"] = time.perf_counter() - t0
        rec = geo.record()
        out = {
            "path": path,
            "faces": rec["faces"],
            "method": rec["watertight_method"],
            "out_faces": len(geo.watertight.mesh.faces),
            "chamfer": rec["watertight_chamfer"],
            "parts_lost": rec["watertight_parts_lost"],
            "sign_agreement": rec["sign_agreement"],
            "counts": [rec["n_surface"], rec["n_sharp"], rec["n_vol"], rec["n_near"]],
            "bytes": sum(len(v) for v in members.values()),
            "times": {s: t[s] for s in STAGES},
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        print(json.dumps(out), flush=True)


def side_by_side(trees: tuple[Path, Path], paths: list[Path], chunk: int) -> tuple[list[dict], list[dict]]:
    """Both checkouts on the same meshes, alternating in chunks (ours first, then the baseline
    first, ...): drift in the machine's speed during the run falls on both sides alike."""
    ours, base = [], []
    for k, start in enumerate(range(0, len(paths), chunk)):
        part = paths[start : start + chunk]
        order = (0, 1) if k % 2 == 0 else (1, 0)
        for side in order:
            (ours if side == 0 else base).extend(run_side(trees[side], part, 0))
    return ours, base


def run_side(tree: Path, paths: list[Path], core: int) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(tree), "CRAFT_THREADS": "1", "OMP_NUM_THREADS": "1"}
    cmd = ["taskset", "-c", str(core), sys.executable, str(Path(__file__).resolve()), "--child", *map(str, paths)]
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child failed in {tree}:\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def real_sample(count: int) -> list[Path]:
    from craftsman_platform.corpora import ASSIMP_BENCH_MESHES, assimp_models_dir, fixed_sample

    return fixed_sample(count) + [assimp_models_dir() / p for p in ASSIMP_BENCH_MESHES]


def subdivided(src: Path, level: int, folder: Path) -> Path:
    """`src` with every part midpoint-subdivided `level` times (UVs carried), as a GLB."""
    import trimesh

    out = folder / f"{src.stem}-x{4**level}.glb"
    if out.exists():
        return out
    scene = trimesh.load(src, force="scene")
    for name, geom in list(scene.geometry.items()):
        if level == 0 or not isinstance(geom, trimesh.Trimesh):
            continue
        visual = geom.visual
        uv = getattr(visual, "uv", None)
        attrs = {"uv": uv} if uv is not None and len(uv) == len(geom.vertices) else {}
        v, f = geom.vertices, geom.faces
        for _ in range(level):
            if attrs:
                v, f, attrs = trimesh.remesh.subdivide(v, f, vertex_attributes=attrs, return_index=False)
            else:
                v, f = trimesh.remesh.subdivide(v, f)
        new_visual = (
            trimesh.visual.TextureVisuals(uv=attrs["uv"], material=visual.material)
            if attrs
            else trimesh.visual.ColorVisuals()
        )
        if not attrs and hasattr(visual, "material"):
            new_visual = trimesh.visual.TextureVisuals(material=visual.material)
        scene.geometry[name] = trimesh.Trimesh(v, f, visual=new_visual, process=False)
    scene.export(out)
    return out


def ladder_meshes(folder: Path) -> list[Path]:
    from craftsman_platform.corpora import assimp_models_dir, pybullet_data_dir

    roots = {"pybullet": pybullet_data_dir(), "assimp": assimp_models_dir()}
    return [subdivided(roots[c] / rel, lvl, folder) for c, rel, levels in LADDER for lvl in levels]


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def summary(rows: list[dict]) -> dict:
    ok = [r for r in rows if "times" in r]
    total = [sum(r["times"].values()) for r in ok]
    return {
        "objects": len(ok),
        "rejected": len(rows) - len(ok),
        **{s: statistics.median(r["times"][s] for r in ok) for s in STAGES},
        "median": statistics.median(total),
        "mean": statistics.fmean(total),
        "chamfer": statistics.median(r["chamfer"] for r in ok),
        "parts_lost": sum(r["parts_lost"] for r in ok),
        "min_agreement": min(r["sign_agreement"] for r in ok),
    }


def print_sample(ours: list[dict], base: list[dict]) -> None:
    s, b = summary(ours), summary(base)
    print(f"\n## Real-mesh sample ({s['objects']} objects, one core each)\n")
    print("| | baseline | this checkout |\n|---|---|---|")
    for k in (*STAGES, "median"):
        print(f"| {k} s (median) | {b[k]:.3f} | **{s[k]:.3f}** |")
    print(f"| mean s | {b['mean']:.3f} | {s['mean']:.3f} |")
    print(f"| median Chamfer | {b['chamfer']:.4f} | {s['chamfer']:.4f} |")
    print(f"| parts lost | {b['parts_lost']} | {s['parts_lost']} |")
    print(f"| lowest sign agreement | {b['min_agreement']:.4f} | {s['min_agreement']:.4f} |")
    pairs = [(o, q) for o, q in zip(ours, base) if "counts" in o and "counts" in q]
    print(f"\nsame point counts on every object: {all(o['counts'] == q['counts'] for o, q in pairs)}")
    dev = [abs(o["chamfer"] / q["chamfer"] - 1) for o, q in pairs if o["method"] == "udf"]
    print(f"Chamfer relative change per UDF-path object: median {statistics.median(dev):.5f}, max {max(dev):.5f}")
    fast = [q["chamfer"] for o, q in pairs if o["method"] == "fast_path"]
    print(f"fast path: Chamfer now 0 exactly (the output is the input); the baseline measured at most {max(fast):.2e}")
    for m in ("fast_path", "udf"):
        whole = [sum(r["times"].values()) for r in ours if r.get("method") == m]
        if whole:
            print(f"this checkout, {m}: {len(whole)} objects, median {statistics.median(whole):.3f} s")


def print_ladder(ours: list[dict], base: list[dict]) -> None:
    print("\n## Cost against size (one object per process, one core)\n")
    print("| mesh | faces | path | side | " + " | ".join(STAGES) + " | whole s | peak RSS MB |")
    print("|---|---|---|---|" + "---|" * (len(STAGES) + 2))
    for o, b in zip(ours, base):
        for side, r in (("baseline", b), ("ours", o)):
            if "times" not in r:
                print(f"| {Path(r['path']).name} | | | {side} | rejected: {r['rejected']} |")
                continue
            cells = " | ".join(f"{r['times'][s]:.2f}" for s in STAGES)
            whole = sum(r["times"].values())
            print(f"| {Path(r['path']).stem} | {r['faces']:,} | {r['method']} ({r['out_faces']:,}) | {side} | {cells} "
                  f"| {whole:.2f} | {r['peak_rss_mb']:.0f} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="commit to compare with (checked out in a git worktree)")
    ap.add_argument("--count", type=int, default=60, help="pybullet meshes in the real-mesh sample")
    ap.add_argument("--skip-ladder", action="store_true")
    ap.add_argument("--json", type=Path, help="write every row here")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="object-cost-"))
    base_tree = work / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base_tree), args.baseline],
                   check=True, capture_output=True)  # fmt: skip
    try:
        paths = real_sample(args.count)
        ours, base = side_by_side((ROOT, base_tree), paths, chunk=8)
        print_sample(ours, base)
        result = {"sample": {"ours": ours, "baseline": base}}
        if not args.skip_ladder:
            meshes = ladder_meshes(work)
            ours_l, base_l = side_by_side((ROOT, base_tree), meshes, chunk=1)
            print_ladder(ours_l, base_l)
            result["ladder"] = {"ours": ours_l, "baseline": base_l}
        if args.json:
            args.json.write_text(json.dumps(result))
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], capture_output=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.path.insert(0, os.environ["PYTHONPATH"])
        child(sys.argv[2:])
    else:
        main()
