"""Forward operators of a lens: exact (brute force) and fast (low-rank), numpy and torch, with adjoints.

>>> import psfsim
>>> lens = psfsim.load_lens("microscope")
>>> op = psfsim.make_operator(lens, shape=(256, 256), origin=(0, 0))     # fast, rank chosen for 1 % error
>>> blurred = op(image)            # (256, 256) or (B, 256, 256)
>>> back = op.adjoint(blurred)
>>> top = psfsim.operators.to_torch(op)   # torch.nn.Module, (B, 1, 256, 256), differentiable
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..errors import PsfsimError
from .exact import ExactOperator
from .lowrank import DEFAULT_TOL, LowRankBasis, LowRankOperator

__all__ = ["ExactOperator", "LowRankBasis", "LowRankOperator", "make_operator", "lowrank_basis", "blur", "to_torch"]


@lru_cache(maxsize=16)
def _cached_basis(lens, rank, tol, grid):
    return LowRankBasis.build(lens, rank=rank, tol=tol, grid=grid)


def lowrank_basis(lens, *, rank: int | None = None, tol: float = DEFAULT_TOL, grid=None) -> LowRankBasis:
    """The (cached) low-rank basis of a lens for a target error or rank; see :class:`LowRankBasis`."""
    return _cached_basis(lens, None if rank is None else int(rank), float(tol), None if grid is None else tuple(grid))


def make_operator(lens, shape=None, origin=(0, 0), *, method: str = "fast", rank: int | None = None,
                  tol: float = DEFAULT_TOL, dtype=np.float32, allow_outside: bool = False):
    """Build a blur operator for a window ``(origin, shape)`` of the lens field (default: the whole field).

    Parameters
    ----------
    method : {"fast", "exact"}
    rank, tol : low-rank controls (fast only): a fixed rank, or a target relative error (default 1 %).
    dtype : working dtype of the fast operator (float32 default).
    """
    shape = tuple(lens.field.shape_px) if shape is None else tuple(int(s) for s in shape)
    if method == "exact":
        return ExactOperator(lens, shape, origin, allow_outside=allow_outside)
    if method != "fast":
        raise PsfsimError(f"method = {method!r}: expected 'fast' or 'exact'")
    return lowrank_basis(lens, rank=rank, tol=tol).operator(shape, origin, dtype=dtype, allow_outside=allow_outside)


def blur(image, lens, origin=(0, 0), method: str = "fast", rank: int | None = None, tol: float = DEFAULT_TOL):
    """Blur ``image`` ``(H, W)`` or ``(B, H, W)``, a window of the lens field at ``origin``, as the lens would.

    Zero boundary: light from outside the window is absent, light leaving it is lost. Returns float32 for the
    fast method, float64 for the exact one.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise PsfsimError(f"image of shape {image.shape}: expected (H, W) or (B, H, W)")
    op = make_operator(lens, image.shape[-2:], origin, method=method, rank=rank, tol=tol)
    return op(image)


def to_torch(op: LowRankOperator):
    """The torch module of a fast operator (imports torch only when called)."""
    from .torch import TorchLowRankOperator

    return TorchLowRankOperator(op)
