"""Image-quality metrics of recon's evaluation: pure numpy functions, no torch, no I/O.

Conventions (the CoordGate paper's, arXiv 2401.04680):

* **PSNR** ``= 10 log10(data_range^2 / MSE)`` with ``data_range = 1`` (psfsim stores are normalised to [0, 1]).
  Images are **not clipped** to [0, 1] before scoring: the store's baselines (``blurred`` with its noise, the
  Wiener restorations) may leave [0, 1] slightly and are scored as stored, exactly as
  :func:`psfsim.report.baseline_scores` does; a model is scored on the same terms. ``MSE = 0`` gives ``inf``.
* **SSIM**: :func:`skimage.metrics.structural_similarity` with ``data_range=1`` (its default 7 x 7 window).
* **Radial PSNR**: the per-pixel squared errors are summed within bins of the field radius
  ``r = hypot(x, y)`` of each pixel's field coordinates (from :func:`psfsim.field_coords`, so ``r = 1`` at
  the frame's corners), pooled over every image given, and each bin's PSNR is ``10 log10(1 / mean)``: a
  pooled MSE per bin, not a mean of per-image PSNRs. Empty bins give NaN.
"""

from __future__ import annotations

import numpy as np

__all__ = ["psnr", "ssim", "psnr_from_mse", "radial_sums", "radial_psnr", "radial_edges"]


def psnr_from_mse(mse, data_range: float = 1.0):
    """``10 log10(data_range^2 / mse)`` (inf where ``mse == 0``, NaN where ``mse`` is NaN); scalar or array."""
    mse = np.asarray(mse, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 10.0 * np.log10(float(data_range) ** 2 / mse)
    return float(out) if out.ndim == 0 else out


def _pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, np.float64)
    t = np.asarray(target, np.float64)
    if p.shape != t.shape:
        raise ValueError(f"shapes differ: prediction {p.shape}, target {t.shape}")
    if p.size == 0:
        raise ValueError("empty images")
    return p, t


def psnr(pred, target, data_range: float = 1.0) -> float:
    """PSNR in dB of ``pred`` against ``target`` (any equal shapes, one MSE over all their pixels; no clipping)."""
    p, t = _pair(pred, target)
    return psnr_from_mse(np.mean((p - t) ** 2), data_range)


def ssim(pred, target, data_range: float = 1.0) -> float:
    """SSIM of two 2-D images (:func:`skimage.metrics.structural_similarity`, ``data_range`` given, no clipping)."""
    from skimage.metrics import structural_similarity

    p, t = _pair(pred, target)
    if p.ndim != 2:
        raise ValueError(f"ssim: expected 2-D images, got shape {p.shape}")
    return float(structural_similarity(t, p, data_range=float(data_range)))


def radial_edges(n_bins: int = 8, r_max: float = 1.0) -> np.ndarray:
    """``n_bins + 1`` equal-width bin edges over ``[0, r_max]`` (field radius; 1 = the frame's corners)."""
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins = {n_bins!r}: expected an integer >= 1")
    if not r_max > 0:
        raise ValueError(f"r_max = {r_max!r}: expected > 0")
    return np.linspace(0.0, float(r_max), int(n_bins) + 1)


def radial_sums(pred, target, radius, edges) -> tuple[np.ndarray, np.ndarray]:
    """Sum of squared errors and pixel count per radius bin: ``(sse (n_bins,), count (n_bins,))``.

    ``pred``, ``target``, ``radius`` have the same shape (``radius``: each pixel's field radius). Bin ``i`` holds
    ``edges[i] <= r < edges[i + 1]``; the last bin also holds ``r == edges[-1]``; pixels outside are left out.
    Sums of several images add up (pool them, then :func:`psnr_from_mse` of ``sse / count``).
    """
    p, t = _pair(pred, target)
    r = np.asarray(radius, np.float64)
    if r.shape != p.shape:
        raise ValueError(f"radius of shape {r.shape}: expected the images' shape {p.shape}")
    edges = np.asarray(edges, np.float64)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("edges: expected at least two increasing values")
    nb = len(edges) - 1
    b = np.searchsorted(edges, r.ravel(), side="right") - 1
    b[r.ravel() == edges[-1]] = nb - 1
    ok = (b >= 0) & (b < nb)
    err = ((p - t) ** 2).ravel()
    sse = np.bincount(b[ok], weights=err[ok], minlength=nb)
    count = np.bincount(b[ok], minlength=nb).astype(np.int64)
    return sse, count


def radial_psnr(pred, target, radius, edges, data_range: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """PSNR per radius bin (pooled MSE within the bin) and the pixels in each: ``(psnr (n_bins,), count)``.

    ``pred``, ``target``, ``radius`` may be stacks ``(N, H, W)``: every image's pixels are pooled per bin.
    """
    sse, count = radial_sums(pred, target, radius, edges)
    return psnr_from_sums(sse, count, data_range), count


def psnr_from_sums(sse, count, data_range: float = 1.0) -> np.ndarray:
    """PSNR of pooled squared errors ``sse`` over ``count`` pixels per bin (NaN where a bin is empty)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mse = np.where(count > 0, sse / np.maximum(count, 1), np.nan)
    return psnr_from_mse(mse, data_range)
