"""The sampled pupil of a lens: grid, anti-aliased annular amplitude and the wavefront's pupil functions.

The pupil is sampled on an ``M x M`` grid of normalised pupil coordinates ``u, v`` in ``[-1, 1]`` (cell
centres ``(i - (M - 1) / 2) * 2 / M``), ``u`` along the image's x (columns), ``v`` along y (rows). Only the
cells that the annulus ``obscuration <= rho <= 1`` touches are kept (``mask``), as a flat list of ``P``
points, so a batch of wavefronts is one matrix product ``C (B, nb) @ basis (nb, P)``
(:mod:`psfsim.wavefront`).
"""

from __future__ import annotations

import math

import numpy as np

from .wavefront import pupil_basis

__all__ = ["annular_pupil", "pupil_samples", "Pupil"]


def annular_pupil(coords: np.ndarray, obscuration: float, sub: int = 8) -> np.ndarray:
    """Anti-aliased annular pupil amplitude on the grid ``coords x coords``.

    Parameters
    ----------
    coords : ndarray, (n,) float64
        Cell centres in normalised pupil coordinates (the pupil's edge is at 1), evenly spaced.
    obscuration : float
        Central obscuration ratio ``e``, ``0 <= e < 1``.
    sub : int
        Sub-samples per cell side.

    Returns
    -------
    ndarray, (n, n) float64
        Each cell's fraction of area inside ``e <= rho <= 1`` (estimated with ``sub x sub`` sub-samples), so
        the discrete pupil's area and centroid match the continuous one closely.
    """
    d = abs(coords[1] - coords[0])
    off = (np.arange(sub) + 0.5) / sub - 0.5
    fine = (coords[:, None] + off[None, :] * d).ravel()
    r = np.hypot(fine[:, None], fine[None, :])
    inside = (r <= 1.0) & (r >= obscuration)
    n = len(coords)
    return inside.reshape(n, sub, n, sub).mean(axis=(1, 3))


def pupil_samples(lens) -> int:
    """Samples ``M`` (even) across the pupil diameter for a lens's PSF box.

    ``[psf] pupil_samples``, raised if needed so that the DFT's alias period ``M lambda_min / (2 NA)`` spans
    at least two boxes (then the box never sees its own wrapped-around copy).
    """
    o, ps = lens.optics, lens.psf_sampling
    box_um = ps.size_px * o.pixel_pitch_um
    m_alias = int(math.ceil(4.0 * box_um * o.na / (min(o.wavelength_nm) * 1e-3)))
    m = max(ps.pupil_samples, m_alias)
    return m + (m % 2)


class Pupil:
    """A lens's pupil sampled on an ``M x M`` grid.

    Parameters
    ----------
    lens : Lens
    M : int
        Samples across the pupil diameter (see :func:`pupil_samples`).

    Attributes
    ----------
    M : int
    coords : ndarray, (M,) float64
        Cell centres in normalised pupil coordinates.
    du : float
        Cell side in normalised pupil coordinates, ``2 / M``.
    mask : ndarray, (M, M) bool
        Cells inside the (anti-aliased) annulus.
    amp : ndarray, (P,) float64
        Amplitude of the ``P`` cells in ``mask`` (area fraction, 0..1).
    basis : ndarray, (nb, P) float64
        The lens's pupil functions at those cells (:func:`psfsim.wavefront.pupil_basis`).
    energy : float
        ``sum(amp ** 2)``, the discrete pupil's energy (Parseval normalisation of the PSF).
    """

    def __init__(self, lens, M: int):
        self.M = int(M)
        self.coords = (np.arange(self.M) - (self.M - 1) / 2.0) * (2.0 / self.M)
        self.du = 2.0 / self.M
        amp = annular_pupil(self.coords, lens.optics.obscuration)
        self.mask = amp > 0
        uu, vv = np.meshgrid(self.coords, self.coords)  # uu varies along columns (x), vv along rows (y)
        self.basis = pupil_basis(lens, np.hypot(uu, vv)[self.mask], np.arctan2(vv, uu)[self.mask])
        self.amp = amp[self.mask]
        self.energy = float(np.sum(self.amp**2))

    def fields(self, C: np.ndarray, phase_scale: float) -> np.ndarray:
        """Complex pupil fields ``A exp(i 2 pi s W)``, ``(B, M, M)`` complex128.

        Parameters
        ----------
        C : ndarray, (B, nb) float64
            Wavefront coefficients in waves at the reference wavelength (:func:`~psfsim.wavefront.field_coefficients`).
        phase_scale : float
            ``s = lambda_ref / lambda``: a fixed optical path difference in waves at another wavelength.
        """
        W = C @ self.basis  # (B, P) waves at lambda_ref
        P = np.zeros((C.shape[0], self.M, self.M), complex)
        P[:, self.mask] = self.amp * np.exp(2j * np.pi * phase_scale * W)
        return P
