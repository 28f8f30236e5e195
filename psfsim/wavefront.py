"""Wavefront aberration over the pupil at field points: Seidel ``W_klm`` plus field-polynomial Zernikes.

The wavefront at field point ``(x, y)`` (field height ``h = hypot(x, y)``, azimuth ``phi = atan2(y, x)``) is
linear in a small set of pupil functions, with coefficients that are polynomials in ``(x, y)``. Writing
``u = rho cos(theta)``, ``v = rho sin(theta)`` (``u`` along the image's x, i.e. columns):

=========================  ===============================================  ===========================
Hopkins term               pupil function(s)                                field coefficient
=========================  ===============================================  ===========================
W040 rho^4                 rho^4                                            W040
W131 h rho^3 cos(t - phi)  rho^2 u, rho^2 v                                 W131 x, W131 y
W222 h^2 rho^2 cos^2(...)  u^2, v^2, u v                                    W222 x^2, W222 y^2, 2 W222 x y
W220 h^2 rho^2             u^2, v^2                                         W220 h^2 (each)
W311 h^3 rho cos(t - phi)  u, v                                             W311 h^2 x, W311 h^2 y
Zernike j (RMS waves)      Z_j(rho, theta)                                  polynomial in (x, y)
tabulated Zernike j        Z_j(rho, theta)                                  interpolated table values
                                                                            x lambda_table / lambda_ref
=========================  ===============================================  ===========================

so a batch of field points is one matrix product: ``W (B, P) = C (B, nb) @ basis (nb, P)``. Tabulated terms
(``[field_table]``, :mod:`psfsim.field_table`) are RMS waves at the table's wavelength: a fixed optical path
difference, so ``lambda_table / lambda_ref`` waves at the reference wavelength (and, as for every term,
``lambda_ref / lambda`` more at another wavelength: ``lambda_table / lambda`` in all). A Noll index in both
the polynomial terms and the table is one pupil function, the coefficients summed.
Reference: H. H. Hopkins, *Wave Theory of Aberrations* (1950); J. Sasian, *Introduction to Aberrations in
Optical Imaging Systems* (2013), eq. 1.5.

Sign conventions (Born & Wolf's): a positive ``x``-tilt (``u`` term, e.g. Noll Z2 > 0) moves the PSF toward
+x (increasing column); positive W311 moves it away from the axis; positive W131 makes coma's tail point away
from the axis (along the field azimuth). Lens files written in poppy's sign (``convention = "poppy"``) are
converted to this one when they are parsed (:mod:`psfsim.lens`), so everything here sees one convention.
"""

from __future__ import annotations

import numpy as np

from .zernike import zernike_noll

__all__ = ["SEIDEL_BASIS", "zernike_nolls", "pupil_basis_names", "pupil_basis", "pupil_gradient_basis", "field_coefficients", "wavefront"]

#: Step (normalised pupil units) of the central differences in :func:`pupil_gradient_basis`.
_GRAD_STEP = 1e-4

#: Names of the Seidel pupil functions, in the order of :func:`pupil_basis`.
SEIDEL_BASIS = ("rho4", "rho2u", "rho2v", "u2", "v2", "uv", "u", "v")


def zernike_nolls(lens) -> list[int]:
    """Noll indices of the lens's Zernike pupil functions, increasing: polynomial terms and tabulated ones."""
    table = getattr(lens, "field_table", None)
    return sorted({z.noll for z in lens.zernike} | set(table.nolls if table is not None else ()))


def pupil_basis_names(lens) -> tuple[str, ...]:
    """Names of the pupil functions the lens's wavefront is built from (Seidel ones, then ``Z<j>``)."""
    return SEIDEL_BASIS + tuple(f"Z{j}" for j in zernike_nolls(lens))


def pupil_basis(lens, rho: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Pupil functions ``(nb, *rho.shape)`` evaluated at pupil points ``(rho, theta)``."""
    rho = np.asarray(rho, float)
    theta = np.asarray(theta, float)
    u = rho * np.cos(theta)
    v = rho * np.sin(theta)
    r2 = rho**2
    funcs = [r2 * r2, r2 * u, r2 * v, u * u, v * v, u * v, u, v]
    funcs += [zernike_noll(j, rho, theta) for j in zernike_nolls(lens)]
    return np.stack(funcs)


def pupil_gradient_basis(lens, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slopes ``d/du`` and ``d/dv`` of the pupil functions, each ``(nb, *u.shape)``, at pupil points ``(u, v)``.

    ``u, v`` are Cartesian normalised pupil coordinates (the edge at ``hypot(u, v) = 1``). Central differences
    of step 1e-4: the pupil functions are polynomials of degree <= 20 or so, so the error is ~1e-7 relative.
    A wavefront ``W = c @ basis`` (waves) has the slope ``c @ gu`` (waves per unit of ``u``); a ray through that
    pupil point lands ``lambda / NA * slope`` (µm) from the geometric image point (the transverse ray
    aberration; Z2 = 2u of ``a`` RMS waves moves the PSF by ``2 a lambda / NA``).
    """
    u = np.asarray(u, float)
    v = np.asarray(v, float)
    h = _GRAD_STEP

    def at(uu, vv):
        return pupil_basis(lens, np.hypot(uu, vv), np.arctan2(vv, uu))

    gu = (at(u + h, v) - at(u - h, v)) / (2 * h)
    gv = (at(u, v + h) - at(u, v - h)) / (2 * h)
    return gu, gv


def field_coefficients(lens, x, y) -> np.ndarray:
    """Coefficients ``(B, nb)`` (waves at the reference wavelength) of the pupil functions at field points.

    Parameters
    ----------
    lens : Lens
    x, y : array_like, shape ``(B,)``
        Field coordinates (see :mod:`psfsim.field`).

    Raises
    ------
    PsfsimError
        A point outside the lens's field table (:meth:`psfsim.field_table.FieldTable.coefficients`).
    """
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    s = lens.seidel
    h2 = x * x + y * y
    cols = [
        np.full_like(x, s.W040),
        s.W131 * x,
        s.W131 * y,
        s.W222 * x * x + s.W220 * h2,
        s.W222 * y * y + s.W220 * h2,
        2.0 * s.W222 * x * y,
        s.W311 * h2 * x,
        s.W311 * h2 * y,
    ]
    table = getattr(lens, "field_table", None)
    tab = {}
    if table is not None and table.nolls:
        rows, cc = lens.field.field_to_pixel(x, y)
        t = table.coefficients(rows, cc, field_xy=(x, y)) * (table.wavelength_nm / lens.optics.reference_wavelength_nm)
        tab = {j: t[:, i] for i, j in enumerate(table.nolls)}
    for j in zernike_nolls(lens):
        acc = tab.get(j, np.zeros_like(x))
        for z in lens.zernike:
            if z.noll == j:
                acc = acc + z.rms_waves(x, y)
        cols.append(acc)
    return np.stack(cols, axis=1)


def wavefront(lens, x: float, y: float, rho, theta) -> np.ndarray:
    """Wavefront ``W(rho, theta)`` in waves at the reference wavelength, at one field point ``(x, y)``."""
    c = field_coefficients(lens, [x], [y])[0]
    b = pupil_basis(lens, rho, theta)
    return np.tensordot(c, b, axes=1)
