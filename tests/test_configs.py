"""Every top-level config (preprocess, inspect, train with each experiment, evaluate, generate,
app, convert) composes from the packaged conf/ and builds what it configures; the YAML files hold
no dataclass default; bad keys and values fail at start, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from craftsman_platform.errors import MissingInput
from craftsman_platform.evaluation.config import EvalConfig
from craftsman_platform.evaluation.evaluate import validate as evaluate_validate
from craftsman_platform.geometry.config import InspectConfig
from craftsman_platform.geometry.mesh_report import expand_inputs, inspect_one
from craftsman_platform.inference.config import AppConfig, GenerateConfig
from craftsman_platform.inference.pipeline import Generator
from craftsman_platform.inference.runtime import resolve_device
from craftsman_platform.models.build import module_summary
from craftsman_platform.models.checkpoints import load_vae
from craftsman_platform.paths import CONF_DIR
from craftsman_platform.pipelines.preprocess.config import PreprocessConfig
from craftsman_platform.pipelines.preprocess.job import validate as preprocess_validate
from craftsman_platform.pipelines.preprocess.sources import list_source
from craftsman_platform.schemas import SCHEMAS, register
from craftsman_platform.shapedata.cameras import DEFAULT_DISTANCE
from craftsman_platform.shapedata.sample import expand_urls
from craftsman_platform.training.config import ConvertConfig, TrainConfig, to_train_config
from craftsman_platform.training.convert import convert
from craftsman_platform.training.engine import deepspeed_config, lr_lambda
from craftsman_platform.training.train import validate

register()
EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


def compose_config(name: str, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def compose_train(*overrides: str):
    return compose_config("train", *overrides)


# ---------------------------------------------------------------------------------------------
# Every top-level config builds what it configures
# ---------------------------------------------------------------------------------------------


def test_preprocess_config_builds_its_sources(tmp_path, pybullet_dir):
    cfg = OmegaConf.to_object(compose_config("preprocess", f"source.path={pybullet_dir}", f"output_dir={tmp_path}/o"))
    assert isinstance(cfg, PreprocessConfig) and cfg.render.distance == DEFAULT_DISTANCE
    preprocess_validate(cfg)
    assert sum(b.num_rows for b in list_source(cfg.source).batches) > 10


def test_inspect_config_builds_the_geometry_core(pybullet_dir):
    cfg = OmegaConf.to_object(compose_config("inspect", f"inputs=[{pybullet_dir}/cube.obj]"))
    assert isinstance(cfg, InspectConfig)
    record = inspect_one(expand_inputs(cfg.inputs)[0], cfg.geometry)
    assert record["status"] == "ok" and record["n_surface"] == cfg.geometry.sample.surface


def test_evaluate_config_builds_its_reader_and_model(tmp_path, tiny_shards, vae_run):
    cfg = OmegaConf.to_object(
        compose_config(
            "evaluate",
            f"checkpoint={vae_run}",
            f"data.eval_shards={tiny_shards}/shards/*.tar",
            f"output_dir={tmp_path}",
        )
    )
    assert isinstance(cfg, EvalConfig) and cfg.logger.wandb.mode == "offline"  # the logger group, as in train
    assert compose_config("evaluate", "logger=none").logger.wandb.enabled is False
    vae, _, which = load_vae(evaluate_validate(cfg))
    assert which == "ema" and vae.cfg.num_inputs == 1024


@pytest.mark.parametrize("name", ["generate", "app"])
def test_generate_and_app_configs_build_the_generator(name, diffusion_run):
    cfg = OmegaConf.to_object(compose_config(name, f"checkpoint={diffusion_run}"))
    assert isinstance(cfg, GenerateConfig if name == "generate" else AppConfig)
    gen = Generator.load(cfg.checkpoint, cfg.ema, resolve_device(cfg.device))
    assert gen.weights == "ema" and gen.image_size == 64 and gen.cfg.kind == "diffusion"


def test_convert_config_builds_and_names_a_missing_checkpoint(tmp_path):
    cfg = OmegaConf.to_object(
        compose_config("convert", f"checkpoint={tmp_path}/model.ckpt", f"output_dir={tmp_path}/o")
    )
    assert isinstance(cfg, ConvertConfig) and cfg.config is None
    with pytest.raises(MissingInput, match="model.ckpt"):
        convert(cfg)


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], tree


def test_yaml_files_hold_no_dataclass_default():
    """A YAML value equal to its dataclass default would silently override a changed default."""
    schemas = {"train": TrainConfig, **{n: s for n, s in SCHEMAS.items() if n != "train"}}
    group_root = {"data": "data", "model": "model", "trainer": "trainer", "deepspeed": "deepspeed"}
    group_root |= {"logger": "logger", "launcher": "launcher"}
    for path in sorted(Path(CONF_DIR).rglob("*.yaml")):
        rel = path.relative_to(CONF_DIR)
        tree = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
        tree.pop("defaults", None), tree.pop("hydra", None)
        if rel.parts[0] == "experiment":
            base, prefix = TrainConfig(), ""
        elif len(rel.parts) == 2:
            base, prefix = TrainConfig(), group_root[rel.parts[0]] + "."
        else:
            base, prefix = schemas[rel.stem](**({"output_dir": "x"} if rel.stem == "preprocess" else {})), ""
        defaults = dict(_leaves(OmegaConf.to_container(OmegaConf.structured(base), resolve=False)))
        for key, value in _leaves(tree, prefix):
            if key in ("name", "model.kind", "launcher.kind"):  # choices that name the option
                continue
            assert key not in defaults or defaults[key] != value, f"{rel}: {key}={value!r} is the default"


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
        validate(
            to_train_config(
                compose_train("experiment=vae_tiny", f"run_dir={tmp_path}", f"data.train_shards={tmp_path}/none-*.tar")
            )
        )
    (tmp_path / "a.tar").write_bytes(b"")
    with pytest.raises(ValueError, match="model.vae_checkpoint is required"):
        validate(
            to_train_config(
                compose_train("experiment=diffusion_tiny", f"run_dir={tmp_path}", f"data.train_shards={tmp_path}/a.tar")
            )
        )
    with pytest.raises(FileNotFoundError, match="model.vae_checkpoint"):
        validate(
            to_train_config(
                compose_train(
                    "experiment=diffusion_tiny",
                    f"run_dir={tmp_path}",
                    f"data.train_shards={tmp_path}/a.tar",
                    f"model.vae_checkpoint={tmp_path}/nothing",
                )
            )
        )


def test_shard_specs_expand(tmp_path):
    for i in range(3):
        (tmp_path / f"shard-{i:06d}.tar").write_bytes(b"")
    assert len(expand_urls(f"{tmp_path}/shard-*.tar")) == 3
    assert len(expand_urls(f"{tmp_path}/shard-{{000000..000001}}.tar")) == 2
    assert expand_urls(f"{tmp_path}/shard-000000.tar,pipe:cat x.tar,s3://bucket/a-{{0..1}}.tar")[1:] == [
        "pipe:cat x.tar",
        "s3://bucket/a-0.tar",
        "s3://bucket/a-1.tar",
    ]


def test_schedule_warms_up_then_decays_once():
    f = lr_lambda(warmup=10, total=110, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    values = [f(s) for s in range(10, 200)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # never restarts
    assert f(110) == pytest.approx(0.1) and f(10_000) == pytest.approx(0.1)
