"""The second stage: a coarse mesh refined so that its rendered normals match target normal maps.

Inverse rendering of normals, differentiable with respect to vertex positions, in PyTorch on the
CPU or a GPU:
  * visibility: each target pixel's ray is cast on the current mesh (inference/raycast.py, Warp's
    BVH, refit as vertices move); which triangle is hit carries no gradient;
  * the hit triangle's normal is computed from its three vertices in PyTorch, so the loss
    1 - cos(rendered, target) differentiates analytically with respect to them;
  * a random batch of the target pixels per step (all views pooled), Adam on the vertices.
What that gives up against an edge-sampling renderer (Mitsuba 3 / nvdiffrast): no gradient at
silhouette edges, so the outline cannot move outward to a target's; it is kept (not fitted) by
the offset Laplacian and reported as mask IoU before and after.
Regularisers: the uniform Laplacian of the vertices' offsets from the coarse mesh (smooth
displacements are cheap, noisy ones are not) and the change of adjacent faces' dihedral cosines
from the coarse mesh's (creases are neither made nor flattened for nothing). Both are zero on the
coarse mesh, so a mesh that already matches its targets stays where it is. The step size decays
to zero over the iterations (cosine).
Remeshing: every face is split (midpoints, the same surface) until the mean edge is at most
`edge_px` pixels of the views (or the next split would pass `max_faces`); edges are never
collapsed, and the split is uniform, not only where detail is missing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import trimesh
from tqdm import tqdm

from craftsman_platform.errors import ConfigError
from craftsman_platform.inference.config import RefineSettings
from craftsman_platform.inference.normal_maps import NormalView
from craftsman_platform.inference.raycast import RayCaster

log = logging.getLogger("craft.refine")
# Adam's eps, times 1 / (edge x faces), the size of a vertex's normal-loss gradient at a misfit of
# about a radian: Adam's steps are ~lr whatever the gradient's size, so without it an already
# matching mesh would random-walk on its targets' 8-bit rounding; with it small misfits take
# proportionally small steps (a mesh at its own renders moves < 0.3 px, tests/inference).
EPS_SCALE = 10.0


@dataclass
class RefineReport:
    """What the refinement did: losses over every target pixel before and after."""

    normal_loss_before: float  # mean 1 - cos over target pixels the mesh covers
    normal_loss_after: float
    mask_iou_before: float  # rendered silhouette vs the target masks, all views pooled
    mask_iou_after: float
    faces_in: int
    faces_out: int
    iterations: int
    seconds: float
    device: str

    def as_dict(self) -> dict:
        return asdict(self)


def check_settings(s: RefineSettings) -> None:
    """A bad setting fails before any work, naming its key."""
    for key in ("iterations", "rays_per_step", "max_faces"):
        if getattr(s, key) < 1:
            raise ConfigError(f"refiner.{key} must be >= 1, got {getattr(s, key)}")
    for key in ("lr", "edge_px"):
        if getattr(s, key) <= 0:
            raise ConfigError(f"refiner.{key} must be > 0, got {getattr(s, key)}")
    for key in ("laplacian", "normal_consistency"):
        if getattr(s, key) < 0:
            raise ConfigError(f"refiner.{key} must be >= 0, got {getattr(s, key)}")


# ---------------------------------------------------------------------------------------------
# Rays and mesh quantities
# ---------------------------------------------------------------------------------------------


class PixelRays:
    """Every pixel of every view as a ray (origin, direction with camera z = 1), with its target."""

    def __init__(self, views: list[NormalView], device: torch.device):
        if not views:
            raise ConfigError("refine: no normal maps given")
        origins, dirs, normals, masks = [], [], [], []
        for v in views:
            h, w = v.size
            cols, rows = np.meshgrid(np.arange(w), np.arange(h))
            pix = np.stack([cols, rows, np.ones_like(cols)], axis=-1).reshape(-1, 3).astype(np.float64)
            d = pix @ np.linalg.inv(v.K).T @ v.c2w[:3, :3].T
            dirs.append(d)
            origins.append(np.broadcast_to(v.c2w[:3, 3], d.shape))
            normals.append(v.normal.reshape(-1, 3))
            masks.append(v.mask.reshape(-1))
        f32 = dict(dtype=torch.float32, device=device)
        self.origins = torch.tensor(np.concatenate(origins), **f32)
        self.dirs = torch.tensor(np.concatenate(dirs), **f32)
        self.target = torch.tensor(np.concatenate(normals), **f32)
        self.mask = torch.tensor(np.concatenate(masks), dtype=torch.bool, device=device)
        self.inside = torch.nonzero(self.mask).squeeze(1)  # pixels with a target normal


def face_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit normals of the faces (differentiable)."""
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    return torch.nn.functional.normalize(torch.cross(b - a, c - a, dim=1), dim=1, eps=1e-12)


def rendered_normals(normals: torch.Tensor, face: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """The normals a renderer shows at hits on `face`: the face's, turned towards the camera."""
    n = normals[face]
    facing = (n * dirs).sum(dim=1, keepdim=True) > 0
    return torch.where(facing, -n, n)


def uniform_laplacian(n_vertices: int, faces: torch.Tensor) -> torch.Tensor:
    """Sparse (V, V) L = I - D^-1 A over the mesh's edges."""
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = torch.unique(torch.cat([e, e.flip(1)]), dim=0)
    deg = torch.bincount(e[:, 0], minlength=n_vertices).clamp(min=1).float()
    idx = torch.cat([e.T, torch.arange(n_vertices, device=faces.device).repeat(2, 1)], dim=1)
    val = torch.cat([-1.0 / deg[e[:, 0]], torch.ones(n_vertices, device=faces.device)])
    return torch.sparse_coo_tensor(idx, val, (n_vertices, n_vertices), check_invariants=False).coalesce()


def face_pairs(faces: np.ndarray) -> np.ndarray:
    """(E, 2) faces sharing an edge."""
    return trimesh.Trimesh(vertices=np.zeros((int(faces.max()) + 1, 3)), faces=faces, process=False).face_adjacency


def mean_edge(vertices: np.ndarray, faces: np.ndarray) -> float:
    e = vertices[faces] - vertices[np.roll(faces, -1, axis=1)]
    return float(np.linalg.norm(e, axis=2).mean())


def pixel_size(views: list[NormalView], vertices: np.ndarray) -> float:
    """World size of one pixel at the mesh's distance, the finest over the views."""
    centre = vertices.mean(axis=0)
    sizes = [np.linalg.norm(v.c2w[:3, 3] - centre) / v.K[0, 0] for v in views]
    return float(min(sizes))


def split_to(vertices: np.ndarray, faces: np.ndarray, edge: float, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Midpoint-split every face until the mean edge is <= `edge` or the next split passes max_faces."""
    while mean_edge(vertices, faces) > edge and 4 * len(faces) <= max_faces:
        vertices, faces = trimesh.remesh.subdivide(vertices, faces)
    return vertices, faces


# ---------------------------------------------------------------------------------------------
# Evaluation over every pixel
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def score(vertices: torch.Tensor, faces: torch.Tensor, rays: PixelRays, chunk: int = 1 << 18) -> tuple[float, float]:
    """(mean 1 - cos over target pixels the mesh covers, silhouette IoU) over every pixel."""
    caster = RayCaster(vertices, faces)
    normals = face_normals(vertices, faces)
    loss_sum, covered, hit_all = 0.0, 0, torch.zeros(len(rays.mask), dtype=torch.bool, device=vertices.device)
    for start in range(0, len(rays.mask), chunk):
        sl = slice(start, start + chunk)
        face, _ = caster.cast(rays.origins[sl], rays.dirs[sl])
        hit = face >= 0
        hit_all[sl] = hit
        both = hit & rays.mask[sl]
        if both.any():
            n = rendered_normals(normals, face[both], rays.dirs[sl][both])
            loss_sum += float((1.0 - (n * rays.target[sl][both]).sum(dim=1)).sum())
            covered += int(both.sum())
    union = int((hit_all | rays.mask).sum())
    iou = int((hit_all & rays.mask).sum()) / max(union, 1)
    return loss_sum / max(covered, 1), iou


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def refine_mesh(
    mesh: trimesh.Trimesh,
    views: list[NormalView],
    settings: RefineSettings | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[trimesh.Trimesh, RefineReport]:
    """`mesh` moved so that its normals, rendered at the views' cameras, match the views' normals."""
    s = settings or RefineSettings()
    check_settings(s)
    if len(mesh.faces) == 0:
        raise ConfigError("refine: the mesh has no faces")
    if not np.isfinite(mesh.vertices).all():
        raise ConfigError("refine: the mesh has vertices with non-finite coordinates (NaN or inf)")
    start = time.perf_counter()
    device = torch.device(device)
    rays = PixelRays(views, device)
    gen = torch.Generator(device="cpu").manual_seed(s.seed)
    mesh = mesh.copy()
    mesh.merge_vertices(merge_tex=True, merge_norm=True)  # one surface across UV and normal seams
    v_np, f_np = np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)
    faces_in = len(f_np)
    before = score(torch.tensor(v_np, dtype=torch.float32, device=device), torch.tensor(f_np, device=device), rays)

    px = pixel_size(views, v_np)
    v_np, f_np = split_to(v_np, f_np, s.edge_px * px, s.max_faces)
    edge = mean_edge(v_np, f_np)
    if edge > s.edge_px * px:
        log.info("refine: stopped splitting at %d faces (refine.max_faces), edges of %.1f px", len(f_np), edge / px)
    base = torch.tensor(v_np, dtype=torch.float32, device=device)
    vertices = base.clone().requires_grad_(True)
    faces = torch.tensor(f_np, device=device)
    lap = uniform_laplacian(len(v_np), faces)
    pairs = torch.tensor(face_pairs(f_np), device=device)
    with torch.no_grad():
        n0 = face_normals(base, faces)
        cos0 = (n0[pairs[:, 0]] * n0[pairs[:, 1]]).sum(dim=1)  # the coarse mesh's dihedral cosines
    opt = torch.optim.Adam([vertices], lr=s.lr * edge, eps=EPS_SCALE / (edge * len(f_np)))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, s.iterations)
    caster = RayCaster(vertices, faces)
    steps = tqdm(range(s.iterations), desc="refine", unit="step", disable=not progress, leave=False)
    for it in steps:
        caster.update(vertices)
        pick = rays.inside[torch.randint(len(rays.inside), (s.rays_per_step,), generator=gen).to(device)]
        face, _ = caster.cast(rays.origins[pick], rays.dirs[pick])
        hit = face >= 0
        normals = face_normals(vertices, faces)
        n = rendered_normals(normals, face[hit], rays.dirs[pick][hit])
        loss_n = (1.0 - (n * rays.target[pick][hit]).sum(dim=1)).mean() if hit.any() else vertices.sum() * 0
        offsets = (vertices - base) / edge
        loss_lap = torch.sparse.mm(lap, offsets).pow(2).sum(dim=1).mean()
        loss_nc = ((normals[pairs[:, 0]] * normals[pairs[:, 1]]).sum(dim=1) - cos0).pow(2).mean()
        loss = loss_n + s.laplacian * loss_lap + s.normal_consistency * loss_nc
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if it % 25 == 0:
            steps.set_postfix(normal=f"{float(loss_n.detach()):.4f}", faces=len(f_np))
    out_v = vertices.detach()
    after = score(out_v, faces, rays)
    refined = trimesh.Trimesh(out_v.cpu().double().numpy(), f_np, process=False)
    report = RefineReport(
        normal_loss_before=before[0],
        normal_loss_after=after[0],
        mask_iou_before=before[1],
        mask_iou_after=after[1],
        faces_in=faces_in,
        faces_out=len(f_np),
        iterations=s.iterations,
        seconds=time.perf_counter() - start,
        device=str(device),
    )
    return refined, report
