"""Fast spatially-varying blur: low-rank product-convolution with eigen-PSFs (numpy).

For a source-dependent PSF the blur is ``n = sum_k e_k * (w_k . m)`` (Flicker & Rigaut 2005, JOSA A 22, 1, eq. 9;
Denis et al. 2015, IJCV 115, 253, "fast approximations of shift-variant blur", section 3): ``e_k`` are the
eigen-PSFs (right singular vectors of a grid of PSFs over the field), ``w_k`` the coefficient maps (the
singular-vector coefficients of each grid node, interpolated by separable cubic splines at every pixel's
field point), ``.`` the pixel-wise product and ``*`` a 2-D linear convolution done with real FFTs. Because
the weights multiply the *input*, each source pixel is spread with (the rank-K approximation of) its own PSF,
as the physics requires.

Cost per image: ``K`` forward real FFTs and one inverse (the products are summed in the Fourier domain), the
eigen-PSFs transformed once per operator. The rank ``K`` and the grid density are chosen from a target
relative error (default 1 %): the grid is refined until cubic interpolation reproduces the PSFs midway
between nodes to ``tol / 2``, then ``K`` is the smallest rank reconstructing every node's PSF to ``tol / 2``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
from scipy.interpolate import make_interp_spline

from ..errors import PsfsimError
from ..fft import get_backend

__all__ = ["LowRankBasis", "LowRankOperator", "spline_weights", "as_image_batch", "DEFAULT_TOL"]

#: Default target relative error of the fast operator.
DEFAULT_TOL = 0.01
_MAX_NODES = 33
#: Largest complex work array for one batched FFT, in bytes (K is split into chunks beyond it).
_FFT_CHUNK_BYTES = 512 * 2**20


def spline_weights(nodes: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Weights ``(len(at), len(nodes))`` of cubic-spline interpolation (not-a-knot) from ``nodes`` to ``at``.

    Interpolating values ``v (len(nodes),)`` is ``weights @ v``; fewer than 4 nodes fall back to the highest
    order possible (quadratic, linear, constant). Points outside the nodes are extrapolated.
    """
    nodes = np.asarray(nodes, float)
    at = np.asarray(at, float)
    n = len(nodes)
    if n == 1:
        return np.ones((len(at), 1))
    spl = make_interp_spline(nodes, np.eye(n), k=min(3, n - 1))
    return spl(at)


def as_image_batch(a, shape) -> tuple[np.ndarray, bool]:
    """``(H, W)`` or ``(B, H, W)`` -> ``((B, H, W), was_single)``; shape-checked for every numpy operator."""
    a = np.asarray(a)
    if a.ndim not in (2, 3) or a.shape[-2:] != tuple(shape):
        raise ValueError(f"expected an image of shape {tuple(shape)} or (B, *{tuple(shape)}), got {a.shape}")
    return (a[None] if a.ndim == 2 else a), a.ndim == 2


def _grid_nodes(lens, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    H, W = lens.field.shape_px
    R = lens.field.half_diagonal_px
    ny = max(2, int(np.ceil((H - 1) / (spacing * R))) + 1) if H > 1 else 1
    nx = max(2, int(np.ceil((W - 1) / (spacing * R))) + 1) if W > 1 else 1
    rows = np.linspace(0, H - 1, ny) if ny > 1 else np.array([0.0])
    cols = np.linspace(0, W - 1, nx) if nx > 1 else np.array([0.0])
    return rows, cols


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
    """

    lens: object
    eigen_psfs: np.ndarray
    coeffs: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    singular_values: np.ndarray
    interp_error: float
    rank_error: float
    _full: dict = field(default_factory=dict, repr=False)
    _kft: dict = field(default_factory=dict, repr=False)

    @property
    def rank(self) -> int:
        return self.eigen_psfs.shape[0]

    @classmethod
    def build(cls, lens, *, rank: int | None = None, tol: float = DEFAULT_TOL, grid: tuple[int, int] | None = None) -> "LowRankBasis":
        """Choose the grid and rank for relative error ``tol`` (or use the given ``rank`` / ``grid``).

        Parameters
        ----------
        lens : Lens
        rank : int, optional
            Number of eigen-PSFs; default: the smallest reaching ``tol / 2`` at every node.
        tol : float
            Target relative L2 error of the operator (PSF error budget split between grid and rank).
        grid : (ny, nx), optional
            Grid nodes over the frame; default: refined until interpolation reaches ``tol / 2``.
        """
        if not 0 < tol < 1:
            raise PsfsimError(f"tol = {tol!r}: expected 0 < tol < 1")
        if rank is not None and (int(rank) != rank or rank < 1):
            raise PsfsimError(f"rank = {rank!r}: expected a whole number >= 1")
        H, W = lens.field.shape_px
        k = lens.psf_sampling.size_px
        if grid is not None:
            ny, nx = (int(g) for g in grid)
            if ny < 1 or nx < 1:
                raise PsfsimError(f"grid = {grid!r}: expected two whole numbers >= 1")
            rows = np.linspace(0, H - 1, ny) if ny > 1 else np.array([(H - 1) / 2])
            cols = np.linspace(0, W - 1, nx) if nx > 1 else np.array([(W - 1) / 2])
            P = _psfs_at(lens, rows, cols)
            interp_err = _interp_error(lens, rows, cols, P)
        elif lens.field_constant:
            rows, cols = np.array([(H - 1) / 2]), np.array([(W - 1) / 2])
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
        if rank is None:
            K = 1
            while K < len(s):
                err = _rel_err((U[:, :K] * s[:K]) @ Vt[:K], A).max()
                if err <= tol / 2:
                    break
                K += 1
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
            _full=dict(U=U, s=s, Vt=Vt),
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
            _kft={},  # kernel transforms belong to one rank
        )

    def coefficient_maps(self, origin, shape, dtype=np.float32) -> np.ndarray:
        """Coefficient maps ``(K, h, w)`` of a window (cubic splines evaluated at every pixel)."""
        r0, c0 = origin
        h, w = shape
        Wr = spline_weights(self.rows, np.arange(r0, r0 + h, dtype=float))
        Wc = spline_weights(self.cols, np.arange(c0, c0 + w, dtype=float))
        maps = np.einsum("ha,abk,wb->khw", Wr, self.coeffs, Wc, optimize=True)
        return maps.astype(dtype, copy=False)

    def psfs_at(self, rows, cols) -> np.ndarray:
        """Rank-K interpolated PSFs ``(N, k, k)`` at frame pixel positions ``rows, cols (N,)``, unit sum."""
        rows = np.atleast_1d(np.asarray(rows, float))
        cols = np.atleast_1d(np.asarray(cols, float))
        Wr = spline_weights(self.rows, rows)
        Wc = spline_weights(self.cols, cols)
        c = np.einsum("na,abk,nb->nk", Wr, self.coeffs, Wc)
        p = np.einsum("nk,kij->nij", c, self.eigen_psfs)
        return p / p.sum(axis=(1, 2), keepdims=True)

    def operator(self, shape, origin=(0, 0), *, dtype=np.float32, backend: str | None = None, allow_outside: bool = False) -> "LowRankOperator":
        """A :class:`LowRankOperator` for a window of the field."""
        return LowRankOperator(self, shape, origin, dtype=dtype, backend=backend, allow_outside=allow_outside)


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


class LowRankOperator:
    """Fast spatially-varying blur of a window (numpy), with its adjoint.

    Parameters
    ----------
    basis : LowRankBasis
    shape : (int, int)
        Window shape ``(H, W)``.
    origin : (int, int)
        Window origin ``(row, col)`` in the lens field.
    dtype : numpy dtype
        Working precision (float32 default; float64 for adjoint tests).
    backend : str, optional
        FFT backend (:func:`psfsim.fft.get_backend`).
    """

    def __init__(self, basis: LowRankBasis, shape, origin=(0, 0), *, dtype=np.float32, backend=None, allow_outside=False):
        from ..field import check_window

        (r0, c0), (H, W) = check_window(basis.lens, origin, shape, allow_outside=allow_outside)
        self.basis = basis
        self.shape = (H, W)
        self.origin = (r0, c0)
        self.dtype = np.dtype(dtype)
        self.cdtype = np.result_type(self.dtype, np.complex64)
        self.fft = get_backend(backend)
        k = basis.eigen_psfs.shape[-1]
        self.k = k
        self.pad_shape = (self.fft.next_fast_len(H + k - 1, True), self.fft.next_fast_len(W + k - 1, True))
        #: coefficient maps ``(K, H, W)``
        self.weights = basis.coefficient_maps(self.origin, self.shape, self.dtype)

    @property
    def rank(self) -> int:
        return self.basis.rank

    @cached_property
    def kernel_ft(self) -> np.ndarray:
        """Real FFTs of the eigen-PSFs on the padded grid, ``(K, Hp, Wp // 2 + 1)``.

        Computed once per padded shape and dtype and kept by the basis, so the many windows of a dataset
        (new operators of the same shape) reuse them.
        """
        key = (self.pad_shape, self.dtype.str, self.fft.name)
        cache = self.basis._kft
        kft = cache.get(key)
        if kft is None:
            kft = self.fft.rfft2(self.basis.eigen_psfs.astype(self.dtype), s=self.pad_shape).astype(self.cdtype, copy=False)
            if len(cache) > 8:
                cache.clear()
            cache[key] = kft
        return kft

    def _k_chunks(self, batch: int):
        Hp, Wp = self.pad_shape
        per = batch * Hp * (Wp // 2 + 1) * np.dtype(self.cdtype).itemsize
        step = max(1, int(_FFT_CHUNK_BYTES // max(per, 1)))
        K = self.rank
        return [slice(i, min(i + step, K)) for i in range(0, K, step)]

    def _as_batch(self, a):
        b, single = as_image_batch(a, self.shape)
        return b.astype(self.dtype, copy=False), single

    def forward(self, m: np.ndarray) -> np.ndarray:
        """Blur ``m`` of shape ``(H, W)`` or ``(B, H, W)`` -> same shape, working dtype."""
        mb, single = self._as_batch(m)
        H, W = self.shape
        c = self.k // 2
        acc = None
        for sl in self._k_chunks(mb.shape[0]):
            F = self.fft.rfft2(mb[:, None] * self.weights[None, sl], s=self.pad_shape)  # (B, k, Hp, Wf)
            term = np.einsum("bkhw,khw->bhw", F, self.kernel_ft[sl])
            acc = term if acc is None else acc + term
        out = self.fft.irfft2(acc, s=self.pad_shape)[:, c : c + H, c : c + W].astype(self.dtype, copy=False)
        return out[0] if single else out

    def adjoint(self, y: np.ndarray) -> np.ndarray:
        """Adjoint ``A^T y = sum_k w_k . (e_k correlated with y)``, same shapes as :meth:`forward`."""
        yb, single = self._as_batch(y)
        H, W = self.shape
        c = self.k // 2
        Hp, Wp = self.pad_shape
        ypad = np.zeros((yb.shape[0], Hp, Wp), self.dtype)
        ypad[:, c : c + H, c : c + W] = yb
        Y = self.fft.rfft2(ypad)
        out = np.zeros((yb.shape[0], H, W), self.dtype)
        for sl in self._k_chunks(yb.shape[0]):
            Z = self.fft.irfft2(Y[:, None] * np.conj(self.kernel_ft[sl])[None], s=self.pad_shape)[..., :H, :W]
            out += np.einsum("bkhw,khw->bhw", Z, self.weights[sl])
        return out[0] if single else out

    __call__ = forward
