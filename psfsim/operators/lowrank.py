"""Fast spatially-varying blur: low-rank product-convolution with eigen-PSFs (numpy).

For a source-dependent PSF the blur is ``n = sum_k e_k * (w_k . m)`` (Flicker & Rigaut 2005, JOSA A 22, 1, eq. 9;
Denis et al. 2015, IJCV 115, 253, "fast approximations of shift-variant blur", section 3): ``e_k`` are the
eigen-PSFs (right singular vectors of a grid of PSFs over the field), ``w_k`` the coefficient maps (the
singular-vector coefficients of each grid node, interpolated by separable cubic splines at every pixel's
field point), ``.`` the pixel-wise product and ``*`` a 2-D linear convolution done with real FFTs. Because
the weights multiply the *input*, each source pixel is spread with (the rank-K approximation of) its own PSF,
as the physics requires.

Cost per image: ``K`` forward real FFTs and one inverse (the products are accumulated in place in the Fourier
domain, one eigen-PSF at a time), the eigen-PSFs transformed once per operator; windows larger than
:data:`MAX_BLOCK_PAD` are split into overlap-add blocks so every transform and temporary is of one block.

The rank ``K`` and the grid density are chosen from a target relative error (default 1 %): the grid is refined
until cubic interpolation reproduces the PSFs midway between nodes to ``tol / 2``; then ``K`` is the smallest
rank at which the *operator* meets ``tol`` on point sources (its hardest input: the response to a point is
the interpolated rank-K PSF there, against the exact PSF), the worse of a window of 4 x 4 overlapping points at
the frame's corner (strongest aberrations) and one at its centre (sharpest PSF).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from ..cache import BoundedCache
from ..checks import result_dtype
from ..errors import PsfsimError
from ..fft import get_backend
from .spline import SplineAxis, spline_weights

__all__ = ["LowRankBasis", "LowRankOperator", "KernelCache", "spline_weights", "as_image_batch", "result_dtype",
           "DEFAULT_TOL"]

#: Default target relative error of the fast operator.
DEFAULT_TOL = 0.01
_MAX_NODES = 33
#: Largest transform side of the fast operator: larger windows are split into blocks (overlap-add) whose
#: padded size fits it (a few MB per spectrum: the transforms and products stay in the CPU caches).
MAX_BLOCK_PAD = 576
#: Tile-local bases (``local=True``): the transform side of a block is at most the next fast length of
#: ``max(LOCAL_BLOCK_PAD, 6 k)``: small blocks need few eigen-PSFs (relay: mean K_b 3.8 at 256 px blocks, 5.1 at
#: 360, against K = 13 for the whole field), at the cost of a halo of ``k - 1`` pixels per block; transforms of
#: 240-380 were fastest on the relay and telescope frames (2 cores), 128 was slower than the global basis.
LOCAL_BLOCK_PAD = 288
#: Samples per block side of the interpolated PSF field from which a block's eigen-PSFs are computed.
_LOCAL_SAMPLES = 8
#: Per-block eigen-PSF transforms of a local operator are kept up to this size, else recomputed per call.
LOCAL_KERNEL_BYTES = 256 * 2**20
#: Coefficient maps of a window are kept dense up to this size; larger windows compute each block's maps.
_DENSE_MAPS_BYTES = 64 * 2**20
#: Bound of the eigen-PSF transform cache of one basis (edge tiles and odd windows have their own shapes).
KERNEL_CACHE_BYTES = 512 * 2**20
_SAVE_FORMAT = "psfsim-lowrank-basis/1"


def as_image_batch(a, shape, work_dtype=np.float32) -> tuple[np.ndarray, bool]:
    """``(H, W)`` or ``(B, H, W)`` -> ``((B, H, W), was_single)``; shape-, dtype- and finiteness-checked for every
    numpy operator (non-finite pixels are refused: :mod:`psfsim.checks`)."""
    from ..checks import checked_image

    a, _ = checked_image(a, "image", work_dtype=work_dtype)
    if a.shape[-2:] != tuple(shape):
        raise PsfsimError(f"image of shape {a.shape}: expected {tuple(shape)} or (B, *{tuple(shape)}), the operator's window")
    return (a[None] if a.ndim == 2 else a), a.ndim == 2


def _grid_nodes(lens, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    from ..field import grid_positions

    H, W = lens.field.shape_px
    R = lens.field.half_diagonal_px
    ny = max(2, int(np.ceil((H - 1) / (spacing * R))) + 1) if H > 1 else 1
    nx = max(2, int(np.ceil((W - 1) / (spacing * R))) + 1) if W > 1 else 1
    return grid_positions(ny, H), grid_positions(nx, W)


def check_build_args(rank, tol, grid):
    """Validate the low-rank build arguments; return ``(rank or None, tol float, grid tuple or None)``."""
    try:
        tol_ok = 0 < float(tol) < 1
    except (TypeError, ValueError):
        tol_ok = False
    if not tol_ok:
        raise PsfsimError(f"tol = {tol!r}: expected a relative error 0 < tol < 1")
    if rank is not None:
        try:
            if isinstance(rank, bool) or int(rank) != rank or rank < 1:
                raise ValueError
        except (TypeError, ValueError):
            raise PsfsimError(f"rank = {rank!r}: expected a whole number >= 1") from None
        rank = int(rank)
    if grid is not None:
        try:
            ny, nx = (int(g) for g in grid)
            if (ny, nx) != tuple(grid) or ny < 1 or nx < 1:
                raise ValueError
        except (TypeError, ValueError):
            raise PsfsimError(f"grid = {grid!r}: expected two whole numbers >= 1") from None
        grid = (ny, nx)
    return rank, float(tol), grid


class KernelCache(BoundedCache):
    """The eigen-PSF transforms of one basis, keyed by ``(pad_shape, dtype, backend)`` and bounded in bytes:
    windows of one shape (dataset samples, interior tiles) share one entry, edge tiles add their own, the
    least recently used go first (:class:`psfsim.cache.BoundedCache`)."""

    def __init__(self, max_bytes: int = KERNEL_CACHE_BYTES, max_items: int | None = None):
        super().__init__(max_items=max_items, max_bytes=max_bytes)


def _psfs_at(lens, rows, cols) -> np.ndarray:
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    x, y = lens.field.pixel_to_field(rr, cc)
    k = lens.psf_sampling.size_px
    return lens.psfs(x.ravel(), y.ravel()).reshape(len(rows), len(cols), k * k)


def _rel_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


@dataclass(frozen=True, eq=False)
class LowRankBasis:
    """Eigen-PSFs and their coefficients on a grid of the lens field (window-independent).

    Attributes
    ----------
    lens : Lens
    eigen_psfs : ndarray, (K, k, k) float64
    coeffs : ndarray, (ny, nx, K) float64
        Coefficient of each eigen-PSF at each grid node.
    rows, cols : ndarray, (ny,), (nx,)
        Pixel positions of the grid nodes in the frame.
    singular_values : ndarray, (min(G, k^2),)
        All singular values of the grid (for error-vs-rank tables).
    interp_error : float
        Largest relative L2 error of the spline-interpolated PSF midway between nodes (full rank).
    rank_error : float
        Largest relative L2 error of a node's PSF at rank K.
    point_error : float
        Relative L2 error of the operator's response to point sources at rank K (interpolation and rank
        together), the worse of the corner and centre lattices (:func:`_point_error`); NaN for a basis saved
        without its probe PSFs.
    """

    lens: object
    eigen_psfs: np.ndarray
    coeffs: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    singular_values: np.ndarray
    interp_error: float
    rank_error: float
    point_error: float = float("nan")
    #: the arguments it was built with: ``{"rank": int | None, "tol": float, "grid": [ny, nx] | None}``
    built_with: dict = field(default_factory=lambda: {"rank": None, "tol": DEFAULT_TOL, "grid": None})
    _full: dict = field(default_factory=dict, repr=False)
    _kft: KernelCache = field(default_factory=KernelCache, repr=False)

    @property
    def rank(self) -> int:
        return self.eigen_psfs.shape[0]

    @cached_property
    def row_axis(self) -> SplineAxis:
        """Cardinal splines along the frame's rows (through :attr:`rows`)."""
        return SplineAxis.build(self.rows)

    @cached_property
    def col_axis(self) -> SplineAxis:
        """Cardinal splines along the frame's columns (through :attr:`cols`)."""
        return SplineAxis.build(self.cols)

    def __getstate__(self):
        # pickled for worker processes / Dask tasks: arrays and the lens, never the caches
        return {k: v for k, v in self.__dict__.items() if k not in ("row_axis", "col_axis")}

    def __setstate__(self, d):
        self.__dict__.update(d)

    @classmethod
    def build(cls, lens, *, rank: int | None = None, tol: float = DEFAULT_TOL, grid: tuple[int, int] | None = None) -> "LowRankBasis":
        """Choose the grid and rank for relative error ``tol`` (or use the given ``rank`` / ``grid``).

        Parameters
        ----------
        lens : Lens
        rank : int, optional
            Number of eigen-PSFs; default: the smallest at which the operator's error on point sources (worse
            of corner and centre, :attr:`point_error`) is at most ``tol``.
        tol : float
            Target relative L2 error of the operator (the grid's interpolation error is held to ``tol / 2``).
        grid : (ny, nx), optional
            Grid nodes over the frame; default: refined until interpolation reaches ``tol / 2``.
        """
        rank, tol, grid = check_build_args(rank, tol, grid)
        from ..field import grid_positions

        H, W = lens.field.shape_px
        k = lens.psf_sampling.size_px
        if grid is not None:
            ny, nx = grid
            rows, cols = grid_positions(ny, H), grid_positions(nx, W)
            P = _psfs_at(lens, rows, cols)
            interp_err = _interp_error(lens, rows, cols, P)
        elif lens.field_constant:
            rows, cols = grid_positions(1, H), grid_positions(1, W)
            P = _psfs_at(lens, rows, cols)
            interp_err = 0.0
        else:
            spacing = 0.5
            while True:
                rows, cols = _grid_nodes(lens, spacing)
                P = _psfs_at(lens, rows, cols)
                interp_err = _interp_error(lens, rows, cols, P)
                if interp_err <= tol / 2 or max(len(rows), len(cols)) >= _MAX_NODES:
                    break
                spacing /= 1.5
        ny, nx = len(rows), len(cols)
        A = P.reshape(ny * nx, k * k)
        U, s, Vt = np.linalg.svd(A, full_matrices=False)
        probes = _probes(lens)
        point_errs = _point_errors(rows, cols, (U * s).reshape(ny, nx, -1), Vt, probes)
        if rank is None:
            K = int(np.argmax(point_errs <= tol)) + 1 if (point_errs <= tol).any() else len(s)
        else:
            K = min(int(rank), len(s))
        rank_err = float(_rel_err((U[:, :K] * s[:K]) @ Vt[:K], A).max())
        return cls(
            lens=lens,
            eigen_psfs=Vt[:K].reshape(K, k, k),
            coeffs=(U[:, :K] * s[:K]).reshape(ny, nx, K),
            rows=rows,
            cols=cols,
            singular_values=s,
            interp_error=float(interp_err),
            rank_error=rank_err,
            point_error=float(point_errs[K - 1]),
            built_with={"rank": None if rank is None else int(rank), "tol": float(tol),
                        "grid": None if grid is None else [int(g) for g in grid]},
            _full=dict(U=U, s=s, Vt=Vt, **probes),
        )

    @property
    def node_psfs(self) -> np.ndarray:
        """The exact PSFs ``(ny, nx, k, k)`` at the grid nodes (the full-rank SVD, nothing recomputed)."""
        U, s, Vt = self._full["U"], self._full["s"], self._full["Vt"]
        k = self.lens.psf_sampling.size_px
        return ((U * s) @ Vt).reshape(len(self.rows), len(self.cols), k, k)

    def with_rank(self, K: int) -> "LowRankBasis":
        """The same grid truncated (or extended) to rank ``K``."""
        U, s, Vt = self._full["U"], self._full["s"], self._full["Vt"]
        K = max(1, min(int(K), len(s)))
        k = self.lens.psf_sampling.size_px
        A = self.node_psfs.reshape(len(self.rows) * len(self.cols), k * k)
        return replace(
            self,
            eigen_psfs=Vt[:K].reshape(K, k, k),
            coeffs=(U[:, :K] * s[:K]).reshape(len(self.rows), len(self.cols), K),
            rank_error=float(_rel_err((U[:, :K] * s[:K]) @ Vt[:K], A).max()),
            point_error=self.point_errors()[K - 1] if len(self.point_errors()) else float("nan"),
            built_with={**self.built_with, "rank": K},
            _kft=KernelCache(self._kft.max_bytes),  # kernel transforms belong to one rank
        )

    def point_errors(self) -> np.ndarray:
        """The operator's relative error on the probe point sources at every rank ``1..G`` (worse of corner and
        centre): the table the automatic rank is read from (empty for a basis saved without its probes)."""
        if "probe_rows" not in self._full:
            return np.zeros(0)
        U, s, Vt = self._full["U"], self._full["s"], self._full["Vt"]
        probes = {k: v for k, v in self._full.items() if k.startswith("probe_")}
        return _point_errors(self.rows, self.cols, (U * s).reshape(len(self.rows), len(self.cols), -1), Vt, probes)

    def spline_factors(self, *, origin, shape) -> tuple[np.ndarray, np.ndarray]:
        """The separable factors of a window's coefficient maps: ``Wr (h, ny)`` and ``Wc (w, nx)`` float64,
        so that ``maps[k] = Wr @ coeffs[:, :, k] @ Wc.T``."""
        r0, c0 = origin
        h, w = shape
        return self.row_axis.weights(np.arange(r0, r0 + h)), self.col_axis.weights(np.arange(c0, c0 + w))

    def coefficient_maps(self, *, origin, shape, dtype=np.float32, ks: slice = slice(None)) -> np.ndarray:
        """Coefficient maps ``(K', h, w)`` of a window for eigen-PSFs ``ks`` (default all), evaluated at every
        pixel from the separable spline factors (``K'`` matrix products, no ``(h, w, ny, nx)`` intermediate)."""
        Wr, Wc = self.spline_factors(origin=origin, shape=shape)
        C = self.coeffs[:, :, ks]
        out = np.empty((C.shape[2], len(Wr), len(Wc)), dtype)
        for i in range(C.shape[2]):
            out[i] = (Wr @ C[:, :, i]) @ Wc.T
        return out

    def psfs_at(self, rows, cols) -> np.ndarray:
        """Rank-K interpolated PSFs ``(N, k, k)`` at frame pixel positions ``rows, cols (N,)``, unit sum."""
        Wr = self.row_axis.weights(np.atleast_1d(np.asarray(rows, float)))
        Wc = self.col_axis.weights(np.atleast_1d(np.asarray(cols, float)))
        c = np.einsum("na,abk,nb->nk", Wr, self.coeffs, Wc)
        p = np.einsum("nk,kij->nij", c, self.eigen_psfs)
        return p / p.sum(axis=(1, 2), keepdims=True)

    def operator(self, *, shape, origin=(0, 0), dtype=np.float32, backend: str | None = None,
                 workers: int | None = None, allow_outside: bool = False, local: bool = False) -> "LowRankOperator":
        """A :class:`LowRankOperator` for the window ``origin``, ``shape`` of the field (keyword-only);
        ``local=True`` for tile-local bases."""
        return LowRankOperator(self, shape=shape, origin=origin, dtype=dtype, backend=backend, workers=workers,
                               allow_outside=allow_outside, local=local)

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write the basis to an ``.npz`` (arrays and JSON text only: loaded with ``allow_pickle=False``).

        The file carries the lens description and fingerprint, the full SVD of the node PSFs (so
        :meth:`with_rank` and :attr:`node_psfs` work after loading), the grid and the error figures. Build a
        basis once (1-2 s for the telescope), save it, and load it in every worker instead of rebuilding.
        """
        from .._version import __version__
        from ..store import atomic_file

        path = Path(path)
        if path.suffix != ".npz":
            raise PsfsimError(f"{path}: a basis is saved as .npz")
        meta = {"format": _SAVE_FORMAT, "lens": self.lens.to_dict(), "fingerprint": self.lens.fingerprint,
                "rank": self.rank, "interp_error": self.interp_error, "rank_error": self.rank_error,
                "point_error": self.point_error,
                "built_with": self.built_with, "psfsim_version": __version__}
        with atomic_file(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, meta=np.array(json.dumps(meta)), rows=self.rows, cols=self.cols,
                         **{k: v for k, v in self._full.items()})
        return path

    @classmethod
    def load(cls, path, lens=None, *, register: bool = True) -> "LowRankBasis":
        """Read a basis written by :meth:`save`. With ``lens``, refuse a file made for another lens; without,
        rebuild the lens from the stored description (no box check: it passed when the basis was built).

        With ``register`` (default) the basis enters this process's cache under the arguments it was built
        with, so ``make_operator(lens, ...)`` / ``lowrank_basis(lens, ...)`` with those arguments use it instead
        of rebuilding: load it once in each worker (a Dask worker plugin, a DataLoader ``worker_init_fn``).
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                arrs = {k: z[k] for k in ("rows", "cols", "U", "s", "Vt")}
                probes = {k: z[k] for k in _PROBE_KEYS if k in z}
        except (OSError, KeyError, ValueError) as e:
            raise PsfsimError(f"{path}: not a saved psfsim basis ({type(e).__name__}: {e})") from None
        if meta.get("format") != _SAVE_FORMAT:
            raise PsfsimError(f"{path}: format {meta.get('format')!r}, expected {_SAVE_FORMAT!r}")
        if lens is None:
            import warnings

            from ..lens import lens_from_dict

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the Nyquist warning was given when the basis was built
                lens = lens_from_dict(meta["lens"], check_psf_box=False)
        if lens.fingerprint != meta["fingerprint"]:
            raise PsfsimError(f"{path}: basis of lens {meta['lens'].get('name')!r} (fingerprint "
                              f"{meta['fingerprint'][:12]}), not of lens {lens.name!r} ({lens.fingerprint[:12]})")
        U, s, Vt = arrs["U"], arrs["s"], arrs["Vt"]
        K = int(meta["rank"])
        k = lens.psf_sampling.size_px
        ny, nx = len(arrs["rows"]), len(arrs["cols"])
        built = meta.get("built_with") or {"rank": K, "tol": DEFAULT_TOL, "grid": [ny, nx]}
        basis = cls(lens=lens, eigen_psfs=Vt[:K].reshape(K, k, k), coeffs=(U[:, :K] * s[:K]).reshape(ny, nx, K),
                    rows=arrs["rows"], cols=arrs["cols"], singular_values=s, interp_error=float(meta["interp_error"]),
                    rank_error=float(meta["rank_error"]), point_error=float(meta.get("point_error", float("nan"))),
                    built_with=built, _full=dict(U=U, s=s, Vt=Vt, **probes))
        if register:
            from . import cache_basis

            basis = cache_basis(basis)
        return basis


_PROBE_KEYS = ("probe_rows", "probe_cols", "probe_psfs", "probe_origins")


def probe_layout(k: int) -> tuple[int, np.ndarray]:
    """``(L, offsets)``: the probe window's side and the 4 point offsets along each axis inside it: points
    ``s = k // 3`` apart (their responses overlap, as in a star field or a dense specimen), ``L = 4 s``."""
    s = max(1, k // 3)
    return 4 * s, s // 2 + s * np.arange(4)


def _probes(lens) -> dict:
    """Point sources of the rank rule: a 4 x 4 lattice of impulses ``k // 3`` apart in an ``L x L`` window at the
    frame's corner (0, 0) and one centred on the frame, with their exact PSFs.

    Returns ``probe_origins (2, 2)`` (each window's top-left pixel), ``probe_rows``, ``probe_cols`` ``(2, 16)``
    frame pixel positions of the points and ``probe_psfs`` ``(2, 16, k * k)``."""
    H, W = lens.field.shape_px
    k = lens.psf_sampling.size_px
    L, offs = probe_layout(k)
    origins, rows, cols, psfs = [], [], [], []
    for r0, c0 in ((0, 0), (max(0, H // 2 - L // 2), max(0, W // 2 - L // 2))):
        r, c = r0 + offs, c0 + offs
        rr, cc = np.meshgrid(r, c, indexing="ij")
        origins.append((r0, c0))
        rows.append(rr.ravel())
        cols.append(cc.ravel())
        psfs.append(_psfs_at(lens, r, c).reshape(16, k * k))
    return {"probe_origins": np.array(origins), "probe_rows": np.array(rows), "probe_cols": np.array(cols),
            "probe_psfs": np.array(psfs)}


def _place(window: np.ndarray, r: int, c: int, psfs: np.ndarray) -> None:
    """Add centred ``psfs (..., k, k)`` at window pixel ``(r, c)`` into ``window (..., L, L)``, cropped to it
    (the operator's zero boundary: light leaving the window is lost)."""
    k = psfs.shape[-1]
    h = k // 2
    L0, L1 = window.shape[-2:]
    ra, rb, ca, cb = max(0, r - h), min(L0, r - h + k), max(0, c - h), min(L1, c - h + k)
    window[..., ra:rb, ca:cb] += psfs[..., ra - (r - h) : rb - (r - h), ca - (c - h) : cb - (c - h)]


def _point_errors(rows, cols, coeffs, Vt, probes) -> np.ndarray:
    """Relative L2 error, at every rank ``K = 1..G``, of the operator on each probe image (16 impulses in an
    ``L x L`` window, :func:`_probes`): the response to an impulse is the rank-K spline-interpolated PSF there
    (Flicker & Rigaut 2005, eq. 9), the responses overlap and are cropped by the window, as the operator's;
    against the sum of the exact PSFs. The worse window at each rank. ``coeffs (ny, nx, G)`` are the full-rank
    node coefficients, ``Vt (G, k * k)`` the eigen-PSFs."""
    ra, ca = SplineAxis.build(rows), SplineAxis.build(cols)
    G, kk = Vt.shape
    k = int(round(np.sqrt(kk)))
    L, _ = probe_layout(k)
    V = Vt.reshape(G, k, k)
    worst = np.zeros(G)
    for origin, r, c, P in zip(probes["probe_origins"], probes["probe_rows"], probes["probe_cols"],
                               probes["probe_psfs"]):
        w = np.einsum("na,abg,nb->ng", ra.weights(r), coeffs, ca.weights(c))  # (16, G) coefficients at the points
        exact = np.zeros((L, L))
        terms = np.zeros((G, L, L))  # terms[g]: eigen-PSF g placed at every point with its coefficient
        for n in range(len(r)):
            pr, pc = int(r[n] - origin[0]), int(c[n] - origin[1])
            _place(exact, pr, pc, P[n].reshape(k, k))
            _place(terms, pr, pc, w[n][:, None, None] * V)
        resid = np.cumsum(terms, axis=0) - exact
        worst = np.maximum(worst, np.sqrt((resid**2).sum(axis=(1, 2))) / np.linalg.norm(exact))
    return worst


def _interp_error(lens, rows, cols, P) -> float:
    """Largest relative error of cubic interpolation of the PSF grid at the cells' centres (worst case)."""
    if len(rows) < 2 and len(cols) < 2:
        return 0.0
    mr = (rows[:-1] + rows[1:]) / 2 if len(rows) > 1 else rows
    mc = (cols[:-1] + cols[1:]) / 2 if len(cols) > 1 else cols
    # also the midpoints of the outer edges (extrapolation-free but least constrained)
    mr = np.unique(np.concatenate([mr, rows[[0, -1]]]))
    mc = np.unique(np.concatenate([mc, cols[[0, -1]]]))
    truth = _psfs_at(lens, mr, mc)
    interp = np.einsum("ha,abp,wb->hwp", spline_weights(rows, mr), P, spline_weights(cols, mc), optimize=True)
    return float(_rel_err(interp, truth).max())


def _block_edges(n: int, k: int, max_pad: int, fast_len) -> tuple[list[int], int]:
    """Split ``n`` pixels into near-equal blocks whose full linear convolution with a ``k``-pixel kernel,
    ``block + k - 1``, fits a transform of at most ``max_pad`` (one block if the whole length fits); returns the
    block edges ``[0, ..., n]`` and the transform length (a fast length)."""
    whole = fast_len(n + k - 1, True)
    if whole <= max_pad or n <= 1:
        return [0, n], whole
    b = max(1, max_pad - (k - 1))
    nb = -(-n // b)
    b = -(-n // nb)
    return [min(n, i * b) for i in range(nb + 1)], fast_len(b + k - 1, True)


class LowRankOperator:
    """Fast spatially-varying blur of a window (numpy), with its adjoint.

    Parameters
    ----------
    basis : LowRankBasis
    shape : (int, int)
        Window shape ``(H, W)`` (keyword-only, as ``origin``).
    origin : (int, int)
        Window origin ``(row, col)`` in the lens field.
    dtype : numpy dtype
        Working precision (float32 default; float64 for adjoint tests). Outputs follow
        :func:`result_dtype` of the input.
    backend : str, optional
        FFT backend (:func:`psfsim.fft.get_backend`).
    workers : int, optional
        Threads per FFT (default: all usable cores, or ``$PSFSIM_FFT_THREADS``); pass 1 when a threaded
        scheduler (Dask) runs several windows at once.
    allow_outside : bool
        Accept a window reaching past the frame (a tile with its halo, a sample with its margin).
    local : bool
        Tile-local bases: every overlap-add block (transforms of :data:`LOCAL_BLOCK_PAD` or ``6 k``) gets its own
        eigen-PSFs, the fewest that reproduce the PSFs over the block to ``tol / 2`` (the grid's interpolation
        holds the other half), never more than the global rank. Each source pixel is still spread with (an
        approximation of) its own PSF: the blocks partition the *input*, so no blending is needed and the
        adjoint stays exact. Fewer, smaller transforms where the PSF varies strongly over the field (relay,
        telescope: ``python benchmarks/bench_operators.py --only local``); the result differs from the global
        operator's within the error target, and depends on the window's block layout (a tile's output is not
        bit-equal to the same pixels of a whole-frame call).

    Notes
    -----
    A window whose padded size ``H + k - 1`` (or ``W + k - 1``) exceeds :data:`MAX_BLOCK_PAD` is processed in
    blocks by overlap-add (Oppenheim & Schafer, *Discrete-Time Signal Processing*, 3rd ed., section 8.7.3): the
    weighted input of each block is convolved in full (``block + k - 1``) and added into the output. The sum is
    the same linear convolution (equal to float rounding); the transforms stay small enough for the CPU caches
    (measured: sixteen 576-point transforms are 2-3x faster than one 2160-point one) and every temporary is of
    one block, so an 8192 x 8192 window with K = 19 needs a few hundred MB besides its input and output.
    """

    def __init__(self, basis: LowRankBasis, *, shape, origin=(0, 0), dtype=np.float32, backend=None, workers=None,
                 allow_outside=False, local: bool = False):
        from ..field import check_window

        (r0, c0), (H, W) = check_window(basis.lens, origin=origin, shape=shape, allow_outside=allow_outside)
        self.basis = basis
        self.shape = (H, W)
        self.origin = (r0, c0)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise PsfsimError(f"dtype = {self.dtype}: expected float32 or float64")
        self.cdtype = np.result_type(self.dtype, np.complex64)
        self.fft = get_backend(backend, workers)
        k = basis.eigen_psfs.shape[-1]
        self.k = k
        self.local = bool(local)
        if self.local:
            max_pad = self.fft.next_fast_len(max(LOCAL_BLOCK_PAD, 6 * k), True)
        else:
            max_pad = max(MAX_BLOCK_PAD, self.fft.next_fast_len(4 * k, True))
        self.row_edges, hp = _block_edges(H, k, max_pad, self.fft.next_fast_len)
        self.col_edges, wp = _block_edges(W, k, max_pad, self.fft.next_fast_len)
        #: shape of the transforms: the window's padded shape, or a block's where the window is split
        self.pad_shape = (hp, wp)
        self._dense = None
        #: per block ``(eigen_psfs (K_b, k, k), node coefficients (ny, nx, K_b))`` of a local operator, else None
        if self.local:
            from ._blas import single_blas_thread

            with single_blas_thread():  # many small SVDs: BLAS threads only contend
                self._local = self._local_bases()
        else:
            self._local = None
        if not self.local and basis.rank * H * W * self.dtype.itemsize <= _DENSE_MAPS_BYTES:
            self._dense = basis.coefficient_maps(origin=self.origin, shape=self.shape, dtype=self.dtype)

    @property
    def rank(self) -> int:
        """The global basis's rank (a local operator's blocks use :attr:`local_ranks`, at most this)."""
        return self.basis.rank

    @property
    def local_ranks(self) -> list[int]:
        """Eigen-PSFs per block of a local operator (row-major block order); ``[]`` for a global one."""
        return [] if self._local is None else [len(e) for e, _ in self._local]

    def _local_bases(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each block's own basis (``local=True``): the full-rank interpolated PSF field sampled at
        ``_LOCAL_SAMPLES`` x ``_LOCAL_SAMPLES`` points spanning the block (corners included), its SVD truncated at
        the smallest rank reproducing every sample to ``tol / 2`` (capped at the global rank). The block's node
        coefficients are the node PSFs projected on its eigen-PSFs: interpolation is linear in the node PSFs, so
        interpolating them is projecting the interpolated PSF (Flicker & Rigaut 2005 eq. 9, per block)."""
        b = self.basis
        U, s, Vt = b._full["U"], b._full["s"], b._full["Vt"]
        C = (U * s).reshape(len(b.rows), len(b.cols), -1)  # full-rank node coefficients: node PSFs = C @ Vt
        k = self.k
        tol = float(b.built_with.get("tol", DEFAULT_TOL)) / 2
        out = []
        for r0, r1, c0, c1 in self._blocks():
            rr = self.origin[0] + np.linspace(r0, r1 - 1, min(_LOCAL_SAMPLES, r1 - r0))
            cc = self.origin[1] + np.linspace(c0, c1 - 1, min(_LOCAL_SAMPLES, c1 - c0))
            # the sampled PSFs are c @ Vt with orthonormal Vt rows: their SVD is c's (n x G, small), rotated by Vt
            c = np.einsum("ha,abg,wb->hwg", b.row_axis.weights(rr), C, b.col_axis.weights(cc)).reshape(-1, C.shape[2])
            _, _, wt = np.linalg.svd(c, full_matrices=False)
            n2 = np.einsum("ij,ij->i", c, c)
            resid2 = n2[:, None] - np.cumsum((c @ wt.T) ** 2, axis=1)  # squared residual at rank 1..r
            err = np.sqrt(np.maximum(resid2, 0) / n2[:, None]).max(axis=0)
            ok = err <= tol
            Kb = min(int(np.argmax(ok)) + 1 if ok.any() else len(err), b.rank)
            E = wt[:Kb] @ Vt  # (K_b, k * k) orthonormal eigen-PSFs of the block
            out.append((E.reshape(Kb, k, k), C @ wt[:Kb].T))  # node PSFs C @ Vt projected on E: C @ (Vt E^T)
        return out

    def _local_kernel_ft(self, i: int) -> np.ndarray:
        """Real FFTs ``(K_b, Hp, Wp // 2 + 1)`` of block ``i``'s eigen-PSFs: kept on the operator when all blocks'
        fit :data:`LOCAL_KERNEL_BYTES`, else recomputed per call (huge windows)."""
        cache = self.__dict__.setdefault("_local_kft", {})
        hit = cache.get(i)
        if hit is not None:
            return hit
        ft = self.fft.rfft2(self._local[i][0].astype(self.dtype), s=self.pad_shape).astype(self.cdtype, copy=False)
        total = sum(self.local_ranks) * ft[0].nbytes
        if total <= LOCAL_KERNEL_BYTES:
            cache[i] = ft
        return ft

    @property
    def n_blocks(self) -> int:
        """Number of overlap-add blocks (1 when the window is transformed whole)."""
        return (len(self.row_edges) - 1) * (len(self.col_edges) - 1)

    def __getstate__(self):  # for process pools / Dask: the FFT backend by name, maps recomputed on arrival
        d = dict(self.__dict__)
        d["fft"] = (self.fft.name, self.fft.workers)
        d["_dense"] = None
        d.pop("_factors", None)
        d.pop("_local_kft", None)
        return d

    def __setstate__(self, d):
        name, workers = d["fft"]
        d = {**d, "fft": get_backend(name, workers)}
        self.__dict__.update(d)
        H, W = self.shape
        if not self.local and self.basis.rank * H * W * self.dtype.itemsize <= _DENSE_MAPS_BYTES:
            self._dense = self.basis.coefficient_maps(origin=self.origin, shape=self.shape, dtype=self.dtype)

    def maps(self, ks: slice = slice(None)) -> np.ndarray:
        """Coefficient maps ``(K', H, W)`` of the global eigen-PSFs ``ks`` over the whole window (kept dense for
        small windows; computed on request for large ones, which :meth:`forward` and :meth:`adjoint` do per
        block). A local operator's blocks use their own bases instead (:attr:`local_ranks`)."""
        if self._dense is not None:
            return self._dense[ks]
        return self.basis.coefficient_maps(origin=self.origin, shape=self.shape, dtype=self.dtype, ks=ks)

    @cached_property
    def _factors(self) -> tuple[np.ndarray, np.ndarray]:
        return self.basis.spline_factors(origin=self.origin, shape=self.shape)

    def _block_maps(self, r0: int, r1: int, c0: int, c1: int, coeffs: np.ndarray | None = None):
        """``kk -> (r1 - r0, c1 - c0)`` coefficient map of eigen-PSF ``kk`` over rows ``r0:r1``, columns ``c0:c1``
        of the window: a view of the dense maps, or one matrix product of the separable spline factors
        (``(Wr C_kk) Wc^T`` in the working dtype, into one reused buffer). ``coeffs (ny, nx, K')``: node
        coefficients of another basis (a block's own, ``local=True``) instead of the global ones."""
        if coeffs is None and self._dense is not None:
            return lambda kk: self._dense[kk, r0:r1, c0:c1]
        Wr, Wc = self._factors
        coeffs = self.basis.coeffs if coeffs is None else coeffs
        T = np.einsum("ha,abk->khb", Wr[r0:r1], coeffs).astype(self.dtype)  # (K, h, nx)
        WcT = np.ascontiguousarray(Wc[c0:c1].T, dtype=self.dtype)  # (nx, w)
        buf = np.empty((r1 - r0, c1 - c0), self.dtype)
        return lambda kk: np.matmul(T[kk], WcT, out=buf)

    @property
    def kernel_ft(self) -> np.ndarray:
        """Real FFTs of the eigen-PSFs on the padded grid, ``(K, Hp, Wp // 2 + 1)``.

        Kept by the basis in a byte-bounded cache (:class:`KernelCache`) keyed by padded shape, dtype and
        backend, so the many windows of a dataset or the tiles of a frame reuse them.
        """
        key = (self.pad_shape, self.dtype.str, self.fft.name)
        return self.basis._kft.get(key, lambda: self.fft.rfft2(self.basis.eigen_psfs.astype(self.dtype),
                                                               s=self.pad_shape).astype(self.cdtype, copy=False))

    def _blocks(self):
        for r0, r1 in zip(self.row_edges[:-1], self.row_edges[1:]):
            for c0, c1 in zip(self.col_edges[:-1], self.col_edges[1:]):
                yield r0, r1, c0, c1

    def _as_batch(self, a):
        b, single = as_image_batch(a, self.shape, self.dtype)
        return b.astype(self.dtype, copy=False), single, result_dtype(b)

    def _reach(self, r0: int, r1: int, c0: int, c1: int) -> tuple[int, int, int, int]:
        """``(qa, qb, pa, pb)``: the part inside the window of the ``(h + k - 1) x (w + k - 1)`` region that block
        rows ``r0:r1``, columns ``c0:c1`` spread light onto (window rows ``r0 - k // 2 + q``, ``q`` in ``[qa, qb)``;
        columns likewise)."""
        k, c = self.k, self.k // 2
        (H, W), h, w = self.shape, r1 - r0, c1 - c0
        return max(0, c - r0), min(h + k - 1, H - r0 + c), max(0, c - c0), min(w + k - 1, W - c0 + c)

    def _blas_limit(self):
        """One BLAS thread for the block maps' small products (none needed when the maps are dense)."""
        from contextlib import nullcontext

        from ._blas import single_blas_thread

        return nullcontext() if self._dense is not None else single_blas_thread()

    def forward(self, m: np.ndarray) -> np.ndarray:
        """Blur ``m`` of shape ``(H, W)`` or ``(B, H, W)`` -> same shape, dtype by :func:`result_dtype`.

        Per block and eigen-PSF: the weighted block written into one zero-padded buffer, one real FFT, its
        product with the kernel's transform accumulated in place; one inverse FFT per block, added into the
        output (overlap-add). ``K + 1`` transforms per block; temporaries: one buffer and two spectra of a block.
        """
        mb, single, odt = self._as_batch(m)
        with self._blas_limit():
            out = self._forward(mb)
        out = out.astype(odt, copy=False)
        return out[0] if single else out

    def _block_waves(self) -> list[list[tuple[int, int, int, int, int]]]:
        """The blocks ``(index, r0, r1, c0, c1)`` in four waves, one per parity of (block row, block column).
        Blocks of one wave never write the same output pixels (a block's overlap-add output reaches ``k - 1``
        pixels past it, and blocks are at least ``3 k`` wide), so a wave's blocks may run at once without a lock,
        and every pixel receives its contributions in one fixed order, whatever the number of threads: the
        result does not depend on ``workers``."""
        nc = len(self.col_edges) - 1
        blocks = [(i, *b) for i, b in enumerate(self._blocks())]
        waves = [[b for b in blocks if ((b[0] // nc) % 2, (b[0] % nc) % 2) == par]
                 for par in ((0, 0), (0, 1), (1, 0), (1, 1))]
        return [w for w in waves if w]

    def _each_block(self, fn) -> None:
        """Call ``fn(block, fft)`` for every block, wave after wave (:meth:`_block_waves`). With several blocks
        and ``workers > 1`` the blocks of a wave run in that many threads, each with one-thread transforms, so
        the per-block array work (weighting, spectral products, overlap-add) runs in parallel too, not only the
        FFTs (numpy and pocketfft release the GIL); one block, or one worker, runs in this thread with the
        operator's own transforms."""
        waves = self._block_waves()
        threads = min(self.fft.workers, max(len(w) for w in waves))
        if threads <= 1:
            for wave in waves:
                for b in wave:
                    fn(b, self.fft)
            return
        from concurrent.futures import ThreadPoolExecutor

        fft1 = get_backend(self.fft.name, 1)
        with ThreadPoolExecutor(threads) as pool:
            for wave in waves:
                list(pool.map(lambda b: fn(b, fft1), wave))  # list(): re-raises a block's exception here

    def _block_basis(self, i: int, r0: int, r1: int, c0: int, c1: int):
        """``(kernel transforms (K', Hp, Wp // 2 + 1), kk -> map)`` of block ``i``: the global basis's, or the
        block's own (``local=True``)."""
        if self._local is None:
            return self.kernel_ft, self._block_maps(r0, r1, c0, c1)
        return self._local_kernel_ft(i), self._block_maps(r0, r1, c0, c1, self._local[i][1])

    def _forward(self, mb: np.ndarray) -> np.ndarray:
        B = mb.shape[0]
        H, W = self.shape
        k, c, pad = self.k, self.k // 2, self.pad_shape
        out = np.zeros((B, H, W), self.dtype)

        def block(b, fft):
            i, r0, r1, c0, c1 = b
            h, w = r1 - r0, c1 - c0
            buf = np.zeros((B, *pad), self.dtype)
            region, src = buf[:, :h, :w], mb[:, r0:r1, c0:c1]
            kft, wk = self._block_basis(i, r0, r1, c0, c1)
            acc = None
            for kk in range(len(kft)):
                np.multiply(src, wk(kk), out=region)
                F = fft.rfft2(buf)
                F *= kft[kk]
                if acc is None:
                    acc = F
                else:
                    acc += F
            f = fft.irfft2(acc, s=pad)  # the block's full convolution: output row r0 - c + q for row q
            qa, qb, pa, pb = self._reach(r0, r1, c0, c1)
            out[:, r0 - c + qa : r0 - c + qb, c0 - c + pa : c0 - c + pb] += f[:, qa:qb, pa:pb]

        self._each_block(block)
        return out

    def adjoint(self, y: np.ndarray) -> np.ndarray:
        """Adjoint ``A^T y = sum_k w_k . (e_k correlated with y)``, same shapes and dtype rule as :meth:`forward`.

        The correlation is a convolution of the flipped region, flipped back (no conjugated copy of the kernel
        transforms): per block of the output one forward FFT of the region of ``y`` its light reaches, then per
        eigen-PSF one product with the kernel's transform, one inverse FFT and one product with the coefficient
        map (:meth:`_adjoint`).
        """
        yb, single, odt = self._as_batch(y)
        with self._blas_limit():
            out = self._adjoint(yb)
        out = out.astype(odt, copy=False)
        return out[0] if single else out

    def _adjoint(self, yb: np.ndarray) -> np.ndarray:
        """The adjoint block by block of the *source* (the forward's partition): ``A^T = sum_b S_b^T sum_k W_bk
        C_bk^T``, with ``C_bk^T`` the correlation with eigen-PSF ``k`` (the global one, or block ``b``'s own) over
        the ``h + k - 1`` rows (columns) the block's light reaches: that region of ``y`` (zero past the window),
        flipped, convolved, flipped back and cut to the block; one forward transform per block, one inverse per
        eigen-PSF. Blocks write only their own pixels (no overlap-add: 10-30 % faster than correlating each
        block of ``y`` over its whole reach, measured at 2048^2)."""
        B = yb.shape[0]
        H, W = self.shape
        k, c, pad = self.k, self.k // 2, self.pad_shape
        out = np.empty((B, H, W), self.dtype)

        def block(b, fft):
            i, r0, r1, c0, c1 = b
            h, w = r1 - r0, c1 - c0
            Lr, Lc = h + k - 1, w + k - 1
            qa, qb, pa, pb = self._reach(r0, r1, c0, c1)
            buf = np.zeros((B, *pad), self.dtype)
            # buf[q'] = y at row r0 - c + (Lr - 1 - q'): the region reversed
            buf[:, Lr - qb : Lr - qa, Lc - pb : Lc - pa] = \
                yb[:, r0 - c + qa : r0 - c + qb, c0 - c + pa : c0 - c + pb][:, ::-1, ::-1]
            G = fft.rfft2(buf)
            kft, wk = self._block_basis(i, r0, r1, c0, c1)
            dst = out[:, r0:r1, c0:c1]
            Z = np.empty_like(G)
            tmp = np.empty((B, h, w), self.dtype)
            for kk in range(len(kft)):
                np.multiply(G, kft[kk], out=Z)
                g = fft.irfft2(Z, s=pad)[:, k - 1 : Lr, k - 1 : Lc][:, ::-1, ::-1]  # correlation at rows r0..r1
                if kk == 0:
                    np.multiply(g, wk(kk), out=dst)  # the block's pixels are written by this block only
                else:
                    np.multiply(g, wk(kk), out=tmp)
                    dst += tmp

        self._each_block(block)
        return out

    __call__ = forward
