"""Shared fixtures: real corpora and small mesh files written on the fly.

The expensive ones (shards from the real preprocessing job, a trained tiny VAE and diffusion
model) are made once per test session, also when `make test` runs the suite on two workers
(pytest-xdist): `make test` has them built in the background from the start (tests/prebuild.py);
otherwise the first worker that needs one builds it under a file lock, the other waits and reuses it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import psutil
import pytest
from filelock import FileLock

from craftsman_platform.corpora import assimp_models_dir, pybullet_data_dir


def _session_root(tmp_path_factory) -> Path:
    """The folder all workers of this test session share."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def shared(tmp_path_factory, name: str, build: Callable[[Path], Path]) -> Path:
    """`build(folder)` once per session, whichever worker asks first; its result path for all.
    When the background prebuild (below) makes it, wait for that instead. CRAFT_TEST_REUSE=DIR
    reuses what an earlier session built in DIR (its basetemp), for quick reruns while developing."""
    reuse = os.environ.get("CRAFT_TEST_REUSE")  # a developer's folder of fixtures from an earlier session
    if reuse and (Path(reuse) / f"shared-{name}.done").exists():
        return Path((Path(reuse) / f"shared-{name}.done").read_text())
    root = _session_root(tmp_path_factory)
    folder, done, failed = root / f"shared-{name}", root / f"shared-{name}.done", root / f"shared-{name}.failed"
    if os.environ.get("CRAFT_TEST_PREBUILD") == "1" and name in PREBUILT_ORDER:  # the first worker starts it
        while not (done.exists() or failed.exists()):
            started = root / "prebuild.started"
            if started.exists() and not _running(int(started.read_text())) and not done.exists():
                pytest.fail(f"the background build ended without making {name} (see {root / 'prebuild.log'})")
            time.sleep(1)
        if failed.exists():
            pytest.fail(f"the background build of {name} failed:\n{failed.read_text()[-3000:]}")
        return Path(done.read_text())
    with FileLock(str(root / f"shared-{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            done.write_text(str(build(folder)))
    return Path(done.read_text())


# Session fixtures built in the background (tests/prebuild.py), in this order. Tests that need none
# of them run first, so both workers stay busy while those are made; within that order the slow
# ones go first, so no long test is left to run alone at the end. `make test` runs with
# --dist loadgroup: tests go to whichever worker is free, one by one, except those sharing a
# module-scoped fixture, which are grouped on one worker so the fixture is built once.
PREBUILT_ORDER = {"tiny_shards": 1, "vae_run": 2, "diffusion_run": 3, "text_run": 4}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(session, config, items):
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info and any(defs[-1].scope == "module" for defs in info.name2fixturedefs.values()):
            item.add_marker(pytest.mark.xdist_group(str(item.path.relative_to(config.rootpath))))

    def level(item) -> int:
        return max((PREBUILT_ORDER.get(f, 0) for f in getattr(item, "fixturenames", ())), default=0)

    items.sort(key=lambda item: (level(item), "slow" not in item.keywords))  # stable otherwise


@pytest.fixture(scope="session", autouse=True)
def prebuild(tmp_path_factory):
    """With CRAFT_TEST_PREBUILD=1 (`make test`), the first worker starts tests/prebuild.py at once."""
    if os.environ.get("CRAFT_TEST_PREBUILD") != "1":
        yield
        return
    if os.environ.get("PYTEST_XDIST_WORKER", "gw0") != "gw0":
        os.nice(5)  # the background build is on the critical path: it gets the CPU first
        yield
        return
    root = _session_root(tmp_path_factory)
    log = open(root / "prebuild.log", "w")
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("prebuild.py")), str(root)], stdout=log, stderr=subprocess.STDOUT
    )
    (root / "prebuild.started").write_text(str(proc.pid))
    os.nice(5)  # after starting it: the build keeps the normal priority
    yield
    if proc.poll() is None:  # the session ended first (a selection that did not need it)
        proc.kill()
    proc.wait()
    log.close()


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
def one_rank_curve(tiny_shards, tmp_path_factory) -> dict[int, float]:
    """The tiny VAE's losses over CURVE_STEPS steps in one process with grad_accum=2: the curve the
    distributed tests (torchrun, Ray Train, srun, sbatch) compare against."""
    from helpers import CURVE_STEPS, TWO_RANK_ARGS, craft, losses, shard_glob

    def build(folder: Path) -> Path:
        run = folder / "run"
        args = [f"data.train_shards={shard_glob(tiny_shards)}", f"run_dir={run}", f"trainer.max_steps={CURVE_STEPS}"]
        craft("train", *TWO_RANK_ARGS, *args, "trainer.grad_accum=2")
        return run

    return losses(shared(tmp_path_factory, "one_rank_curve", build))


@pytest.fixture(scope="session")
def vae_run(tiny_shards, tmp_path_factory) -> Path:
    """experiment=vae_tiny trained on the 8 real shapes (the recipe `make demo` uses), W&B offline."""
    from helpers import craft, shard_glob

    def build(folder: Path) -> Path:
        craft(
            "train", "experiment=vae_tiny", f"data.train_shards={shard_glob(tiny_shards)}", f"run_dir={folder / 'run'}"
        )
        return folder / "run"

    return shared(tmp_path_factory, "vae_run", build)


def _short_diffusion(tmp_path_factory, name: str, experiment: str, tiny_shards: Path, vae_run: Path) -> Path:
    from helpers import craft
    from prebuild import short_diffusion

    def build(folder: Path) -> Path:
        craft("train", *short_diffusion(experiment, tiny_shards, vae_run), f"run_dir={folder / 'run'}")
        return folder / "run"

    return shared(tmp_path_factory, name, build)


@pytest.fixture(scope="session")
def diffusion_run(tiny_shards, vae_run, tmp_path_factory) -> Path:
    """experiment=diffusion_tiny, briefly, on the frozen vae_run."""
    return _short_diffusion(tmp_path_factory, "diffusion_run", "diffusion_tiny", tiny_shards, vae_run)


@pytest.fixture(scope="session")
def text_run(tiny_shards, vae_run, tmp_path_factory) -> Path:
    """experiment=text_diffusion_tiny, briefly, on the frozen vae_run, from the archive's captions."""
    return _short_diffusion(tmp_path_factory, "text_run", "text_diffusion_tiny", tiny_shards, vae_run)


# Packs of the tiny archive (`craft pack`), shared by the pack and training tests
@pytest.fixture(scope="session")
def vae_pack(tiny_shards, tmp_path_factory) -> Path:
    """A vae pack: 3 chunk series of 1024 surface / 512 volume / 512 near points per object."""
    from helpers import PACK_VAE_ARGS, craft

    def build(folder: Path) -> Path:
        craft("pack", "kind=vae", f"source={tiny_shards}", f"output_dir={folder / 'pack'}", *PACK_VAE_ARGS)
        return folder / "pack"

    return shared(tmp_path_factory, "vae_pack", build)


@pytest.fixture(scope="session")
def latents_pack(tiny_shards, vae_run, tmp_path_factory) -> Path:
    """A latents pack encoded by vae_run, views at diffusion_tiny's 64 px (2 chunks: the 2 view sets);
    the archive's captions, the duck's replaced by a captions file given at pack time."""
    from helpers import craft

    def build(folder: Path) -> Path:
        # captions attached at pack time: the duck's from this file replace the archive's
        from helpers import manifest_rows

        duck = next(r["uid"] for r in manifest_rows(tiny_shards) if r["source"].endswith("/duck.obj"))
        (folder / "captions.tsv").write_text(f"uid\tcaption\n{duck}\ta duck given at pack time\n")
        craft("pack", "kind=latents", f"source={tiny_shards}", f"vae_checkpoint={vae_run}", "image_size=64",
              f"output_dir={folder / 'pack'}", "workers=2", f"captions={folder / 'captions.tsv'}")  # fmt: skip
        return folder / "pack"

    return shared(tmp_path_factory, "latents_pack", build)


@pytest.fixture(scope="session")
def s3_env(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A real S3 server (SeaweedFS) on 127.0.0.1 for this test process; the environment that reaches it."""
    from s3server import s3_server

    with s3_server(tmp_path_factory.mktemp("s3")) as env:
        yield env


@pytest.fixture()
def s3(s3_env, monkeypatch) -> dict[str, str]:
    """s3_env set in this process's environment (Ray workers started by the test inherit it)."""
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    return s3_env
