"""`craft` and `craft inspect`: real Hydra composition, real meshes, real records."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from craftsman_platform.corpora import demo_meshes
from craftsman_platform.geometry.config import GeometryConfig
from craftsman_platform.paths import CONF_DIR
from craftsman_platform.schemas import register

ROOT = Path(__file__).resolve().parents[1]
CRAFT = [sys.executable, "-m", "craftsman_platform.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CRAFT, *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_inspect_config_composes_and_validates():
    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="inspect")
        geometry = OmegaConf.to_object(cfg.geometry)
        assert isinstance(geometry, GeometryConfig) and geometry == GeometryConfig()
        assert cfg.inputs == [] and all(p.is_file() for p in demo_meshes())
        with pytest.raises(Exception, match="resolutoin"):
            compose(config_name="inspect", overrides=["geometry.watertight.resolutoin=128"])
        with pytest.raises(Exception, match="resolution"):
            compose(config_name="inspect", overrides=["geometry.watertight.resolution=high"])


def test_help_lists_subcommands_and_keys():
    top = run("--help")
    assert top.returncode == 0 and "inspect" in top.stdout
    sub = run("inspect", "--help")
    assert sub.returncode == 0 and "geometry.watertight.resolution" in sub.stdout and "records.jsonl" in sub.stdout
    bad = run("nonsense")
    assert bad.returncode == 2 and "unknown subcommand" in bad.stderr


def test_bad_key_fails_at_start_naming_it(tmp_path):
    res = run("inspect", "geometry.sample.surfce=10", f"output_dir={tmp_path}")
    assert res.returncode != 0 and "surfce" in res.stderr


def test_inspect_records_good_and_bad_meshes(tmp_path, pybullet_dir, assimp_dir):
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    shutil.copy(pybullet_dir / "random_urdfs/000/000.obj", meshes / "good.obj")
    shutil.copy(assimp_dir / "OBJ/point_cloud.obj", meshes / "points.obj")
    shutil.copy(assimp_dir / "glTF2/BoxWithInfinites-glTF-Binary/BoxWithInfinites.glb", meshes / "inf.glb")
    out = tmp_path / "out"
    res = run(
        "inspect",
        f"inputs=[{meshes}]",
        f"output_dir={out}",
        "geometry.watertight.resolution=128",
        "geometry.sample.surface=2000",
        "geometry.sample.volume=4000",
        "geometry.sample.near=2000",
        "geometry.watertight.quality_samples=5000",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    records = {r["uid"].rsplit("-", 1)[0]: r for r in map(json.loads, (out / "records.jsonl").read_text().splitlines())}
    assert records["meshes_good"]["status"] == "ok" and records["meshes_good"]["watertight_method"] == "udf"
    assert records["meshes_good"]["n_surface"] == 2000
    assert records["meshes_points"] == {**records["meshes_points"], "status": "failed", "reason": "no_triangles"}
    assert records["meshes_inf"]["reason"] == "non_finite"
    assert "REJECTED no_triangles" in res.stdout and "1 ok, 2 rejected" in res.stdout
    assert (out / ".hydra" / "config.yaml").is_file()  # the composed config is saved with the run


def test_preprocess_config_composes_validates_and_documents(tmp_path):
    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = OmegaConf.to_object(
            compose(config_name="preprocess", overrides=[f"output_dir={tmp_path}", "source.path=x"])
        )
        assert cfg.geometry == GeometryConfig() and cfg.render.extra_sets == 4 and cfg.workers is None
        assert cfg.ray.dashboard_host == "127.0.0.1" and cfg.timeout_s == 300
        with pytest.raises(Exception, match="wokers"):
            compose(config_name="preprocess", overrides=["wokers=3"])
        with pytest.raises(Exception, match="timeout_s"):
            compose(config_name="preprocess", overrides=["timeout_s=soon"])
    missing = run("preprocess", "source.path=/nonexistent")
    assert missing.returncode != 0 and "output_dir" in missing.stderr
    helped = run("preprocess", "--help")
    assert helped.returncode == 0 and "source.kind=objaverse" in helped.stdout and "OUT/manifest/" in helped.stdout
