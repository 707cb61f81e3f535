"""`craft refine mesh=coarse.glb normals=FOLDER output_dir=DIR`: the coarse mesh refined so that
its normals match the maps (inference/refine.py). Or `archive=SHARDS uid=UID` for an archive
object's own normal renders. Writes DIR/NAME.glb, DIR/NAME.obj and DIR/NAME.json (the loss
before and after, the silhouette IoU, seconds) and prints the summary."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import trimesh
from omegaconf import DictConfig, OmegaConf

from craftsman_platform.errors import ConfigError, MissingInput
from craftsman_platform.inference.config import RefineConfig
from craftsman_platform.inference.normal_maps import NormalView, views_from_archive, views_from_folder
from craftsman_platform.inference.refine import RefineReport, refine_mesh
from craftsman_platform.inference.runtime import resolve_device
from craftsman_platform.models.extraction import export_mesh
from craftsman_platform.paths import CONF_DIR

log = logging.getLogger("craft.refine")


def load_coarse(path: str) -> trimesh.Trimesh:
    """The mesh to refine, its parts concatenated; a clear error for what is not a mesh."""
    if not Path(path).is_file():
        raise MissingInput(f"mesh={path}: no such file")
    try:
        mesh = trimesh.load(path, force="mesh")
    except Exception as e:  # trimesh raises many types for unreadable files
        raise ConfigError(f"mesh={path}: not a readable mesh ({type(e).__name__}: {e})") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ConfigError(f"mesh={path}: holds no triangles")
    return mesh


def target_views(cfg: RefineConfig) -> list[NormalView]:
    if cfg.normals and cfg.archive:
        raise ConfigError("normals= and archive= both given: one source of normal maps")
    if cfg.normals:
        return views_from_folder(cfg.normals)
    if cfg.archive:
        if not cfg.uid:
            raise ConfigError("archive= needs uid= (the object whose normal renders are the targets)")
        return views_from_archive(cfg.archive, cfg.uid)
    raise ConfigError("give normals=FOLDER (normal maps with cameras) or archive=SHARDS uid=UID")


def write_refined(mesh: trimesh.Trimesh, report: RefineReport, out: Path, name: str, extra: dict) -> list[str]:
    files = [str(export_mesh(mesh, out / f"{name}{ext}")) for ext in (".glb", ".obj")]
    (out / f"{name}.json").write_text(json.dumps({**report.as_dict(), **extra, "files": files}, indent=1))
    return files


def summary_line(report: RefineReport) -> str:
    return (
        f"refine: normal loss {report.normal_loss_before:.4f} -> {report.normal_loss_after:.4f}, "
        f"silhouette IoU {report.mask_iou_before:.3f} -> {report.mask_iou_after:.3f}, "
        f"{report.faces_in:,} -> {report.faces_out:,} faces, {report.iterations} steps in "
        f"{report.seconds:.1f} s on {report.device}"
    )


def run_refine(cfg: RefineConfig) -> dict:
    device = resolve_device(cfg.device)
    mesh = load_coarse(cfg.mesh)
    views = target_views(cfg)
    refined, report = refine_mesh(mesh, views, cfg.refiner, device)
    files = write_refined(refined, report, Path(cfg.output_dir), cfg.name, {"mesh": cfg.mesh, "views": len(views)})
    return {"files": files, "report": report}


@hydra.main(config_path=CONF_DIR, config_name="refine", version_base="1.3")
def main(dcfg: DictConfig) -> None:
    cfg: RefineConfig = OmegaConf.to_object(dcfg)
    result = run_refine(cfg)
    print(summary_line(result["report"]))
    print("wrote " + "  ".join(result["files"]))
