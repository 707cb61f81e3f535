"""`craft preprocess source.kind=objaverse_xl` end to end on a real local Ray: annotations in the
objaverse package's schema, real meshes served by a real HTTP server on 127.0.0.1 (Smithsonian,
Thingiverse, Sketchfab) and real git repositories cloned by URL (GitHub, one file in Git LFS);
duplicates across sources and against what the output already holds, a sha256 mismatch, a clone
that fails, a file missing from its repository, and exactly-once after kill -9 of the driver."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trimesh
import webdataset as wds
from helpers import ENV, SMALL_ARGS, kill_tree, manifest_rows, serve
from xl_data import github_id, make_repo, sha256, write_annotations

from craftsman_platform.geometry.config import SampleConfig
from craftsman_platform.pipelines.preprocess.config import PreprocessConfig
from craftsman_platform.pipelines.preprocess.job import preprocess

ROOT = Path(__file__).resolve().parents[3]
SKETCHFAB_UID = "5" * 32


def as_bytes(mesh_path: Path, file_type: str) -> bytes:
    buf = io.BytesIO()
    trimesh.load(mesh_path, force="scene").export(buf, file_type=file_type)
    return buf.getvalue()


@pytest.mark.slow
def test_objaverse_xl_end_to_end_with_dedup_failures_and_a_kill(tmp_path, pybullet_dir):
    duck = as_bytes(pybullet_dir / "duck.obj", "glb")
    cube = as_bytes(pybullet_dir / "cube.obj", "stl")
    robots = [(pybullet_dir / f"random_urdfs/{i:03d}/{i:03d}.obj").read_bytes() for i in range(3)]
    served, cache, git_root = tmp_path / "served", tmp_path / "cache", tmp_path / "git"
    for rel, data in {f"glbs/000-000/{SKETCHFAB_UID}.glb": duck, "si/duck.glb": duck, "si/robot0.obj": robots[0],
                      "download:345": cube}.items():  # fmt: skip
        (served / rel).parent.mkdir(parents=True, exist_ok=True)
        (served / rel).write_bytes(data)
    (cache / "hf-objaverse-v1").mkdir(parents=True)
    with gzip.open(cache / "hf-objaverse-v1" / "object-paths.json.gz", "wt") as fh:
        json.dump({SKETCHFAB_UID: f"glbs/000-000/{SKETCHFAB_UID}.glb"}, fh)
    models = make_repo(git_root, "org", "models", {"duck.glb": duck, "robots/r1.obj": robots[1]})
    fork = make_repo(git_root, "fork", "models", {"robots/r1.obj": robots[1]})
    lfs = make_repo(git_root, "lfsorg", "assets", {"r2.obj": robots[2]}, lfs=("*.obj",))
    gone = "f" * 40
    github = [
        {"fileIdentifier": github_id("org", "models", models, "duck.glb"), "data": duck},
        {"fileIdentifier": github_id("org", "models", models, "robots/r1.obj"), "data": robots[1], "fileType": "obj"},
        {"fileIdentifier": github_id("org", "models", models, "robots/missing.obj"), "data": b"x", "fileType": "obj"},
        {"fileIdentifier": github_id("fork", "models", fork, "robots/r1.obj"), "data": robots[1], "fileType": "obj"},
        {"fileIdentifier": github_id("lfsorg", "assets", lfs, "r2.obj"), "data": robots[2], "fileType": "obj"},
        {"fileIdentifier": github_id("gone", "models", gone, "a.obj"), "data": b"a", "fileType": "obj"},
        {"fileIdentifier": github_id("gone", "models", gone, "b.obj"), "data": b"b", "fileType": "obj"},
    ]  # fmt: skip
    write_annotations(cache, "github", github)
    write_annotations(cache, "sketchfab", [{"fileIdentifier": f"https://sketchfab.com/3d-models/{SKETCHFAB_UID}",
                                            "data": duck}])  # fmt: skip
    out = tmp_path / "out"
    with serve(served) as (url, requested):
        write_annotations(cache, "smithsonian", [
            {"fileIdentifier": f"{url}/si/duck.glb", "data": duck},
            {"fileIdentifier": f"{url}/si/robot0.obj", "fileType": "obj", "sha256": sha256(b"another file")},
        ])  # fmt: skip
        thing = "https://www.thingiverse.com/thing:1/files?fileId="
        write_annotations(cache, "thingiverse", [
            {"fileIdentifier": f"{thing}345", "fileType": "stl", "data": cube},
            {"fileIdentifier": f"{thing}346", "fileType": "usdz", "data": b"u"},  # not a readable type: not listed
        ])  # fmt: skip
        keys = {"source.kind": "objaverse_xl", "source.cache_dir": cache, "source.base_url": url,
                "source.thingiverse_url": url, "source.github_url": git_root.as_uri()}  # fmt: skip

        # 1. Smithsonian only, in this process: its duck becomes the copy the output holds
        cfg = PreprocessConfig(output_dir=str(out), workers=1)
        cfg.source.kind, cfg.source.cache_dir, cfg.source.xl_sources = "objaverse_xl", str(cache), ["smithsonian"]
        cfg.geometry.watertight.resolution, cfg.geometry.watertight.quality_samples = 96, 5000
        cfg.geometry.sample = SampleConfig(surface=3000, sharp_max=500, volume=4000, near=1000)
        cfg.render.resolution, cfg.render.extra_sets = 64, 1
        first = preprocess(cfg)
        assert first["ok"] == 1 and first["reasons"] == {"sha256_mismatch": 1}

        # 2. every source, killed (-9, driver and local Ray) once a shard of this run is committed
        args = [sys.executable, "-m", "craftsman_platform.cli", "preprocess", f"output_dir={out}", "workers=1",
                "shard_max_bytes=1", *(f"{k}={v}" for k, v in keys.items()), *SMALL_ARGS]  # fmt: skip
        proc = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
        deadline = time.time() + 300
        while time.time() < deadline and len(list((out / "journal").glob("shard-*.json"))) < 2:
            assert proc.poll() is None, "the run ended before the kill"
            time.sleep(0.1)
        kill_tree(proc)
        assert len(list((out / "journal").glob("shard-*.json"))) < 4, "the kill should land mid-run"

        # 3. the same command resumes and finishes
        res = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        assert f"/glbs/000-000/{SKETCHFAB_UID}.glb" not in requested  # a duplicate is never fetched

    rows = {r["source"]: r for r in manifest_rows(out)}
    uid = {source: r["uid"] for source, r in rows.items()}
    samples = list(wds.WebDataset(sorted(str(p) for p in (out / "shards").glob("*.tar")), shardshuffle=False).decode())
    ok = sorted(s for s, r in rows.items() if r["status"] == "ok")
    assert sorted(s["__key__"] for s in samples) == sorted(uid[s] for s in ok)  # every good object exactly once
    assert ok == sorted([f"{url}/si/duck.glb", f"{thing}345", github_id("org", "models", models, "robots/r1.obj"),
                         github_id("lfsorg", "assets", lfs, "r2.obj")])  # fmt: skip
    duplicates = {s: r["duplicate_of"] for s, r in rows.items() if r["status"] == "duplicate"}
    assert duplicates == {  # the output's own copy first, then the first listed
        f"https://sketchfab.com/3d-models/{SKETCHFAB_UID}": uid[f"{url}/si/duck.glb"],
        github_id("org", "models", models, "duck.glb"): uid[f"{url}/si/duck.glb"],
        github_id("fork", "models", fork, "robots/r1.obj"): uid[github_id("org", "models", models, "robots/r1.obj")],
    }  # fmt: skip
    reasons = {s: r["reason"] for s, r in rows.items() if r["status"] == "failed"}
    assert reasons == {
        f"{url}/si/robot0.obj": "sha256_mismatch",
        github_id("org", "models", models, "robots/missing.obj"): "not_found",
        github_id("gone", "models", gone, "a.obj"): "clone_failed",
        github_id("gone", "models", gone, "b.obj"): "clone_failed",
    }
    assert len(rows) == 11 and all(r["origin"] and r["license"] == "CC-BY" for r in rows.values())  # usdz filtered
    lfs_sample = next(s for s in samples if s["__key__"] == uid[github_id("lfsorg", "assets", lfs, "r2.obj")])
    assert lfs_sample["meta.json"]["source_sha256"] == lfs_sample["meta.json"]["listed_sha256"] == sha256(robots[2])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["duplicates"] == 3 and summary["by_origin"]["github"]["duplicate"] == 2
    assert "By source" in (out / "report.html").read_text()
