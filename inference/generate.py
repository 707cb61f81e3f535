"""`craft generate checkpoint=PATH images=[front.png,right.png,back.png,left.png] output_dir=DIR`.

Also `images=[folder]`, or `images=[front.png]` plus optional `right_view=... back_view=... left_view=...`;
views still missing come from a multi-view front end (`frontend=...`) or get the null condition.
Writes DIR/NAME.glb and DIR/NAME.obj and prints where.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import hydra
import numpy as np
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from PIL import Image

from inference.frontends import build_frontend
from inference.images import find_views, remove_background, to_view_array
from inference.pipeline import VIEW_NAMES, Generator, canonical_c2w
from models.extraction import export_mesh, remove_small_components
from pipelines.config import CONF_DIR

log = logging.getLogger("craft.generate")


@dataclass
class GenerateConfig:
    checkpoint: str = MISSING  # a diffusion run dir or checkpoint dir
    images: list[str] = field(default_factory=list)
    right_view: Optional[str] = None
    back_view: Optional[str] = None
    left_view: Optional[str] = None
    output_dir: str = "outputs/generate"
    name: str = "mesh"
    remove_background: str = "auto"  # auto: rembg when available locally, else warn; always; never
    frontend: str = "none"  # none, imagedream, crm, wonder3d
    frontend_weights: Optional[str] = None
    guidance: Optional[float] = None  # default: the checkpoint's model.diffusion.guidance_scale
    steps: Optional[int] = None
    sampler: Optional[str] = None  # ddim or dpmsolver++
    seed: int = 0
    depth: int = 8  # octree depth: (2^depth + 1)^3 grid
    min_component_ratio: float = 0.01  # drop floaters with fewer faces than this share of the largest part
    ema: bool = True


ConfigStore.instance().store(name="generate_schema", node=GenerateConfig)


def load_views(cfg: GenerateConfig, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(4, 3, size, size) images and a (4,) mask of the views given or made by the front end."""
    paths = find_views(cfg.images, {"right": cfg.right_view, "back": cfg.back_view, "left": cfg.left_view})
    imgs = {v: remove_background(Image.open(p), cfg.remove_background) for v, p in paths.items()}
    missing = [v for v in VIEW_NAMES if v not in imgs]
    if missing:
        frontend = build_frontend(cfg.frontend, cfg.frontend_weights)
        if frontend is not None:
            made = frontend.views(imgs["front"])
            imgs.update({v: made[v] for v in missing})
        else:
            log.warning("views %s not given and frontend=none: they get the null condition", ", ".join(missing))
    blank = np.ones((3, size, size), dtype=np.float32)
    arrays = np.stack([to_view_array(imgs[v], size) if v in imgs else blank for v in VIEW_NAMES])
    return arrays, np.array([v in imgs for v in VIEW_NAMES])


def generate(cfg: GenerateConfig, generator: Generator | None = None) -> dict:
    start = time.perf_counter()
    gen = generator or Generator.load(cfg.checkpoint, cfg.ema)
    images, mask = load_views(cfg, gen.cfg.data.image_size)
    t_sample = time.perf_counter()
    latents = gen.latents(torch.from_numpy(images)[None], torch.from_numpy(canonical_c2w())[None], cfg.steps,
                          cfg.guidance, cfg.sampler, cfg.seed, torch.from_numpy(mask)[None])
    t_sample = time.perf_counter() - t_sample
    mesh, stats = gen.mesh(latents, cfg.depth)
    mesh = remove_small_components(mesh, cfg.min_component_ratio)
    out = Path(cfg.output_dir)
    files = [str(export_mesh(mesh, out / f"{cfg.name}{ext}")) for ext in (".glb", ".obj")]
    result = {"files": files, "faces": len(mesh.faces), "views_given": [v for v, m in zip(VIEW_NAMES, mask) if m],
              "checkpoint_step": gen.step, "weights": gen.weights, "sample_s": t_sample, **stats,
              "total_s": time.perf_counter() - start}
    (out / f"{cfg.name}.json").write_text(json.dumps(result, indent=1))
    return result


@hydra.main(config_path=CONF_DIR, config_name="generate", version_base="1.3")
def main(dcfg: DictConfig) -> None:
    result = generate(OmegaConf.to_object(dcfg))
    print(f"generate: {result['faces']} faces from views {result['views_given']} in {result['total_s']:.1f} s "
          f"(sampling {result['sample_s']:.1f} s, decode {result['decode_s']:.2f} s, extraction {result['extract_s']:.1f} s)")
    print("wrote " + "  ".join(result["files"]))
