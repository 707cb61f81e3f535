"""Every experiment composes and builds; bad keys and values fail at start, naming the key."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from craftsman_platform.models.build import module_summary
from craftsman_platform.config import CONF_DIR
from craftsman_platform.training.config import TrainConfig, register_configs, to_train_config
from craftsman_platform.training.data import expand_urls
from craftsman_platform.training.engine import deepspeed_config, lr_lambda
from craftsman_platform.training.train import validate

register_configs()
EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_the_experiments_are_there():
    assert {"vae_tiny", "vae_craftsman", "diffusion_tiny", "diffusion_craftsman"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_builds(name):
    cfg = to_train_config(compose_train(f"experiment={name}", "launcher=ray", "deepspeed=zero2"))
    assert cfg.name == name
    rows = dict((n, total) for n, total, _ in module_summary(cfg.model))
    assert rows["total"] > 0
    ds = deepspeed_config(cfg, world_size=4)
    assert ds["train_batch_size"] == cfg.data.batch_size * cfg.trainer.grad_accum * 4
    assert ds["gradient_clipping"] == cfg.trainer.grad_clip and ds["zero_optimization"]["stage"] == 2


def test_interpolations_tie_data_to_the_model():
    cfg = to_train_config(compose_train("experiment=diffusion_tiny"))
    assert cfg.data.num_surface == cfg.model.vae.num_inputs == 1024
    assert cfg.data.image_size == 64 and cfg.model.denoiser.context_dim == 64
    assert cfg.model.denoiser.latent_dim == cfg.model.vae.embed_dim


def test_misspelt_key_fails_naming_it():
    with pytest.raises(ConfigCompositionException, match="trainer.lrr"):
        compose_train("experiment=vae_tiny", "trainer.lrr=0.1")


def test_wrong_type_fails_naming_the_key():
    with pytest.raises(ConfigCompositionException, match="trainer.max_steps=many"):
        compose_train("trainer.max_steps=many")
    # the same check applies to values arriving from files or a driver's dict
    with pytest.raises(ValidationError, match="trainer.max_steps"):
        OmegaConf.merge(OmegaConf.structured(TrainConfig), {"trainer": {"max_steps": "many"}})


def test_bad_values_fail_at_start_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match="run_dir"):
        validate(to_train_config(compose_train("experiment=vae_tiny")))
    with pytest.raises(ValueError, match="model.vae.head"):
        to_train_config(compose_train("experiment=vae_tiny", "model.vae.head=udf"))
    with pytest.raises(FileNotFoundError, match="no shard matches"):
        validate(to_train_config(compose_train("experiment=vae_tiny", f"run_dir={tmp_path}",
                                               f"data.train_shards={tmp_path}/none-*.tar")))
    (tmp_path / "a.tar").write_bytes(b"")
    with pytest.raises(ValueError, match="model.vae_checkpoint is required"):
        validate(to_train_config(compose_train("experiment=diffusion_tiny", f"run_dir={tmp_path}",
                                               f"data.train_shards={tmp_path}/a.tar")))
    with pytest.raises(FileNotFoundError, match="model.vae_checkpoint"):
        validate(to_train_config(compose_train("experiment=diffusion_tiny", f"run_dir={tmp_path}", f"data.train_shards={tmp_path}/a.tar",
                                               f"model.vae_checkpoint={tmp_path}/nothing")))


def test_shard_specs_expand(tmp_path):
    for i in range(3):
        (tmp_path / f"shard-{i:06d}.tar").write_bytes(b"")
    assert len(expand_urls(f"{tmp_path}/shard-*.tar")) == 3
    assert len(expand_urls(f"{tmp_path}/shard-{{000000..000001}}.tar")) == 2
    assert expand_urls(f"{tmp_path}/shard-000000.tar,pipe:cat x.tar,s3://bucket/a-{{0..1}}.tar")[1:] == [
        "pipe:cat x.tar", "s3://bucket/a-0.tar", "s3://bucket/a-1.tar"]


def test_schedule_warms_up_then_decays_once():
    f = lr_lambda(warmup=10, total=110, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    values = [f(s) for s in range(10, 200)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # never restarts
    assert f(110) == pytest.approx(0.1) and f(10_000) == pytest.approx(0.1)
