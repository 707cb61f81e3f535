"""The wheel alone is the product: built from this tree, installed without `-e` into a fresh
folder, its `craft` runs from another folder with the configs it ships (no checkout on the path)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path, env: dict | None = None) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_installed_wheel_runs_craft_summary_from_another_folder(tmp_path):
    source, wheels, site, elsewhere = (tmp_path / d for d in ("source", "wheels", "site", "elsewhere"))
    elsewhere.mkdir(), source.mkdir()
    # the wheel's inputs, copied: setuptools writes build/ and *.egg-info/ next to its sources
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "craftsman_platform", source / "craftsman_platform", ignore=shutil.ignore_patterns("__pycache__")
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run(*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source), cwd=tmp_path)
    (wheel,) = wheels.glob("craftsman_platform-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"craftsman_platform"}, tops  # one import package, nothing generic at the top
    assert "craftsman_platform/conf/experiment/vae_tiny.yaml" in names

    run(*pip, "install", "--no-deps", "--target", str(site), str(wheel), cwd=tmp_path)
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"}
    where = run(
        sys.executable, "-c", "import craftsman_platform; print(craftsman_platform.__file__)", cwd=elsewhere, env=env
    )
    assert where.strip().startswith(str(site)), where  # the installed copy, not the checkout
    out = run(str(site / "bin" / "craft"), "summary", "experiment=vae_tiny", cwd=elsewhere, env=env)
    assert "total: 1,012,513 parameters" in out, out  # vae_tiny, composed from the wheel's own conf/
