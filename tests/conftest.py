"""Shared fixtures: real corpora and small mesh files written on the fly.

The expensive ones (shards from the real preprocessing job, a trained tiny VAE and diffusion
model) are made once per test session, also when `make test` runs the suite on two workers
(pytest-xdist): the first worker that needs one builds it under a file lock, the other waits and
reuses it.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import pytest
from filelock import FileLock

from craftsman_platform.corpora import assimp_models_dir, pybullet_data_dir


def shared(tmp_path_factory, name: str, build: Callable[[Path], Path]) -> Path:
    """`build(folder)` once per session, whichever worker asks first; its result path for all."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the session's common folder
    folder, done = root / f"shared-{name}", root / f"shared-{name}.done"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            done.write_text(str(build(folder)))
    return Path(done.read_text())


@pytest.fixture(scope="session")
def pybullet_dir() -> Path:
    return pybullet_data_dir()


@pytest.fixture(scope="session")
def assimp_dir() -> Path:
    return assimp_models_dir()


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """Shards written by the real preprocessing job from 8 real meshes (shared by the training tests)."""
    from helpers import make_tiny_shards

    return shared(tmp_path_factory, "tiny_shards", make_tiny_shards)


@pytest.fixture(scope="session")
def vae_run(tiny_shards, tmp_path_factory) -> Path:
    """experiment=vae_tiny trained on the 8 real shapes (the recipe `make demo` uses), W&B offline."""
    from helpers import craft, shard_glob

    def build(folder: Path) -> Path:
        craft("train", "experiment=vae_tiny", f"data.train_shards={shard_glob(tiny_shards)}", f"run_dir={folder / 'run'}")
        return folder / "run"
    return shared(tmp_path_factory, "vae_run", build)


@pytest.fixture(scope="session")
def diffusion_run(tiny_shards, vae_run, tmp_path_factory) -> Path:
    """experiment=diffusion_tiny, briefly, on the frozen vae_run."""
    from helpers import craft, shard_glob

    def build(folder: Path) -> Path:
        craft("train", "experiment=diffusion_tiny", f"data.train_shards={shard_glob(tiny_shards)}",
              f"run_dir={folder / 'run'}", f"model.vae_checkpoint={vae_run}", "trainer.max_steps=40",
              "trainer.ckpt_every=20", "logger=none")
        return folder / "run"
    return shared(tmp_path_factory, "diffusion_run", build)
