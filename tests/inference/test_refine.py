"""The normal-based refiner: it moves a coarse mesh towards target normal maps, leaves a mesh that
matches its own renders where it is, and refuses unusable inputs with a clear message."""

from __future__ import annotations

import glob
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
import webdataset as wds
from helpers import craft
from PIL import Image
from scipy.spatial import cKDTree

from craftsman_platform.errors import ConfigError
from craftsman_platform.geometry.mesh_io import load_mesh
from craftsman_platform.geometry.render import Renderer
from craftsman_platform.inference.config import RefineSettings
from craftsman_platform.inference.normal_maps import BadNormalMaps, views_from_arrays, views_from_folder
from craftsman_platform.inference.refine import PixelRays, guard_silhouette, pixel_size, refine_mesh, score
from craftsman_platform.shapedata.cameras import view_cameras
from craftsman_platform.shapedata.png import png_bytes
from craftsman_platform.shapedata.sample import CAMERAS, cameras_json, normal_member

VIEWS = ("front", "right", "back", "left")


def bumpy_sphere() -> trimesh.Trimesh:
    ico = trimesh.creation.icosphere(subdivisions=5)
    v = ico.vertices
    theta, phi = np.arctan2(v[:, 1], v[:, 0]), np.arccos(np.clip(v[:, 2], -1, 1))
    r = 0.6 * (1.0 + 0.08 * np.sin(5 * theta) * np.sin(5 * phi))
    return trimesh.Trimesh(v * r[:, None], ico.faces)


def renders(mesh: trimesh.Trimesh, res: int = 128, extra_sets: int = 1):
    """The archive renderer's views of `mesh` (geometry/render.py), as the shards hold them."""
    renderer = Renderer([mesh], res, res, 40.0, True)
    return [renderer.render(c2w) for c2w in view_cameras(extra_sets, 4.5, np.random.default_rng(0))]


def chamfer(a: trimesh.Trimesh, b: trimesh.Trimesh, n: int = 20_000) -> float:
    pa, _ = trimesh.sample.sample_surface(a, n, seed=0)
    pb, _ = trimesh.sample.sample_surface(b, n, seed=1)
    return float(cKDTree(pb).query(pa)[0].mean() + cKDTree(pa).query(pb)[0].mean())


def test_a_sphere_refined_towards_a_bumpy_shape_gets_closer():
    target = bumpy_sphere()
    views = renders(target)
    normal_views = views_from_arrays([v.normal for v in views], [v.c2w for v in views], [v.K for v in views])
    coarse = trimesh.creation.icosphere(subdivisions=3)
    coarse.vertices *= 0.6
    # stated margins at the defaults, whose anchor term holds offsets to ~2 px (the bumps are ~2 px
    # here): normal error at least 40% lower, Chamfer to the true shape at least 15% lower ...
    refined, report = refine_mesh(coarse, normal_views, RefineSettings(iterations=150), progress=False)
    assert report.normal_loss_after < 0.6 * report.normal_loss_before
    assert chamfer(refined, target) < 0.85 * chamfer(coarse, target)
    assert report.mask_iou_after >= report.mask_iou_before  # no part of the silhouette lost
    assert report.faces_out > report.faces_in  # split to the views' resolution (edge_px)
    # ... and with a looser anchor, for detail bigger than that: 3x lower, Chamfer 35% lower
    refined, report = refine_mesh(coarse, normal_views, RefineSettings(iterations=150, anchor=0.05), progress=False)
    assert report.normal_loss_after < report.normal_loss_before / 3
    assert chamfer(refined, target) < 0.65 * chamfer(coarse, target)


def _duck(tiny_shards: Path) -> tuple[dict, trimesh.Trimesh]:
    """The duck's archive sample and its mesh normalised as the preprocessing job normalised it."""
    from craftsman_platform.corpora import pybullet_data_dir

    shards = sorted(glob.glob(str(tiny_shards / "shards" / "*.tar")))
    sample = next(s for s in wds.WebDataset(shards, shardshuffle=False) if "duck" in s["__key__"])
    loaded = load_mesh(pybullet_data_dir() / "duck.obj")
    return sample, trimesh.util.concatenate(loaded.parts)


def test_a_mesh_refined_to_its_own_archive_renders_does_not_move(tiny_shards, tmp_path):
    sample, duck = _duck(tiny_shards)
    duck.export(tmp_path / "duck.ply")
    proc = craft("refine", f"mesh={tmp_path / 'duck.ply'}", f"archive={tiny_shards}/shards/*.tar",
                 f"uid={sample['__key__']}", f"output_dir={tmp_path}", "refiner.iterations=40")  # fmt: skip
    report = json.loads((tmp_path / "refined.json").read_text())
    assert "normal loss" in proc.stdout and Path(report["files"][0]).is_file()
    # the archive's cameras, masks and normals line up with the refiner's own rendering: the
    # duck already matches (8-bit normals), so it keeps its normals and its silhouette ...
    assert report["normal_loss_before"] < 2e-3 and report["mask_iou_before"] > 0.97
    assert report["normal_loss_after"] < 2e-3 and report["mask_iou_after"] >= report["mask_iou_before"] - 0.005
    # ... and no vertex moves by more than half a pixel
    refined = trimesh.load(report["files"][1], force="mesh", process=False)
    cams = json.loads(sample[CAMERAS])["views"]
    px = min(np.linalg.norm(np.array(c["c2w"])[:3, 3]) / c["K"][0][0] for c in cams)
    moved = cKDTree(refined.vertices).query(duck.vertices)[0].max()
    assert moved < 0.5 * px


def test_bad_normal_maps_fail_clearly(tmp_path):
    views = renders(bumpy_sphere(), res=32, extra_sets=0)
    # a folder of maps without cameras
    (tmp_path / "nocams").mkdir()
    Image.fromarray(views[0].normal).save(tmp_path / "nocams" / "normal_000.png")
    with pytest.raises(BadNormalMaps, match="cameras of the maps are unknown"):
        views_from_folder(tmp_path / "nocams")
    # cameras that say another size than the image
    folder = tmp_path / "sizes"
    folder.mkdir()
    cams = cameras_json(views)
    cams["views"][1]["width"] = 64
    (folder / CAMERAS).write_text(json.dumps(cams))
    for i, v in enumerate(views):
        (folder / normal_member(i)).write_bytes(png_bytes(v.normal))
    with pytest.raises(BadNormalMaps, match=r"normal_001.png: the image is 32x32, its camera says 64x32"):
        views_from_folder(folder)
    # empty masks: a view without the object is left out; no view with it is an error
    cams["views"][1]["width"] = 32
    (folder / CAMERAS).write_text(json.dumps(cams))
    (folder / normal_member(2)).write_bytes(png_bytes(np.zeros_like(views[2].normal)))
    assert [v.name.rsplit("/", 1)[1] for v in views_from_folder(folder)] == ["normal_000.png", "normal_001.png",
                                                                             "normal_003.png"]  # fmt: skip
    for i in range(4):
        (folder / normal_member(i)).write_bytes(png_bytes(np.zeros_like(views[i].normal)))
    with pytest.raises(BadNormalMaps, match="every mask is empty"):
        views_from_folder(folder)
    # a bad setting names its key
    with pytest.raises(ConfigError, match="refiner.iterations must be >= 1"):
        refine_mesh(bumpy_sphere(), [], RefineSettings(iterations=0))
    for key, value in (("remesh_rounds", -1), ("anchor", -1.0), ("detail_error", -0.1)):
        with pytest.raises(ConfigError, match=f"refiner.{key} must be >= 0"):
            refine_mesh(bumpy_sphere(), [], RefineSettings(**{key: value}))
    # the command line: one line, exit 2
    bad = craft("refine", f"mesh={tmp_path / 'none.glb'}", f"normals={folder}", check=False)
    assert bad.returncode == 2 and "no such file" in bad.stderr and "Traceback" not in bad.stderr
    trimesh.creation.box().export(tmp_path / "box.glb")
    bad = craft("refine", f"mesh={tmp_path / 'box.glb'}", check=False)
    assert bad.returncode == 2 and "give normals=FOLDER" in bad.stderr


def test_generate_refines_with_a_folder_of_normal_maps(diffusion_run, tiny_shards, tmp_path):
    sample, _ = _duck(tiny_shards)
    normals = tmp_path / "normals"
    normals.mkdir()
    for i, name in enumerate(VIEWS):  # the 4 canonical views, as craft generate's view folders name them
        Image.open(io.BytesIO(sample[normal_member(i)])).save(normals / f"{name}.png")
    views = tmp_path / "views"
    views.mkdir()
    for i, name in enumerate(VIEWS):
        Image.open(io.BytesIO(sample[f"rgb_{i:03d}.png"])).save(views / f"{name}.png")
    craft("generate", f"checkpoint={diffusion_run}", f"images=[{views}]", f"output_dir={tmp_path}", "depth=6",
          "steps=5", "refine=true", f"normals={normals}", "refiner.iterations=20")  # fmt: skip
    result = json.loads((tmp_path / "mesh.json").read_text())
    refined = result["meshes"][0]["refine"]
    assert refined["iterations"] == 20 and refined["normal_loss_after"] <= refined["normal_loss_before"]
    assert "refine" in result["stages_s"] and trimesh.load(tmp_path / "mesh.glb", force="mesh").faces.shape[0] > 0
    shutil.rmtree(normals)
    bad = craft("generate", f"checkpoint={diffusion_run}", f"images=[{views}]", f"output_dir={tmp_path / 'bad'}",
                "refine=true", check=False)  # fmt: skip
    assert bad.returncode == 2 and "refine=true needs normal maps" in bad.stderr


def test_pixel_size_follows_the_cameras():
    views = renders(bumpy_sphere(), res=64, extra_sets=0)
    nv = views_from_arrays([v.normal for v in views], [v.c2w for v in views], [v.K for v in views])
    assert pixel_size(nv, np.zeros((1, 3))) == pytest.approx(4.5 / views[0].K[0, 0])


def test_the_guard_puts_back_only_the_vertices_that_lost_silhouette():
    sphere = trimesh.creation.icosphere(subdivisions=3)
    sphere.vertices *= 0.6
    views = renders(sphere, res=64)
    rays = PixelRays(views_from_arrays([v.normal for v in views], [v.c2w for v in views], [v.K for v in views]), "cpu")
    base = torch.tensor(sphere.vertices, dtype=torch.float32)
    faces = torch.tensor(sphere.faces)
    dented = base.clone()
    side = dented[:, 0] > 0.35  # one side pushed in: its outline shrinks in the views that see it edge-on
    dented[side] *= 0.8
    before, after = score(base, faces, rays), score(dented, faces, rays)
    assert after.iou < before.iou - 0.005
    _, now, restored = guard_silhouette(dented, base, faces, rays, before, after)
    assert now.iou >= before.iou
    assert 0 < restored < len(base) // 2  # the dent's neighbourhood, not the whole mesh
