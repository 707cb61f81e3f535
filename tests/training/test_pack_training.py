"""Training from packs (`craft pack`) against training from the archive, on the tiny recipes.

Stated tolerances: a pack gives the same *kind* of data as the archive but other draws (fixed
chunks and view sets instead of fresh random subsets per step), so loss curves are compared in
shape, not value: every logged loss within 15% of the archive run's (diffusion; measured <= 6%),
and the VAE's loss falling over its 50 warm-up steps by the same factor within 0.15.
Resume from a pack is exact (1e-6), like from the archive.
"""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import craft, losses

TINY_DIFFUSION = ["experiment=diffusion_tiny", "trainer.ckpt_every=20", "logger=none"]


def train(run, *args: str) -> dict[int, float]:
    craft("train", *args, f"run_dir={run}")
    return losses(run)


def test_diffusion_from_a_latents_pack_follows_the_archive_and_resumes_exactly(
    latents_pack, diffusion_run, vae_run, tmp_path
):
    args = [*TINY_DIFFUSION, f"data.train_shards={latents_pack}", f"model.vae_checkpoint={vae_run}"]
    straight = train(tmp_path / "straight", *args, "trainer.max_steps=40")
    archive = losses(diffusion_run)  # the same recipe from the archive's shards (tests/prebuild.py)
    assert sorted(straight) == sorted(archive) == [10, 20, 30, 40]
    for step in straight:
        assert straight[step] == pytest.approx(archive[step], rel=0.15), (step, straight, archive)
    resumed = tmp_path / "resumed"
    train(resumed, *args, "trainer.max_steps=20")
    again = train(resumed, *args, "trainer.max_steps=40")  # resume=auto from step 20
    for step in (30, 40):
        assert again[step] == pytest.approx(straight[step], rel=1e-6, abs=1e-7)


def test_vae_from_a_vae_pack_trains_like_from_the_archive(vae_pack, vae_run, tmp_path):
    # vae_run is vae_tiny from the archive; its first 50 steps are the warm-up, whatever max_steps is,
    # so a 50-step run from the pack has the same learning-rate schedule up to there
    from_pack = train(tmp_path / "pack", "experiment=vae_tiny", "trainer.max_steps=50", "trainer.ckpt_every=50",
                      "logger=none", f"data.train_shards={vae_pack}")  # fmt: skip
    from_archive = {step: loss for step, loss in losses(vae_run).items() if step <= 50}
    assert sorted(from_pack) == sorted(from_archive) == [10, 20, 30, 40, 50]
    fall_pack, fall_archive = from_pack[50] / from_pack[10], from_archive[50] / from_archive[10]
    assert fall_pack < 0.9, from_pack  # it learns
    assert fall_pack == pytest.approx(fall_archive, abs=0.15), (from_pack, from_archive)


def test_evaluate_scores_a_pack_on_its_archive_objects(vae_pack, vae_run, tmp_path):
    out = tmp_path / "eval"
    run = craft("evaluate", f"checkpoint={vae_run}", f"data.eval_shards={vae_pack}", f"output_dir={out}",
                "data.max_objects=2", "depth=6", "surface_samples=20000", "logger=none")  # fmt: skip
    assert "vae pack: scoring its 8 objects on the archive's shards" in run.stdout + run.stderr
    result = json.loads((out / "metrics.json").read_text())
    assert result["objects"] == 2 and result["metrics"]["iou_vol"] > 0.5  # whole objects: all stored queries


def test_a_damaged_pack_shard_is_skipped_and_counted(vae_pack, tmp_path):
    from craftsman_platform.training.config import DataConfig
    from craftsman_platform.training.data import BatchIterator, ShardStream, TrainingData

    damaged = tmp_path / "pack"
    shutil.copytree(vae_pack, damaged)
    shard = sorted((damaged / "shards").glob("*.tar"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])  # cut inside a sample
    cfg = DataConfig(batch_size=2, num_workers=0, shuffle_buffer=4, epoch_samples=40, num_surface=1024,
                     num_vol=512, num_near=512)  # fmt: skip
    it = BatchIterator(ShardStream(TrainingData(str(damaged), cfg, "vae"), cfg, "vae"))
    batches = [next(it) for _ in range(40)]  # two virtual epochs: every chunk series of the parts
    assert all(b["surface"].shape == (2, 1024, 6) for b in batches)
    lost, damaged, unreadable = it.damage.counts()
    # one bad shard, however often it was read (damaged, or unreadable if the cut falls in its first
    # member); a cut inside a one-member sample loses that member whole, so at most one lost sample
    assert damaged + unreadable == 1 and lost <= 1, it.damage.state()


def test_text_model_from_a_latents_pack_follows_the_archive(latents_pack, text_run, vae_run, tmp_path):
    import webdataset as wds

    info = json.loads((latents_pack / "pack.json").read_text())
    assert info["captioned"] == info["objects"] == 8 and info["recipe"]["captions"]["sha256"]
    captions = {s["__key__"]: json.loads(s["captions.json"]) for s in wds.WebDataset(
        sorted(str(p) for p in (latents_pack / "shards").glob("*.tar")), shardshuffle=False)}  # fmt: skip
    assert ["a duck given at pack time"] in captions.values()  # the pack-time file replaced the archive's
    assert ["a plain cube", "a box"] in captions.values()  # the others kept theirs
    args = ["experiment=text_diffusion_tiny", "trainer.ckpt_every=20", "logger=none", f"model.vae_checkpoint={vae_run}"]
    from_pack = train(tmp_path / "pack", *args, f"data.train_shards={latents_pack}", "trainer.max_steps=40")
    archive = losses(text_run)  # the same recipe from the archive's shards (tests/prebuild.py)
    assert sorted(from_pack) == sorted(archive) == [10, 20, 30, 40]
    for step in from_pack:
        assert from_pack[step] == pytest.approx(archive[step], rel=0.15), (step, from_pack, archive)
