"""The coordinate contract of every position-aware model: ``forward(x, coords)``.

``coords`` holds the **field coordinates of the pixels of x** (``(B, 2, H, W)``; 1-D: ``(B, 1, L)``), made by
psfsim's one coordinate function (:func:`psfsim.field_coords` and its batch/torch forms), never by a
``linspace`` inside a model: a crop or a tile of a frame carries its own window of the lens field, which is
what makes training on crops and tiled inference on huge frames correct.

Inside a U-Net each level gets the coordinates of its own pixels by average-pooling the finer level's
coordinates with the data (:func:`pool_coords`): the 2 x 2 mean of four pixel centres is exactly the pooled
pixel's centre (the coordinates are affine in the pixel index), so a crop whose origin is a multiple of
``2^l`` has level-``l`` coordinates equal to the crop of the whole frame's.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ReconError

__all__ = ["batch_coords", "frame_coords", "coords_1d", "pool_coords", "check_coords"]


def batch_coords(lens, origins, shape, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Field coordinates ``(B, 2, h, w)`` of windows of ``shape`` at ``origins (B, 2)`` of the lens field.

    A thin wrapper of :func:`psfsim.field_coords_torch` (the one geometry), on ``device``.
    """
    from psfsim import field_coords_torch

    return field_coords_torch(lens, origins=origins, shape=shape, device=device, dtype=dtype)


def frame_coords(shape, batch: int = 1, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Coordinates ``(batch, 2, H, W)`` of an input that **is** the whole field (no lens given): a frame of
    ``shape`` with the optical axis at its centre, by psfsim's convention (corners at field height 1)."""
    from psfsim import FieldGeometry, field_coords_torch

    H, W = (int(s) for s in shape)
    g = FieldGeometry(shape_px=(H, W), axis_px=((H - 1) / 2.0, (W - 1) / 2.0))
    return field_coords_torch(g, origins=np.zeros((batch, 2), np.int64), shape=(H, W), device=device, dtype=dtype)


def coords_1d(length: int, batch: int = 1, *, origins=None, field_length: int | None = None, device=None,
              dtype=torch.float32) -> torch.Tensor:
    """1-D field coordinates ``(B, 1, L)``: windows of ``length`` at ``origins (B,)`` of a 1-D field of
    ``field_length`` samples (default: the input is the whole field), by psfsim's convention on a ``(1, N)``
    frame (``x = (i - (N-1)/2) / ((N-1)/2)``, so the field spans -1..1)."""
    from psfsim import FieldGeometry, field_coords_torch

    N = int(field_length or length)
    g = FieldGeometry(shape_px=(1, N), axis_px=(0.0, (N - 1) / 2.0))
    o = np.zeros(batch, np.int64) if origins is None else np.asarray(origins, np.int64).reshape(-1)
    o2 = np.stack([np.zeros_like(o), o], axis=1)
    c = field_coords_torch(g, origins=o2, shape=(1, int(length)), device=device, dtype=dtype)
    return c[:, :1, 0, :]  # x only: (B, 1, L)


def pool_coords(coords: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Coordinates of the pixels of a ``factor``-pooled level: the mean of each block (its exact centre)."""
    if coords.ndim == 3:
        return F.avg_pool1d(coords, factor)
    return F.avg_pool2d(coords, factor)


def check_coords(x: torch.Tensor, coords, *, channels: int | None = None) -> torch.Tensor:
    """Check ``coords`` against ``x``: same batch and spatial size, 2 channels (2-D) or 1 (1-D)."""
    if coords is None:
        raise ReconError("coords = None: this model is position-aware; pass the field coordinates of x's pixels "
                         "(recon.coords.batch_coords(lens, origins, shape) or frame_coords(shape))")
    if not isinstance(coords, torch.Tensor):
        raise ReconError(f"coords of type {type(coords).__name__}: expected a torch.Tensor")
    want_c = channels if channels is not None else (1 if x.ndim == 3 else 2)
    if coords.ndim != x.ndim or coords.shape[0] != x.shape[0] or coords.shape[1] != want_c or coords.shape[2:] != x.shape[2:]:
        raise ReconError(f"coords of shape {tuple(coords.shape)}: expected ({x.shape[0]}, {want_c}, "
                         f"{', '.join(str(s) for s in x.shape[2:])}), the field coordinates of x's pixels")
    return coords.to(dtype=x.dtype) if coords.dtype != x.dtype and torch.is_floating_point(x) else coords
