"""The project's one field-coordinate convention, and windows of the field.

A lens images a frame of ``shape_px = (H, W)`` pixels: that frame is its full field. The optical axis sits at
``axis_px = (row0, col0)`` (the frame centre ``((H-1)/2, (W-1)/2)`` unless the lens file says otherwise).
Pixel ``(r, c)`` has field coordinates::

    x = (c - col0) / R,    y = (r - row0) / R,    R = hypot((H - 1) / 2, (W - 1) / 2)

so coordinates are isotropic, the field height ``h = hypot(x, y)`` is 1 at the corners of a centred frame,
``x`` grows with the column, ``y`` with the row, and the field azimuth is ``atan2(y, x)``.

A window of the field (a crop, a tile, a training sample) is identified by its pixel origin ``(row, col)`` in
the full frame. :func:`field_coords` is the only function in the project that turns windows into
coordinates: datasets, CoordGate's coordinate input and the tiled pipelines all call it.
"""

from __future__ import annotations

import numpy as np

from .errors import PsfsimError

__all__ = ["field_coords", "check_window", "centred_origin", "grid_positions"]


def _geometry(lens_or_field):
    return getattr(lens_or_field, "field", lens_or_field)


def check_window(lens_or_field, origin, shape, *, allow_outside: bool = False) -> tuple[tuple[int, int], tuple[int, int]]:
    """Validate a window ``origin=(row, col)``, ``shape=(h, w)``; return them as int tuples.

    Raises :class:`~psfsim.errors.PsfsimError` when the window does not fit in the frame (unless
    ``allow_outside``: tiles with a halo may reach past the frame's edge).
    """
    g = _geometry(lens_or_field)
    try:
        if any(int(v) != v for v in (*origin, *shape)):
            raise ValueError
        r0, c0 = (int(v) for v in origin)
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise PsfsimError(f"window origin={origin!r} shape={shape!r}: expected two integers each") from None
    if h < 1 or w < 1:
        raise PsfsimError(f"window shape {(h, w)} must be at least 1 x 1")
    H, W = g.shape_px
    if not allow_outside and (r0 < 0 or c0 < 0 or r0 + h > H or c0 + w > W):
        raise PsfsimError(
            f"window of shape {(h, w)} at origin {(r0, c0)} does not fit in the lens field of shape {(H, W)} "
            f"(origin must be within (0, 0)..({H - h}, {W - w}))"
        )
    return (r0, c0), (h, w)


def grid_positions(n: int, length: int) -> "np.ndarray":
    """Pixel positions ``(n,)`` of ``n`` grid nodes spanning ``0 .. length - 1`` (both ends included).

    One node sits at the centre ``(length - 1) / 2``. PSF grids, the low-rank basis and the stored datasets
    all place their nodes with this rule.
    """
    n = int(n)
    if n < 1:
        raise PsfsimError(f"grid of {n} nodes: expected >= 1")
    return np.linspace(0.0, length - 1.0, n) if n > 1 else np.array([(length - 1) / 2.0])


def centred_origin(lens_or_field, shape) -> tuple[int, int]:
    """Origin of a window of ``shape`` centred in the frame (rounded down)."""
    H, W = _geometry(lens_or_field).shape_px
    h, w = shape
    return ((H - h) // 2, (W - w) // 2)


def field_coords(lens_or_field, origin=(0, 0), shape=None, *, dtype=np.float64, allow_outside: bool = False) -> np.ndarray:
    """Field coordinates ``(2, h, w)`` (``[x, y]``) of a window of the lens field.

    Parameters
    ----------
    lens_or_field : Lens or FieldGeometry
    origin : (int, int)
        Pixel ``(row, col)`` of the window's top-left pixel in the full frame.
    shape : (int, int), optional
        Window shape ``(h, w)``; default the whole frame.
    dtype : numpy dtype
        Output dtype (float32 for network inputs).
    allow_outside : bool
        Accept windows reaching outside the frame (their coordinates simply continue past ``|x| > 1``).

    Returns
    -------
    ndarray, shape (2, h, w)
        ``[0]`` is ``x`` (grows with the column), ``[1]`` is ``y`` (grows with the row).
    """
    g = _geometry(lens_or_field)
    if shape is None:
        shape = g.shape_px
    (r0, c0), (h, w) = check_window(g, origin, shape, allow_outside=allow_outside)
    rows = np.arange(r0, r0 + h, dtype=np.float64)
    cols = np.arange(c0, c0 + w, dtype=np.float64)
    x, y = g.pixel_to_field(rows[:, None], cols[None, :])
    out = np.empty((2, h, w), dtype=dtype)
    out[0] = x
    out[1] = y
    return out
