"""Forward operators of a lens: exact (brute force) and fast (low-rank), numpy and torch, with adjoints.

>>> import psfsim
>>> lens = psfsim.load_lens("microscope")
>>> op = psfsim.make_operator(lens, shape=(256, 256), origin=(0, 0))     # fast, rank chosen for 1 % error
>>> blurred = op(image)            # (256, 256) or (B, 256, 256)
>>> back = op.adjoint(blurred)
>>> blur_t = psfsim.operators.torch_blur(lens)   # nn.Module: blur(x (B, C, H, W), origins (B, 2))

Windows are always given as keywords, ``origin=(row, col)`` and ``shape=(h, w)``: two int pairs swapped
would be a valid, wrong window.

Output dtype (every operator, numpy and torch, and every restoration in :mod:`psfsim.restore`): float32 and
float64 inputs keep their dtype, any other real input gives float32 (:func:`result_dtype`); complex input is
refused. The fast numpy operator computes in its working ``dtype`` (float32 by default), the exact one in
float64, the torch module in the input's dtype.
"""

from __future__ import annotations

import numpy as np

from ..cache import BoundedCache
from ..errors import PsfsimError
from .exact import ExactOperator
from .lowrank import DEFAULT_TOL, KernelCache, LowRankBasis, LowRankOperator, result_dtype

__all__ = ["ExactOperator", "LowRankBasis", "LowRankOperator", "KernelCache", "make_operator", "lowrank_basis", "blur",
           "to_torch", "torch_blur", "result_dtype", "cache_basis", "OPERATOR_METHODS"]

OPERATOR_METHODS = ("fast", "exact")
#: the last 8 bases of this process, keyed by lens fingerprint and build arguments
_BASIS_CACHE = BoundedCache(max_items=8)


def _basis_key(lens, rank, tol, grid):
    """Cache key from already validated arguments (LowRankBasis.build validates them first)."""
    return (lens.fingerprint, None if rank is None else int(rank), float(tol),
            None if grid is None else tuple(int(g) for g in grid))


def lowrank_basis(lens, *, rank: int | None = None, tol: float = DEFAULT_TOL, grid=None) -> LowRankBasis:
    """The low-rank basis of a lens for a target error or rank; see :meth:`LowRankBasis.build`.

    Cached by the lens's canonical description (:attr:`psfsim.Lens.fingerprint`), not its identity: two loads
    of one lens file, an unpickled lens or a worker's copy share one basis. The cache holds the last 8.
    """
    from ..checks import as_lens
    from .lowrank import check_build_args

    lens = as_lens(lens)
    rank, tol, grid = check_build_args(rank, tol, grid)
    hit = _BASIS_CACHE.peek(_basis_key(lens, rank, tol, grid))
    return hit if hit is not None else cache_basis(LowRankBasis.build(lens, rank=rank, tol=tol, grid=grid))


def cache_basis(basis: LowRankBasis) -> LowRankBasis:
    """Put a basis in this process's cache under the arguments it was built with (``basis.built_with``), so
    :func:`lowrank_basis` and :func:`make_operator` with those arguments use it instead of rebuilding.
    :meth:`LowRankBasis.load` calls it. Returns the cached basis (an equal one already there wins)."""
    b = basis.built_with
    return _BASIS_CACHE.put(_basis_key(basis.lens, b.get("rank"), b.get("tol", DEFAULT_TOL), b.get("grid")), basis)


def make_operator(lens, *, shape=None, origin=(0, 0), method: str = "fast", rank: int | None = None,
                  tol: float = DEFAULT_TOL, dtype=np.float32, workers: int | None = None, allow_outside: bool = False,
                  local: bool = False):
    """Build a blur operator for the window ``origin``, ``shape`` of the lens field (default: the whole field).

    Parameters
    ----------
    lens : Lens
    shape, origin : (int, int), keyword-only
        Window shape ``(h, w)`` (default the lens field) and its top-left pixel ``(row, col)`` in the frame.
    method : {"fast", "exact"}
    rank, tol : low-rank controls (fast only): a fixed rank, or a target relative error (default 1 %).
    dtype : working dtype of the fast operator (float32 default).
    workers : threads per FFT of the fast operator (default all cores; 1 under a threaded scheduler).
    allow_outside : accept a window reaching past the frame.
    local : tile-local bases (fast only): each overlap-add block gets its own, smaller set of eigen-PSFs
        (:class:`LowRankOperator`); faster where the PSF varies strongly over the field.
    """
    from ..checks import as_lens

    lens = as_lens(lens)
    shape = tuple(lens.field.shape_px) if shape is None else shape
    if not isinstance(local, (bool, np.bool_)):
        raise PsfsimError(f"local = {local!r}: expected True or False")
    if method == "exact":
        return ExactOperator(lens, shape=shape, origin=origin, allow_outside=allow_outside)
    if method != "fast":
        raise PsfsimError(f"method = {method!r}: expected one of {', '.join(OPERATOR_METHODS)}")
    return lowrank_basis(lens, rank=rank, tol=tol).operator(shape=shape, origin=origin, dtype=dtype, workers=workers,
                                                            allow_outside=allow_outside, local=bool(local))


def blur(image, lens, *, origin=(0, 0), method: str = "fast", rank: int | None = None, tol: float = DEFAULT_TOL,
         workers: int | None = None, allow_outside: bool = False, nan_policy: str = "raise"):
    """Blur ``image`` ``(H, W)`` or ``(B, H, W)``, the window of the lens field at ``origin``, as the lens would.

    Zero boundary: light from outside the window is absent, light leaving it is lost. Output dtype follows
    :func:`result_dtype` (float32 for float32 or integer input, float64 for float64). Non-finite pixels are
    refused, or with ``nan_policy="fill"`` filled for the blur and NaN again in the output (:mod:`psfsim.checks`).
    """
    from ..checks import checked_image, remask

    odt = result_dtype(image)
    image, mask = checked_image(image, nan_policy=nan_policy)
    op = make_operator(lens, shape=image.shape[-2:], origin=origin, method=method, rank=rank, tol=tol,
                       workers=workers, allow_outside=allow_outside)
    return remask(op(image.astype(odt, copy=False)), mask)


def torch_blur(lens_or_basis, *, rank: int | None = None, tol: float = DEFAULT_TOL):
    """The differentiable batch blur of a lens (or of a basis): a :class:`psfsim.operators.torch.LowRankBlur`,
    called as ``blur(x (B, C, H, W), origins (B, 2))``. Imports torch only when called."""
    from .torch import LowRankBlur

    basis = lens_or_basis if isinstance(lens_or_basis, LowRankBasis) else lowrank_basis(lens_or_basis, rank=rank, tol=tol)
    return LowRankBlur.from_basis(basis)


def to_torch(op: LowRankOperator):
    """The torch module of one fast operator's window: ``module(x (..., H, W))`` (imports torch when called)."""
    from .torch import WindowBlur

    if getattr(op, "local", False):
        raise PsfsimError("to_torch: the operator has tile-local bases (local=True); the torch module uses the global "
                          "basis: convert an operator built with local=False")
    return WindowBlur(op)
