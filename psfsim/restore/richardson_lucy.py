"""Spatially-varying Richardson-Lucy deconvolution with a blur operator and its adjoint.

``x_{n+1} = x_n . A^T(y / A x_n) / A^T 1`` (Richardson 1972; Lucy 1974), with ``A`` the source-dependent blur
(the fast low-rank operator by default) so each pixel is deconvolved with its own PSF. The iterate stays
non-negative (a multiplicative update of a positive start on non-negative data). Stops after ``iters``
iterations or, with ``tol``, when the relative change of the iterate falls below it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import PsfsimError

__all__ = ["richardson_lucy", "RLResult"]


@dataclass
class RLResult:
    """Estimate and how the iteration ended."""

    image: np.ndarray
    iterations: int
    last_change: float
    converged: bool


def richardson_lucy(image: np.ndarray, op, *, iters: int = 30, tol: float | None = None, eps: float = 1e-6,
                    progress: bool = False, nan_policy: str = "raise") -> RLResult:
    """Richardson-Lucy with operator ``op`` (``op(x)``, ``op.adjoint(y)``) on ``image`` ``(H, W)``.

    Parameters
    ----------
    image : ndarray, (H, W)
        Blurred, noisy data (negative values from read noise are clipped to 0). Iterates in float32; the
        result's dtype follows :func:`psfsim.operators.result_dtype` of the input.
    op : operator
        E.g. :func:`psfsim.make_operator` for the image's window.
    iters : int
        Maximum number of iterations.
    tol : float, optional
        Stop when ``||x_{n+1} - x_n|| / ||x_n|| < tol``.
    eps : float
        Floor of the denominators.
    progress : bool
        Show a tqdm progress bar.
    nan_policy : {"raise", "fill"}
        Non-finite pixels: refused, or filled for the computation and NaN in the output (:mod:`psfsim.checks`).
    """
    from ..checks import check_result, checked_image, remask
    from ..checks import result_dtype

    try:
        if int(iters) != iters or iters < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise PsfsimError(f"iters = {iters!r}: expected a whole number >= 1") from None
    if tol is not None and not (np.isfinite(tol) and tol > 0):
        raise PsfsimError(f"tol = {tol!r}: expected a number > 0 (or None: run all iterations)")
    if not (callable(op) and callable(getattr(op, "adjoint", None))):
        raise PsfsimError(f"op = {op!r}: expected a blur operator with op(x) and op.adjoint(y) (psfsim.make_operator)")
    odt = result_dtype(image)
    image, mask = checked_image(image, nan_policy=nan_policy, ndims=(2,))
    if tuple(image.shape) != tuple(getattr(op, "shape", image.shape)):
        raise PsfsimError(f"image of shape {image.shape} does not match the operator's window {tuple(op.shape)}")
    y = np.clip(np.asarray(image, np.float64), 0, None)
    # scale-free: iterate on y / max(y) (eps is relative to the data's peak) and scale the result back
    peak = float(y.max())
    scale = peak if np.isfinite(peak) and peak > 0 else 1.0
    y = (y / scale).astype(np.float32)
    inv_norm = 1 / np.maximum(op.adjoint(np.ones_like(y)), eps)
    x = np.full_like(y, max(float(y.mean()), eps))
    change = np.inf
    from tqdm.auto import tqdm

    n = 0
    with tqdm(total=int(iters), desc="Richardson-Lucy", unit="it", disable=not progress) as bar:
        for n in range(1, int(iters) + 1):
            # in place on the operator's outputs: one forward, one adjoint and five passes over the image
            ratio = op(x)
            np.maximum(ratio, eps, out=ratio)
            np.divide(y, ratio, out=ratio)
            upd = op.adjoint(ratio)
            upd *= inv_norm
            measure = tol is not None or n == int(iters)  # the change costs two norms: only when it is used
            if measure:
                x_old = x.copy()
            x *= upd
            np.maximum(x, 0, out=x)
            if measure:
                change = float(np.linalg.norm(x - x_old) / max(np.linalg.norm(x_old), eps))
            bar.update(1)
            if tol is not None and change < tol:
                return RLResult(remask(check_result((x * scale).astype(odt, copy=False), "richardson_lucy"), mask),
                                n, change, True)
    return RLResult(remask(check_result((x * scale).astype(odt, copy=False), "richardson_lucy"), mask), n, change,
                    tol is None)
