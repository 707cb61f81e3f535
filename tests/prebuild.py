"""Build the suite's expensive shared fixtures in the background: `python tests/prebuild.py ROOT`.

`make test` starts this once at the beginning of the session (tests/conftest.py), so the tiny
shards, the 1000-step tiny VAE and the short diffusion runs (image and text) are made by a process of their own while
both test workers run everything that does not need them. Each result is announced with a
`ROOT/shared-NAME.done` file holding its path (or `.failed` holding the error)."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import craft, make_tiny_shards, shard_glob  # noqa: E402


def step(root: Path, name: str, build) -> Path:
    folder = root / f"shared-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        result = build(folder)
    except BaseException:
        (root / f"shared-{name}.failed").write_text(traceback.format_exc())
        raise
    (root / f"shared-{name}.done").write_text(str(result))
    return result


def main(root: Path) -> None:
    shards = step(root, "tiny_shards", make_tiny_shards)
    vae = step(root, "vae_run", lambda f: train(f, "experiment=vae_tiny", f"data.train_shards={shard_glob(shards)}"))
    for name, experiment in (("diffusion_run", "diffusion_tiny"), ("text_run", "text_diffusion_tiny")):
        step(root, name, lambda f, e=experiment: train(f, *short_diffusion(e, shards, vae)))


def short_diffusion(experiment: str, shards: Path, vae: Path) -> list[str]:
    """A 40-step run of a tiny diffusion experiment on the frozen tiny VAE (the diffusion_run and
    text_run fixtures)."""
    return [f"experiment={experiment}", f"data.train_shards={shard_glob(shards)}", f"model.vae_checkpoint={vae}",
            "trainer.max_steps=40", "trainer.ckpt_every=20", "logger=none"]  # fmt: skip


def train(folder: Path, *args: str) -> Path:
    craft("train", *args, f"run_dir={folder / 'run'}")
    return folder / "run"


if __name__ == "__main__":
    main(Path(sys.argv[1]))
