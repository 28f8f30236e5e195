"""Point spread functions by scalar Fraunhofer diffraction, batched over field points (matrix Fourier transform).

``PSF(x) = | F{ A(u) exp(i 2 pi W(u) lambda_ref / lambda) } |^2`` with ``A`` the (annular) pupil amplitude,
``W`` the wavefront in waves at the reference wavelength (:mod:`psfsim.wavefront`) and ``F`` the Fraunhofer
(Fourier) transform evaluated at image positions ``x`` in µm, pupil frequencies ``u NA / lambda``
(Goodman, *Introduction to Fourier Optics*, 3rd ed., eq. 4-17 and 6-7).

The intensity is computed on a grid ``oversample`` times finer than the detector, integrated over each
detector pixel (``oversample^2`` sub-samples per pixel, midpoint rule), summed over wavelengths with their
spectral weights, and normalised to unit sum over the ``size_px`` box whose central pixel is the geometric
image point.

Two evaluation methods, which agree to 1.6e-4 of the PSF's peak on the relay preset (measured; tested at
5e-4):

``"mft"`` (default, this module)
    Matrix Fourier transform (Soummer et al. 2007, Opt. Express 15, 15935): the DFT of the ``M x M`` pupil
    (:mod:`psfsim.pupil`) evaluated directly at the ``k s x k s`` sub-pixel positions as two batched matrix
    products. No zero padding, no wrap-around, any sampling; poppy and hcipy use it for the same reason.
``"fft"``
    Zero-padded FFT (:mod:`psfsim.psf_fft`), the independent cross-check. ``benchmarks/bench_psf.py``
    measures both; MFT wins at the sizes lenses use.

Strehl ratio, FWHM and the energy outside the box come from one evaluation (:mod:`psfsim.psf_metrics`).
Engines are shared between equal lenses (:func:`engine_for`, keyed by :attr:`psfsim.lens.Lens.fingerprint`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cache import BoundedCache
from .errors import PsfsimError
from .pupil import Pupil, annular_pupil
from .pupil import pupil_samples as default_pupil_samples
from .wavefront import field_coefficients

__all__ = ["PSFEngine", "PSFGrid", "psf_grid", "annular_pupil", "engine_for", "ENGINE_CACHE_SIZE", "EngineCost",
           "engine_cost", "batch_size"]

#: Most field points per batch.
_CHUNK = 64
#: Bytes of working arrays per batch of field points (the batch shrinks for large boxes and pupils).
BATCH_BYTES = 1 << 28
#: Sub-samples per pupil cell side of the anti-aliased pupil (:func:`psfsim.pupil.annular_pupil`).
_PUPIL_SUB = 8
#: Most PSF engines kept by :func:`engine_for` (least recently used ones are dropped).
ENGINE_CACHE_SIZE = 8


@dataclass(frozen=True)
class PSFGrid:
    """PSFs on a regular grid of the frame.

    Attributes
    ----------
    psfs : ndarray, (ny, nx, k, k) float64
    x, y : ndarray, (ny, nx)
        Field coordinates of the grid nodes.
    rows, cols : ndarray, (ny,) and (nx,)
        Pixel positions of the grid nodes in the frame (``rows[0] = 0``, ``rows[-1] = H - 1``).
    """

    psfs: np.ndarray
    x: np.ndarray
    y: np.ndarray
    rows: np.ndarray
    cols: np.ndarray


class PSFEngine:
    """Batched PSF evaluation for one lens (pupil, bases and DFT matrices computed once).

    Parameters
    ----------
    lens : Lens
    method : {"mft", "fft"}
        How :meth:`fine_intensity` and :meth:`psfs` evaluate the Fraunhofer integral. Metrics always use the MFT.
    fft_backend : str, optional
        Backend for ``method="fft"`` (see :func:`psfsim.fft.get_backend`).
    pupil_samples : int, optional
        Samples across the pupil; default :func:`psfsim.pupil.pupil_samples` of the lens.

    Attributes
    ----------
    k, s, ks : int
        Box side in pixels, sub-samples per pixel side, sub-samples across the box.
    dx_um : float
        Sub-sample spacing in µm.
    pos_um : ndarray, (ks,) float64
        Sub-sample positions in µm, the central pixel's centre at 0.
    pupil : :class:`psfsim.pupil.Pupil`
    M : int
        Samples across the pupil.
    """

    def __init__(self, lens, method: str = "mft", fft_backend: str | None = None, pupil_samples: int | None = None):
        if method not in ("mft", "fft"):
            raise PsfsimError(f"method = {method!r}: expected 'mft' or 'fft'")
        self.lens = lens
        self.method = method
        self.fft_backend = fft_backend
        o, ps = lens.optics, lens.psf_sampling
        self.k = ps.size_px
        self.s = ps.oversample
        self.ks = self.k * self.s
        self.dx_um = o.pixel_pitch_um / self.s
        self.pos_um = (np.arange(self.ks) - (self.ks - 1) / 2.0) * self.dx_um
        self.M = int(pupil_samples) if pupil_samples is not None else default_pupil_samples(lens)
        self.pupil = Pupil(lens, self.M)
        self.lam_ref = o.reference_wavelength_nm
        # one DFT matrix per wavelength: E[n, m] = exp(-i 2 pi x_n u_m NA / lambda)
        self._dft = [np.exp(-2j * np.pi * np.outer(self.pos_um, self.freqs(lam))) for lam in o.wavelength_nm]
        self._fft = None
        if method == "fft":
            from .psf_fft import FFTPropagator

            self._fft = FFTPropagator(lens, self.ks, self.dx_um, self.M, fft_backend)
        self._finer = None
        self._rays = None

    # -- building blocks ------------------------------------------------------------------------------
    def freqs(self, lam_nm: float) -> np.ndarray:
        """Spatial frequencies ``(M,)`` in cycles per µm of the pupil samples at wavelength ``lam_nm``."""
        return self.pupil.coords * self.lens.optics.na / (lam_nm * 1e-3)

    def q2(self, lam_nm: float) -> float:
        """Squared Riemann factor turning ``|DFT|^2 / pupil energy`` into the energy fraction per sub-sample."""
        q = self.pupil.du * self.lens.optics.na * self.dx_um / (lam_nm * 1e-3)
        return q * q

    def mft_terms(self, C: np.ndarray):
        """Yield ``(lam_nm, weight, fields (B, M, M), intensity (B, ks, ks))`` per wavelength, by MFT.

        ``intensity`` is the energy fraction per sub-sample (the sum over an infinite plane would be 1).
        """
        o = self.lens.optics
        for li, (lam, w) in enumerate(zip(o.wavelength_nm, o.spectral_weights)):
            E = self._dft[li]
            P = self.pupil.fields(C, self.lam_ref / lam)
            S = E @ (P @ E.T)  # (B, ks, ks): rows = y, cols = x
            yield lam, w, P, (S.real**2 + S.imag**2) * (self.q2(lam) / self.pupil.energy)

    def fine_intensity(self, x: np.ndarray, y: np.ndarray, per_wavelength: bool = False) -> np.ndarray:
        """Energy fraction per sub-pixel sample, ``(B, ks, ks)`` float64 (``(L, B, ks, ks)`` per wavelength).

        Summed over an infinite plane it would be 1 for each wavelength; the sum over the box is the
        in-box energy.
        """
        C = field_coefficients(self.lens, x, y)
        o = self.lens.optics
        if self._fft is not None:
            out = np.stack([self._fft.intensity(C, lam, self.lam_ref) for lam in o.wavelength_nm])
        else:
            out = np.stack([inten for _, _, _, inten in self.mft_terms(C)])
        if per_wavelength:
            return out
        return np.tensordot(np.asarray(o.spectral_weights), out, axes=1)

    def ideal_peak(self) -> float:
        """Peak of the aberration-free polychromatic energy-fraction intensity (at the origin)."""
        o = self.lens.optics
        a = float(np.sum(self.pupil.amp)) ** 2 / self.pupil.energy
        return sum(w * a * self.q2(lam) for lam, w in zip(o.wavelength_nm, o.spectral_weights))

    def finer(self) -> "PSFEngine | None":
        """The MFT engine with twice the pupil samples (for the extrapolated energy outside the box), or None
        when that would exceed 1024 samples. Built on first use."""
        if self._finer is None and 2 * self.M <= 1024:
            self._finer = PSFEngine(self.lens, pupil_samples=2 * self.M)
        return self._finer

    # -- PSFs ------------------------------------------------------------------------------------------
    def _bin(self, fine: np.ndarray) -> np.ndarray:
        B = fine.shape[0]
        return fine.reshape(B, self.k, self.s, self.k, self.s).sum(axis=(2, 4))

    def psfs(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """PSFs ``(B, k, k)`` float64, unit sum, at field points ``x, y (B,)``."""
        x = np.asarray(x, float).ravel()
        y = np.asarray(y, float).ravel()
        if x.shape != y.shape:
            raise PsfsimError(f"x and y must have the same length, got {x.shape} and {y.shape}")
        out = np.empty((len(x), self.k, self.k))
        n = self.batch
        for i in range(0, len(x), n):
            p = self._bin(self.fine_intensity(x[i : i + n], y[i : i + n]))
            out[i : i + n] = p / p.sum(axis=(1, 2), keepdims=True)
        return out

    @property
    def batch(self) -> int:
        """Field points per batch at this engine's sampling (:func:`batch_size`)."""
        L = len(self.lens.optics.wavelength_nm)
        return batch_size(_point_bytes(L, self.M, self.ks))

    # -- geometric optics (psfsim.psf_metrics.geometric_spots) ---------------------------------------
    @property
    def rays(self):
        """The :class:`psfsim.psf_metrics.RaySample` of the lens's pupil, built on first use."""
        if self._rays is None:
            from .psf_metrics import RaySample

            self._rays = RaySample(self.lens)
        return self._rays

    def spots(self, x: np.ndarray, y: np.ndarray):
        """Ray-traced spot figures ``(B,)`` at field points: :func:`psfsim.psf_metrics.geometric_spots`."""
        from .psf_metrics import geometric_spots

        return geometric_spots(self, x, y)

    # -- metrics (psfsim.psf_metrics) -----------------------------------------------------------------
    def metrics(self, x: np.ndarray, y: np.ndarray, *, energy_outside: bool = True):
        """Strehl, FWHM and energy outside the box from one evaluation: :func:`psfsim.psf_metrics.psf_metrics`."""
        from .psf_metrics import psf_metrics

        return psf_metrics(self, x, y, energy_outside=energy_outside)

    def strehl(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Strehl ratio ``(B,)`` (see :func:`psfsim.psf_metrics.psf_metrics`)."""
        return self.metrics(x, y, energy_outside=False).strehl

    def fwhm_px(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Equivalent-area FWHM ``(B,)`` in detector pixels (see :func:`psfsim.psf_metrics.psf_metrics`)."""
        return self.metrics(x, y, energy_outside=False).fwhm_px

    def energy_outside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Fraction ``(B,)`` of the energy outside the box (see :func:`psfsim.psf_metrics.energy_outside`)."""
        from .psf_metrics import energy_outside

        return energy_outside(self, x, y)


@dataclass(frozen=True)
class EngineCost:
    """What a lens's PSF engine needs, estimated from its description alone (nothing allocated).

    Attributes
    ----------
    M : int
        Pupil samples across the diameter (:func:`psfsim.pupil.pupil_samples`).
    ks : int
        Sub-samples across the PSF box.
    fixed_bytes : int
        DFT matrices, pupil basis and the anti-aliased pupil's temporaries, of the engine at ``M`` and of the
        finer one at ``2 M`` (built for the energy outside the box when ``2 M <= 1024``).
    point_bytes : int
        Working arrays per field point of a batch (pupil fields of every wavelength, the MFT's intermediate
        and the sub-pixel intensities), at the larger of the two samplings.
    batch : int
        Field points per batch (:func:`batch_size`).
    flop_per_psf : float
        Floating-point operations of one PSF by MFT (all wavelengths; a complex multiply-add is 8).
    """

    M: int
    ks: int
    fixed_bytes: int
    point_bytes: int
    batch: int
    flop_per_psf: float

    @property
    def peak_bytes(self) -> int:
        """Fixed arrays plus one batch of working arrays: the most a PSF evaluation holds at once."""
        return self.fixed_bytes + self.batch * self.point_bytes


def _fixed_bytes(L: int, nb: int, M: int, ks: int) -> int:
    dft = L * ks * M * 16
    basis = 2 * nb * M * M * 8  # the pupil basis and the stack it is built from
    pupil_tmp = 3 * (_PUPIL_SUB * M) ** 2 * 8  # annular_pupil's fine grid (radius, mask, mean)
    return dft + basis + pupil_tmp


def _point_bytes(L: int, M: int, ks: int) -> int:
    fields = L * M * M * 16  # kept for every wavelength by the metrics' peak refinement
    half = M * ks * 16  # P @ E.T
    inten = ks * ks * (16 + 16) + L * ks * ks * 8  # S, |S|^2 and its temporary, then stacked per wavelength
    return fields + half + inten


def batch_size(point_bytes: int) -> int:
    """Field points per batch: at most 64, and at most :data:`BATCH_BYTES` of working arrays (at least 1)."""
    return int(max(1, min(_CHUNK, BATCH_BYTES // max(1, point_bytes))))


def engine_cost(lens) -> EngineCost:
    """Memory and work of the PSF engine of ``lens`` (:class:`EngineCost`), from its description only."""
    from .wavefront import pupil_basis_names

    L = len(lens.optics.wavelength_nm)
    nb = len(pupil_basis_names(lens))
    M = default_pupil_samples(lens)
    ks = lens.psf_sampling.size_px * lens.psf_sampling.oversample
    fixed = _fixed_bytes(L, nb, M, ks)
    Mf = M
    if 2 * M <= 1024:
        Mf = 2 * M
        fixed += _fixed_bytes(L, nb, Mf, ks)
    pb = _point_bytes(L, Mf, ks)
    flop = 8.0 * L * (float(M) ** 2 * ks + float(M) * ks**2)
    return EngineCost(M=M, ks=ks, fixed_bytes=int(fixed), point_bytes=int(pb), batch=batch_size(pb), flop_per_psf=flop)


_engines = BoundedCache(max_items=ENGINE_CACHE_SIZE)


def engine_for(lens) -> PSFEngine:
    """The MFT :class:`PSFEngine` of a lens, shared by every equal lens (same :attr:`~psfsim.lens.Lens.fingerprint`).

    At most :data:`ENGINE_CACHE_SIZE` engines are kept, the least recently used dropped first.
    """
    return _engines.get(lens.fingerprint, lambda: PSFEngine(lens))


def psf_grid(lens, ny: int, nx: int) -> PSFGrid:
    """PSFs on an ``ny x nx`` grid of pixel positions spanning the frame, corners included."""
    from .field import grid_positions

    H, W = lens.field.shape_px
    rows, cols = grid_positions(ny, H), grid_positions(nx, W)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    x, y = lens.field.pixel_to_field(rr, cc)
    psfs = lens.psfs(x.ravel(), y.ravel()).reshape(ny, nx, lens.psf_sampling.size_px, lens.psf_sampling.size_px)
    return PSFGrid(psfs=psfs, x=x, y=y, rows=rows, cols=cols)
