"""Zero-padded FFT evaluation of the Fraunhofer integral: the independent cross-check of the MFT.

The pupil is resampled on the FFT's own frequency grid, chosen so that one FFT sample in the image plane is
one PSF sub-pixel (spacing ``dx``): with ``N`` samples the pupil-plane spacing is ``lambda / (N dx NA)`` in
normalised pupil coordinates, and ``N`` is taken large enough that the pupil has at least ``M`` samples across
and the image plane spans two boxes (no wrap-around into the box). Goodman, *Introduction to Fourier Optics*,
3rd ed., sec. 4.2 and 5.3 (the discrete Fraunhofer transform); the FFT backend is :mod:`psfsim.fft`.

Slower than the MFT at the sizes lenses use (``benchmarks/bench_psf.py``) and kept as a check:
:class:`psfsim.psf.PSFEngine` with ``method="fft"`` uses it.
"""

from __future__ import annotations

import numpy as np

from .pupil import annular_pupil
from .wavefront import pupil_basis

__all__ = ["FFTPropagator"]


class FFTPropagator:
    """Sub-pixel intensities of one lens by zero-padded FFT, one cached setup per wavelength.

    Parameters
    ----------
    lens : Lens
    ks : int
        Sub-samples across the PSF box (``size_px * oversample``).
    dx_um : float
        Sub-sample spacing in µm.
    M : int
        Smallest number of pupil samples across the diameter.
    fft_backend : str, optional
        See :func:`psfsim.fft.get_backend`.
    """

    def __init__(self, lens, ks: int, dx_um: float, M: int, fft_backend: str | None = None):
        self.lens = lens
        self.ks = ks
        self.dx_um = dx_um
        self.M = M
        self.fft_backend = fft_backend
        self._cache: dict = {}

    def _setup(self, lam_nm: float) -> dict:
        if lam_nm in self._cache:
            return self._cache[lam_nm]
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
        # half-sample shift so the sub-pixel grid is centred: x_n = (n - N/2 + shift) dx
        shift = -(self.ks - 1) / 2.0 + self.ks // 2  # 0 for odd ks, +0.5 for even ks
        ramp = np.exp(-2j * np.pi * c * o.na / (lam_nm * 1e-3) * shift * self.dx_um)
        setup = dict(be=be, N=N, sel=sel, amp=amp, mask=mask, basis=basis, ramp=ramp)
        self._cache[lam_nm] = setup
        return setup

    def intensity(self, C: np.ndarray, lam_nm: float, lam_ref_nm: float) -> np.ndarray:
        """Energy fraction per sub-pixel sample, ``(B, ks, ks)`` float64, for coefficient rows ``C (B, nb)``."""
        st = self._setup(lam_nm)
        N, sel, mask = st["N"], st["sel"], st["mask"]
        W = C @ st["basis"]
        compact = np.zeros((C.shape[0], len(sel), len(sel)), complex)
        compact[:, mask] = st["amp"][mask] * np.exp(2j * np.pi * (lam_ref_nm / lam_nm) * W)
        compact *= st["ramp"][None, :, None] * st["ramp"][None, None, :]
        full = np.zeros((C.shape[0], N, N), complex)
        full[:, sel[:, None], sel[None, :]] = compact
        S = np.fft.fftshift(st["be"].fft2(full), axes=(-2, -1))
        c0 = N // 2 - self.ks // 2
        S = S[:, c0 : c0 + self.ks, c0 : c0 + self.ks]
        energy = np.sum(np.abs(compact) ** 2, axis=(-2, -1))[:, None, None]
        return (S.real**2 + S.imag**2) / (N * N * energy)
