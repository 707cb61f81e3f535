"""`craft generate checkpoint=PATH images=[front.png,right.png,back.png,left.png] output_dir=DIR`.

Also `images=[folder]`, or `images=[front.png]` plus optional `right_view=... back_view=... left_view=...`;
views still missing come from a multi-view front end (`frontend=...`) or get the null condition.
A text-conditioned checkpoint takes `prompt="a wooden chair"`, or `prompts=FILE` (one a line: a
mesh each, NAME_000, NAME_001, ..., made together). Writes DIR/NAME.glb and DIR/NAME.obj (and
DIR/NAME.json: what was made, how fast) and prints where.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from craftsman_platform.errors import ConfigError
from craftsman_platform.inference.config import GenerateConfig
from craftsman_platform.inference.frontends import build_frontend
from craftsman_platform.inference.images import find_views, remove_background
from craftsman_platform.inference.normal_maps import NormalView, views_from_arrays, views_from_folder
from craftsman_platform.inference.pipeline import Generator
from craftsman_platform.inference.runtime import StageTimer, resolve_device
from craftsman_platform.models.extraction import MAX_DEPTH, export_mesh, remove_small_components
from craftsman_platform.paths import CONF_DIR
from craftsman_platform.shapedata.cameras import canonical_c2w, intrinsics
from craftsman_platform.shapedata.views import VIEW_NAMES, condition_image

log = logging.getLogger("craft.generate")


def load_views(cfg: GenerateConfig, size: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(4, 3, size, size) uint8 views, a (4,) mask of the views given or made by the front end, and
    the normal maps the front end made ({view name: image}; Wonder3D only)."""
    paths = find_views(cfg.images, {"right": cfg.right_view, "back": cfg.back_view, "left": cfg.left_view})
    imgs = {v: remove_background(Image.open(p), cfg.remove_background) for v, p in paths.items()}
    missing = [v for v in VIEW_NAMES if v not in imgs]
    normals: dict[str, np.ndarray] = {}
    if missing or (cfg.refine and not cfg.normals):
        frontend = build_frontend(cfg.frontend, cfg.frontend_weights, cfg.frontend_trust_remote_code)
        if frontend is not None:
            made = frontend.views(imgs["front"])
            imgs.update({v: made[v] for v in missing})
            normals = frontend.normal_maps() if hasattr(frontend, "normal_maps") else {}
        else:
            log.warning("views %s not given and frontend=none: they get the null condition", ", ".join(missing))
    blank = np.full((3, size, size), 255, dtype=np.uint8)
    arrays = np.stack([condition_image(imgs[v], size) if v in imgs else blank for v in VIEW_NAMES])
    return arrays, np.array([v in imgs for v in VIEW_NAMES]), normals


def refine_targets(cfg: GenerateConfig, made: dict[str, np.ndarray]) -> list[NormalView]:
    """The normal maps a refine=true run refines with: normals=FOLDER, else the front end's."""
    if cfg.normals:
        return views_from_folder(cfg.normals)
    if not made:
        raise ConfigError(f"refine=true: frontend={cfg.frontend} made no normal maps; give normals=FOLDER")
    c2w = canonical_c2w()
    names = [v for v in VIEW_NAMES if v in made]
    Ks = [intrinsics(made[v].shape[1], made[v].shape[0]) for v in names]
    return views_from_arrays([made[v] for v in names], [c2w[VIEW_NAMES.index(v)] for v in names], Ks)


def load_prompts(cfg: GenerateConfig) -> list[str]:
    """The prompts of a text checkpoint: `prompt`, or the non-empty lines of `prompts`."""
    if cfg.images:
        raise ConfigError(f"{cfg.checkpoint} is a text-conditioned checkpoint: give prompt= or prompts=, not images=")
    if cfg.prompt is not None and cfg.prompts:
        raise ConfigError("prompt= and prompts= both given: one prompt, or a file of them")
    if cfg.prompts:
        try:
            prompts = [line.strip() for line in Path(cfg.prompts).read_text(encoding="utf-8").splitlines()]
        except OSError as err:
            raise ConfigError(f"prompts={cfg.prompts}: {err.strerror}") from None
        prompts = [p for p in prompts if p]
        if not prompts:
            raise ConfigError(f"prompts={cfg.prompts} holds no prompt")
        return prompts
    if not (cfg.prompt or "").strip():
        raise ConfigError(f'{cfg.checkpoint} is a text-conditioned checkpoint: give prompt="..." or prompts=FILE')
    return [cfg.prompt.strip()]


def generate(cfg: GenerateConfig, generator: Generator | None = None) -> dict:
    """Views (or prompts, for a text checkpoint) -> GLB + OBJ per mesh; returns what was written and
    the seconds per stage."""
    if not 1 <= cfg.depth <= MAX_DEPTH:
        raise ConfigError(f"depth must be in [1, {MAX_DEPTH}], got {cfg.depth}")
    if cfg.refine:
        from craftsman_platform.inference.refine import check_settings  # Warp only when refining

        check_settings(cfg.refiner)
        if not cfg.normals and cfg.frontend != "wonder3d":
            raise ConfigError("refine=true needs normal maps: normals=FOLDER, or frontend=wonder3d (which makes them)")
    start = time.perf_counter()
    if generator is None:
        generator = Generator.load(cfg.checkpoint, cfg.ema, resolve_device(cfg.device))
        if cfg.compile:
            generator.compile()
        load_s = time.perf_counter() - start
    else:
        load_s = 0.0
    gen = generator
    timer = StageTimer(gen.device)
    made_normals: dict[str, np.ndarray] = {}
    if gen.text:
        prompts = load_prompts(cfg)
        names = [cfg.name] if cfg.prompts is None else [f"{cfg.name}_{i:03d}" for i in range(len(prompts))]
        with timer("condition"):
            context = gen.condition_text(prompts)
        given = []
    else:
        if cfg.prompt is not None or cfg.prompts:
            raise ConfigError(f"{cfg.checkpoint} is an image-conditioned checkpoint: give images=, not a prompt")
        prompts, names = [None], [cfg.name]
        images, mask, made_normals = load_views(cfg, gen.image_size)
        with timer("condition"):
            context = gen.condition(
                torch.from_numpy(images)[None], torch.from_numpy(canonical_c2w())[None], torch.from_numpy(mask)[None]
            )
        given = [v for v, m in zip(VIEW_NAMES, mask) if m]
    with timer("sampling"):
        latents = gen.sample(context, cfg.steps, cfg.guidance, cfg.sampler, cfg.seed)
    with timer("decode + extraction"):
        extracted = gen.meshes(latents, cfg.depth)
        meshes = [remove_small_components(mesh, cfg.min_component_ratio) for mesh, _ in extracted]
    out, made = Path(cfg.output_dir), []
    reports: list[dict | None] = [None] * len(meshes)
    if cfg.refine:
        from craftsman_platform.inference.refine import refine_mesh
        from craftsman_platform.inference.refine_job import summary_line

        targets = refine_targets(cfg, made_normals)
        with timer("refine"):
            for i, mesh in enumerate(meshes):
                meshes[i], report = refine_mesh(mesh, targets, cfg.refiner, gen.device)
                reports[i] = report.as_dict()
                log.info(summary_line(report))
    with timer("export"):
        for name, prompt, mesh, (_, stats), report in zip(names, prompts, meshes, extracted, reports):
            files = [str(export_mesh(mesh, out / f"{name}{ext}")) for ext in (".glb", ".obj")]
            made.append({"name": name, "prompt": prompt, "files": files, "faces": len(mesh.faces),
                         "queries": stats.queries, "refine": report})  # fmt: skip
    result = {
        "files": [f for m in made for f in m["files"]],
        "faces": sum(m["faces"] for m in made),
        "meshes": made,
        "views_given": given,
        "checkpoint_step": gen.step,
        "weights": gen.weights,
        "device": str(gen.device),
        "depth": cfg.depth,
        "queries": sum(m["queries"] for m in made),
        "stages_s": timer.seconds,
        "load_s": load_s,
        "total_s": sum(timer.seconds.values()),
    }
    (out / f"{cfg.name}.json").write_text(json.dumps(result, indent=1))
    return result


@hydra.main(config_path=CONF_DIR, config_name="generate", version_base="1.3")
def main(dcfg: DictConfig) -> None:
    cfg: GenerateConfig = OmegaConf.to_object(dcfg)
    result = generate(cfg)
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in result["stages_s"].items())
    source = f"views {result['views_given']}" if result["views_given"] else f"{len(result['meshes'])} prompt(s)"
    print(
        f"generate: {result['faces']:,} faces from {source} on {result['device']} in "
        f"{result['total_s']:.2f} s ({stages}; model load {result['load_s']:.1f} s apart)"
    )
    print("wrote " + "  ".join(result["files"]))
