"""A lens's Zernike terms tabulated at field points (the ``[field_table]`` section of a lens file).

Lens-design programs (Zemax OpticStudio, CODE V) and instrument teams publish Zernike coefficients at a set of
field points: a grid over the detector, or a few points per detector. This module is the pure core that turns
such a table into coefficients anywhere in the frame: it reads and checks the table (CSV or inline arrays),
and interpolates it.

Table format
------------
Columns ``row_px, col_px`` (the field point in the frame's pixels, 0-based, pixel centres at integers: the
convention of every window in psfsim) and ``Z<j>`` (Noll index ``j``, RMS waves at the table's wavelength,
RMS-normalised Zernikes as in :mod:`psfsim.zernike`). Columns of absent Zernikes are 0; every cell of a present
column must be a finite number.

Interpolation (each a function of the pixel position, applied to every Zernike column)
--------------------------------------------------------------------------------------
``"linear"``
    Barycentric interpolation on the Delaunay triangulation of the points (any scattered points, at least 3
    not on one line); continuous, piecewise linear. The triangulation is :class:`scipy.spatial.Delaunay`'s,
    the one :class:`scipy.interpolate.LinearNDInterpolator` builds on the same points.
``"cubic"``
    The Clough-Tocher C1 piecewise-cubic interpolant on that triangulation (Clough & Tocher 1965; gradients
    estimated as in Nielson 1983), evaluated by :class:`scipy.interpolate.CloughTocher2DInterpolator`.
``"bilinear"``
    Points forming a full rectangular grid (any spacing): bilinear interpolation in each grid cell, as
    :class:`scipy.interpolate.RegularGridInterpolator` with ``method="linear"``.

Outside the table
-----------------
A point within half a pixel's diagonal (0.71 px) of the table's convex hull takes the value at the nearest
point of the hull (so the edge pixels' own area, the tolerance of the lens field, is covered). Farther out, a point is refused
naming its position, unless ``extrapolate = "nearest"``: then it too takes the value at the nearest point of
the hull (continuous across the hull; for a grid, the coordinates clamped to the grid).
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from .errors import LensError, PsfsimError
from .zernike import MAX_NOLL

__all__ = [
    "FieldTable",
    "INTERPOLATIONS",
    "EXTRAPOLATIONS",
    "MAX_TABLE_POINTS",
    "MAX_TABLE_BYTES",
    "EDGE_TOLERANCE_PX",
    "read_table_csv",
    "table_from_columns",
    "format_table_csv",
]

#: Interpolation methods of ``field_table.interpolation``; the first is the default.
INTERPOLATIONS = ("linear", "cubic", "bilinear")
#: Behaviours outside the table's convex hull (``field_table.extrapolate``); the first is the default.
EXTRAPOLATIONS = ("none", "nearest")
#: Most field points in a table (a 100 x 100 design grid; the table travels inline in every lens description).
MAX_TABLE_POINTS = 10000
#: Largest table file read, in bytes.
MAX_TABLE_BYTES = 16 * 2**20
#: Points this far (px) outside the table's hull take the value at the nearest point of the hull even without
#: ``extrapolate = "nearest"``: half a pixel's diagonal, so the edge pixels' own area (the lens field's
#: tolerance, half a pixel in row and column) is covered by a table whose points reach the edge pixels' centres.
EDGE_TOLERANCE_PX = math.sqrt(0.5)
#: Two points closer than this (px) are the same point.
_DUPLICATE_PX = 1e-6
_ZCOL_RE = re.compile(r"^Z([1-9]\d*)$")


@dataclass(frozen=True, eq=False)
class FieldTable:
    """Zernike coefficients tabulated at field points, and their interpolation over the frame.

    Attributes
    ----------
    points_px : ndarray, (N, 2) float64
        Field points ``(row, col)`` in the frame's pixels (pixel centres at integers).
    nolls : tuple of int
        Noll indices of the columns of ``values``, increasing.
    values : ndarray, (N, n) float64
        RMS waves at :attr:`wavelength_nm` (psfsim's Born & Wolf sign: a file's ``convention`` is applied by
        :mod:`psfsim.lens`; piston and tilt already dropped unless :attr:`keep_tilt`).
    wavelength_nm : float
        Wavelength at which the table's waves are given.
    interpolation : {"linear", "cubic", "bilinear"}
    extrapolate : {"none", "nearest"}
    keep_tilt : bool
        Whether piston and tilt (Z1-Z3) were kept.
    source : str
        Where the table came from (the file name as written, or ``"inline"``): informational only.
    """

    points_px: np.ndarray
    nolls: tuple[int, ...]
    values: np.ndarray
    wavelength_nm: float
    interpolation: str = "linear"
    extrapolate: str = "none"
    keep_tilt: bool = False
    source: str = "inline"

    def __post_init__(self):
        self.points_px.setflags(write=False)
        self.values.setflags(write=False)
        _check_geometry(self.points_px, self.interpolation)

    def __getstate__(self) -> dict:  # the triangulation and interpolators are rebuilt on use
        return {k: v for k, v in self.__dict__.items() if k not in ("_tri", "_hull", "_ct", "_grid")}

    def __repr__(self) -> str:
        z = ", ".join(f"Z{j}" for j in self.nolls)
        return (f"FieldTable({self.n_points} points, {self.extent_text()}, [{z}] at {self.wavelength_nm:g} nm, "
                f"{self.interpolation}, extrapolate {self.extrapolate}, source {self.source!r})")

    # -- summary ------------------------------------------------------------------------------------
    @property
    def n_points(self) -> int:
        return int(self.points_px.shape[0])

    @property
    def field_constant(self) -> bool:
        """True when every point has the same coefficients (the table adds no field variation)."""
        return bool(np.all(self.values == self.values[:1]))

    def extent_text(self) -> str:
        """``rows a..b, cols c..d px`` of the table's points."""
        (r0, c0), (r1, c1) = self.points_px.min(0), self.points_px.max(0)
        return f"rows {r0:g}..{r1:g}, cols {c0:g}..{c1:g} px"

    def canonical(self) -> dict:
        """JSON-able content (points, Noll indices, values as used, settings): part of a lens's fingerprint."""
        return {"wavelength_nm": self.wavelength_nm, "interpolation": self.interpolation,
                "extrapolate": self.extrapolate, "keep_tilt": self.keep_tilt,
                "points_px": self.points_px.tolist(), "nolls": list(self.nolls), "values": self.values.tolist()}

    # -- geometry -------------------------------------------------------------------------------------
    @cached_property
    def _hull(self) -> np.ndarray:
        """Vertices ``(V, 2)`` of the convex hull, counter-clockwise in ``(row, col)``."""
        from scipy.spatial import ConvexHull

        if self.interpolation == "bilinear":
            (r0, c0), (r1, c1) = self.points_px.min(0), self.points_px.max(0)
            v = np.array([[r0, c0], [r1, c0], [r1, c1], [r0, c1]], float)
        else:
            v = self.points_px[ConvexHull(self.points_px).vertices]
        area2 = np.sum(v[:, 0] * np.roll(v[:, 1], -1) - np.roll(v[:, 0], -1) * v[:, 1])
        return v if area2 > 0 else v[::-1].copy()

    def hull_distance(self, rows, cols) -> tuple[np.ndarray, np.ndarray]:
        """Distance ``(B,)`` in pixels of points outside the table's convex hull (0 inside), and the nearest
        point ``(B, 2)`` ``(row, col)`` of the hull (the point itself inside)."""
        p = np.stack([np.asarray(rows, float).ravel(), np.asarray(cols, float).ravel()], 1)
        a = self._hull
        e = np.roll(a, -1, axis=0) - a  # (E, 2) edges, counter-clockwise
        le = np.hypot(e[:, 0], e[:, 1])
        outward = np.stack([e[:, 1], -e[:, 0]], 1) / le[:, None]
        d = p[:, None, :] - a[None]  # (B, E, 2)
        signed = np.einsum("bej,ej->be", d, outward)
        scale = max(1.0, float(np.abs(a).max()))
        inside = np.all(signed <= 1e-9 * scale, axis=1)
        t = np.clip(np.einsum("bej,ej->be", d, e) / (le * le), 0.0, 1.0)
        q = a[None] + t[..., None] * e[None]  # nearest point on each edge
        dist = np.hypot(*(p[:, None, :] - q).transpose(2, 0, 1))
        j = np.argmin(dist, axis=1)
        near = q[np.arange(len(p)), j]
        return np.where(inside, 0.0, dist[np.arange(len(p)), j]), np.where(inside[:, None], p, near)

    @cached_property
    def _tri(self):
        from scipy.spatial import Delaunay

        return Delaunay(self.points_px)  # the call LinearNDInterpolator / CloughTocher2DInterpolator make

    @cached_property
    def _ct(self):
        from scipy.interpolate import CloughTocher2DInterpolator

        return CloughTocher2DInterpolator(self._tri, self.values)

    @cached_property
    def _grid(self):
        """``(rows (nr,), cols (nc,), values (nr, nc, n))`` of a grid table."""
        r = np.unique(self.points_px[:, 0])
        c = np.unique(self.points_px[:, 1])
        V = np.empty((len(r), len(c), self.values.shape[1]))
        V[np.searchsorted(r, self.points_px[:, 0]), np.searchsorted(c, self.points_px[:, 1])] = self.values
        return r, c, V

    # -- evaluation -----------------------------------------------------------------------------------
    def coefficients(self, rows, cols, *, field_xy=None) -> np.ndarray:
        """Interpolated coefficients ``(B, n)`` (RMS waves at :attr:`wavelength_nm`, columns :attr:`nolls`) at
        pixel positions ``rows, cols (B,)``.

        ``field_xy``: the same points' field coordinates, only to name them in messages.

        Raises
        ------
        PsfsimError
            A point more than :data:`EDGE_TOLERANCE_PX` outside the table's convex hull (without
            ``extrapolate = "nearest"``), naming it.
        """
        rows = np.asarray(rows, float).ravel()
        cols = np.asarray(cols, float).ravel()
        if len(rows) == 0:
            return np.zeros((0, len(self.nolls)))
        dist, near = self.hull_distance(rows, cols)
        if self.extrapolate == "none" and np.any(dist > EDGE_TOLERANCE_PX + 1e-9):
            i = int(np.argmax(dist))
            at = "" if field_xy is None else f"field point ({field_xy[0][i]:+.6g}, {field_xy[1][i]:+.6g}) = "
            raise PsfsimError(
                f"{at}pixel (row {rows[i]:.6g}, col {cols[i]:.6g}) lies {dist[i]:.4g} px outside the field table's "
                f"convex hull ({self.n_points} points, {self.extent_text()}); the table does not describe it "
                "(set field_table.extrapolate = \"nearest\" to use the nearest point of the hull)"
            )
        out = self._interpolate(near, dist > 0)
        if not np.all(np.isfinite(out)):  # an internal inconsistency, never the user's input
            raise RuntimeError("field table interpolation returned a non-finite value inside the hull")
        return out

    def _interpolate(self, p: np.ndarray, on_edge: np.ndarray) -> np.ndarray:
        if self.interpolation == "bilinear":
            return _bilinear(*self._grid, p)
        # points brought onto the hull are nudged a hair (1e-9 of the table's size) inside, so the simplex
        # search never loses them to rounding
        if on_edge.any():
            c = self.points_px.mean(0)
            span = float(np.ptp(self.points_px, axis=0).max())
            v = c - p[on_edge]
            n = np.hypot(v[:, 0], v[:, 1])[:, None]
            p = p.copy()
            p[on_edge] += v / np.maximum(n, 1e-300) * (1e-9 * span)
        if self.interpolation == "cubic":
            return np.asarray(self._ct(p), float).reshape(len(p), -1)
        tri = self._tri
        s = tri.find_simplex(p, tol=1e-9)
        if np.any(s < 0):
            s = np.where(s < 0, tri.find_simplex(p, bruteforce=True, tol=1e-7), s)
        T = tri.transform[s]  # (B, 3, 2): barycentric transform and offset
        b2 = np.einsum("bij,bj->bi", T[:, :2], p - T[:, 2])
        bary = np.concatenate([b2, 1.0 - b2.sum(1, keepdims=True)], 1)  # (B, 3)
        out = np.einsum("bk,bkn->bn", bary, self.values[tri.simplices[s]])
        out[s < 0] = np.nan
        return out


def _bilinear(r: np.ndarray, c: np.ndarray, V: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of grid values ``V (nr, nc, n)`` at points ``p (B, 2)`` inside the grid."""
    i = np.clip(np.searchsorted(r, p[:, 0], side="right") - 1, 0, len(r) - 2)
    j = np.clip(np.searchsorted(c, p[:, 1], side="right") - 1, 0, len(c) - 2)
    t = np.clip((p[:, 0] - r[i]) / (r[i + 1] - r[i]), 0.0, 1.0)[:, None]
    u = np.clip((p[:, 1] - c[j]) / (c[j + 1] - c[j]), 0.0, 1.0)[:, None]
    return ((1 - t) * (1 - u) * V[i, j] + (1 - t) * u * V[i, j + 1] + t * (1 - u) * V[i + 1, j]
            + t * u * V[i + 1, j + 1])


def _check_geometry(points: np.ndarray, interpolation: str) -> None:
    """Refuse duplicate points, too few points, points on one line, or (bilinear) a table that is not a grid."""
    n = len(points)
    key = np.round(points / _DUPLICATE_PX).astype(np.int64)
    _, first, counts = np.unique(key, axis=0, return_index=True, return_counts=True)
    if np.any(counts > 1):
        i = int(first[np.argmax(counts > 1)])
        dup = np.nonzero(np.all(key == key[i], axis=1))[0]
        raise LensError(
            f"field_table: duplicate field point (row {points[i, 0]:g}, col {points[i, 1]:g}) at table rows "
            f"{', '.join(str(int(k) + 1) for k in dup[:5])}: each field point once"
        )
    if interpolation == "bilinear":
        r, c = np.unique(points[:, 0]), np.unique(points[:, 1])
        if len(r) < 2 or len(c) < 2 or len(r) * len(c) != n:
            raise LensError(
                f"field_table.interpolation = \"bilinear\": the {n} points are not a rectangular grid "
                f"({len(r)} distinct rows x {len(c)} distinct columns = {len(r) * len(c)} nodes, each needed once; "
                "at least 2 x 2); use \"linear\" or \"cubic\" for scattered points"
            )
        return
    if n < 3:
        raise LensError(
            f"field_table: {n} point(s): \"{interpolation}\" interpolation needs at least 3 field points not on one line"
        )
    d = points - points.mean(0)
    sv = np.linalg.svd(d, compute_uv=False)
    if sv[1] <= 1e-9 * max(sv[0], 1.0):
        raise LensError(
            f"field_table: the {n} field points lie on one line: \"{interpolation}\" interpolation needs points "
            "spanning an area of the frame"
        )


# --------------------------------------------------------------------------------------------------
# reading and checking
# --------------------------------------------------------------------------------------------------
def _column_noll(name: str, where: str) -> int:
    m = _ZCOL_RE.match(name)
    if m is None:
        raise LensError(
            f"{where}: unknown column {name!r} (expected row_px, col_px and Z1 .. Z{MAX_NOLL}: Noll index, RMS waves)"
        )
    j = int(m.group(1))
    if not 1 <= j <= MAX_NOLL:
        raise LensError(f"{where}: column {name!r}: unknown Noll index {j} (expected 1..{MAX_NOLL})")
    return j


def _cell_text(s: str) -> str:
    s = "".join(ch if ch.isprintable() else "?" for ch in s)
    return repr(s if len(s) <= 40 else s[:37] + "...")


def read_table_csv(path: str | Path, *, where: str | None = None) -> dict[str, list[float]]:
    """Columns of a table CSV file: ``{"row_px": [...], "col_px": [...], "Z4": [...], ...}``.

    A header row names the columns; blank lines and lines starting with ``#`` are skipped; cells are numbers
    (whitespace around them ignored). ``where`` names the file in messages (default: its path).

    Raises
    ------
    LensError
        An unreadable or too large file, a missing or unknown column, a repeated column name, a row with the
        wrong number of cells, or a cell that is not a finite number: one line naming the line and column.
    """
    path = Path(path)
    where = where or str(path)
    try:
        size = path.stat().st_size
        if size > MAX_TABLE_BYTES:
            raise LensError(f"{where}: {size} bytes; a field table is at most {MAX_TABLE_BYTES} bytes")
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise LensError(f"{where}: cannot read the field table ({e})") from None
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise LensError(f"{where}: empty field table (expected a header row row_px, col_px, Z.. and data rows)")
    rows = list(csv.reader(io.StringIO("\n".join(ln for _, ln in lines))))
    header = [h.strip() for h in rows[0]]
    _check_header(header, f"{where}: header (line {lines[0][0]})")
    cols: dict[str, list[float]] = {h: [] for h in header}
    for (lineno, _), cells in zip(lines[1:], rows[1:]):
        if len(cells) != len(header):
            raise LensError(f"{where}: line {lineno}: {len(cells)} cells for the {len(header)} columns of the header")
        for h, cell in zip(header, cells):
            try:
                v = float(cell.strip())
            except ValueError:
                raise LensError(f"{where}: line {lineno}, column {h}: {_cell_text(cell)} is not a number") from None
            if not math.isfinite(v):
                raise LensError(f"{where}: line {lineno}, column {h}: {_cell_text(cell)}: expected a finite number")
            cols[h].append(v)
    if len(rows) - 1 > MAX_TABLE_POINTS:
        raise LensError(f"{where}: {len(rows) - 1} field points; at most {MAX_TABLE_POINTS}")
    return cols


def _check_header(names: list[str], where: str) -> None:
    seen = set()
    for h in names:
        if h in seen:
            raise LensError(f"{where}: column {h!r} appears twice")
        seen.add(h)
        if h not in ("row_px", "col_px"):
            _column_noll(h, where)
    for need in ("row_px", "col_px"):
        if need not in seen:
            raise LensError(f"{where}: no {need} column (columns: row_px, col_px, then Z1 .. Z{MAX_NOLL})")


def table_from_columns(cols: dict, *, wavelength_nm: float, interpolation: str = "linear", extrapolate: str = "none",
                       keep_tilt: bool = False, source: str = "inline", flip_odd: bool = False,
                       where: str = "field_table") -> FieldTable:
    """A checked :class:`FieldTable` from columns ``{"row_px": [...], "col_px": [...], "Z<j>": [...]}``.

    ``flip_odd`` flips the sign of Zernikes of odd radial order (a file in poppy's sign convention; see
    :func:`psfsim.lens._apply_convention`). Piston and tilt (Z1-Z3) are dropped unless ``keep_tilt``.
    """
    from .zernike import noll_to_nm

    if interpolation not in INTERPOLATIONS:
        raise LensError(f"{where}.interpolation = {interpolation!r}: expected one of "
                        f"{', '.join(repr(v) for v in INTERPOLATIONS)}")
    if extrapolate not in EXTRAPOLATIONS:
        raise LensError(f"{where}.extrapolate = {extrapolate!r}: expected one of "
                        f"{', '.join(repr(v) for v in EXTRAPOLATIONS)}")
    _check_header(list(cols), where)
    n = len(cols["row_px"])
    for h, v in cols.items():
        if len(v) != n:
            raise LensError(f"{where}.{h}: {len(v)} values for {n} field points (row_px has {n})")
    if n > MAX_TABLE_POINTS:
        raise LensError(f"{where}: {n} field points; at most {MAX_TABLE_POINTS}")
    if n == 0:
        raise LensError(f"{where}: no field points")
    points = np.stack([np.asarray(cols["row_px"], float), np.asarray(cols["col_px"], float)], 1)
    nolls = sorted(_column_noll(h, where) for h in cols if h not in ("row_px", "col_px"))
    if not keep_tilt:
        nolls = [j for j in nolls if j > 3]
    values = np.stack([np.asarray(cols[f"Z{j}"], float) for j in nolls], 1) if nolls else np.zeros((n, 0))
    if flip_odd:
        values = values * np.array([-1.0 if noll_to_nm(j)[0] % 2 else 1.0 for j in nolls])
    return FieldTable(points_px=points, nolls=tuple(nolls), values=values, wavelength_nm=float(wavelength_nm),
                      interpolation=interpolation, extrapolate=extrapolate, keep_tilt=bool(keep_tilt), source=source)


def format_table_csv(cols: dict) -> str:
    """A table's columns as CSV text (header ``row_px, col_px, Z..``; numbers written exactly, ``repr``)."""
    names = ["row_px", "col_px"] + sorted((h for h in cols if h not in ("row_px", "col_px")), key=lambda h: int(h[1:]))
    out = [",".join(names)]
    for i in range(len(cols["row_px"])):
        out.append(",".join(repr(float(cols[h][i])) for h in names))
    return "\n".join(out) + "\n"
