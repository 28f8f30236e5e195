"""Inputs and error measures shared by the benchmarks (the timing loops are in ``_timing.py``)."""

from __future__ import annotations

import numpy as np


def test_image(shape) -> np.ndarray:
    """scikit-image's ``camera`` (512 x 512) tiled to ``shape`` (an int: square), float32 in [0, 1]."""
    import skimage.data

    h, w = (shape, shape) if isinstance(shape, (int, np.integer)) else shape
    cam = skimage.data.camera().astype(np.float32) / 255
    reps = (-(-h // cam.shape[0]), -(-w // cam.shape[1]))
    return np.ascontiguousarray(np.tile(cam, reps)[:h, :w])


def rel_err(a, b) -> float:
    """Relative L2 error ``|a - b| / |b|`` in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))
