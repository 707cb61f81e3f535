"""Real mesh corpora available offline, used by tests, benchmarks and the demo.

* PyPI `pybullet` ships `pybullet_data/`: ~1,200 OBJ/STL files (1,000 procedural objects made of
  touching parts in `random_urdfs/`, robot parts, a duck, a textured sphere, ...).
* Debian `assimp-testmodels` ships /usr/share/assimp/models: valid and deliberately malformed files.
"""
from __future__ import annotations

import random
from pathlib import Path

ASSIMP_MODELS = Path("/usr/share/assimp/models")
MESH_SUFFIXES = (".obj", ".stl")


def pybullet_data_dir() -> Path:
    """The `pybullet_data` folder of the installed pybullet package."""
    import pybullet_data

    return Path(pybullet_data.getDataPath())


def assimp_models_dir() -> Path:
    if not ASSIMP_MODELS.is_dir():
        raise FileNotFoundError(f"{ASSIMP_MODELS} is missing: install Debian's assimp-testmodels (make setup does)")
    return ASSIMP_MODELS


def pybullet_meshes() -> list[Path]:
    """Every OBJ/STL file in pybullet_data, sorted."""
    root = pybullet_data_dir()
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in MESH_SUFFIXES and p.is_file())


def register_resolvers() -> None:
    """${pybullet:REL} and ${assimp:REL} in configs resolve to files of those corpora."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("pybullet", lambda rel: str(pybullet_data_dir() / rel), replace=True)
    OmegaConf.register_new_resolver("assimp", lambda rel: str(assimp_models_dir() / rel), replace=True)


def fixed_sample(n: int, seed: int = 0) -> list[Path]:
    """A fixed, seeded sample of n pybullet meshes: half procedural objects, half the rest."""
    meshes = pybullet_meshes()
    procedural = [p for p in meshes if "random_urdfs" in p.parts]
    other = [p for p in meshes if "random_urdfs" not in p.parts]
    rng = random.Random(seed)
    k = min(len(other), n - n // 2)
    return sorted(rng.sample(procedural, n - k) + rng.sample(other, k))
