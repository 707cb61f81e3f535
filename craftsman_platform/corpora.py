"""Real mesh corpora available offline, used by tests, benchmarks and the demo.

* PyPI `pybullet` ships `pybullet_data/`: ~1,200 OBJ/STL files (1,000 procedural objects made of
  touching parts in `random_urdfs/`, robot parts, a duck, a textured sphere, ...).
* Debian `assimp-testmodels` ships /usr/share/assimp/models: valid and deliberately malformed files.

Files only: this module imports nothing of the package (the shards the tests train on are made by
preprocess/tiny_shards.py).
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


# The demo's meshes: real files from packages `make setup` installs, including two malformed
# ones the demo must report as rejected (non-finite vertices, a point cloud).
DEMO_MESHES = [
    ("pybullet", "duck.obj"),
    ("pybullet", "random_urdfs/000/000.obj"),
    ("pybullet", "random_urdfs/123/123.obj"),
    ("pybullet", "husky/meshes/wheel.stl"),
    ("pybullet", "textured_sphere_smooth.obj"),
    ("pybullet", "a1/meshes/trunk.obj"),
    ("assimp", "OBJ/spider.obj"),
    ("assimp", "glTF2/2CylinderEngine-glTF-Binary/2CylinderEngine.glb"),
    ("assimp", "STL/sphereWithHole.stl"),
    ("assimp", "glTF2/BoxWithInfinites-glTF-Binary/BoxWithInfinites.glb"),
    ("assimp", "OBJ/point_cloud.obj"),
]


# Captions of the demo's meshes (several for some: training draws one per step), for its text model.
DEMO_CAPTIONS = {
    "duck.obj": ["a yellow rubber duck", "a bath toy duck"],
    "random_urdfs/000/000.obj": ["a cluster of blocky parts"],
    "random_urdfs/123/123.obj": ["a jointed procedural object"],
    "husky/meshes/wheel.stl": ["a rugged robot wheel", "a knobbly tire"],
    "textured_sphere_smooth.obj": ["a smooth round ball"],
    "a1/meshes/trunk.obj": ["the trunk of a robot dog"],
    "OBJ/spider.obj": ["a spider", "an eight-legged spider"],
    "glTF2/2CylinderEngine-glTF-Binary/2CylinderEngine.glb": ["a two-cylinder engine"],
    "STL/sphereWithHole.stl": ["a sphere with a hole"],
}


def demo_meshes() -> list[Path]:
    roots = {"pybullet": pybullet_data_dir, "assimp": assimp_models_dir}
    return [roots[corpus]() / rel for corpus, rel in DEMO_MESHES]


# The assimp test models the benchmarks add to the fixed sample: many parts, a hole, two formats.
ASSIMP_BENCH_MESHES = [
    "OBJ/spider.obj",
    "glTF2/2CylinderEngine-glTF-Binary/2CylinderEngine.glb",
    "STL/sphereWithHole.stl",
    "OFF/Wuson.off",
    "PLY/Wuson.ply",
]


def fixed_sample(n: int, seed: int = 0) -> list[Path]:
    """A fixed, seeded sample of n pybullet meshes: half procedural objects, half the rest."""
    meshes = pybullet_meshes()
    procedural = [p for p in meshes if "random_urdfs" in p.parts]
    other = [p for p in meshes if "random_urdfs" not in p.parts]
    rng = random.Random(seed)
    k = min(len(other), n - n // 2)
    return sorted(rng.sample(procedural, n - k) + rng.sample(other, k))


def write_demo_list(folder: Path) -> Path:
    """FOLDER/pybullet and FOLDER/assimp as links to the two corpora, and FOLDER/meshes.txt listing
    the demo meshes through them: the listed files share FOLDER, so their uids read
    `pybullet_duck-...`, not the virtual environment's path."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, root in (("pybullet", pybullet_data_dir()), ("assimp", assimp_models_dir())):
        link = folder / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(root, target_is_directory=True)
    listing = folder / "meshes.txt"
    listing.write_text("".join(f"{corpus}/{rel}\n" for corpus, rel in DEMO_MESHES))
    return listing


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "demo-list":
        raise SystemExit(
            "usage: python -m craftsman_platform.corpora demo-list FOLDER   (links the corpora there, prints the list)"
        )
    print(write_demo_list(Path(sys.argv[2])))
