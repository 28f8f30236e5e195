"""Tile geometry of a frame: output chunks, the regions read for them (chunk + halo, clipped, aligned, static
shapes) and a seam metric. Pure arithmetic: no IO, no arrays except in :func:`seam_score`.

Rules (issue 13), per axis (rows and columns are independent):

- The output is cut into chunks of ``tile`` pixels from 0 (the last one may be shorter): chunk ``i`` covers
  ``[i tile, min((i + 1) tile, N))``. Each output pixel belongs to exactly one chunk (trimming, no blending).
- A chunk's read region starts at the largest multiple of ``align`` at or before ``r0 - halo`` and has the
  static length ``L`` (a multiple of ``align``, the least that covers ``chunk + halo`` on both sides for every
  chunk), so a U-Net of depth ``d`` with ``align = 2^d`` pools on the grid of a whole-frame pass.
- Never padded beyond the frame: a region past the near edge (0) is shifted inward to start at 0 (length
  ``L`` kept); a region past the far edge ``N`` is shifted inward to end at ``N``, starting at the largest
  aligned position that keeps at least ``L`` pixels. Its length is then ``L + (N mod align)``: when ``N`` is
  not a multiple of ``align`` the whole-frame U-Net pads its last ``(-N) mod align`` pixels, and a tile ending
  at the frame's edge reproduces that padding only with a length of the same remainder modulo ``align``
  (the one documented exception to the static shape). A frame shorter than that length is read whole.
- The halo is at least the requested one on each side except where the frame's edge clips it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import PipelineError

__all__ = ["Tile", "TileGrid", "seam_score", "axis_reads", "whole_number"]


def whole_number(name: str, v, lo: int) -> int:
    """``v`` as an int when it is a whole number >= ``lo`` (not a bool); otherwise PipelineError naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < lo:
        raise PipelineError(f"{name} = {v!r}: expected a whole number >= {lo}")
    return int(v)


@dataclass(frozen=True)
class Tile:
    """One output chunk and the frame region read to compute it.

    Attributes
    ----------
    index : (int, int)
        Chunk ``(i, j)`` in the grid.
    out : (int, int, int, int)
        ``r0, r1, c0, c1``: the output chunk in frame pixels (half-open).
    read : (int, int, int, int)
        ``r0, r1, c0, c1``: the region read from the frame (chunk + halo, clipped to the frame, aligned).
    """

    index: tuple[int, int]
    out: tuple[int, int, int, int]
    read: tuple[int, int, int, int]

    @property
    def inner(self) -> tuple[slice, slice]:
        """Where ``out`` lies inside the computed ``read`` block: ``block[tile.inner]`` is the chunk."""
        return (slice(self.out[0] - self.read[0], self.out[1] - self.read[0]),
                slice(self.out[2] - self.read[2], self.out[3] - self.read[2]))

    @property
    def read_shape(self) -> tuple[int, int]:
        return (self.read[1] - self.read[0], self.read[3] - self.read[2])

    @property
    def read_origin(self) -> tuple[int, int]:
        """Top-left ``(row, col)`` of the read region in the frame (add the frame's origin in the lens field)."""
        return (self.read[0], self.read[2])

    @property
    def rows(self) -> slice:
        """The read region's rows, for ``Frame.read(index, rows, cols)``."""
        return slice(self.read[0], self.read[1])

    @property
    def cols(self) -> slice:
        return slice(self.read[2], self.read[3])


def _static_length(n: int, tile: int, halo: int, align: int) -> int:
    """The least multiple of ``align`` covering ``chunk + halo`` (both sides) from an aligned start, for every
    chunk of the axis (the start's phase ``(r0 - halo) mod align`` repeats with period ``align / gcd``)."""
    need = 0
    period = align // math.gcd(tile, align)
    for i in range(min(period, -(-n // tile))):
        r0 = i * tile
        phase = (r0 - halo) % align
        need = max(need, phase + tile + 2 * halo)
    return -(-need // align) * align


def axis_reads(n: int, *, tile: int, halo: int, align: int = 1) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
    """One axis of the grid: output intervals, read intervals (half-open) and the static read length.

    Parameters
    ----------
    n : int
        Frame length along the axis, pixels.
    tile, halo, align : int
        Chunk length, context wanted on each side, alignment of read starts (pixels).

    Returns
    -------
    outs, reads : list of (int, int)
    length : int
        The static read length (clipped to ``n``).
    """
    L = _static_length(n, tile, halo, align)
    outs, reads = [], []
    for r0 in range(0, n, tile):
        r1 = min(r0 + tile, n)
        s = ((r0 - halo) // align) * align
        e = s + L
        if s < 0:
            s, e = 0, L
        if e > n:
            e = n
            s = max(0, ((n - L) // align) * align)
        if e > n:  # L > n after the near-edge shift: the whole axis
            s, e = 0, n
        outs.append((r0, r1))
        reads.append((s, e))
    return outs, reads, min(L, n)


class TileGrid:
    """The tiles of a frame: one per output chunk, each with its read region.

    Parameters
    ----------
    frame_shape : (int, int)
        ``(H, W)`` pixels.
    tile : int
        Output chunk side, pixels (the output store's chunk shape is ``(tile, tile)``; the last chunk of an
        axis may be shorter).
    halo : int
        Context wanted on each side of a chunk, pixels (>= 0).
    align : int
        Read origins are multiples of ``align`` (``2^depth`` for U-Nets, 1 otherwise).

    Attributes
    ----------
    tiles : list of Tile
        Row-major over the grid.
    chunks : (int, int)
        ``(tile, tile)``.
    grid : (int, int)
        Chunks per axis.
    read_shape : (int, int)
        The static read shape: every tile's read shape except at a far edge whose frame length is not a
        multiple of ``align`` (module docstring).

    Raises
    ------
    PipelineError
        A frame smaller than one tile (``H < tile`` or ``W < tile``), or a non-positive size / tile / align.
    """

    def __init__(self, frame_shape, *, tile: int, halo: int, align: int = 1):
        try:
            H, W = (int(v) for v in frame_shape)
        except (TypeError, ValueError):
            raise PipelineError(f"frame_shape = {frame_shape!r}: expected (H, W)") from None
        if H < 1 or W < 1:
            raise PipelineError(f"frame of shape {(H, W)}: expected at least 1 x 1 pixels")
        self.tile = whole_number("tile", tile, 1)
        self.halo = whole_number("halo", halo, 0)
        self.align = whole_number("align", align, 1)
        if H < self.tile or W < self.tile:
            raise PipelineError(f"frame of shape {(H, W)} is smaller than one tile of {self.tile} x {self.tile}: "
                                f"use a tile of at most {min(H, W)} (--tile {min(H, W)}), or deblur it whole")
        self.frame_shape = (H, W)
        r_out, r_read, Lr = axis_reads(H, tile=self.tile, halo=self.halo, align=self.align)
        c_out, c_read, Lc = axis_reads(W, tile=self.tile, halo=self.halo, align=self.align)
        self.read_shape = (Lr, Lc)
        self.chunks = (self.tile, self.tile)
        self.grid = (len(r_out), len(c_out))
        self.tiles = [Tile(index=(i, j), out=(*r_out[i], *c_out[j]), read=(*r_read[i], *c_read[j]))
                      for i in range(len(r_out)) for j in range(len(c_out))]

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self):
        return iter(self.tiles)

    def __getitem__(self, index: tuple[int, int]) -> Tile:
        i, j = index
        return self.tiles[i * self.grid[1] + j]

    def __repr__(self) -> str:
        return (f"TileGrid(frame_shape={self.frame_shape}, tile={self.tile}, halo={self.halo}, align={self.align}: "
                f"{self.grid[0]} x {self.grid[1]} tiles, read shape {self.read_shape})")


def seam_score(image, tile: int, *, band: int = 4) -> float:
    """Gradient energy across tile borders relative to the gradient energy next to them (1.0: no seam).

    The borders are the chunk boundaries of :class:`TileGrid` (every ``tile`` pixels from 0, along both
    axes). For each border, the squared finite differences that straddle it are compared with those of the
    ``band`` difference rows/columns on either side of it (the same image content, so the score does not
    depend on how busy the image is elsewhere): ``score = mean(d^2 across borders) / mean(d^2 beside them)``.
    A seam (an offset or a kink between tiles) makes it larger than 1; on an image without seams it is
    about 1 (the noise of the estimate falls with the border length).

    Parameters
    ----------
    image : ndarray, (H, W), real
    tile : int
        The tile (chunk) size the image was computed with.
    band : int
        Difference rows/columns on each side of a border used as the reference.

    Returns
    -------
    float
        1.0 when the image has no interior border (it fits in one tile) or no gradient near the borders.
    """
    a = np.asarray(image, np.float64)
    if a.ndim != 2:
        raise PipelineError(f"image of shape {a.shape}: expected (H, W)")
    tile = whole_number("tile", tile, 1)
    band = whole_number("band", band, 1)
    across = beside = 0.0
    n_across = n_beside = 0
    for axis in (0, 1):
        d2 = np.diff(a, axis=axis) ** 2  # d2[k] straddles pixels k and k + 1
        n = a.shape[axis]
        for b in range(tile, n, tile):  # border between pixels b - 1 and b: difference index b - 1
            k = b - 1
            across += float(np.take(d2, k, axis=axis).sum())
            n_across += a.shape[1 - axis]
            near = [j for j in range(k - band, k + band + 1) if j != k and 0 <= j < n - 1]
            sel = np.take(d2, near, axis=axis)
            beside += float(sel.sum())
            n_beside += sel.size
    if n_across == 0 or n_beside == 0 or beside == 0.0:
        return 1.0
    return (across / n_across) / (beside / n_beside)
