"""The classical baselines of ``recon experiment deblur2d``: the store's blurred input, global Wiener and
spatially-varying Wiener (computed by psfsim when the store was written), and spatially-varying
Richardson-Lucy with the lens's low-rank operator for each sample's window, all scored on the test split with
:mod:`recon.metrics`' conventions (those of :func:`recon.evaluate`).

Richardson-Lucy on a window of a larger scene: the store's ``blurred`` holds light from a margin of ``m``
pixels (the PSF half-width) around the window, so a window-sized estimate with a zero boundary explains that
light with its edge pixels and rings. Following Bertero & Boccacci, "A simple method for the reduction of
boundary effects in the Richardson-Lucy approach to image deconvolution", A&A 437, 369 (2005), the unknown is
the window plus the margin and the data are the window only: ``A = crop o K``, with ``K`` the low-rank
operator of the region (``psfsim`` :meth:`LowRankBasis.operator` at ``origin - m``), and the update of
Richardson (1972) / Lucy (1974) ``x <- x A^T(y / A x) / A^T 1`` (Bertero & Boccacci's Eq. 9). With ``m = 0``
it is :func:`psfsim.restore.richardson_lucy` step for step (the test checks it).

RL regularises by stopping early: the number of iterations is chosen on the validation split (the best
mean PSNR among :data:`RL_ITERS`) and then applied to the test split.
"""

from __future__ import annotations

import numpy as np

from .. import metrics

__all__ = ["masked_richardson_lucy", "score_baselines", "RL_ITERS", "STORE_BASELINES"]

#: Iteration counts among which the validation split chooses Richardson-Lucy's.
RL_ITERS = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30)
#: The store's images scored as baselines (in table order), then ``rl``.
STORE_BASELINES = ("blurred", "wiener", "wiener_sv")


def masked_richardson_lucy(image: np.ndarray, region_op, margin: int, iters, *, eps: float = 1e-6) -> dict:
    """Richardson-Lucy with boundary handling (Bertero & Boccacci 2005, Eq. 9): estimate the window plus a
    margin from data on the window only.

    Parameters
    ----------
    image : ndarray (h, w), float
        The blurred, noisy window (negative values clipped to 0), in the store's units.
    region_op : operator
        ``region_op(x)`` / ``region_op.adjoint(y)`` on the region ``(h + 2 margin, w + 2 margin)`` (the window
        plus the margin on every side), e.g. ``basis.operator(shape=..., origin=origin - margin,
        allow_outside=True)``.
    margin : int
        Pixels of the margin (>= 0; 0: plain Richardson-Lucy on the window).
    iters : int or sequence of int
        Iteration counts at which to return the estimate.
    eps : float
        Floor of the denominators (relative to the data's peak, as :func:`psfsim.restore.richardson_lucy`).

    Returns
    -------
    dict int -> ndarray (h, w) float32
        The window of the estimate after each requested iteration count.
    """
    want = sorted({int(n) for n in np.atleast_1d(iters)})
    if not want or want[0] < 1:
        raise ValueError(f"iters = {iters!r}: expected whole numbers >= 1")
    m = int(margin)
    y = np.clip(np.asarray(image, np.float64), 0, None)
    h, w = y.shape
    peak = float(y.max())
    scale = peak if np.isfinite(peak) and peak > 0 else 1.0
    y = (y / scale).astype(np.float32)

    def fwd(x):
        return region_op(x)[m : m + h, m : m + w]

    def adj(r):
        z = np.zeros((h + 2 * m, w + 2 * m), np.float32)
        z[m : m + h, m : m + w] = r
        return region_op.adjoint(z)

    norm = np.maximum(adj(np.ones_like(y)), eps)
    x = np.full((h + 2 * m, w + 2 * m), max(float(y.mean()), eps), np.float32)
    out = {}
    for n in range(1, want[-1] + 1):
        x = np.maximum(x * adj(y / np.maximum(fwd(x), eps)) / norm, 0)
        if n in want:
            out[n] = (x[m : m + h, m : m + w] * scale).astype(np.float32)
    return out


def _rl_estimates(reader, basis, indices, iters) -> dict:
    """``index -> {n: estimate}`` for the samples ``indices`` of ``reader``."""
    m = reader.lens.psf_sampling.size_px // 2
    h, w = reader.size
    b = reader.read(indices, arrays=("blurred",))
    out = {}
    for j, i in enumerate(b.indices):
        r0, c0 = (int(v) for v in b.origins[j])
        op = basis.operator(shape=(h + 2 * m, w + 2 * m), origin=(r0 - m, c0 - m), allow_outside=True)
        out[int(i)] = masked_richardson_lucy(b.blurred[j], op, m, iters)
    return out


def score_baselines(reader, edges, *, iters=RL_ITERS, keep=()) -> tuple[dict, dict]:
    """Score the store's baselines and SV Richardson-Lucy on the test split.

    Parameters
    ----------
    reader : psfsim.DatasetReader
    edges : array (n_bins + 1,)
        Field-radius bin edges (:func:`recon.metrics.radial_edges`), those of :func:`recon.evaluate`.
    iters : sequence of int
        RL iteration counts to choose from on the validation split.
    keep : sequence of int
        Test sample indices whose images to return (for the example figure).

    Returns
    -------
    record : dict
        ``scores``: method -> ``{"psnr_db", "ssim"}`` (means over test samples, no clipping), ``radial_psnr``:
        method -> list (dB per bin, pooled squared errors), ``rl_iters`` (chosen), ``rl_val_psnr``
        (count -> mean validation PSNR), ``n_test``.
    images : dict
        ``index -> {method: (h, w) float32}`` for the samples of ``keep``.
    """
    from psfsim.operators import lowrank_basis

    spec = reader.spec
    basis = lowrank_basis(reader.lens, tol=spec.tol)
    val = reader.splits["val"]
    vb = reader.read(val, arrays=("sharp",))
    est = _rl_estimates(reader, basis, val, iters)
    val_psnr = {int(n): float(np.mean([metrics.psnr(est[int(i)][n], vb.sharp[j]) for j, i in enumerate(vb.indices)]))
                for n in iters}
    n_best = max(val_psnr, key=lambda n: (val_psnr[n], -n))
    test = reader.splits["test"]
    tb = reader.read(test, arrays=("sharp", "blurred", "wiener", "wiener_sv"), coords=True)
    rl = _rl_estimates(reader, basis, test, [n_best])
    methods = (*STORE_BASELINES, "rl")
    per = {k: {"psnr": [], "ssim": []} for k in methods}
    nb = len(edges) - 1
    sse = {k: np.zeros(nb) for k in methods}
    count = np.zeros(nb, np.int64)
    images, keep = {}, {int(k) for k in keep}
    for j, i in enumerate(tb.indices):
        imgs = {k: getattr(tb, k)[j] for k in STORE_BASELINES}
        imgs["rl"] = rl[int(i)][n_best]
        y = tb.sharp[j]
        r = np.hypot(tb.field_coords[j, 0], tb.field_coords[j, 1])
        for k, im in imgs.items():
            per[k]["psnr"].append(metrics.psnr(im, y))
            per[k]["ssim"].append(metrics.ssim(im, y))
            s, c = metrics.radial_sums(im, y, r, edges)
            sse[k] += s
        count += c
        if int(i) in keep:
            images[int(i)] = {"sharp": y, **imgs}
    record = {
        "scores": {k: {"psnr_db": float(np.mean(per[k]["psnr"])), "ssim": float(np.mean(per[k]["ssim"]))}
                   for k in methods},
        "radial_psnr": {k: [float(v) for v in np.atleast_1d(metrics.psnr_from_sums(sse[k], count))] for k in methods},
        "radial_pixels": [int(c) for c in count],
        "rl_iters": int(n_best), "rl_val_psnr": {str(n): v for n, v in val_psnr.items()}, "n_test": int(len(test)),
    }
    return record, images
