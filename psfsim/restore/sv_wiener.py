"""Spatially-varying Wiener deconvolution: patch-wise Wiener with each patch's local PSF, blended.

The window is cut into overlapping square patches (stride half a patch). Each patch, with a margin of real
image context around it (mirror-padded at the image edge, raised-cosine tapered toward its mean), is
deconvolved with the PSF at the patch centre's field point; the patch cores are blended with separable
``sin^2`` windows (flat toward the image border) normalised by their sum, so the weights sum to one
everywhere. All patches are transformed together (batched real FFTs).

Reference: the overlap-add piecewise-invariant approximation of Nagy & O'Leary 1998 (SIAM J. Sci. Comput.
19, 1063) applied to the inverse filter, as in Hirsch et al. 2010 ("efficient filter flow", CVPR).
"""

from __future__ import annotations

import numpy as np

from ..errors import PsfsimError
from ..fft import get_backend
from .wiener import psf_tf, raised_cosine_ramp, regulariser_tf2, resolve_balance, wiener_filter

__all__ = ["sv_wiener", "patch_starts", "blend_weights_1d"]

_BATCH_BYTES = 256 * 2**20


def patch_starts(n: int, patch: int) -> list[int]:
    """Starts of patches of size ``patch`` covering ``[0, n)`` with stride ``patch // 2`` (last flush with n)."""
    if n <= patch:
        return [0]
    stride = patch // 2
    starts = list(range(0, n - patch + 1, stride))
    if starts[-1] != n - patch:
        starts.append(n - patch)
    return starts


def blend_weights_1d(start: int, size: int, n: int) -> np.ndarray:
    """``sin^2`` blending weights of one patch along an axis, flat (1) on the half facing the image border."""
    t = np.arange(size)
    w = np.sin(np.pi * (t + 0.5) / size) ** 2
    if start == 0:
        w[: size // 2] = 1.0
    if start + size >= n:
        w[size // 2 :] = 1.0
    return w


def sv_wiener(image: np.ndarray, lens, *, origin=(0, 0), patch: int = 64, balance: float | None = None,
              noise_sigma: float | None = None, reg: str = "gradient", backend: str | None = None,
              workers: int | None = None, psf_at=None, nan_policy: str = "raise") -> np.ndarray:
    """Spatially-varying Wiener deconvolution of a window ``(H, W)`` (or a batch ``(B, H, W)`` of images of that
    one window) of the lens field at ``origin``.

    Parameters
    ----------
    image : ndarray, (H, W) or (B, H, W)
        The balance is resolved per image, as :func:`psfsim.restore.wiener.wiener` does.
    lens : Lens
    origin : (int, int), keyword-only
        Window origin in the field (the PSF of each patch is the one at its centre's field point).
    patch : int
        Patch side in pixels (even, >= 2 PSF sizes recommended); stride is ``patch // 2``.
    balance, noise_sigma, reg : as :func:`psfsim.restore.wiener.wiener`.
    backend, workers : FFT backend and threads per transform (1 under a threaded scheduler).
    nan_policy : {"raise", "fill"}
        Non-finite pixels: refused, or filled for the computation and NaN in the output (:mod:`psfsim.checks`).
    psf_at : callable, optional
        ``psf_at(rows, cols) -> (N, k, k)`` PSFs at frame pixel positions; default the lens's exact PSFs
        (:meth:`LowRankBasis.psfs_at` gives the interpolated ones, much faster when windows change often).

    Returns
    -------
    ndarray, the image's shape; dtype by :func:`psfsim.operators.result_dtype`.
    """
    from ..checks import as_lens, check_result, checked_image, remask
    from ..field import check_window
    from ..checks import result_dtype

    lens = as_lens(lens)
    dtype = result_dtype(image)
    image, mask = checked_image(image, nan_policy=nan_policy)
    if mask is not None:
        out = sv_wiener(image.astype(dtype, copy=False), lens, origin=origin, patch=patch, balance=balance,
                        noise_sigma=noise_sigma, reg=reg, backend=backend, workers=workers, psf_at=psf_at)
        return remask(out, mask)
    try:
        if int(patch) != patch:
            raise ValueError
    except (TypeError, ValueError):
        raise PsfsimError(f"patch = {patch!r}: expected an even number >= 8") from None
    if patch < 8 or patch % 2:
        raise PsfsimError(f"patch = {patch!r}: expected an even number >= 8")
    patch = int(patch)
    origin, _ = check_window(lens, origin=origin, shape=image.shape[-2:])
    single = image.ndim == 2
    imgs = (image[None] if single else image).astype(dtype, copy=False)
    B, H, W = imgs.shape
    ph, pw = min(patch, H), min(patch, W)
    k = lens.psf_sampling.size_px
    m = k  # context margin
    fft = get_backend(backend, workers)
    padded = np.pad(imgs, ((0, 0), (m, m), (m, m)), mode="symmetric")
    rs, cs = patch_starts(H, ph), patch_starts(W, pw)
    starts = [(r, c) for r in rs for c in cs]
    # PSF at each patch centre (field point of the centre pixel in the full frame): once for the whole batch
    rows = np.array([origin[0] + r + (ph - 1) / 2 for r, _ in starts])
    cols = np.array([origin[1] + c + (pw - 1) / 2 for _, c in starts])
    if psf_at is None:
        x, y = lens.field.pixel_to_field(rows, cols)
        psfs = lens.psfs(x, y).astype(dtype)
    else:
        psfs = np.asarray(psf_at(rows, cols), dtype)
    bals = [resolve_balance(im, balance, noise_sigma, reg) for im in imgs]  # one balance per image
    shape = (fft.next_fast_len(ph + 2 * m, True), fft.next_fast_len(pw + 2 * m, True))
    R = regulariser_tf2(reg, shape, dtype)
    # taper of the context margin (raised cosine from the core edge to the tile edge)
    def taper(n_core, n_tot):
        t = np.ones(n_tot)
        ramp = raised_cosine_ramp(m)
        t[:m], t[m + n_core : 2 * m + n_core] = ramp, ramp[::-1]
        t[2 * m + n_core :] = 0.0
        return t
    win = (taper(ph, shape[0])[:, None] * taper(pw, shape[1])[None, :]).astype(dtype)
    out = np.zeros((B, H, W), np.float64)
    wsum = np.zeros((H, W), np.float64)
    per = shape[0] * (shape[1] // 2 + 1) * 8 * 3
    step = max(1, int(_BATCH_BYTES // per))
    for i0 in range(0, len(starts), step):
        chunk = starts[i0 : i0 + step]
        Hf = psf_tf(psfs[i0 : i0 + len(chunk)], shape, fft)  # the patches' transfer functions: once per batch
        weights = [blend_weights_1d(r, ph, H)[:, None] * blend_weights_1d(c, pw, W)[None, :] for r, c in chunk]
        for j, (r, c) in enumerate(chunk):
            wsum[r : r + ph, c : c + pw] += weights[j]
        for b in range(B):
            tiles = np.zeros((len(chunk),) + shape, dtype)
            for j, (r, c) in enumerate(chunk):
                tiles[j, : ph + 2 * m, : pw + 2 * m] = padded[b, r : r + ph + 2 * m, c : c + pw + 2 * m]
            mean = tiles[:, m : m + ph, m : m + pw].mean(axis=(1, 2), keepdims=True)
            tiles = mean + (tiles - mean) * win
            G = wiener_filter(Hf, bals[b], R)
            res = fft.irfft2(fft.rfft2(tiles) * G, s=shape)[:, m : m + ph, m : m + pw]
            for j, (r, c) in enumerate(chunk):
                out[b, r : r + ph, c : c + pw] += weights[j] * res[j]
    out = (out / wsum).astype(dtype)
    return check_result(out[0] if single else out, "sv_wiener")

