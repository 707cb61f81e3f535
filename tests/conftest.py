"""Shared fixtures: real corpora and small mesh files written on the fly."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.corpora import assimp_models_dir, pybullet_data_dir


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

    return make_tiny_shards(tmp_path_factory.mktemp("tiny_shards"))


@pytest.fixture(scope="session")
def vae_run(tiny_shards, tmp_path_factory) -> Path:
    """experiment=vae_tiny trained on the 8 real shapes (the recipe `make demo` uses), W&B offline."""
    from helpers import craft, shard_glob

    run = tmp_path_factory.mktemp("vae") / "run"
    craft("train", "experiment=vae_tiny", f"data.train_shards={shard_glob(tiny_shards)}", f"run_dir={run}")
    return run


@pytest.fixture(scope="session")
def diffusion_run(tiny_shards, vae_run, tmp_path_factory) -> Path:
    """experiment=diffusion_tiny, briefly, on the frozen vae_run."""
    from helpers import craft, shard_glob

    run = tmp_path_factory.mktemp("diffusion") / "run"
    craft("train", "experiment=diffusion_tiny", f"data.train_shards={shard_glob(tiny_shards)}", f"run_dir={run}",
          f"model.vae_checkpoint={vae_run}", "trainer.max_steps=40", "trainer.ckpt_every=20", "logger=none")
    return run
