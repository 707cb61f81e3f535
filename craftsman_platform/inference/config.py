"""Configs of `craft generate` and `craft app`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from craftsman_platform.models.extraction import DEFAULT_DEPTH


@dataclass
class RefineSettings:
    """The normal-based refiner (inference/refine.py): how hard and how finely to refine."""

    iterations: int = 300
    rays_per_step: int = 16_384  # target pixels per step, drawn from all views
    lr: float = 0.4  # Adam step, in units of the edge after the uniform split (decays to 0, cosine)
    edge_px: float = 2.0  # split every face until the mean edge spans at most this many pixels
    remesh_rounds: int = 1  # after the uniform split to edge_px, rounds halving the faces that miss detail
    detail_error: float = 0.02  # ... a face's mean 1 - cos to its target pixels above this (~11 deg)
    max_faces: int = 400_000  # no split past this many faces
    laplacian: float = 16.0  # weight of the Laplacian of the offsets from the coarse mesh
    anchor: float = 0.5  # weight of the offsets' squared length, in uniform-split edges: no slow drift
    normal_consistency: float = 0.05  # weight of the change of adjacent faces' dihedral cosines
    seed: int = 0


@dataclass
class RefineConfig:
    """`craft refine`: a mesh + normal maps with cameras -> a refined mesh."""

    mesh: str = MISSING  # the coarse mesh (any format craft loads: glb, obj, ply, stl, ...)
    normals: Optional[str] = None  # a folder: cameras.json + normal_000.png ..., or front/right/back/left.png
    archive: Optional[str] = None  # or an archive's shards (a glob) ...
    uid: Optional[str] = None  # ... and the object whose normal renders are the targets
    output_dir: str = "outputs/refine"
    name: str = "refined"
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    refiner: RefineSettings = field(default_factory=RefineSettings)


@dataclass
class GenerateConfig:
    checkpoint: str = MISSING  # a diffusion run dir or checkpoint dir
    images: list[str] = field(default_factory=list)
    prompt: Optional[str] = None  # text checkpoints: one prompt (one mesh)
    prompts: Optional[str] = None  # text checkpoints: a file of prompts, one a line (a mesh each: NAME_000, ...)
    right_view: Optional[str] = None
    back_view: Optional[str] = None
    left_view: Optional[str] = None
    output_dir: str = "outputs/generate"
    name: str = "mesh"
    remove_background: str = "auto"  # auto: rembg when available locally, else warn; always; never
    frontend: str = "none"  # none, imagedream, crm, wonder3d
    frontend_weights: Optional[str] = None
    frontend_trust_remote_code: bool = False  # run Python code shipped in frontend_weights (off: it is refused)
    guidance: Optional[float] = None  # default: the checkpoint's model.diffusion.guidance_scale
    steps: Optional[int] = None
    sampler: Optional[str] = None  # ddim or dpmsolver++
    seed: int = 0
    depth: int = DEFAULT_DEPTH  # octree depth: (2^depth + 1)^3 grid
    min_component_ratio: float = 0.01  # drop floaters with fewer faces than this share of the largest part
    ema: bool = True
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    compile: bool = False  # torch.compile the denoiser (CUDA graphs on a GPU); pays off over many meshes
    refine: bool = False  # refine the coarse mesh with normal maps: the front end's (Wonder3D) or normals=
    normals: Optional[str] = None  # a folder of normal maps with cameras (see craft refine) for refine=true
    refiner: RefineSettings = field(default_factory=RefineSettings)


@dataclass
class AppConfig:
    checkpoint: str = MISSING
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    ema: bool = True
    output_dir: Optional[str] = None  # where meshes are written (default: a temporary folder)
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    compile: bool = False  # torch.compile the denoiser once at start (CUDA graphs on a GPU)
