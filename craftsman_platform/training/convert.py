"""`craft convert checkpoint=model.ckpt output_dir=DIR`: a released CraftsMan v1 checkpoint as ours.

Reads the reference's Lightning checkpoint (never executing it: `torch.load(weights_only=True)` with
an allow-list of the plain types Lightning stores beside the weights; anything else is refused by
name) and its `config.yaml`, maps the weights (models/reference.py), checks they load strictly into
our modules, and writes checkpoints of ours:

    DIR/vae/checkpoints/step-0000000/        the shape VAE (every checkpoint holds one)
    DIR/diffusion/checkpoints/step-0000000/  the diffusion model (diffusion systems), on DIR/vae
    DIR/conversion.json                      source, hashes, keys mapped and ignored, config values

`craft evaluate`, `craft generate` and `craft app` load them as they load our own; `craft train ...
init_from=DIR/vae` (or DIR/diffusion) fine-tunes from them.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import shutil
from pathlib import Path

import hydra
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from craftsman_platform.errors import ConfigError, MissingInput, check_writable
from craftsman_platform.models.build import ModelConfig, build_diffusion, build_vae, pretrained_frozen_keys
from craftsman_platform.models.checkpoints import model_config
from craftsman_platform.models.reference import convert_conditioner, convert_denoiser, convert_vae, model_overrides
from craftsman_platform.paths import CONF_DIR
from craftsman_platform.training.checkpoint import write_weights_checkpoint
from craftsman_platform.training.config import ConvertConfig

log = logging.getLogger("craft.convert")

# What a Lightning checkpoint may hold beside tensors (hyper-parameters, loop and callback state).
# Anything else is refused before it is unpickled.
LIGHTNING_SAFE_GLOBALS = (
    "builtins.dict",
    "builtins.list",
    "builtins.set",
    "builtins.tuple",
    "builtins.int",
    "builtins.float",
    "builtins.str",
    "builtins.bool",
    "collections.defaultdict",
    "argparse.Namespace",
    "pathlib.PosixPath",
    "pathlib.WindowsPath",
    "typing.Any",
    "numpy.dtype",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtypes.Float64DType",
    "numpy.dtypes.Float32DType",
    "numpy.dtypes.Int64DType",
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    "omegaconf.nodes.AnyNode",
    "omegaconf.nodes.StringNode",
    "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode",
    "omegaconf.nodes.BooleanNode",
)


# ----------------------------------------------------------------------------------------------
# Reading, safely
# ----------------------------------------------------------------------------------------------
def _import(name: str):
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


def read_reference_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The `state_dict` of a Lightning checkpoint, unpickled only as far as the allow-list goes."""
    if not path.is_file():
        raise MissingInput(f"checkpoint={path} does not exist")
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a zip-format torch file: weights_only refuses any global below anyway
        found = []
    refused = [g for g in found if g not in LIGHTNING_SAFE_GLOBALS]
    if refused:
        raise ConfigError(
            f"checkpoint={path}: refusing to unpickle {', '.join(refused)} (not weights, not plain data); "
            "re-save its state_dict alone on a machine you trust"
        )
    allowed = [obj for obj in map(_import, found) if obj is not None]
    try:
        with torch.serialization.safe_globals(allowed):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's own message advises unpickling it: we say what we do instead
        raise ConfigError(
            f"checkpoint={path}: not a torch file that loads as weights only ({type(err).__name__}; a legacy "
            "or pickled format would have to be unpickled, which craft convert never does): re-save its "
            "state_dict with torch.save on a machine you trust"
        ) from None
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(f"checkpoint={path}: no state_dict of tensors inside")
    return state


def read_reference_config(path: Path) -> dict:
    if not path.is_file():
        raise MissingInput(f"config={path} does not exist (the config.yaml released with the checkpoint)")
    config = yaml.safe_load(path.read_text())  # plain YAML: tags that would construct objects are refused
    if not isinstance(config, dict) or "system" not in config:
        raise ConfigError(f"config={path}: not a CraftsMan config (no `system` section)")
    return config


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Our configs
# ----------------------------------------------------------------------------------------------
def _dotlist(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _dotlist(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={'null' if value is None else value}")
    return out


def compose_ours(experiment: str, model: dict, extra: list[str]) -> dict:
    """A full `craft train` config (the experiment, then the reference's values) as a plain dict."""
    from hydra.core.global_hydra import GlobalHydra

    overrides = [f"experiment={experiment}", *_dotlist(model, "model."), *extra]
    if GlobalHydra.instance().is_initialized():  # inside `craft convert`: Hydra already knows conf/
        cfg = compose(config_name="train", overrides=overrides)
    else:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def _check_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, allowed_missing=()) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(allowed_missing)]
    if missing or unexpected:
        raise ConfigError(
            f"{what}: the converted weights do not fit our model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )


# ----------------------------------------------------------------------------------------------
# The conversion
# ----------------------------------------------------------------------------------------------
def convert(cfg: ConvertConfig) -> dict:
    ckpt = Path(cfg.checkpoint)
    config_path = Path(cfg.config) if cfg.config else ckpt.parent / "config.yaml"
    if ckpt.is_dir():
        found = sorted(p.name for p in ckpt.glob("*.ckpt"))
        raise MissingInput(
            f"checkpoint={ckpt} is a folder: give the checkpoint file itself"
            + (f" (it holds {', '.join(found[:3])})" if found else " (it holds no .ckpt file)")
        )
    if not ckpt.is_file():
        raise MissingInput(f"checkpoint={ckpt} does not exist (the released model.ckpt)")
    check_writable(cfg.output_dir, "output_dir")
    reference = read_reference_config(config_path)
    state = read_reference_checkpoint(ckpt)
    aligned = reference.get("system", {}).get("shape_model_type") == "michelangelo-aligned-autoencoder"
    clip_json = config_path.parent / "clip_config.json"  # the reference reads it when no CLIP id is named
    model = model_overrides(reference, aligned, json.loads(clip_json.read_text()) if clip_json.is_file() else None)
    out = Path(cfg.output_dir)
    report = {
        "checkpoint": str(ckpt.resolve()),
        "sha256": _sha256(ckpt),
        "config": str(config_path.resolve()),
        "model": model,
        "z_scale_factor": reference["system"].get("z_scale_factor", 1.0),
        "ignored": [],
        "written": {},
    }
    heads = model["vae"]["heads"]
    vae_state, ignored, unknown = convert_vae(state, heads)
    report["ignored"] += ignored
    if model["kind"] == "diffusion":
        den_state, ign_d, unk_d = convert_denoiser(state, model["denoiser"]["heads"])
        report["ignored"] += ign_d
        unknown += unk_d
    others = [k for k in state if not k.startswith(("shape_model.", "denoiser_model.", "condition."))]
    if model["kind"] == "vae":
        unknown += [k for k in others + [k for k in state if k.startswith(("denoiser_model.", "condition."))]]
    else:
        unknown += others
    if unknown:
        raise ConfigError(
            f"checkpoint={ckpt}: keys the converter does not know: {sorted(unknown)[:8]}"
            f"{' ...' if len(unknown) > 8 else ''} ({len(unknown)} in all)"
        )
    # everything is converted and checked first; only then is anything written
    vae_dir = out / "vae"
    vae_cfg = compose_ours("vae_craftsman", {"kind": "vae", "vae": model["vae"]}, [f"run_dir={vae_dir}"])
    vae = build_vae(_model_config(vae_cfg))
    _check_strict(vae, vae_state, "shape_model")
    meta = {"kind": "vae", "config": vae_cfg, "converted_from": report["checkpoint"], "source_sha256": report["sha256"]}
    writes = [("vae", vae_dir, vae_state, meta, vae_cfg)]
    if model["kind"] == "diffusion":
        writes.append(_prepare_diffusion(cfg, state, model, den_state, out, vae_dir, report))
    _clear_output(out, cfg.replace)
    for name, folder, weights, meta, run_cfg in writes:
        report["written"][name] = str(write_weights_checkpoint(folder, 0, weights, meta, run_cfg))
    (out / "conversion.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def _clear_output(out: Path, replace: bool) -> None:
    """An output folder holding a conversion is refused, or with `replace=true` emptied of it whole
    (a new VAE beside an old diffusion model would load that model with the wrong VAE)."""
    held = [n for n in ("vae", "diffusion", "conversion.json") if (out / n).exists()]
    if not held:
        return
    if not replace:
        raise ConfigError(
            f"output_dir={out} holds another conversion ({', '.join(held)}): use a new output_dir, or "
            "replace=true to replace it whole"
        )
    for name in held:
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()


def _model_config(cfg_dict: dict) -> ModelConfig:
    return model_config({"config": cfg_dict})


def _prepare_diffusion(
    cfg: ConvertConfig, state: dict, model: dict, den_state: dict, out: Path, vae_dir: Path, report: dict
) -> tuple:
    """The diffusion checkpoint to write, converted and checked: (name, folder, weights, meta, config)."""
    from craftsman_platform.models.conditioners import MultiViewImageEncoder

    diff_dir = out / "diffusion"
    has_clip = any(k.startswith("condition.model.vision_model.embeddings.") for k in state)
    cond = model["conditioner"]
    if has_clip:
        cond["pretrained"] = None  # the frozen tower comes from the checkpoint itself
    elif cfg.clip:
        cond["pretrained"] = cfg.clip
    elif not cond["pretrained"]:
        raise ConfigError(f"checkpoint={cfg.checkpoint} holds no CLIP weights and its config names none: set clip=DIR")
    diff_cfg = compose_ours("diffusion_craftsman", model, [f"run_dir={diff_dir}", f"model.vae_checkpoint={vae_dir}"])
    with torch.device("meta"):
        tower = (
            "clip.vision_model."
            if hasattr(MultiViewImageEncoder(_model_config(diff_cfg).conditioner, False).clip, "vision_model")
            else "clip."
        )
    cond_state, ignored, unknown = convert_conditioner(state, tower)
    if unknown:
        raise ConfigError(f"checkpoint={cfg.checkpoint}: condition keys the converter does not know: {unknown[:8]}")
    report["ignored"] += ignored
    latent_scale = float(report["z_scale_factor"])  # ours multiplies latents by it, as the reference
    weights = {
        **{f"denoiser.{k}": v for k, v in den_state.items()},
        **{f"conditioner.{k}": v for k, v in cond_state.items()},
        "latent_scale": torch.tensor(latent_scale),
    }
    diffusion = build_diffusion(_model_config(diff_cfg), load_weights=not has_clip)
    # without CLIP weights in the checkpoint only the frozen pretrained tower may be missing (it is
    # loaded from model.conditioner.pretrained); the ModLN modulation must come from the checkpoint
    frozen = () if has_clip else tuple(pretrained_frozen_keys(diffusion))
    _check_strict(diffusion, weights, "denoiser_model / condition", frozen)
    meta = {
        "kind": "diffusion",
        "config": diff_cfg,
        "latent_scale": latent_scale,
        "vae_checkpoint": str(vae_dir),
        "converted_from": report["checkpoint"],
        "source_sha256": report["sha256"],
    }
    return "diffusion", diff_dir, weights, meta, diff_cfg


@hydra.main(config_path=CONF_DIR, config_name="convert", version_base="1.3")
def main(dcfg: DictConfig) -> None:
    cfg: ConvertConfig = OmegaConf.to_object(dcfg)
    report = convert(cfg)
    kind = report["model"]["kind"]
    print(
        f"convert: {kind} checkpoint {report['checkpoint']} -> "
        + "  ".join(f"{k}: {v}" for k, v in report["written"].items())
    )
    if report["ignored"]:
        print(f"ignored (not part of our models): {len(report['ignored'])} keys, e.g. {report['ignored'][:3]}")
