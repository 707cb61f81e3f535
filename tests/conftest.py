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
