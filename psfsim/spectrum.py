"""Does a lens describe an image? The share of the image's power beyond the lens's optical cutoff.

An incoherent imaging system passes no spatial frequency beyond ``2 NA / lambda``: in cycles per detector
pixel, ``f_c = 2 NA pitch_um / (lambda_min_nm 1e-3)``. An image blurred by the lens therefore has only noise
beyond ``f_c``; an already sharp frame, or a frame from another instrument, has signal there, and a
restoration with this lens's PSF amplifies it into ringing. Pure functions, no IO.
"""

from __future__ import annotations

import numpy as np

from .errors import PsfsimError

__all__ = ["cutoff_cycles_per_px", "out_of_band_fraction", "periodic_component", "OUT_OF_BAND_WARN"]

#: Above this fraction (``inner=0.5``) the lens does not describe the image. Measured on 256 x 256 crops
#: (skimage camera, astronaut; psfsim stars, cells) with a lens of cutoff 0.31 cycles/px: sharp 0.05-0.48,
#: blurred by the lens 0.0003-0.066 noiseless and 0-0.038 with 1 % noise; at the Nyquist cutoff 0.5 (only the
#: corners of the spectrum lie beyond it) sharp 0.01-0.085, blurred 0-0.0015.
OUT_OF_BAND_WARN = 0.05


def cutoff_cycles_per_px(lens) -> float:
    """The optical cutoff ``2 NA / lambda_min`` in cycles per detector pixel."""
    o = lens.optics
    return float(2.0 * o.na * o.pixel_pitch_um / (min(o.wavelength_nm) * 1e-3))


def periodic_component(image: np.ndarray) -> np.ndarray:
    """Moisan's periodic component (J. Math. Imaging Vis. 2011): the image minus the smooth image whose
    Laplacian is the jump across the periodic boundary, so the DFT shows no cross of edge leakage."""
    u = np.asarray(image, np.float64)
    M, N = u.shape
    v = np.zeros_like(u)
    v[0, :] += u[-1, :] - u[0, :]
    v[-1, :] += u[0, :] - u[-1, :]
    v[:, 0] += u[:, -1] - u[:, 0]
    v[:, -1] += u[:, 0] - u[:, -1]
    q = np.arange(M)[:, None]
    r = np.arange(N)[None, :]
    den = 2 * np.cos(2 * np.pi * q / M) + 2 * np.cos(2 * np.pi * r / N) - 4
    den[0, 0] = 1.0
    s = np.fft.fft2(v) / den
    s[0, 0] = 0.0
    return u - np.real(np.fft.ifft2(s))


def out_of_band_fraction(image: np.ndarray, lens, *, noise_sigma: float | None = None, inner: float = 0.5) -> float:
    """Fraction of the image's signal power at frequencies above ``inner * f_c`` that lies beyond the lens's
    cutoff disc ``f_c`` (``inner=0``: of all its power).

    Natural images put most of their power at low frequencies, so the plain fraction (``inner=0``) of a sharp
    frame is tiny and depends on the scene (1e-4..5e-2 measured); relative to the power above ``f_c / 2`` it
    separates frames the lens describes (their power beyond ``f_c`` is noise only) from sharp ones.

    The mean is removed and the periodic component taken (no edge leakage); white noise of standard deviation
    ``noise_sigma`` (default: estimated by :func:`psfsim.restore.wiener.estimate_noise_sigma`) contributes
    ``N sigma^2`` per frequency, which is subtracted inside and outside the disc. ``noise_sigma=0`` measures
    the raw power: white noise then scores the area of the unit square outside the disc of radius ``f_c`` over its area
    outside the disc of radius ``inner f_c``.
    Returns a value in [0, 1] (0 when the cutoff lies beyond every frequency, or the image is flat noise).
    """
    a = np.asarray(image, np.float64)
    if a.ndim != 2 or min(a.shape) < 2:
        raise PsfsimError(f"image of shape {a.shape}: expected a 2-D image of at least 2 x 2 pixels")
    fc = cutoff_cycles_per_px(lens)
    if noise_sigma is None:
        from .restore.wiener import estimate_noise_sigma

        noise_sigma = estimate_noise_sigma(a)
    u = periodic_component(a - a.mean())
    power = np.abs(np.fft.fft2(u)) ** 2
    power[0, 0] = 0.0
    fy = np.fft.fftfreq(a.shape[0])[:, None]
    fx = np.fft.fftfreq(a.shape[1])[None, :]
    f = np.hypot(fy, fx)
    outside = f > fc
    band = f > inner * fc
    band[0, 0] = False
    floor = a.size * float(noise_sigma) ** 2  # expected |DFT|^2 of white noise, per frequency
    p_out = max(float(power[outside].sum()) - floor * int(outside.sum()), 0.0)
    p_all = max(float(power[band].sum()) - floor * int(band.sum()), 0.0)
    if p_all <= 0.0:
        return 0.0
    return float(min(p_out / p_all, 1.0))
