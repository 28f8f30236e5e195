"""Image-quality figures of PSFs: Strehl ratio, equivalent-area FWHM and the energy outside the PSF box.

All three come from one evaluation of the oversampled intensity (:meth:`psfsim.psf.PSFEngine.mft_terms`):
the pupil fields and the sub-pixel intensity are computed once per wavelength and chunk of field points.

Energy outside the box
    The pupil sampled on ``M`` cells misses the far tails of the hard-edged pupil's diffraction pattern
    (they fall beyond the DFT's alias period ``M lambda / (2 NA)``, and the anti-aliased edge softens the
    rest), so ``1 - (energy in the box)`` underestimates the energy outside by an error close to ``c / M``.
    Measured against the analytic annular Airy pattern integrated over the box (telescope preset on axis,
    exact 0.02941): 0.0175 at ``M = 64``, 0.0232 at 128, 0.0261 at 256, 0.0277 at 512. The estimate used
    here is the Richardson extrapolation of the first-order error, ``2 e(2M) - e(M)`` (L. F. Richardson 1911,
    Phil. Trans. R. Soc. A 210, 307): 0.0289 at ``M = 64``, 0.0289 at 128, 0.0293 at 256 (microscope:
    0.0216 at 64 against the exact 0.0222). It costs one evaluation at ``M`` plus one at ``2M`` (telescope,
    9 field points: about 0.05 s + 0.08 s, against about 1 s for the plain ``M = 512`` value, which is
    still 0.0017 low). ``benchmarks/bench_psf.py`` prints these figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .wavefront import field_coefficients

__all__ = ["PSFMetrics", "psf_metrics", "energy_outside", "fwhm_px_from_intensity", "RaySample", "GeometricSpots",
           "geometric_spots", "MAX_PHASE_STEP_WAVES"]

#: Largest wavefront step between adjacent pupil samples (waves at the shortest wavelength) that the sampled
#: pupil represents: a step above 1/2 wave (a phase step above pi) aliases, the light lands in the wrong place.
MAX_PHASE_STEP_WAVES = 0.5
#: Cells across the pupil of the ray sample, rays on its rim, field points per batch of ray tracing.
_RAY_CELLS = 32
_RAY_RIM = 64
_RAY_BATCH = 4096
#: Sub-samples of the peak refinement grid, and its spacing as a fraction of the sub-pixel spacing.
_REFINE = 9
_REFINE_STEP = 1 / 8


@dataclass(frozen=True)
class PSFMetrics:
    """Image-quality figures at ``B`` field points.

    Attributes
    ----------
    strehl : ndarray, (B,) float64
        Peak intensity over the aberration-free peak (polychromatic, same pupil).
    fwhm_px : ndarray, (B,) float64
        Equivalent-area FWHM ``2 sqrt(A / pi)`` in detector pixels, ``A`` the area above half the peak.
    energy_outside : ndarray, (B,) float64 or None
        Fraction of the energy outside the ``size_px`` box (None when not requested).
    """

    strehl: np.ndarray
    fwhm_px: np.ndarray
    energy_outside: np.ndarray | None


def fwhm_px_from_intensity(fine: np.ndarray, oversample: int) -> np.ndarray:
    """Equivalent-area FWHM ``2 sqrt(A / pi)`` in detector pixels of sub-pixel intensities ``(B, n, n)``.

    ``A`` is the area where the intensity exceeds half its peak, with a linear sub-sample estimate of the
    contour's position (so it is not quantised to whole sub-samples). Returns ``(B,)`` float64.
    """
    peak = fine.max(axis=(1, 2), keepdims=True)
    gy, gx = np.gradient(fine, axis=(1, 2))
    g = np.hypot(gx, gy) + 1e-30 * peak
    frac = np.clip(0.5 + (fine - peak / 2) / g, 0.0, 1.0)
    area = frac.sum(axis=(1, 2)) / oversample**2
    return 2.0 * np.sqrt(area / np.pi)


def _refined_peak(engine, fields: list, fine: np.ndarray) -> np.ndarray:
    """Polychromatic peak ``(B,)``: the sub-pixel maximum, refined by an MFT on a ``9 x 9`` grid of spacing
    ``dx / 8`` around it (so off-grid peaks are not underestimated), reusing the pupil fields."""
    B, ks = fine.shape[0], engine.ks
    idx = fine.reshape(B, -1).argmax(axis=1)
    py, px = engine.pos_um[idx // ks], engine.pos_um[idx % ks]
    off = (np.arange(_REFINE) - (_REFINE - 1) / 2) * engine.dx_um * _REFINE_STEP
    o = engine.lens.optics
    tot = np.zeros((B, _REFINE, _REFINE))
    for (lam, w), P in zip(zip(o.wavelength_nm, o.spectral_weights), fields):
        f = engine.freqs(lam)
        Ey = np.exp(-2j * np.pi * (py[:, None] + off)[:, :, None] * f[None, None, :])  # (B, r, M)
        Ex = np.exp(-2j * np.pi * (px[:, None] + off)[:, :, None] * f[None, None, :])
        S = Ey @ P @ np.swapaxes(Ex, 1, 2)
        tot += w * (S.real**2 + S.imag**2) * (engine.q2(lam) / engine.pupil.energy)
    return np.maximum(tot.reshape(B, -1).max(axis=1), fine.reshape(B, -1).max(axis=1))


def _chunk(engine) -> int:
    return engine.batch


def _in_box(engine, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Energy ``(B,)`` inside the box, by MFT at the engine's pupil sampling."""
    out = []
    for i in range(0, len(x), _chunk(engine)):
        C = field_coefficients(engine.lens, x[i : i + _chunk(engine)], y[i : i + _chunk(engine)])
        out.append(sum(w * inten.sum(axis=(1, 2)) for _, w, _, inten in engine.mft_terms(C)))
    return np.concatenate(out) if out else np.zeros(0)


def _extrapolated_outside(engine, x, y, in_box_M: np.ndarray) -> np.ndarray:
    finer = engine.finer()
    out_M = 1.0 - in_box_M
    if finer is None:
        return np.clip(out_M, 0.0, 1.0)
    out_2M = 1.0 - _in_box(finer, x, y)
    return np.clip(2.0 * out_2M - out_M, 0.0, 1.0)


def energy_outside(engine, x, y) -> np.ndarray:
    """Fraction ``(B,)`` of the polychromatic energy outside the ``size_px`` box at field points ``x, y (B,)``.

    Richardson-extrapolated from the engine's pupil sampling ``M`` and ``2M`` (module docstring); the raw
    ``M`` value when ``2M`` would exceed 1024 samples.
    """
    x = np.atleast_1d(np.asarray(x, float)).ravel()
    y = np.atleast_1d(np.asarray(y, float)).ravel()
    return _extrapolated_outside(engine, x, y, _in_box(engine, x, y))


def psf_metrics(engine, x, y, *, energy_outside: bool = True) -> PSFMetrics:
    """Strehl ratio, FWHM and energy outside the box at field points ``x, y (B,)``, from one evaluation.

    Parameters
    ----------
    engine : psfsim.psf.PSFEngine
        Metrics are always evaluated by MFT, whatever the engine's ``method``.
    x, y : array_like, (B,)
        Field coordinates.
    energy_outside : bool
        Also estimate the energy outside the box (one more evaluation at twice the pupil sampling).
    """
    x = np.atleast_1d(np.asarray(x, float)).ravel()
    y = np.atleast_1d(np.asarray(y, float)).ravel()
    strehl, fwhm, in_box = [], [], []
    n = _chunk(engine)
    ideal = engine.ideal_peak()
    for i in range(0, len(x), n):
        C = field_coefficients(engine.lens, x[i : i + n], y[i : i + n])
        fields, fine = [], 0.0
        for _, w, P, inten in engine.mft_terms(C):
            fields.append(P)
            fine = fine + w * inten
        strehl.append(_refined_peak(engine, fields, fine) / ideal)
        fwhm.append(fwhm_px_from_intensity(fine, engine.s))
        in_box.append(fine.sum(axis=(1, 2)))
    eo = _extrapolated_outside(engine, x, y, np.concatenate(in_box)) if energy_outside else None
    return PSFMetrics(strehl=np.concatenate(strehl), fwhm_px=np.concatenate(fwhm), energy_outside=eo)


# --------------------------------------------------------------------------------------------------
# geometric optics: where the rays land (cheap, any number of field points)
# --------------------------------------------------------------------------------------------------
class RaySample:
    """Rays through a lens's pupil: ``32 x 32`` cells weighted by their (anti-aliased) area, plus rays on the
    pupil's rim(s) where the slopes of the polynomial wavefront are largest (weight 0).

    Attributes
    ----------
    gu, gv : ndarray, (nb, R) float64
        Slopes ``d/du``, ``d/dv`` of the pupil functions at the rays (:func:`psfsim.wavefront.pupil_gradient_basis`).
    weight : ndarray, (R,) float64
        Energy weight of each ray (sum 1; 0 on the rims).
    """

    def __init__(self, lens):
        from .pupil import annular_pupil
        from .wavefront import pupil_gradient_basis

        n = _RAY_CELLS
        coords = (np.arange(n) - (n - 1) / 2.0) * (2.0 / n)
        amp = annular_pupil(coords, lens.optics.obscuration)
        uu, vv = np.meshgrid(coords, coords)
        keep = amp > 0
        t = np.linspace(0.0, 2 * np.pi, _RAY_RIM, endpoint=False)
        radii = [1.0] + ([lens.optics.obscuration] if lens.optics.obscuration > 0 else [])
        u = np.concatenate([uu[keep]] + [r * np.cos(t) for r in radii])
        v = np.concatenate([vv[keep]] + [r * np.sin(t) for r in radii])
        w = np.concatenate([amp[keep] ** 2, np.zeros(len(radii) * _RAY_RIM)])
        self.weight = w / w.sum()
        self.gu, self.gv = pupil_gradient_basis(lens, u, v)


@dataclass(frozen=True)
class GeometricSpots:
    """Ray-traced figures at ``B`` field points (geometric optics: exact for large aberrations, 0-sized spots
    for small ones, where diffraction dominates).

    Attributes
    ----------
    rms_radius_px : ndarray, (B,) float64
        Energy-weighted RMS distance of the rays from the box's centre (the geometric image point), in pixels:
        the geometric blur radius (a tilt counts, it moves the spot off the centre).
    fraction_outside : ndarray, (B,) float64
        Energy fraction of the rays landing outside the ``size_px`` box.
    max_phase_step : ndarray, (B,) float64
        Largest wavefront step between adjacent samples of the engine's pupil, in waves at the shortest
        wavelength (above :data:`MAX_PHASE_STEP_WAVES` the sampled pupil aliases).
    worst_ray_px : ndarray, (B,) float64
        Largest distance of a ray from the box's centre, in pixels.

    Non-finite wavefronts give NaN or inf here; compare with ``not (value <= limit)`` so they fail.
    """

    rms_radius_px: np.ndarray
    fraction_outside: np.ndarray
    max_phase_step: np.ndarray
    worst_ray_px: np.ndarray


def _spots_batch(engine, rays: RaySample, x, y):
    lens = engine.lens
    o = lens.optics
    C = field_coefficients(lens, x, y)
    with np.errstate(all="ignore"):
        su, sv = C @ rays.gu, C @ rays.gv  # (B, R) waves per unit of normalised pupil coordinate
        px_per_slope = o.reference_wavelength_nm * 1e-3 / o.na / o.pixel_pitch_um
        dx, dy = su * px_per_slope, sv * px_per_slope
        half = engine.k / 2.0
        inside = (np.abs(dx) <= half) & (np.abs(dy) <= half)
        r2 = dx * dx + dy * dy
        frac = np.where(np.isfinite(r2).all(axis=1), (~inside) @ rays.weight, np.nan)
        rms = np.sqrt(r2 @ rays.weight)
        step = np.maximum(np.abs(su), np.abs(sv)).max(axis=1) * engine.pupil.du * (engine.lam_ref / min(o.wavelength_nm))
        worst = np.sqrt(r2.max(axis=1))
    return rms, frac, step, worst


def geometric_spots(engine, x, y) -> GeometricSpots:
    """Ray-traced spot figures (:class:`GeometricSpots`) at field points ``x, y (B,)``.

    A ray through pupil point ``(u, v)`` lands ``lambda / NA * grad W`` from the geometric image point
    (transverse ray aberration, Born & Wolf, *Principles of Optics*, 7th ed., sec. 5.1, eq. 15, with ``W`` in
    waves and pupil coordinates normalised to the edge): wavelength-independent, so computed at the reference
    wavelength. Costs one ``(B, nb) @ (nb, R)`` product per batch (``R`` about 860 rays).
    """
    x = np.atleast_1d(np.asarray(x, float)).ravel()
    y = np.atleast_1d(np.asarray(y, float)).ravel()
    rays = engine.rays
    parts = [_spots_batch(engine, rays, x[i : i + _RAY_BATCH], y[i : i + _RAY_BATCH]) for i in range(0, len(x), _RAY_BATCH)]
    if not parts:
        e = np.zeros(0)
        return GeometricSpots(e, e, e, e)
    return GeometricSpots(*(np.concatenate(a) for a in zip(*parts)))
