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
the guard below and reported as mask IoU before and after.
Regularisers: the uniform Laplacian of the vertices' offsets from the coarse mesh (smooth
displacements are cheap, noisy ones are not), the offsets' squared length (`anchor`: normals fix a
surface only up to a slow drift, which this keeps off) and the change of adjacent faces' dihedral
cosines from the coarse mesh's (creases are neither made nor flattened for nothing). All are zero
on the coarse mesh, so a mesh that already matches its targets stays where it is. The step size
decays to zero over the iterations (cosine).
Remeshing (inference/remesh.py): every face is first split at its midpoints (the same surface)
until the mean edge spans at most `edge_px` pixels; the iterations are cut into `remesh_rounds` + 1
phases, and between phases the faces whose normals still miss their targets' by more than
`detail_error` are split in half (red-green, conforming), down to edge_px / 2^rounds: vertices go
where detail is missing, not everywhere. Edges are never collapsed (at most `max_faces`).
The silhouette guard, last: vertices whose moves lost a target pixel or covered one outside the
masks go back to the coarse surface (with their one-ring) until the silhouette IoU is no lower.
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
from craftsman_platform.inference.remesh import face_pairs, mean_edge, split_marked, split_uniform

log = logging.getLogger("craft.refine")
# Adam's eps, times 1 / (edge x faces), the size of a vertex's normal-loss gradient at a misfit of
# about a radian: Adam's steps are ~lr whatever the gradient's size, so without it an already
# matching mesh would random-walk on its targets' 8-bit rounding; with it small misfits take
# proportionally small steps (a mesh at its own renders moves < 0.3 px, tests/inference).
EPS_SCALE = 10.0
GUARD_ROUNDS = 8  # silhouette guard: rounds of putting vertices back (each a full render)


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
    if s.remesh_rounds < 0:
        raise ConfigError(f"refiner.remesh_rounds must be >= 0, got {s.remesh_rounds}")
    for key in ("laplacian", "normal_consistency", "anchor", "detail_error"):
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


def pixel_size(views: list[NormalView], vertices: np.ndarray) -> float:
    """World size of one pixel at the mesh's distance, the finest over the views."""
    centre = vertices.mean(axis=0)
    sizes = [np.linalg.norm(v.c2w[:3, 3] - centre) / v.K[0, 0] for v in views]
    return float(min(sizes))


# ---------------------------------------------------------------------------------------------
# Evaluation over every pixel
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def render_faces(vertices: torch.Tensor, faces: torch.Tensor, rays: PixelRays, chunk: int = 1 << 18) -> torch.Tensor:
    """The face each pixel's ray hits first (-1 where it misses), every pixel of every view."""
    caster = RayCaster(vertices, faces)
    hit = torch.empty(len(rays.mask), dtype=torch.long, device=vertices.device)
    for start in range(0, len(hit), chunk):
        sl = slice(start, start + chunk)
        hit[sl] = caster.cast(rays.origins[sl], rays.dirs[sl])[0]
    return hit


@dataclass
class Score:
    """A mesh seen at every target pixel."""

    loss: float  # mean 1 - cos over target pixels the mesh covers
    iou: float  # silhouette IoU, all views pooled
    face_error: torch.Tensor  # (F,) mean 1 - cos over the target pixels each face shows (0 where none)
    face: torch.Tensor  # (P,) the face hit per pixel


@torch.no_grad()
def score(vertices: torch.Tensor, faces: torch.Tensor, rays: PixelRays) -> Score:
    """The normal loss, silhouette IoU and per-face error over every pixel of every view."""
    face = render_faces(vertices, faces, rays)
    hit = face >= 0
    both = hit & rays.mask
    n = rendered_normals(face_normals(vertices, faces), face[both], rays.dirs[both])
    err = 1.0 - (n * rays.target[both]).sum(dim=1)
    sums = torch.zeros(len(faces), device=vertices.device).index_add_(0, face[both], err)
    counts = torch.zeros(len(faces), device=vertices.device).index_add_(0, face[both], torch.ones_like(err))
    iou = int(both.sum()) / max(int((hit | rays.mask).sum()), 1)
    return Score(float(err.mean()) if len(err) else 0.0, iou, sums / counts.clamp(min=1), face)


def marked_for_detail(
    vertices: np.ndarray, faces: np.ndarray, err: np.ndarray, s: RefineSettings, px: float
) -> np.ndarray:
    """Faces to split: their normals miss the targets' by more than `detail_error` and their longest
    edge spans more than edge_px / 2^remesh_rounds pixels; the worst first when `max_faces` allows
    only some."""
    longest = np.linalg.norm(vertices[faces] - vertices[np.roll(faces, -1, axis=1)], axis=2).max(axis=1)
    marked = (err > s.detail_error) & (longest > s.edge_px / 2**s.remesh_rounds * px)
    room = max((s.max_faces - len(faces)) // 8, 0)  # a red split adds 3 faces, greens and closure more
    if marked.sum() > room:
        worst = np.argsort(-np.where(marked, err, -1.0))[:room]
        marked = np.zeros_like(marked)
        marked[worst] = True
    return marked


# ---------------------------------------------------------------------------------------------
# Keeping the silhouette
# ---------------------------------------------------------------------------------------------


def guard_silhouette(
    vertices: torch.Tensor, base: torch.Tensor, faces: torch.Tensor, rays: PixelRays, before: Score, after: Score
) -> tuple[torch.Tensor, Score, int]:
    """Vertices whose moves lost target pixels (covered before, not now) or covered pixels outside
    the targets' masks go back to the coarse mesh, with their neighbours, until the silhouette IoU
    is no lower than before (the refiner has no silhouette gradient to fit it with). Returns the
    vertices, their score and how many were put back."""
    back = torch.zeros(len(vertices), dtype=torch.bool, device=vertices.device)
    for _ in range(GUARD_ROUNDS):
        if after.iou >= before.iou:
            break
        lost = rays.mask & (before.face >= 0) & (after.face < 0)
        gained = ~rays.mask & (before.face < 0) & (after.face >= 0)
        culprits = torch.cat([before.face[lost], after.face[gained]])
        ring = torch.zeros(len(vertices), dtype=torch.bool, device=vertices.device)
        ring[faces[culprits].flatten()] = True
        ring[faces[ring[faces].any(dim=1)].flatten()] = True  # and their one-ring
        back |= ring
        vertices = torch.where(back[:, None], base, vertices)
        after = score(vertices, faces, rays)
    return vertices, after, int(back.sum())


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

    # uniform faces of at most edge_px pixels, then each round splits (in half) the faces whose
    # normals still miss the targets' (detail the mesh cannot hold yet)
    px = pixel_size(views, v_np)
    # step sizes and the offsets' scale in one length through all rounds: the uniform split's edge
    unit = min(mean_edge(v_np, f_np), s.edge_px * px)
    (v_np, base_np), f_np = split_uniform([v_np, v_np], f_np, s.edge_px * px, s.max_faces)
    phases = np.array_split(np.arange(s.iterations), s.remesh_rounds + 1)
    steps = tqdm(total=s.iterations, desc="refine", unit="step", disable=not progress, leave=False)
    vertices, faces = torch.tensor(v_np, dtype=torch.float32, device=device), torch.tensor(f_np, device=device)
    for phase, its in enumerate(phases):
        if phase:
            now = score(vertices, faces, rays)
            marked = marked_for_detail(v_np, f_np, now.face_error.cpu().numpy(), s, px)
            if marked.any():
                (v_np, base_np), f_np = split_marked([vertices.cpu().double().numpy(), base_np], f_np, marked)
        vertices, faces, base = fit(v_np, base_np, f_np, rays, s, its, gen, steps, unit)
        v_np = vertices.cpu().double().numpy()
    steps.close()
    after = score(vertices, faces, rays)
    before = score(base, faces, rays)  # the coarse surface (split faces are coplanar: the same renders)
    vertices, after, restored = guard_silhouette(vertices, base, faces, rays, before, after)
    if restored:
        log.info("refine: %d vertices put back on the coarse mesh to keep its silhouette", restored)
    if after.loss > before.loss:  # no better than the coarse surface: do no harm
        log.warning("refine: the normal loss did not go down (%.4f -> %.4f): the coarse surface is kept",
                    before.loss, after.loss)  # fmt: skip
        vertices, after = base, before
    refined = trimesh.Trimesh(vertices.cpu().double().numpy(), f_np, process=False)
    report = RefineReport(
        normal_loss_before=before.loss,
        normal_loss_after=after.loss,
        mask_iou_before=before.iou,
        mask_iou_after=after.iou,
        faces_in=faces_in,
        faces_out=len(f_np),
        iterations=s.iterations,
        seconds=time.perf_counter() - start,
        device=str(device),
    )
    return refined, report


def fit(
    v_np: np.ndarray,
    base_np: np.ndarray,
    f_np: np.ndarray,
    rays: PixelRays,
    s: RefineSettings,
    its: np.ndarray,
    gen: torch.Generator,
    steps: tqdm,
    unit: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps `its` (of s.iterations, for the cosine decay) of Adam on the vertices at fixed faces;
    `unit` the length of steps (x lr) and of offsets in the Laplacian term."""
    device = rays.origins.device
    base = torch.tensor(base_np, dtype=torch.float32, device=device)
    vertices = torch.tensor(v_np, dtype=torch.float32, device=device).requires_grad_(True)
    faces = torch.tensor(f_np, device=device)
    edge = mean_edge(base_np, f_np)
    lap = uniform_laplacian(len(v_np), faces)
    pairs = torch.tensor(face_pairs(f_np), device=device)
    with torch.no_grad():
        n0 = face_normals(base, faces)
        cos0 = (n0[pairs[:, 0]] * n0[pairs[:, 1]]).sum(dim=1)  # the coarse mesh's dihedral cosines
    opt = torch.optim.Adam([vertices], lr=s.lr * unit, eps=EPS_SCALE / (edge * len(f_np)))
    caster = RayCaster(vertices, faces)
    for it in its:
        opt.param_groups[0]["lr"] = s.lr * unit * 0.5 * (1 + np.cos(np.pi * it / s.iterations))
        caster.update(vertices)
        pick = rays.inside[torch.randint(len(rays.inside), (s.rays_per_step,), generator=gen).to(device)]
        face, _ = caster.cast(rays.origins[pick], rays.dirs[pick])
        hit = face >= 0
        normals = face_normals(vertices, faces)
        n = rendered_normals(normals, face[hit], rays.dirs[pick][hit])
        loss_n = (1.0 - (n * rays.target[pick][hit]).sum(dim=1)).mean() if hit.any() else vertices.sum() * 0
        offsets = (vertices - base) / unit
        loss_lap = torch.sparse.mm(lap, offsets).pow(2).sum(dim=1).mean()
        loss_nc = ((normals[pairs[:, 0]] * normals[pairs[:, 1]]).sum(dim=1) - cos0).pow(2).mean()
        loss_anchor = offsets.pow(2).sum(dim=1).mean()
        loss = loss_n + s.laplacian * loss_lap + s.normal_consistency * loss_nc + s.anchor * loss_anchor
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps.update()
        if it % 25 == 0:
            steps.set_postfix(normal=f"{float(loss_n.detach()):.4f}", faces=len(f_np))
    return vertices.detach(), faces, base
