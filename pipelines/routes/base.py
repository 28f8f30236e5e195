"""The Route protocol (what the runner calls per tile) and what every route shares: the frame's window in the
lens field, frame-wide statistics computed once, NaN handling of a block.

A route turns read regions of one frame into results of the same shapes, in the input's units::

    route = pipelines.routes.model_route("model.pt")          # or wiener_route / rl_route / simulate_route
    stats = route.prepare(frame, index, origin=(r, c))        # ONCE per frame, before tiling (JSON-able);
                                                              # origin=None: the frame is the full lens field
    grid = TileGrid(frame.frame_shape, tile=1024, halo=route.halo, align=route.align)
    for t in grid:                                            # the runner: one task per chunk
        block = frame.read(index, t.rows, t.cols)
        out = route([block], [(r + t.read[0], c + t.read[2])], stats)[0][t.inner]

``origins`` are in the LENS field (the frame's origin plus the tile's read origin in the frame), which is what
gives each tile its own field window. A route object is picklable and small (paths, settings, the lens): heavy
state (a model, operators) is built lazily in each process and cached there.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import PipelineError

__all__ = ["Route", "check_frame_window", "frame_scale", "fill_block", "check_call", "STRIP_BYTES", "ROBUST_FRACTION"]

#: Bytes of one strip of the frame read by :func:`frame_scale`'s chunked pass (memory stays flat in frame size).
STRIP_BYTES = 64 * 2**20
#: Default fraction of the brightest pixels :func:`frame_scale` ignores (hot pixels, cosmic rays).
ROBUST_FRACTION = 1e-5


@runtime_checkable
class Route(Protocol):
    """What the runner needs of a per-tile computation.

    Attributes
    ----------
    name : str
        ``"deblur"``, ``"wiener"``, ``"rl"`` or ``"simulate"``.
    halo : int
        Context needed on each side of an output chunk, pixels.
    align : int
        Read-origin alignment, pixels (``2^depth`` for a U-Net).
    """

    name: str
    halo: int
    align: int

    def identity(self) -> dict:
        """What goes into the output's record: checkpoint SHA-256 or lens fingerprint, every setting that
        changes the result (JSON-able)."""
        ...

    def prepare(self, frame, index: int, *, origin=None) -> dict:
        """Frame-wide statistics (normalisation, balance, ...), computed once before tiling; JSON-able.
        ``origin`` is the frame's top-left pixel in the lens field (checked: the frame must lie inside it);
        None: the frame is the full field (checked). ``stats["origin"]`` is the resolved origin."""
        ...

    def __call__(self, blocks: list[np.ndarray], origins: list[tuple[int, int]], stats: dict) -> list[np.ndarray]:
        """Results ``(h, w)`` float32 for read regions ``blocks`` (float32, one frame) at ``origins`` (lens field)."""
        ...


def check_frame_window(lens, frame_shape, origin=None, *,
                       what: str = "frame") -> tuple[tuple[int, int], tuple[int, int]]:
    """The frame at ``origin`` must lie inside the lens field: return ``(origin, shape)`` as int pairs.

    ``origin=None`` (not given) means the frame is the lens's full field (issue 13): its shape must then equal
    ``lens.field.shape_px`` and the origin is ``(0, 0)``. An explicit origin, ``(0, 0)`` included, places a
    frame that is a sub-window of the field.

    Raises
    ------
    PipelineError
        No origin and a frame whose shape is not the field's (naming both shapes and suggesting ``--origin``);
        a frame that does not lie inside the field at ``origin`` (naming its shape and origin, the lens field
        and the origins that would fit).
    """
    H, W = (int(v) for v in frame_shape)
    FH, FW = (int(v) for v in lens.field.shape_px)
    if origin is None:
        if H <= FH and W <= FW and (H, W) != (FH, FW):
            raise PipelineError(f"{what} of shape {(H, W)} is not the lens field {(FH, FW)} of lens {lens.name!r}, "
                                f"and no origin was given: place the sub-window with --origin ROW,COL (origins "
                                f"(0, 0)..({FH - H}, {FW - W}) fit)")
        origin = (0, 0)  # the full field; a larger frame is refused below as lying outside it
    try:
        r0, c0 = (int(v) for v in origin)
        if (r0, c0) != tuple(origin):
            raise ValueError
    except (TypeError, ValueError):
        raise PipelineError(f"origin = {origin!r}: expected two whole numbers (row, col) in the lens field") from None
    if r0 < 0 or c0 < 0 or r0 + H > FH or c0 + W > FW:
        where = (f"origins (0, 0)..({FH - H}, {FW - W}) fit" if H <= FH and W <= FW
                 else "the frame is larger than the field")
        raise PipelineError(f"{what} of shape {(H, W)} at origin {(r0, c0)} does not lie inside the lens field "
                            f"{(FH, FW)} of lens {lens.name!r} ({where}); a frame that is a sub-window of the field "
                            f"needs --origin ROW,COL, a frame of another instrument needs its own lens")
    return (r0, c0), (H, W)


def frame_scale(frame, index: int, *, fraction: float = ROBUST_FRACTION, strip_bytes: int = STRIP_BYTES) -> dict:
    """The frame's robust maximum, from one chunked pass over strips of rows (memory flat in frame size).

    ``scale`` is the ``k``-th largest finite pixel value with ``k = floor(fraction * n_finite) + 1``: the
    maximum when the frame has fewer than ``1 / fraction`` pixels, otherwise the maximum once the brightest
    ``fraction`` of the pixels (hot pixels, cosmic rays; 1e-5 by default) are left out. Exact (each strip keeps
    its ``k`` largest values, merged at the end), deterministic and independent of any tiling.

    Parameters
    ----------
    frame : Frame
        ``frame.read(index, rows, cols) -> (h, w) float32`` and ``frame.frame_shape``.
    index : int
        The frame of a stack (0 for a 2-D frame).

    Returns
    -------
    dict
        ``scale`` (float, the input's units), ``k``, ``fraction``, ``n_finite``, ``n_nonfinite``.

    Raises
    ------
    PipelineError
        A frame with no finite pixel.
    """
    if not (isinstance(fraction, (int, float)) and 0 <= fraction < 0.5):
        raise PipelineError(f"robust fraction = {fraction!r}: expected a number in [0, 0.5)")
    H, W = (int(v) for v in frame.frame_shape)
    rows = max(1, int(strip_bytes // max(1, 4 * W)))
    kmax = max(1, int(fraction * H * W) + 1)  # upper bound of k: each strip keeps this many candidates
    tops, n_finite = [], 0
    for r in range(0, H, rows):
        a = np.asarray(frame.read(index, slice(r, min(H, r + rows)), slice(0, W)), np.float64).ravel()
        a = a[np.isfinite(a)]
        n_finite += a.size
        if a.size > kmax:
            a = np.partition(a, a.size - kmax)[a.size - kmax:]
        tops.append(a)
    if n_finite == 0:
        raise PipelineError(f"frame {_frame_name(frame)} (index {index}): no finite pixel (all NaN or inf)")
    k = int(fraction * n_finite) + 1
    cand = np.concatenate(tops)
    scale = float(np.partition(cand, cand.size - k)[cand.size - k])
    return {"scale": scale, "k": k, "fraction": float(fraction), "n_finite": int(n_finite),
            "n_nonfinite": int(H * W - n_finite)}


def _frame_name(frame) -> str:
    info = getattr(frame, "info", None)
    return str(getattr(info, "path", None) or getattr(frame, "path", None) or "<array>")


def positive_scale(stats: dict, frame, index: int) -> float:
    s = float(stats["scale"])
    if not (math.isfinite(s) and s > 0):
        raise PipelineError(f"frame {_frame_name(frame)} (index {index}): its robust maximum is {s:g}; the "
                            "normalisation divides by it, so a frame whose brightest pixels are <= 0 cannot be "
                            "normalised (an empty or inverted frame?)")
    return s


def fill_block(block) -> tuple[np.ndarray, np.ndarray | None]:
    """A block as float32 with its non-finite pixels filled from their nearest finite neighbour, and their mask
    (None when all were finite): the computation never spreads NaNs; :func:`psfsim.checks.remask` puts them back.
    A block with no finite pixel is returned as zeros with an all-True mask. The fill looks only inside the
    block, so next to a NaN pixel within a halo of a tile's edge the values may differ slightly from a
    whole-frame pass (the NaN pixels themselves are NaN in every tiling)."""
    from psfsim.checks import checked_image
    from psfsim.errors import PsfsimError

    a = np.asarray(block)
    if a.ndim != 2:
        raise PipelineError(f"block of shape {a.shape}: expected (h, w)")
    a = a.astype(np.float32, copy=False)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros_like(a), ~finite
    try:
        out, mask = checked_image(a, "block", nan_policy="fill", ndims=(2,))
    except PsfsimError as e:
        raise PipelineError(str(e)) from None
    return out.astype(np.float32, copy=False), mask


def check_call(blocks, origins) -> list[tuple[int, int]]:
    """Same number of blocks and origins, 2-D blocks, whole-number origins."""
    if len(blocks) != len(origins):
        raise PipelineError(f"{len(blocks)} blocks and {len(origins)} origins: expected one origin per block")
    out = []
    for b, o in zip(blocks, origins):
        if np.ndim(b) != 2:
            raise PipelineError(f"block of shape {np.shape(b)}: expected (h, w)")
        try:
            r, c = (int(v) for v in o)
            if (r, c) != tuple(o):
                raise ValueError
        except (TypeError, ValueError):
            raise PipelineError(f"origin {o!r}: expected (row, col) whole numbers in the lens field") from None
        out.append((r, c))
    return out
