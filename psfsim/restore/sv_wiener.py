"""Spatially-varying Wiener deconvolution: patch-wise Wiener with each patch's local PSF, blended.

The window is cut into overlapping square patches (``patch`` px, neighbours sharing ``overlap`` px). Each
patch, with a margin of real image context around it (mirror-padded at the image edge, its outer half tapered
toward the patch mean by a raised cosine), is deconvolved with the PSF at the patch centre's field point; the
patch cores are blended with separable raised-cosine ramps over the shared pixels (flat elsewhere and toward
the image border) that sum to one everywhere. ``overlap = patch // 2`` (``sin^2`` windows, stride half a patch)
is the layout an explicit ``patch`` gets, as before issue 9; the default (patch 256, overlap 64) computes
~(4/3)^2 instead of 4 times the window's area.

The patch grid is regular (the last patches may reach past the window into its mirror padding, cropped at the
end); a row of patches is transformed in one batched real FFT and filtered in one array operation. With
``psfs="basis"`` the local transfer functions come from the lens's low-rank basis
(:func:`psfsim.operators.lowrank_basis`, cached per process): ``H_p = sum_k c_pk E_k / sum_k c_pk s_k`` with
the eigen-PSFs' transforms ``E_k`` computed once per grid, so a patch costs ``K`` products instead of a PSF and
a transform. The context margin is sized to the
PSFs' energy (:func:`lens_context_margin`), not their full width.

Reference: the overlap-add piecewise-invariant approximation of Nagy & O'Leary 1998 (SIAM J. Sci. Comput.
19, 1063) applied to the inverse filter, as in Hirsch et al. 2010 ("efficient filter flow", CVPR).
"""

from __future__ import annotations

import numpy as np

from ..cache import BoundedCache
from ..errors import PsfsimError
from ..fft import get_backend
from .wiener import psf_tf, raised_cosine_ramp, regulariser_tf2, resolve_balance

__all__ = ["sv_wiener", "patch_starts", "blend_weights_1d", "context_margin", "lens_context_margin", "PSF_SOURCES",
           "DEFAULT_PATCH", "DEFAULT_OVERLAP", "DEFAULT_PSFS"]

#: Default patch side (px): 256 measured the same PSNR as 64 on the microscope (the PSF varies over hundreds of
#: pixels; 27.73 dB both on the 2048^2 benchmark image) at a fraction of the transform area
#: (benchmarks/bench_restore.py).
DEFAULT_PATCH = 256
#: Default overlap of neighbouring patches (px), with the default patch: a quarter of it, so the patches cover
#: ~(4/3)^2 times the window instead of 4 times (an explicit ``patch`` keeps ``overlap = patch // 2``).
DEFAULT_OVERLAP = 64
#: Where the patches' PSFs come from: the low-rank basis or the lens's exact PSFs.
PSF_SOURCES = ("basis", "exact")
#: The default source: "basis" measured the same PSNR as "exact" (27.732 dB both on the 2048^2 benchmark image;
#: max difference 3e-4 on a corner window) at a fraction of the time once the basis is built (~1-2 s on a quiet
#: machine, once per lens and process, then cached): SV Wiener at ~2x the global Wiener's time instead of ~9x
#: (benchmarks/bench_restore.py). The pipelines' SV route uses the same basis PSFs by default.
DEFAULT_PSFS = "basis"
#: Fraction of a PSF's energy the context margin must hold (:func:`context_margin`).
CONTEXT_ENERGY = 0.999
#: Outer fraction of the context margin over which the tiles are tapered to their mean.
TAPER_FRACTION = 0.5
#: Bytes of one batch of patch spectra (a row of patches is split into batches beyond it).
_BATCH_BYTES = 64 * 2**20
#: Eigen-PSF transforms per (basis, grid), bounded in bytes.
_EIGEN_TF = BoundedCache(max_bytes=128 * 2**20)


def patch_starts(n: int, patch: int, overlap: int | None = None) -> list[int]:
    """Starts of patches of size ``patch`` covering ``[0, n)`` with stride ``patch - overlap`` (default
    ``overlap = patch // 2``): a regular grid whose last patch ends at or past ``n`` (past it, the patch reads the
    window's mirror padding and its core is cropped)."""
    if n <= patch:
        return [0]
    stride = patch - (patch // 2 if overlap is None else overlap)
    return [i * stride for i in range(-(-(n - patch) // stride) + 1)]


def blend_weights_1d(start: int, size: int, n: int, overlap: int | None = None) -> np.ndarray:
    """Blending weights of one patch along an axis: raised-cosine ramps ``sin^2(pi (t + 1/2) / (2 overlap))``
    over the ``overlap`` pixels shared with each neighbour (default ``size // 2``: ``sin^2`` over the whole patch),
    1 between them and on the side facing the image border. Neighbours ``size - overlap`` apart sum to one."""
    o = size // 2 if overlap is None else int(overlap)
    w = np.ones(size)
    if o:
        ramp = np.sin(np.pi * (np.arange(o) + 0.5) / (2 * o)) ** 2
        if start > 0:
            w[:o] = ramp
        if start + size < n:
            w[size - o :] = ramp[::-1]
    return w


def context_margin(psfs: np.ndarray, energy: float = CONTEXT_ENERGY) -> int:
    """Context margin (px) of SV Wiener's patches: ``2 r + 8`` with ``r`` the half-width of the smallest centred
    square that holds ``energy`` of every PSF's energy (sum of squares, the quantity the Wiener filter inverts),
    at most the PSF size. Measured on a field-constant lens against the global filter (max error inside, values
    ~0.5): 7e-5 at 16 px, 9e-6 at 24; the old margin, the full PSF width (33 px), cost 1.3x the transform area
    of a 256 px patch for no measurable PSNR on the microscope (benchmarks/bench_restore.py)."""
    p = np.asarray(psfs, np.float64)
    p = p.reshape((-1,) + p.shape[-2:])
    k0, k1 = p.shape[-2:]
    c0, c1 = k0 // 2, k1 // 2
    e = p**2
    total = e.sum(axis=(1, 2))
    need = max(c0, c1)
    for r in range(max(c0, c1) + 1):
        inside = e[:, max(c0 - r, 0) : c0 + r + 1, max(c1 - r, 0) : c1 + r + 1].sum(axis=(1, 2))
        if np.all(inside >= energy * total):
            need = r
            break
    return int(min(2 * need + 8, max(k0, k1)))


_MARGINS = BoundedCache(max_items=32)


def lens_context_margin(lens) -> int:
    """:func:`context_margin` of the lens's exact PSFs at 9 field points (the frame's centre, corners and edge
    midpoints), cached per lens: one margin for every window of the lens, so tiles of a frame use the frame's."""

    def make():
        H, W = lens.field.shape_px
        r = np.array([0.0, (H - 1) / 2, H - 1.0])
        c = np.array([0.0, (W - 1) / 2, W - 1.0])
        x, y = lens.field.pixel_to_field(np.repeat(r, 3), np.tile(c, 3))
        return context_margin(lens.psfs(x, y))

    return _MARGINS.get(lens.fingerprint, make)


def _basis_transfer(basis, rows, cols, shape, fft, dtype):
    """``(N, Fh, Fw // 2 + 1)`` transfer functions of the basis's rank-K PSFs at frame positions ``rows, cols``
    (unit sum, as :meth:`LowRankBasis.psfs_at`), from the eigen-PSFs' transforms on the grid (cached)."""
    import hashlib

    key = (hashlib.sha1(np.ascontiguousarray(basis.eigen_psfs).tobytes()).hexdigest(), basis.eigen_psfs.shape,
           tuple(shape), fft.name, np.dtype(dtype).str)
    E = _EIGEN_TF.get(key, lambda: psf_tf(basis.eigen_psfs.astype(dtype), shape, fft))  # (K, Fh, Fw')
    Wr = basis.row_axis.weights(np.asarray(rows, float))
    Wc = basis.col_axis.weights(np.asarray(cols, float))
    c = np.einsum("na,abk,nb->nk", Wr, basis.coeffs, Wc)
    c /= (c @ basis.eigen_psfs.sum(axis=(1, 2)))[:, None]  # unit-sum PSFs
    c = c.astype(dtype)
    Hf = np.multiply(E[0], c[:, 0, None, None])
    for j in range(1, E.shape[0]):
        Hf += E[j] * c[:, j, None, None]
    return Hf


def _axis_plan(n: int, patch: int, overlap: int):
    """Patch starts along one axis, the patch size there, and the blend weights ``(len(starts), size)``."""
    size = min(patch, n)
    starts = patch_starts(n, size, overlap)
    end = starts[-1] + size
    return starts, size, np.stack([blend_weights_1d(s, size, end, overlap) for s in starts])


def sv_wiener(image: np.ndarray, lens, *, origin=(0, 0), patch: int | None = None, balance: float | None = None,
              noise_sigma: float | None = None, reg: str = "gradient", backend: str | None = None,
              workers: int | None = None, psf_at=None, psfs: str | None = None, overlap: int | None = None,
              context: int | None = None, nan_policy: str = "raise") -> np.ndarray:
    """Spatially-varying Wiener deconvolution of a window ``(H, W)`` (or a batch ``(B, H, W)`` of images of that
    one window) of the lens field at ``origin``.

    Parameters
    ----------
    image : ndarray, (H, W) or (B, H, W)
        The balance is resolved per image, as :func:`psfsim.restore.wiener.wiener` does.
    lens : Lens
    origin : (int, int), keyword-only
        Window origin in the field (the PSF of each patch is the one at its centre's field point).
    patch : int, optional
        Patch side in pixels (even, >= 8); stride ``patch - overlap``. Default :data:`DEFAULT_PATCH` with
        ``overlap`` :data:`DEFAULT_OVERLAP`.
    overlap : int, optional
        Pixels shared by neighbouring patches, blended (1 .. ``patch // 2``). Default: ``patch // 2`` (stride half
        a patch, the layout tiled callers align to) when ``patch`` is given, :data:`DEFAULT_OVERLAP` otherwise.
    balance, noise_sigma, reg : as :func:`psfsim.restore.wiener.wiener`.
    backend, workers : FFT backend and threads per transform (1 under a threaded scheduler).
    psfs : {"basis", "exact"}, optional
        The patches' PSFs: the rank-K PSFs of :func:`psfsim.operators.lowrank_basis` (built once per lens and
        process, then cached; the fast choice) or the lens's exact PSFs at the patch centres. Default
        :data:`DEFAULT_PSFS`.
    psf_at : callable, optional
        ``psf_at(rows, cols) -> (N, k, k)`` PSFs at frame pixel positions: overrides ``psfs``.
    context : int, optional
        Context margin around each patch (px); default :func:`lens_context_margin` (the lens's, not the
        window's: a tile of a frame gets the frame's margin, at most the PSF size). The
        settings before issue 9 were ``patch=64, overlap=32, context=<PSF size>, psfs="exact"`` (with the whole
        margin tapered; now its outer half).
    nan_policy : {"raise", "fill"}
        Non-finite pixels: refused, or filled for the computation and NaN in the output (:mod:`psfsim.checks`).

    Returns
    -------
    ndarray, the image's shape; dtype by :func:`psfsim.operators.result_dtype`.
    """
    from ..checks import as_lens, check_result, checked_image, remask, result_dtype
    from ..field import check_window

    lens = as_lens(lens)
    dtype = result_dtype(image)
    image, mask = checked_image(image, nan_policy=nan_policy)
    if mask is not None:
        out = sv_wiener(image.astype(dtype, copy=False), lens, origin=origin, patch=patch, balance=balance,
                        noise_sigma=noise_sigma, reg=reg, backend=backend, workers=workers, psf_at=psf_at,
                        psfs=psfs, overlap=overlap, context=context)
        return remask(out, mask)
    if patch is None:  # the default layout; an explicit patch keeps the stride patch // 2 unless overlap is given
        patch, overlap = DEFAULT_PATCH, DEFAULT_OVERLAP if overlap is None else overlap
    try:
        if int(patch) != patch:
            raise ValueError
    except (TypeError, ValueError):
        raise PsfsimError(f"patch = {patch!r}: expected an even number >= 8") from None
    if patch < 8 or patch % 2:
        raise PsfsimError(f"patch = {patch!r}: expected an even number >= 8")
    psfs = DEFAULT_PSFS if psfs is None else psfs
    if psfs not in PSF_SOURCES:
        raise PsfsimError(f"psfs = {psfs!r}: expected one of {', '.join(PSF_SOURCES)}")
    if context is not None and not (isinstance(context, (int, np.integer)) and context >= 0):
        raise PsfsimError(f"context = {context!r}: expected a whole number of pixels >= 0")
    patch = int(patch)
    overlap = patch // 2 if overlap is None else overlap
    try:
        if int(overlap) != overlap:
            raise ValueError
    except (TypeError, ValueError):
        raise PsfsimError(f"overlap = {overlap!r}: expected a whole number of pixels") from None
    if not 0 < overlap <= patch // 2:
        raise PsfsimError(f"overlap = {overlap!r}: expected 1 .. patch // 2 = {patch // 2} pixels")
    overlap = int(overlap)
    origin, _ = check_window(lens, origin=origin, shape=image.shape[-2:])
    single = image.ndim == 2
    imgs = (image[None] if single else image).astype(dtype, copy=False)
    B, H, W = imgs.shape
    rs, ph, wr = _axis_plan(H, patch, overlap)
    cs, pw, wc = _axis_plan(W, patch, overlap)
    # PSF at each patch centre (field point of the centre pixel in the full frame)
    rows = origin[0] + np.asarray(rs, float) + (ph - 1) / 2
    cols = origin[1] + np.asarray(cs, float) + (pw - 1) / 2
    rr, cc = np.repeat(rows, len(cs)), np.tile(cols, len(rs))
    basis = None
    if psf_at is not None:
        P = np.asarray(psf_at(rr, cc), dtype)
    elif psfs == "exact":
        x, y = lens.field.pixel_to_field(rr, cc)
        P = lens.psfs(x, y).astype(dtype)
    else:
        from ..operators import lowrank_basis

        basis = lowrank_basis(lens)  # the transfer functions come from its eigen-PSFs' transforms
    m = lens_context_margin(lens) if context is None else int(context)
    fft = get_backend(backend, workers)
    bals = [resolve_balance(im, balance, noise_sigma, reg) for im in imgs]  # one balance per image
    shape = (fft.next_fast_len(ph + 2 * m, True), fft.next_fast_len(pw + 2 * m, True))
    R2 = regulariser_tf2(reg, shape, dtype)
    # the window, mirror-padded by the context and out to the last patch's end
    He, We = rs[-1] + ph, cs[-1] + pw
    padded = np.pad(imgs, ((0, 0), (m, m + He - H), (m, m + We - W)), mode="symmetric")

    def taper(n_core, n_tot):  # 1 over the core and the margin's inner part, a raised cosine down to the tile
        t = np.ones(n_tot)  # edge over its outer TAPER_FRACTION, 0 beyond the tile
        nr = int(round(m * TAPER_FRACTION))
        ramp = raised_cosine_ramp(nr) if nr else np.zeros(0)
        t[:nr], t[2 * m + n_core - nr : 2 * m + n_core] = ramp, ramp[::-1]
        t[2 * m + n_core :] = 0.0
        return t

    win = (taper(ph, shape[0])[:, None] * taper(pw, shape[1])[None, :]).astype(dtype)
    wr, wc = wr.astype(dtype), wc.astype(dtype)
    out = np.zeros((B, He, We), dtype)
    nc = len(cs)
    per = shape[0] * (shape[1] // 2 + 1) * np.dtype(dtype).itemsize * 2 * 3
    step = max(1, min(nc, int(_BATCH_BYTES // per)))
    tiles = np.empty((step,) + shape, dtype)
    tiles = np.zeros((step,) + shape, dtype)  # zeros once: the part past each tile is tapered to its mean
    h, w = ph + 2 * m, pw + 2 * m
    for i, r in enumerate(rs):
        for j0 in range(0, nc, step):
            j1 = min(j0 + step, nc)
            n = j1 - j0
            if basis is not None:
                Hc = _basis_transfer(basis, np.full(n, rows[i]), cols[j0:j1], shape, fft, dtype)
            else:
                Hc = psf_tf(P[i * nc + j0 : i * nc + j1], shape, fft)
            H2 = Hc.real**2
            H2 += Hc.imag**2
            np.conj(Hc, out=Hc)
            for b in range(B):
                t = tiles[:n]
                for q, c in enumerate(cs[j0:j1]):  # the tiles with their context
                    t[q, :h, :w] = padded[b, r : r + h, c : c + w]
                mean = t[:, m : m + ph, m : m + pw].mean(axis=(1, 2), keepdims=True)
                t -= mean
                t *= win
                t += mean
                Y = fft.rfft2(t)
                # Y conj(H) / (|H|^2 + balance |R|^2)
                den = np.add(H2, np.float32(bals[b]) * R2 if R2 is not None else np.float32(bals[b]))
                np.reciprocal(den, out=den)
                Y *= Hc
                Y *= den
                res = fft.irfft2(Y, s=shape)[:, m : m + ph, m : m + pw]
                res *= wr[i][None, :, None]
                res *= wc[j0:j1, None, :]
                o = out[b, r : r + ph]
                for q, c in enumerate(cs[j0:j1]):  # overlap-add (the weights sum to one)
                    o[:, c : c + pw] += res[q]
    out = out[:, :H, :W]
    return check_result(out[0] if single else out, "sv_wiener")
