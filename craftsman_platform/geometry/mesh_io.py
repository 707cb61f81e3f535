"""Mesh loading: read a file, flatten its scene, validate, clean and normalise.

Every failure is a `MeshRejected` carrying a stable reason code (for manifests and
dashboards) and a sentence a person can act on. Nothing here prints or exits: callers record
the rejection and move on to the next object.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh

from craftsman_platform.geometry.config import LoadConfig

log = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")

# Reason codes a rejection can carry. Keep in sync with docs/data-format.md.
REASONS = {
    "unreadable": "the file could not be read or parsed (truncated, corrupt, or a referenced file is missing)",
    "unknown_format": "the file's format is not one of " + ", ".join(SUPPORTED_SUFFIXES),
    "no_triangles": "the file holds no triangles (a point cloud, line set or empty scene)",
    "non_finite": "vertex coordinates include NaN or infinity",
    "index_out_of_range": "face indices point past the end of the vertex array",
    "zero_extent": "all vertices coincide: the object has no size",
    "too_many_faces": "the object has more faces than load.max_faces",
    "draco_no_decoder": "the glTF is Draco-compressed and no Draco decoder (DracoPy) is installed",
    "malformed_gltf": "the glTF's JSON breaks the glTF schema where geometry is read (an array given as an "
    "object, a primitive or accessor of the wrong shape)",
    "watertight_failed": "the watertight conversion did not give a closed, consistently wound surface",
}


class MeshRejected(Exception):
    """An object the geometry core refuses, with a reason code from `REASONS` and a sentence."""

    def __init__(self, code: str, message: str):
        assert code in REASONS, code
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class LoadedMesh:
    """A normalised object: `mesh` for geometry work, `parts` (with visuals) for rendering.

    Normalisation: x_norm = (x_src - center) * scale.
    """

    mesh: trimesh.Trimesh
    parts: list[trimesh.Trimesh]
    center: np.ndarray
    scale: float
    stats: dict = field(default_factory=dict)

    @property
    def normalization(self) -> dict:
        return {"center": [float(c) for c in self.center], "scale": float(self.scale)}


# ---------------------------------------------------------------------------------------------
# Draco detection
# ---------------------------------------------------------------------------------------------


def _gltf_json(path: Path) -> dict | None:
    """The JSON chunk of a .gltf/.glb file, or None when it cannot be parsed."""
    try:
        raw = path.read_bytes()
        if raw[:4] == b"glTF":
            (length, kind) = struct.unpack_from("<II", raw, 12)
            if kind != 0x4E4F534A:  # 'JSON'
                return None
            return json.loads(raw[20 : 20 + length])
        return json.loads(raw)
    except (OSError, ValueError, struct.error):
        return None


_GLTF_ARRAYS = ("accessors", "bufferViews", "buffers", "meshes", "nodes", "materials", "textures", "images", "scenes")
_MATERIAL_OBJECTS = ("pbrMetallicRoughness", "normalTexture", "occlusionTexture", "emissiveTexture")


def _kind(value) -> str:
    return {dict: "an object", list: "an array", str: "a string"}.get(type(value), type(value).__name__)


def check_gltf(doc: dict) -> None:
    """The parts of a glTF's JSON that geometry is read through, as the schema wants them; a
    MeshRejected("malformed_gltf") naming the first that is not (trimesh's own error would be a
    Python one: "'str' object has no attribute 'get'")."""

    def bad(where: str, want: str, value) -> MeshRejected:
        return MeshRejected("malformed_gltf", f"{where} must be {want} (glTF schema), it is {_kind(value)}")

    for key in _GLTF_ARRAYS:
        items = doc.get(key, [])
        if not isinstance(items, list):
            raise bad(f"'{key}'", "an array", items)
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise bad(f"{key}[{i}]", "an object", item)
    for i, mesh in enumerate(doc.get("meshes", [])):
        prims = mesh.get("primitives", [])
        if not isinstance(prims, list):
            raise bad(f"meshes[{i}].primitives", "an array", prims)
        for j, prim in enumerate(prims):
            if not isinstance(prim, dict):
                raise bad(f"meshes[{i}].primitives[{j}]", "an object", prim)
            if not isinstance(prim.get("attributes", {}), dict):
                raise bad(f"meshes[{i}].primitives[{j}].attributes", "an object", prim["attributes"])
    for i, material in enumerate(doc.get("materials", [])):
        for key in _MATERIAL_OBJECTS:
            if key in material and not isinstance(material[key], dict):
                raise bad(f"materials[{i}].{key}", "an object", material[key])
    for i, accessor in enumerate(doc.get("accessors", [])):
        for key, want in (("count", int), ("componentType", int), ("type", str)):
            if key in accessor and not isinstance(accessor[key], want):
                raise bad(f"accessors[{i}].{key}", "an integer" if want is int else "a string", accessor[key])


def _uses_draco(path: Path) -> bool:
    doc = _gltf_json(path)
    if not doc:
        return False
    check_gltf(doc)
    for mesh in doc.get("meshes", []):
        for prim in mesh.get("primitives", []):
            if "KHR_draco_mesh_compression" in prim.get("extensions", {}):
                return True
    return False


def _draco_decoder_available() -> bool:
    try:
        import DracoPy  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _check_binary_stl_length(path: Path) -> None:
    """A binary STL states its triangle count; a shorter file was cut off (trimesh reads it as empty)."""
    with path.open("rb") as fh:
        head = fh.read(84)
    if len(head) < 84 or head[:5].lower() == b"solid":
        return  # ASCII STL (or too short to be binary: trimesh reports that)
    (count,) = struct.unpack_from("<I", head, 80)
    expected = 84 + 50 * count
    size = path.stat().st_size
    if size < expected:
        raise MeshRejected(
            "unreadable",
            f"truncated binary STL: header promises {count} triangles ({expected} bytes), file has {size} bytes",
        )


def _read_scene(path: Path) -> trimesh.Scene:
    if path.suffix.lower() == ".stl":
        _check_binary_stl_length(path)
    try:
        # process=False: keep raw indices so out-of-range ones can be reported, and keep
        # UV seams (merging vertices would break texture lookups for rendering).
        return trimesh.load(str(path), force="scene", process=False)
    except FileNotFoundError as e:
        raise MeshRejected("unreadable", f"a file it references is missing: {Path(str(e.filename or e)).name}") from e
    except IndexError as e:  # OBJ faces naming vertices that do not exist
        raise MeshRejected("index_out_of_range", f"a face uses a vertex index that does not exist ({e})") from e
    except Exception as e:  # trimesh raises many types for corrupt input
        raise MeshRejected("unreadable", f"{type(e).__name__}: {str(e)[:200]}") from e


def _flatten(scene: trimesh.Scene, max_faces: int) -> list[trimesh.Trimesh]:
    """Every triangle geometry instance with its node transform applied; validated."""
    parts = []
    total_faces = 0
    for node in scene.graph.nodes_geometry:
        transform, geom_name = scene.graph[node]
        geom = scene.geometry.get(geom_name)
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            continue
        faces = np.asarray(geom.faces)
        verts = np.asarray(geom.vertices)
        if faces.min() < 0 or faces.max() >= len(verts):
            raise MeshRejected(
                "index_out_of_range",
                f"geometry '{geom_name}' has {len(verts)} vertices but a face uses index {int(faces.max())}",
            )
        if not np.isfinite(verts).all():
            bad = int((~np.isfinite(verts)).any(axis=1).sum())
            raise MeshRejected("non_finite", f"geometry '{geom_name}' has {bad} vertices with NaN/inf coordinates")
        total_faces += len(faces)
        if total_faces > max_faces:
            raise MeshRejected("too_many_faces", f"more than {max_faces:,} faces (load.max_faces)")
        part = geom.copy()
        part.apply_transform(transform)
        parts.append(part)
    return parts


def _clean_geometry(parts: list[trimesh.Trimesh]) -> tuple[trimesh.Trimesh, dict]:
    """All parts in one mesh with vertices merged, degenerate and duplicate faces dropped."""
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
    verts = np.concatenate([p.vertices for p in parts])
    faces = np.concatenate([p.faces + o for p, o in zip(parts, offsets)])
    mesh = trimesh.Trimesh(verts, faces, process=True)  # merges coincident vertices
    faces_in = len(faces)
    keep = mesh.nondegenerate_faces()
    mesh.update_faces(keep)
    degenerate = int((~keep).sum())
    n = len(mesh.faces)
    mesh.update_faces(mesh.unique_faces())
    mesh.remove_unreferenced_vertices()
    stats = {"faces_in": faces_in, "degenerate_dropped": degenerate, "duplicate_dropped": n - len(mesh.faces)}
    return mesh, stats


def load_mesh(path: str | Path, cfg: LoadConfig | None = None) -> LoadedMesh:
    """Load, validate, clean and normalise one mesh file. Raises `MeshRejected`."""
    cfg = cfg or LoadConfig()
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise MeshRejected("unknown_format", f"'{suffix or path.name}' is not one of {', '.join(SUPPORTED_SUFFIXES)}")
    if not path.is_file():
        raise MeshRejected("unreadable", f"no such file: {path}")
    if path.stat().st_size == 0:
        raise MeshRejected("unreadable", "the file is empty (0 bytes)")
    draco = suffix in (".glb", ".gltf") and _uses_draco(path)
    if draco and not _draco_decoder_available():
        raise MeshRejected("draco_no_decoder", "KHR_draco_mesh_compression is used; install DracoPy to decode it")

    parts = _flatten(_read_scene(path), cfg.max_faces)
    if not parts:
        raise MeshRejected("no_triangles", "no triangle geometry found (point cloud, lines or empty scene)")
    used = np.concatenate([p.vertices[np.unique(p.faces)] for p in parts])
    if draco and not np.any(used):
        raise MeshRejected("draco_no_decoder", "Draco-compressed vertices decoded as all zeros")
    extent = float(np.ptp(used, axis=0).max())
    if not extent > 1e-9:
        raise MeshRejected("zero_extent", f"all {len(used)} vertices lie within {extent:.3g} of each other")
    mesh, stats = _clean_geometry(parts)
    if len(mesh.faces) == 0:
        raise MeshRejected("no_triangles", f"all {stats['faces_in']} faces are degenerate")
    lo, hi = mesh.bounds
    extent = float((hi - lo).max())

    center = (lo + hi) / 2.0
    scale = 2.0 * cfg.bound / extent
    normalise = np.eye(4)
    normalise[:3, :3] *= scale
    normalise[:3, 3] = -center * scale
    mesh.apply_transform(normalise)
    for part in parts:
        part.apply_transform(normalise)
    stats.update(parts=len(parts), faces=len(mesh.faces), draco=draco)
    return LoadedMesh(mesh=mesh, parts=parts, center=center, scale=scale, stats=stats)
