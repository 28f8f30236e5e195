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

__all__ = ["field_coords", "field_coords_batch", "field_coords_torch", "check_window", "centred_origin", "grid_positions"]


def _geometry(lens_or_field):
    g = getattr(lens_or_field, "field", lens_or_field)
    if not (hasattr(g, "shape_px") and hasattr(g, "pixel_to_field")):
        raise PsfsimError(f"{lens_or_field!r}: expected a Lens or its FieldGeometry")
    return g


def check_window(lens_or_field, *, origin, shape, allow_outside: bool = False) -> tuple[tuple[int, int], tuple[int, int]]:
    """Validate a window ``origin=(row, col)``, ``shape=(h, w)``; return them as int tuples.

    Both are keyword-only everywhere in psfsim: two int pairs swapped would be a valid, wrong window.
    Raises :class:`~psfsim.errors.PsfsimError` when the window does not fit in the frame (unless
    ``allow_outside``: tiles with a halo may reach past the frame's edge).
    """
    g = _geometry(lens_or_field)
    try:
        if len(origin) != 2 or len(shape) != 2 or any(int(v) != v for v in (*origin, *shape)):
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


def grid_positions(n: int, length: int) -> np.ndarray:
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


def _window_coords(g, r0, c0, h: int, w: int, xp, like):
    """The one formula: field coordinates ``(..., 2, h, w)`` of windows with origins ``r0, c0`` (shape ``(...)``)
    in array namespace ``xp`` (numpy or torch); ``like`` gives torch's device and dtype."""
    if xp is np:  # FieldGeometry.pixel_to_field is the formula; broadcast over the windows
        r0 = np.asarray(r0, np.float64)[..., None, None]
        c0 = np.asarray(c0, np.float64)[..., None, None]
        x, y = g.pixel_to_field(r0 + np.arange(h)[:, None], c0 + np.arange(w)[None, :])
        shape = np.broadcast_shapes(x.shape, y.shape)
        return np.stack([np.broadcast_to(x, shape), np.broadcast_to(y, shape)], axis=-3)
    # torch: the same FieldGeometry.pixel_to_field, on the tensors' device and dtype
    rows = xp.arange(h, device=like.device, dtype=like.dtype)
    cols = xp.arange(w, device=like.device, dtype=like.dtype)
    r0 = r0.to(like.dtype)[..., None, None]
    c0 = c0.to(like.dtype)[..., None, None]
    x, y = g.pixel_to_field(r0 + rows[:, None], c0 + cols[None, :])
    x, y = xp.broadcast_tensors(x, y)
    return xp.stack([x, y], dim=-3)


def field_coords(lens_or_field, *, origin=(0, 0), shape=None, dtype=np.float64, allow_outside: bool = False) -> np.ndarray:
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
    (r0, c0), (h, w) = check_window(g, origin=origin, shape=shape, allow_outside=allow_outside)
    return _window_coords(g, r0, c0, h, w, np, None).astype(dtype, copy=False)


def _check_origins(g, origins, shape, allow_outside: bool):
    """``origins (B, 2)`` of whole numbers -> int64 array, every window checked against the frame."""
    o = np.asarray(origins)
    if o.ndim != 2 or o.shape[1] != 2:
        raise PsfsimError(f"origins of shape {o.shape}: expected (B, 2) rows of (row, col)")
    if o.dtype.kind not in "iu" and not (o.dtype.kind == "f" and np.all(np.isfinite(o)) and np.all(o == np.round(o))):
        raise PsfsimError("origins: expected whole numbers (row, col)")
    o = o.astype(np.int64)
    (_, _), (h, w) = check_window(g, origin=(0, 0), shape=shape, allow_outside=True)
    H, W = g.shape_px
    if not allow_outside and len(o):
        bad = np.nonzero((o[:, 0] < 0) | (o[:, 1] < 0) | (o[:, 0] + h > H) | (o[:, 1] + w > W))[0]
        if len(bad):
            i = int(bad[0])
            check_window(g, origin=tuple(o[i]), shape=(h, w))  # raises, naming the window
    return o, (h, w)


def field_coords_batch(lens_or_field, *, origins, shape, dtype=np.float32, allow_outside: bool = False) -> np.ndarray:
    """Field coordinates ``(B, 2, h, w)`` of ``B`` windows of one ``shape`` at ``origins (B, 2)``.

    The batch form of :func:`field_coords` (same geometry, same result per window), for training batches of
    random crops and for tiles. ``dtype`` defaults to float32 (network input).
    """
    g = _geometry(lens_or_field)
    o, (h, w) = _check_origins(g, origins, shape, allow_outside)
    return _window_coords(g, o[:, 0], o[:, 1], h, w, np, None).astype(dtype, copy=False)


def field_coords_torch(lens_or_field, *, origins, shape, device=None, dtype=None, allow_outside: bool = False):
    """Field coordinates as a torch tensor ``(B, 2, h, w)`` on ``device``, for windows at ``origins``.

    ``origins`` is a ``(B, 2)`` tensor (its device is used when ``device`` is None) or array-like. Computed
    on the device by the same formula as :func:`field_coords` (float32 by default; use float64 for
    comparisons). torch is imported only here.
    """
    import torch

    g = _geometry(lens_or_field)
    if isinstance(origins, torch.Tensor):
        device = origins.device if device is None else device
        o_np = origins.detach().cpu().numpy()
    else:
        o_np = np.asarray(origins)
    o, (h, w) = _check_origins(g, o_np, shape, allow_outside)
    dtype = torch.float32 if dtype is None else dtype
    like = torch.empty(0, device=device, dtype=dtype)
    ot = torch.as_tensor(o, device=like.device)
    return _window_coords(g, ot[:, 0], ot[:, 1], h, w, torch, like)
