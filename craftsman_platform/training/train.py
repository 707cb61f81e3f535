"""`craft train experiment=NAME data.train_shards=GLOB run_dir=DIR [launcher=ray launcher.num_workers=K]`.

The config is composed once, here on the driver, validated, saved as RUN_DIR/config.yaml and sent
to the workers as a resolved plain dict. launcher=local trains in this process; launcher=ray runs
Ray Train's TorchTrainer (gloo on CPU, NCCL on GPU) on the local Ray or `ray.address`; under
torchrun or srun (launcher=torchrun) each process is one rank (training/slurm.py, cluster/slurm/).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from craftsman_platform.errors import ConfigError, MissingInput, check_writable
from craftsman_platform.models.build import ModelConfig
from craftsman_platform.models.checkpoints import latest_checkpoint, read_meta
from craftsman_platform.paths import CONF_DIR
from craftsman_platform.raycluster import init_ray
from craftsman_platform.shapedata.sample import expand_urls
from craftsman_platform.training import stop
from craftsman_platform.training.config import LauncherConfig, TrainConfig, to_train_config
from craftsman_platform.training.loop import train_worker
from craftsman_platform.training.slurm import ranks_from_slurm
from craftsman_platform.training.tasks import check_vae_checkpoint

log = logging.getLogger("craft.train")
LAUNCHERS = ("local", "ray", "torchrun")
RESUME = ("auto", "never")


# What may differ between a run's checkpoints and a resume of it: cadence, logging, placement (a moved
# run_dir included) and memory/speed switches that do not change the computation. The rest is refused.
RESUMABLE_CHANGES = (
    "trainer.max_steps",
    "trainer.log_every",
    "trainer.ckpt_every",
    "trainer.keep_checkpoints",
    "trainer.compile",
    "trainer.compile_backend",
    "data.num_workers",
    "model.vae.checkpointing",
    "model.denoiser.checkpointing",
    "model.conditioner.checkpointing",
    "logger.",
    "launcher.",
    "ray.",
    "resume",
    "run_dir",
)


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(previous: dict, current: dict) -> dict[str, tuple]:
    """{key: (the run's value, this command's value)} for every key that differs."""
    old, new = _flatten(previous), _flatten(current)
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def check_resume(cfg: TrainConfig, cfg_dict: dict) -> dict[str, tuple]:
    """A resume may change only RESUMABLE_CHANGES; returns those changes (logged), refuses the rest."""
    ckpt = latest_checkpoint(cfg.run_dir) if cfg.resume == "auto" else None
    if ckpt is None:
        return {}
    changes = config_changes(read_meta(ckpt)["config"], cfg_dict)
    refused = {k: v for k, v in changes.items() if not k.startswith(RESUMABLE_CHANGES)}
    if refused:
        listing = "; ".join(f"{k}={b} (the run has {a})" for k, (a, b) in refused.items())
        raise ConfigError(
            f"run_dir={cfg.run_dir} holds a run with another config: {listing}. Resume with the run's "
            "values (only trainer.max_steps, logging, checkpoint cadence, placement and checkpointing "
            "switches may change) or use another run_dir"
        )
    return changes


def validate(cfg: TrainConfig) -> None:
    """Everything that can be checked before any worker starts; errors name the key."""
    if not cfg.run_dir:
        raise ConfigError("run_dir is required: craft train ... run_dir=DIR")
    check_writable(cfg.run_dir, "run_dir")
    if cfg.launcher.kind not in LAUNCHERS:
        raise ConfigError(f"launcher.kind must be one of {LAUNCHERS}, got {cfg.launcher.kind!r}")
    if cfg.resume not in RESUME:
        raise ConfigError(f"resume must be one of {RESUME}, got {cfg.resume!r}")
    if cfg.resume == "never" and latest_checkpoint(cfg.run_dir) is not None:
        raise ConfigError(f"resume=never but {cfg.run_dir} already has checkpoints: use another run_dir or resume=auto")
    if cfg.trainer.max_steps < 1 or cfg.trainer.grad_accum < 1 or cfg.data.batch_size < 1:
        raise ConfigError("trainer.max_steps, trainer.grad_accum and data.batch_size must be >= 1")
    if cfg.data.view_set not in ("random", "canonical"):
        raise ConfigError(f"data.view_set must be random or canonical, got {cfg.data.view_set!r}")
    expand_urls(cfg.data.train_shards)
    if cfg.model.kind == "diffusion":
        check_vae_checkpoint(cfg.model)
    if cfg.init_from:
        check_init_from(cfg)


def check_init_from(cfg: TrainConfig) -> Path:
    """`init_from` names weights of this model's kind whose every tensor fits the configured model."""
    from safetensors import safe_open

    from craftsman_platform.models.build import build_diffusion, build_vae

    ckpt = latest_checkpoint(cfg.init_from)
    if ckpt is None:
        raise MissingInput(f"init_from={cfg.init_from}: no checkpoint there")
    kind = read_meta(ckpt)["config"]["model"]["kind"]
    if kind != cfg.model.kind:
        raise ConfigError(f"init_from={ckpt} holds a {kind} model, this run trains a {cfg.model.kind}")
    import torch

    with torch.device("meta"):
        model = build_vae(cfg.model) if kind == "vae" else build_diffusion(cfg.model, load_weights=False)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with safe_open(str(ckpt / "weights.safetensors"), "pt") as f:
        theirs = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    wrong = [f"{k} {theirs[k]} vs {ours[k]}" for k in theirs if k in ours and theirs[k] != ours[k]]
    unknown = [k for k in theirs if k not in ours]
    if wrong or unknown:
        raise ConfigError(
            f"init_from={ckpt} does not fit model.*: " + "; ".join((wrong + [f"{k} unknown" for k in unknown])[:5])
        )
    return ckpt


def ray_resources(launcher: LauncherConfig, cluster_gpus: float) -> tuple[bool, dict[str, float]]:
    """(use_gpu, resources per worker): one GPU per worker when asked, or, with `launcher.use_gpu`
    unset, when the cluster has GPUs; each worker then binds the GPU of its LOCAL_RANK."""
    use_gpu = cluster_gpus > 0 if launcher.use_gpu is None else launcher.use_gpu
    return use_gpu, {"CPU": launcher.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}


def launch_ray(cfg: TrainConfig, cfg_dict: dict) -> dict:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    verbose = os.environ.get("CRAFT_VERBOSE") == "1"
    ray = init_ray(cfg.ray, worker_setup=ray_worker_setup_verbose if verbose else ray_worker_setup)
    storage = cfg.launcher.storage_path or str(Path(cfg.run_dir).resolve() / "ray")
    use_gpu, resources = ray_resources(cfg.launcher, ray.cluster_resources().get("GPU", 0))
    log.info("Ray Train: %d workers, %s per worker", cfg.launcher.num_workers, resources)
    trainer = TorchTrainer(
        train_loop_per_worker=_ray_entry,
        train_loop_config=cfg_dict,
        scaling_config=ScalingConfig(
            num_workers=cfg.launcher.num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=cfg.name, storage_path=storage, failure_config=FailureConfig(max_failures=cfg.launcher.max_failures)
        ),
    )
    result = fit_interruptibly(trainer, cfg)
    if result.error:
        raise result.error
    ranks = sorted(Path(cfg.run_dir, "workers").glob("rank-*.json"))
    return {"workers": [json.loads(p.read_text()) for p in ranks]}


def fit_interruptibly(trainer, cfg: TrainConfig):
    """`trainer.fit()` in a thread, so that this (main) thread keeps our SIGTERM/SIGINT handlers:
    a signal writes RUN_DIR/STOP and the ranks checkpoint and end as "preempted". (Ray Train's own
    SIGINT handler, installed only when fit runs in the main thread, aborts without a checkpoint.)"""
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
            outcome["error"] = err

    stop.install(cfg.trainer.stop_grace_s + 30, stop.ask_workers(cfg.run_dir))  # the ranks' grace, then teardown
    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)  # short waits: signal handlers run between them
    stop.finish()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def ray_worker_setup_verbose() -> None:
    """Runs in every Ray worker process of a training job: the stop handlers (training/stop.py)."""
    stop.ray_worker_setup()


def ray_worker_setup() -> None:
    """The same, with Ray Train's chatter quieted (without --verbose)."""
    stop.ray_worker_setup()
    quiet_ray_train()


def quiet_ray_train() -> None:
    """In every Ray worker of a training job (unless --verbose): Ray Train's per-report INFO line
    ("Reporting training result N: TrainingReport(...)") and the placement-group cleaner's State API
    warnings are library chatter; the project's own progress line says what happened."""
    import ray

    train_v2 = os.path.join(os.path.dirname(ray.__file__), "train", "v2", "_internal")
    logging.getLogger(os.path.join(train_v2, "execution", "context.py")).setLevel(logging.WARNING)  # named by path
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def _ray_entry(cfg_dict: dict) -> None:
    """Each Ray Train worker: one rank. After a failure the group restarts here and resumes from RUN_DIR."""
    cfg_dict = dict(cfg_dict, resume="auto")
    summary = train_worker(cfg_dict)
    Path(cfg_dict["run_dir"], "workers", f"rank-{summary['rank']}.json").write_text(json.dumps(summary))


def adopt_model(dcfg: DictConfig, overrides: list[str]) -> DictConfig:
    """With `init_from`, the model is the weights' model: its `model` section comes from that
    checkpoint's config, then this command line's own `model.*` overrides apply on top (loss weights,
    CFG dropout, checkpointing switches...). Interpolations (data sizes) follow the new model."""
    ckpt = latest_checkpoint(dcfg.init_from)
    if ckpt is None:
        raise MissingInput(f"init_from={dcfg.init_from}: no checkpoint there")
    model = OmegaConf.merge(
        OmegaConf.structured(ModelConfig),
        read_meta(ckpt)["config"]["model"],
        OmegaConf.from_dotlist([o.removeprefix("model.") for o in overrides if o.startswith("model.")]),
    )
    dcfg = dcfg.copy()
    with open_dict(dcfg):
        dcfg.model = model
    return dcfg


def _command_line_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run(dcfg: DictConfig) -> dict:
    ranks_from_slurm(dcfg.launcher.kind)  # before anything is written: srun ranks, or a refusal
    if dcfg.get("init_from") and latest_checkpoint(dcfg.run_dir or "") is None:
        dcfg = adopt_model(dcfg, _command_line_overrides())
    cfg = to_train_config(dcfg)
    validate(cfg)
    cfg_dict = OmegaConf.to_container(dcfg, resolve=True)
    for key, (old, new) in check_resume(cfg, cfg_dict).items():
        log.info("resuming with %s=%s (the run had %s)", key, new, old)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank composes; one writes
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg_dict)))
        stop.stop_file(run_dir).unlink(missing_ok=True)  # a stop asked of an earlier attempt
    os.environ.setdefault("WANDB_SILENT", "true")
    log.info("run %s: %s (%s launcher) -> %s", cfg.name, cfg.model.kind, cfg.launcher.kind, run_dir)
    if cfg.launcher.kind == "ray":
        return launch_ray(cfg, cfg_dict)
    summary = train_worker(cfg_dict)
    (run_dir / "workers" / f"rank-{summary['rank']}.json").write_text(json.dumps(summary))
    return summary


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(dcfg: DictConfig) -> None:
    summary = run(dcfg)
    workers = summary.get("workers", [summary])
    states = sorted({(w["status"], w["step"]) for w in workers})
    checkpoint = next((w["checkpoint"] for w in workers if w.get("checkpoint")), None)
    for status, step in states:
        where = f"checkpoint {checkpoint}" if checkpoint else f"checkpoints in {Path(dcfg.run_dir) / 'checkpoints'}"
        print(f"train: {status} at step {step} ({len(workers)} rank(s)); {where}")
    if any(s == "preempted" for s, _ in states):
        print("train: stopped on request after a checkpoint; the same command (resume=auto) continues it")
