"""`craft pack` on the tiny real archive: vae and latents packs, read back by plain webdataset,
their identity, selection, resume, and what training does with them."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import webdataset as wds
from helpers import PACK_VAE_ARGS as VAE_ARGS
from helpers import craft
from PIL import Image
from safetensors.torch import load_file, save_file

from craftsman_platform.errors import ConfigError
from craftsman_platform.models.build import build_vae
from craftsman_platform.models.checkpoints import latest_checkpoint, load_weights, model_config, read_meta
from craftsman_platform.pipelines.pack.recipes import point_chunks
from craftsman_platform.pipelines.pack.select import select_rows
from craftsman_platform.shapedata.manifest import read_manifest
from craftsman_platform.shapedata.pack import decode_vae_sample, open_pack
from craftsman_platform.shapedata.sample import read_npy
from craftsman_platform.shapedata.views import shard_views


def samples(url: str) -> list[dict]:
    """Every sample of a shard, read back by plain webdataset."""
    return list(wds.WebDataset(url, shardshuffle=False, empty_check=False))


def archive_samples(archive: Path) -> dict[str, dict]:
    return {s["__key__"]: s for shard in sorted((archive / "shards").glob("*.tar")) for s in samples(str(shard))}


def manifest(path: Path) -> pd.DataFrame:
    """An archive's manifest (parts) or a pack's (one file)."""
    return read_manifest(str(path)).to_pandas()


# ---------------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------------


def test_select_expressions_over_manifest_columns():
    table = pd.DataFrame(
        {
            "uid": ["a", "b", "c", "d"],
            "chamfer": [0.01, 0.03, None, 0.001],
            "parts_lost": [0, 0, 1, 2],
            "lvis_category": ["chair", "mug", "chair", None],
        }  # fmt: skip
    )

    def pick(expr):
        return list(table[select_rows(table, expr)]["uid"])

    assert pick(None) == ["a", "b", "c", "d"]
    assert pick("chamfer < 0.02 and parts_lost == 0") == ["a"]
    assert pick("chamfer < 0.02 or parts_lost > 1") == ["a", "d"]
    assert pick("lvis_category in ['chair', 'mug'] and not (parts_lost >= 1)") == ["a", "b"]
    assert pick("lvis_category not in ['chair']") == ["b", "d"]
    assert pick("0.005 < chamfer <= 0.03") == ["a", "b"]
    with pytest.raises(ConfigError, match="unknown column 'chamfr'.*columns: uid, chamfer"):
        pick("chamfr < 0.02")
    with pytest.raises(ConfigError, match="Call is not allowed"):
        pick("__import__('os').system('true')")
    with pytest.raises(ConfigError, match="Attribute is not allowed"):
        pick("chamfer.real > 0")
    with pytest.raises(ConfigError, match="not a condition"):
        pick("chamfer")
    with pytest.raises(ConfigError, match="not an expression"):
        pick("chamfer <")


# ---------------------------------------------------------------------------------------------
# vae packs
# ---------------------------------------------------------------------------------------------


def test_vae_pack_holds_disjoint_slices_of_every_object(vae_pack, tiny_shards):
    pack = open_pack(str(vae_pack))
    archive = json.loads((tiny_shards / "config.json").read_text())
    assert pack.kind == "vae" and pack.chunks == 3 and pack.info["complete"]
    assert pack.info["source"]["config_hash"] == archive["config_hash"]
    assert pack.info["source"]["shards"] == [
        {"name": p.name, "bytes": p.stat().st_size} for p in sorted((tiny_shards / "shards").glob("*.tar"))
    ]
    assert pack.recipe == {"chunks": 3, "num_surface": 1024, "num_vol": 512, "num_near": 512, "seed": 0}
    source = archive_samples(tiny_shards)
    assert set(manifest(vae_pack)["uid"]) == set(source) and pack.info["objects"] == len(source)
    seen: dict[str, list] = {uid: [] for uid in source}
    for part, shards in enumerate(pack.series()):
        for chunk, url in enumerate(shards):
            for s in samples(url):
                assert set(k for k in s if not k.startswith("__")) == {"points.npy"}
                seen[s["__key__"]].append((part, chunk, decode_vae_sample(s, pack.recipe)))
    for uid, got in seen.items():
        assert sorted(c for _, c, _ in got) == [0, 1, 2], uid  # every object once in every chunk series
        for name, n in (("surface", 1024), ("vol", 512), ("near", 512)):
            full = read_npy(source[uid][f"{name}.npy"])
            rows = {r.tobytes() for r in full}
            chunks = [arrays[name] for _, _, arrays in got]
            assert all(c.shape == (n, full.shape[1]) and c.dtype == np.float16 for c in chunks)
            assert all(r.tobytes() in rows for c in chunks for r in c)  # the archive's own points
            assert len({r.tobytes() for c in chunks for r in c}) == 3 * n  # disjoint slices
    per_object = sum(p.stat().st_size for p in (tiny_shards / "shards").glob("*.tar")) / len(source)
    assert pack.info["bytes"] / (len(source) * 3) < 0.25 * per_object  # what one sample reads


def test_epochs_read_another_chunk_of_every_part(vae_pack):
    pack = open_pack(str(vae_pack))
    series = pack.series()
    for epoch in range(4):
        urls = pack.epoch_urls(epoch)
        assert urls == [shards[(epoch + p) % 3] for p, shards in enumerate(series)]
    assert pack.epoch_urls(0) != pack.epoch_urls(1) and pack.epoch_urls(0) == pack.epoch_urls(3)


def test_vae_pack_resumes_and_refuses_another_recipe(vae_pack, tiny_shards, tmp_path):
    out = tmp_path / "vae"
    shutil.copytree(vae_pack, out)

    def contents() -> dict[str, list]:
        return {p.name: [sorted(s.items()) for s in samples(str(p))] for p in sorted((out / "shards").glob("*.tar"))}

    before = contents()
    again = craft("pack", "kind=vae", f"source={tiny_shards}", f"output_dir={out}", *VAE_ARGS)
    assert "this run: 0 objects from 0 archive shards" in again.stdout
    # a job killed between a shard's upload and its journal: the shard is redone, nothing doubles
    (out / "journal" / "shard-000004.json").unlink()
    craft("pack", "kind=vae", f"source={tiny_shards}", f"output_dir={out}", *VAE_ARGS)
    after = contents()
    assert after == before  # the same members: a chunk is a function of the object, its seed and the recipe
    assert {p.stem for p in (out / "journal").glob("shard-*.json")} == {Path(n).stem for n in after}
    other = craft("pack", "kind=vae", f"source={tiny_shards}", f"output_dir={out}", *VAE_ARGS, "num_vol=256",
                  check=False)  # fmt: skip
    assert other.returncode == 2 and "holds a pack made with other recipe" in other.stderr


def test_select_picks_objects_and_names_unknown_columns(tiny_shards, tmp_path):
    rows = manifest(tiny_shards)
    # between the smallest and the largest Chamfer (fast-path objects record 0 exactly)
    threshold = float(rows["chamfer"][rows["chamfer"] > 0].median())
    out = tmp_path / "picked"
    craft("pack", "kind=vae", f"source={tiny_shards}", f"output_dir={out}", *VAE_ARGS, "chunks=1",
          f"select='chamfer < {threshold} and parts_lost == 0'")  # fmt: skip
    expected = set(rows[(rows["chamfer"] < threshold) & (rows["parts_lost"] == 0)]["uid"])
    assert set(manifest(out)["uid"]) == expected and 0 < len(expected) < len(rows)
    assert open_pack(str(out)).info["select"] == f"chamfer < {threshold} and parts_lost == 0"
    bad = craft("pack", "kind=vae", f"source={tiny_shards}", f"output_dir={tmp_path / 'bad'}", "select='chamfr < 1'",
                check=False)  # fmt: skip
    assert bad.returncode == 2 and "unknown column 'chamfr'" in bad.stderr
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    unquoted = craft(
        "pack", "kind=vae", f"source={tiny_shards}", f"output_dir={out}", "select=parts_lost == 0", check=False
    )
    assert unquoted.returncode == 2 and "quote a value holding spaces" in unquoted.stderr


# ---------------------------------------------------------------------------------------------
# latents packs
# ---------------------------------------------------------------------------------------------


def test_latents_equal_the_trainers_posterior_and_views_the_image_path(latents_pack, tiny_shards, vae_run):
    pack = open_pack(str(latents_pack))
    assert pack.kind == "latents" and pack.chunks == 2 and pack.recipe["view_sets"] == 2
    ckpt = latest_checkpoint(vae_run)
    assert pack.info["vae"]["checkpoint"] == str(ckpt) and pack.info["vae"]["weights"] == "ema"
    # the VAE exactly as the diffusion task builds it: model.vae of the checkpoint, EMA weights, eval mode
    vae = build_vae(model_config(read_meta(ckpt)))
    vae.load_state_dict(load_weights(ckpt, prefer_ema=True)[0])
    vae.eval()
    source = archive_samples(tiny_shards)
    checked = 0
    for shards in pack.series():
        for chunk, url in enumerate(shards):
            for s in samples(url):
                raw = source[s["__key__"]]
                points = point_chunks(raw, {"surface": 1024}, 2, 0)[chunk]["surface"]
                with torch.no_grad():
                    post = vae.posterior(torch.from_numpy(points.astype(np.float32))[None])
                mean, logvar = read_npy(s["mean.npy"]), read_npy(s["logvar.npy"])
                assert mean.dtype == np.float16 and mean.shape == (64, 16)
                # float16 storage: within half a float16 ulp (relative 2^-11) of the fp32 posterior
                np.testing.assert_allclose(mean.astype(np.float32), post.mean[0].numpy(), rtol=1e-3, atol=1e-4)
                np.testing.assert_allclose(logvar.astype(np.float32), post.logvar[0].numpy(), rtol=1e-3, atol=1e-4)
                images, c2w = shard_views(raw, range(4 * chunk, 4 * chunk + 4), 64)
                stored = np.stack(
                    [np.asarray(Image.open(io.BytesIO(s[f"rgb_{i:03d}.png"]))).transpose(2, 0, 1) for i in range(4)]
                )
                assert np.array_equal(stored, images)  # lossless: exactly the one image path's output
                np.testing.assert_array_equal(np.asarray(json.loads(s["cameras.json"])["c2w"], np.float32), c2w)
                checked += 1
    assert checked == 2 * len(source)


def test_diffusion_from_a_latents_pack_runs_no_vae(latents_pack, vae_run, tmp_path):
    from hydra import compose, initialize_config_dir

    from craftsman_platform.paths import CONF_DIR
    from craftsman_platform.schemas import register
    from craftsman_platform.training.config import to_train_config
    from craftsman_platform.training.data import SlotBatches, TrainingData
    from craftsman_platform.training.tasks import DiffusionTask

    overrides = ["experiment=diffusion_tiny", f"data.train_shards={latents_pack}", f"model.vae_checkpoint={vae_run}"]
    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = to_train_config(compose(config_name="train", overrides=overrides))
    data = TrainingData(cfg.data.train_shards, cfg.data, "diffusion")
    task = DiffusionTask(cfg, torch.device("cpu"), data)
    assert task.vae is None and task.from_pack
    batch = next(SlotBatches(data, cfg.data, "diffusion", 0, 1, 1))
    assert set(batch) >= {"mean", "logvar", "images", "c2w"} and "surface" not in batch
    assert batch["images"].shape[1:] == (4, 3, 64, 64) and batch["images"].dtype == torch.uint8
    cond = {"images": batch["images"], "c2w": batch["c2w"]}
    loss, _ = task.model(task._latents(batch, torch.Generator().manual_seed(0)), cond)
    assert torch.isfinite(loss)
    with pytest.raises(ConfigError, match="is a latents pack; model.kind=vae trains from a vae pack"):
        TrainingData(str(latents_pack), cfg.data, "vae")
    cfg.data.image_size = 32
    with pytest.raises(ConfigError, match="data.image_size=32 but the pack's views are 64 px"):
        TrainingData(str(latents_pack), cfg.data, "diffusion")


def test_a_latents_pack_of_another_vae_is_refused(latents_pack, vae_run, tiny_shards, tmp_path):
    other = tmp_path / "other-vae"
    shutil.copytree(vae_run, other, ignore=shutil.ignore_patterns("wandb"))
    ema = latest_checkpoint(other) / "ema.safetensors"
    state = load_file(ema)
    state["post_kl.weight"] = state["post_kl.weight"] + 0.01
    save_file(state, ema)
    run = craft("train", "experiment=diffusion_tiny", f"data.train_shards={latents_pack}",
                f"model.vae_checkpoint={other}", f"run_dir={tmp_path / 'run'}", "logger=none", check=False)  # fmt: skip
    made = open_pack(str(latents_pack)).info["vae"]["sha256"][:12]
    assert run.returncode == 2, run.stderr[-2000:]
    assert "was encoded by the VAE" in run.stderr and made in run.stderr and str(other) in run.stderr


def test_encoder_actors_give_the_same_pack(latents_pack, tiny_shards, vae_run, tmp_path):
    """encode.actors=1: the path a GPU cluster takes (one encoder actor per GPU fed by the tasks), here
    on the CPU; the pack equals the one encoded inside the tasks."""
    out = tmp_path / "actors"
    craft("pack", "kind=latents", f"source={tiny_shards}", f"vae_checkpoint={vae_run}", "image_size=64",
          f"output_dir={out}", "workers=2", "encode.actors=1", "encode.batch_size=3")  # fmt: skip
    ours, theirs = open_pack(str(out)), open_pack(str(latents_pack))
    assert ours.info["parts"] == theirs.info["parts"] and ours.info["vae"] == theirs.info["vae"]
    for a, b in zip(sum(ours.series(), []), sum(theirs.series(), [])):
        for x, y in zip(samples(a), samples(b)):
            assert x["__key__"] == y["__key__"] and x["rgb_000.png"] == y["rgb_000.png"]
            for name in ("mean.npy", "logvar.npy"):
                np.testing.assert_allclose(read_npy(x[name]), read_npy(y[name]), rtol=1e-3, atol=1e-4)
