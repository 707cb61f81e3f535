"""Visibility for the refiner: which triangle each ray hits first, on the CPU or a CUDA device.

NVIDIA Warp's BVH (`mesh_query_ray`), on the device of the vertex tensor: the same code path on
a laptop and on a GPU. The BVH is refit, not rebuilt, after the vertices move (the faces stay).
Visibility is a discrete choice and carries no gradient; the refiner differentiates the hit
triangle's normal with respect to its vertices (inference/refine.py).
"""

from __future__ import annotations

import contextlib

import torch
import warp as wp

from craftsman_platform.warp_setup import init_warp

wp.set_module_options({"enable_backward": False})


@wp.kernel
def _cast(
    mesh: wp.uint64,
    origins: wp.array(dtype=wp.vec3),
    dirs: wp.array(dtype=wp.vec3),
    face: wp.array(dtype=wp.int32),
    t_hit: wp.array(dtype=float),
):
    i = wp.tid()
    q = wp.mesh_query_ray(mesh, origins[i], dirs[i], 1.0e6)
    if q.result:
        face[i] = q.face
        t_hit[i] = q.t
    else:
        face[i] = -1
        t_hit[i] = 0.0


class RayCaster:
    """First hits of rays on a triangle mesh whose vertices move between calls."""

    def __init__(self, vertices: torch.Tensor, faces: torch.Tensor):
        init_warp()
        self.device = vertices.device
        self._wp_device = wp.device_from_torch(vertices.device)
        # on a GPU, Warp works on PyTorch's current stream: its kernels then see the tensors torch
        # just wrote, and torch sees the hits, without a device-wide synchronisation
        self._stream = wp.stream_from_torch(vertices.device) if vertices.is_cuda else None
        self._vertices = vertices.detach().float().contiguous().clone()  # Warp reads this memory
        self._faces = faces.to(torch.int32).flatten().contiguous().clone()
        with self._on_stream():
            self._mesh = wp.Mesh(
                points=wp.from_torch(self._vertices, dtype=wp.vec3), indices=wp.from_torch(self._faces, dtype=wp.int32)
            )

    def _on_stream(self) -> contextlib.AbstractContextManager:
        return wp.ScopedStream(self._stream) if self._stream is not None else contextlib.nullcontext()

    def update(self, vertices: torch.Tensor) -> None:
        """New vertex positions (same faces): the BVH is refit."""
        self._vertices.copy_(vertices.detach())
        with self._on_stream():
            self._mesh.refit()

    def cast(self, origins: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(face index per ray, -1 where it misses; distance along `dirs` to the hit)."""
        n = len(origins)
        face = torch.empty(n, dtype=torch.int32, device=self.device)
        t = torch.empty(n, dtype=torch.float32, device=self.device)
        if n:
            inputs = [
                self._mesh.id,
                wp.from_torch(origins.detach().float().contiguous(), dtype=wp.vec3),
                wp.from_torch(dirs.detach().float().contiguous(), dtype=wp.vec3),
                wp.from_torch(face),
                wp.from_torch(t),
            ]
            with self._on_stream():
                wp.launch(_cast, dim=n, inputs=inputs, device=self._wp_device)
        return face.long(), t
