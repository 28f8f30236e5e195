"""Point spread functions by scalar Fraunhofer diffraction, batched over field points.

``PSF(x) = | F{ A(u) exp(i 2 pi W(u) lambda_ref / lambda) } |^2`` with ``A`` the (annular) pupil amplitude,
``W`` the wavefront in waves at the reference wavelength (:mod:`psfsim.wavefront`) and ``F`` the Fraunhofer
(Fourier) transform evaluated at image positions ``x`` in µm, pupil frequencies ``u NA / lambda``
(Goodman, *Introduction to Fourier Optics*, 3rd ed., eq. 4-17 and 6-7).

The intensity is computed on a grid ``oversample`` times finer than the detector, integrated over each
detector pixel (``oversample^2`` sub-samples per pixel, midpoint rule), summed over wavelengths with their
weights, and normalised to unit sum over the ``size_px`` box whose central pixel is the geometric image point.

Two evaluation methods, which agree to ~1e-6 (tested):

``"mft"`` (default)
    Matrix Fourier transform (Soummer et al. 2007, Opt. Express 15, 15935): the DFT of the ``M x M`` pupil
    evaluated directly at the ``k s x k s`` sub-pixel positions as two batched matrix products. No zero
    padding, no wrap-around, any sampling; it is what poppy and hcipy use for the same reason.
``"fft"``
    Zero-padded FFT through :mod:`psfsim.fft` (pyFFTW or scipy), the pupil resampled so that one FFT sample
    is one sub-pixel. ``benchmarks/bench_psf.py`` measures both; MFT wins at the sizes lenses use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .wavefront import field_coefficients, pupil_basis

__all__ = ["PSFEngine", "PSFGrid", "psf_grid", "annular_pupil"]

#: Field points per batch (bounds memory: batch * M^2 * 16 bytes for the pupil fields).
_CHUNK = 64


def annular_pupil(coords: np.ndarray, obscuration: float, sub: int = 8) -> np.ndarray:
    """Anti-aliased annular pupil amplitude on the grid ``coords x coords`` (normalised pupil coordinates).

    Each cell's value is the fraction of its area inside ``obscuration <= rho <= 1``, estimated with
    ``sub x sub`` sub-samples, so the discrete pupil's area and centroid match the continuous one closely.
    """
    d = abs(coords[1] - coords[0])
    off = (np.arange(sub) + 0.5) / sub - 0.5
    fine = (coords[:, None] + off[None, :] * d).ravel()
    r = np.hypot(fine[:, None], fine[None, :])
    inside = (r <= 1.0) & (r >= obscuration)
    n = len(coords)
    return inside.reshape(n, sub, n, sub).mean(axis=(1, 3))


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
    """Batched PSF evaluation for one lens (pupil grids, bases and DFT matrices computed once).

    Parameters
    ----------
    lens : Lens
    method : {"mft", "fft"}
    fft_backend : str, optional
        Backend for ``method="fft"`` (see :func:`psfsim.fft.get_backend`).
    """

    def __init__(self, lens, method: str = "mft", fft_backend: str | None = None):
        if method not in ("mft", "fft"):
            raise ValueError(f"method = {method!r}: expected 'mft' or 'fft'")
        self.lens = lens
        self.method = method
        self.fft_backend = fft_backend
        o, ps = lens.optics, lens.psf_sampling
        self.k = ps.size_px
        self.s = ps.oversample
        self.ks = self.k * self.s
        self.dx_um = o.pixel_pitch_um / self.s
        # positions of the sub-pixel samples (µm), centred: the central pixel's centre is 0
        self.pos_um = (np.arange(self.ks) - (self.ks - 1) / 2.0) * self.dx_um
        # pupil sampling: enough samples that the DFT's alias period (M lambda / (2 NA)) is >= 2 boxes
        box_um = self.k * o.pixel_pitch_um
        m_alias = int(np.ceil(4.0 * box_um * o.na / (min(o.wavelength_nm) * 1e-3)))
        M = max(ps.pupil_samples, m_alias)
        self.M = M + (M % 2)
        self.coords = (np.arange(self.M) - (self.M - 1) / 2.0) * (2.0 / self.M)
        self.du = 2.0 / self.M
        self.amp = annular_pupil(self.coords, o.obscuration)
        self.mask = self.amp > 0
        uu, vv = np.meshgrid(self.coords, self.coords)  # uu varies along columns (x), vv along rows (y)
        rho = np.hypot(uu, vv)[self.mask]
        theta = np.arctan2(vv, uu)[self.mask]
        self.basis = pupil_basis(lens, rho, theta)  # (nb, P)
        self.amp_p = self.amp[self.mask]
        self.pupil_energy = float(np.sum(self.amp_p**2))
        self.lam_ref = o.reference_wavelength_nm
        # one DFT matrix per wavelength: E[n, m] = exp(-i 2 pi x_n u_m NA / lambda)
        self._dft = []
        for lam in o.wavelength_nm:
            f = self.coords * o.na / (lam * 1e-3)  # cycles per µm
            self._dft.append(np.exp(-2j * np.pi * np.outer(self.pos_um, f)))
        self._fft_cache: dict = {}

    # ---------------------------------------------------------------------------------------------
    def _q2(self, lam_nm: float) -> float:
        """Squared Riemann factor turning |DFT|^2 into the energy fraction per sub-sample."""
        q = self.du * self.lens.optics.na * self.dx_um / (lam_nm * 1e-3)
        return q * q

    def _pupil_fields(self, C: np.ndarray, lam_nm: float) -> np.ndarray:
        """Complex pupil fields ``(B, M, M)`` for coefficient rows ``C (B, nb)`` at one wavelength."""
        W = C @ self.basis  # (B, P) waves at lam_ref
        P = np.zeros((C.shape[0], self.M, self.M), complex)
        P[:, self.mask] = self.amp_p * np.exp(2j * np.pi * (self.lam_ref / lam_nm) * W)
        return P

    def fine_intensity(self, x: np.ndarray, y: np.ndarray, per_wavelength: bool = False):
        """Energy fraction per sub-pixel sample, ``(B, ks, ks)`` (or ``(L, B, ks, ks)`` per wavelength).

        Summed over an infinite plane it would be 1 for each wavelength; the sum over the box is the
        encircled-in-box energy.
        """
        C = field_coefficients(self.lens, x, y)
        out = []
        for li, lam in enumerate(self.lens.optics.wavelength_nm):
            if self.method == "mft":
                E = self._dft[li]
                P = self._pupil_fields(C, lam)
                S = E @ (P @ E.T)  # (B, ks, ks): rows = y, cols = x
                inten = (S.real**2 + S.imag**2) * (self._q2(lam) / self.pupil_energy)
            else:
                inten = self._fft_intensity(C, lam)
            out.append(inten)
        out = np.stack(out)
        if per_wavelength:
            return out
        w = np.asarray(self.lens.optics.weights)
        return np.tensordot(w, out, axes=1)

    def _fft_setup(self, lam_nm: float):
        if lam_nm in self._fft_cache:
            return self._fft_cache[lam_nm]
        from .fft import get_backend

        be = get_backend(self.fft_backend)
        o = self.lens.optics
        # FFT frequency spacing 1/(N dx); pupil radius in samples r = NA N dx / lambda >= M/2
        nmin = max(2 * self.ks, int(np.ceil(self.M * lam_nm * 1e-3 / (2 * o.na * self.dx_um))))
        N = be.next_fast_len(nmin + (nmin % 2))
        while N % 2:
            N = be.next_fast_len(N + 1)
        fr = np.fft.fftfreq(N, d=self.dx_um) * lam_nm * 1e-3 / o.na  # normalised pupil coordinate
        # only the region |u| <= 1 (+1 cell) matters: gather it to a compact square
        sel = np.nonzero(np.abs(fr) <= 1.0 + 2 * abs(fr[1]))[0]
        c = fr[sel]
        amp = annular_pupil(c, o.obscuration)
        mask = amp > 0
        uu, vv = np.meshgrid(c, c)
        basis = pupil_basis(self.lens, np.hypot(uu, vv)[mask], np.arctan2(vv, uu)[mask])
        # half-sample shift so the sub-pixel grid is centred like pos_um: x_n = (n - N/2 + shift) dx
        shift = -(self.ks - 1) / 2.0 + self.ks // 2  # 0 for odd ks, +0.5 for even ks
        ramp = np.exp(-2j * np.pi * c * o.na / (lam_nm * 1e-3) * shift * self.dx_um)
        setup = dict(be=be, N=N, sel=sel, amp=amp, mask=mask, basis=basis, ramp=ramp)
        self._fft_cache[lam_nm] = setup
        return setup

    def _fft_intensity(self, C: np.ndarray, lam_nm: float) -> np.ndarray:
        st = self._fft_setup(lam_nm)
        N, sel, mask = st["N"], st["sel"], st["mask"]
        W = C @ st["basis"]
        compact = np.zeros((C.shape[0], len(sel), len(sel)), complex)
        compact[:, mask] = st["amp"][mask] * np.exp(2j * np.pi * (self.lam_ref / lam_nm) * W)
        compact *= st["ramp"][None, :, None] * st["ramp"][None, None, :]
        full = np.zeros((C.shape[0], N, N), complex)
        full[:, sel[:, None], sel[None, :]] = compact
        S = np.fft.fftshift(st["be"].fft2(full), axes=(-2, -1))
        c0 = N // 2 - self.ks // 2
        S = S[:, c0 : c0 + self.ks, c0 : c0 + self.ks]
        energy = np.sum(np.abs(compact) ** 2, axis=(-2, -1))[:, None, None]
        return (S.real**2 + S.imag**2) / (N * N * energy)

    # ---------------------------------------------------------------------------------------------
    def _bin(self, fine: np.ndarray) -> np.ndarray:
        B = fine.shape[0]
        return fine.reshape(B, self.k, self.s, self.k, self.s).sum(axis=(2, 4))

    def psfs(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """PSFs ``(B, k, k)`` float64, unit sum, at field points ``x, y (B,)``."""
        x = np.asarray(x, float).ravel()
        y = np.asarray(y, float).ravel()
        if x.shape != y.shape:
            raise ValueError(f"x and y must have the same length, got {x.shape} and {y.shape}")
        out = np.empty((len(x), self.k, self.k))
        for i in range(0, len(x), _CHUNK):
            p = self._bin(self.fine_intensity(x[i : i + _CHUNK], y[i : i + _CHUNK]))
            out[i : i + _CHUNK] = p / p.sum(axis=(1, 2), keepdims=True)
        return out

    def energy_outside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Fraction of the energy (weighted over wavelengths) outside the box, ``(B,)``."""
        res = []
        for i in range(0, len(x), _CHUNK):
            res.append(1.0 - self.fine_intensity(x[i : i + _CHUNK], y[i : i + _CHUNK]).sum(axis=(1, 2)))
        return np.clip(np.concatenate(res), 0.0, 1.0)

    def _ideal_peak(self) -> float:
        """Peak of the aberration-free polychromatic energy-fraction intensity (at the origin)."""
        tot = 0.0
        for lam, w in zip(self.lens.optics.wavelength_nm, self.lens.optics.weights):
            tot += w * np.sum(self.amp_p) ** 2 * self._q2(lam) / self.pupil_energy
        return tot

    def strehl(self, x: np.ndarray, y: np.ndarray, refine: int = 9) -> np.ndarray:
        """Strehl ratio ``(B,)``: peak intensity over the aberration-free peak.

        The peak is located on the sub-pixel grid, then refined on a ``refine x refine`` grid of spacing
        ``dx / 8`` around it (an MFT at those positions), so off-grid peaks are not underestimated.
        """
        res = []
        o = self.lens.optics
        for i in range(0, len(x), _CHUNK):
            xs, ys = x[i : i + _CHUNK], y[i : i + _CHUNK]
            fine = self.fine_intensity(xs, ys)
            B = fine.shape[0]
            idx = fine.reshape(B, -1).argmax(axis=1)
            py = self.pos_um[idx // self.ks]
            px = self.pos_um[idx % self.ks]
            off = (np.arange(refine) - (refine - 1) / 2) * self.dx_um / 8
            C = field_coefficients(self.lens, xs, ys)
            tot = np.zeros((B, refine, refine))
            for lam, w in zip(o.wavelength_nm, o.weights):
                f = self.coords * o.na / (lam * 1e-3)
                Ey = np.exp(-2j * np.pi * (py[:, None] + off)[:, :, None] * f[None, None, :])  # (B, r, M)
                Ex = np.exp(-2j * np.pi * (px[:, None] + off)[:, :, None] * f[None, None, :])
                P = self._pupil_fields(C, lam)
                S = Ey @ P @ np.swapaxes(Ex, 1, 2)
                tot += w * (np.abs(S) ** 2) * self._q2(lam) / self.pupil_energy
            peak = np.maximum(tot.reshape(B, -1).max(axis=1), fine.reshape(B, -1).max(axis=1))
            res.append(peak / self._ideal_peak())
        return np.concatenate(res)

    def fwhm_px(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Equivalent-area FWHM ``2 sqrt(A / pi)`` in detector pixels, ``(B,)``.

        ``A`` is the area where the sub-pixel intensity exceeds half its peak, with a linear sub-sample
        estimate of the contour position (so it is not quantised to whole sub-samples).
        """
        res = []
        for i in range(0, len(x), _CHUNK):
            fine = self.fine_intensity(x[i : i + _CHUNK], y[i : i + _CHUNK])
            peak = fine.max(axis=(1, 2), keepdims=True)
            gy, gx = np.gradient(fine, axis=(1, 2))
            g = np.hypot(gx, gy) + 1e-30 * peak
            frac = np.clip(0.5 + (fine - peak / 2) / g, 0.0, 1.0)
            area = frac.sum(axis=(1, 2)) / self.s**2
            res.append(2.0 * np.sqrt(area / np.pi))
        return np.concatenate(res)


def psf_grid(lens, ny: int, nx: int) -> PSFGrid:
    """PSFs on an ``ny x nx`` grid of pixel positions spanning the frame, corners included."""
    from .field import grid_positions

    H, W = lens.field.shape_px
    rows, cols = grid_positions(ny, H), grid_positions(nx, W)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    x, y = lens.field.pixel_to_field(rr, cc)
    psfs = lens.psfs(x.ravel(), y.ravel()).reshape(ny, nx, lens.psf_sampling.size_px, lens.psf_sampling.size_px)
    return PSFGrid(psfs=psfs, x=x, y=y, rows=rows, cols=cols)
