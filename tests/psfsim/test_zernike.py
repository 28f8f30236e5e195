"""Zernike polynomials against closed forms (Noll 1976, Table 1) and orthonormality on the unit disk."""

import numpy as np
import pytest

from psfsim.zernike import ansi_to_nm, nm_to_ansi, nm_to_noll, noll_to_nm, zernike, zernike_noll

RHO = np.linspace(0, 1, 17)[:, None]
THETA = np.linspace(0, 2 * np.pi, 23)[None, :]


@pytest.mark.parametrize(
    "j, closed_form",
    [
        (1, lambda r, t: np.ones(np.broadcast_shapes(r.shape, t.shape))),
        (2, lambda r, t: 2 * r * np.cos(t)),
        (3, lambda r, t: 2 * r * np.sin(t)),
        (4, lambda r, t: np.sqrt(3) * (2 * r**2 - 1)),
        (5, lambda r, t: np.sqrt(6) * r**2 * np.sin(2 * t)),
        (6, lambda r, t: np.sqrt(6) * r**2 * np.cos(2 * t)),
        (7, lambda r, t: np.sqrt(8) * (3 * r**3 - 2 * r) * np.sin(t)),
        (8, lambda r, t: np.sqrt(8) * (3 * r**3 - 2 * r) * np.cos(t)),
        (11, lambda r, t: np.sqrt(5) * (6 * r**4 - 6 * r**2 + 1)),
        (22, lambda r, t: np.sqrt(7) * (20 * r**6 - 30 * r**4 + 12 * r**2 - 1)),
    ],
)
def test_closed_forms_noll_table(j, closed_form):
    """Reference: Noll (1976) Table 1 closed forms."""
    np.testing.assert_allclose(zernike_noll(j, RHO, THETA), closed_form(RHO, THETA) + 0 * THETA, atol=1e-12)


def test_index_conversions_known_values_and_round_trips():
    # Noll (1976) Table 1 and ANSI Z80.28 ordering
    assert [noll_to_nm(j) for j in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)] == [
        (0, 0), (1, 1), (1, -1), (2, 0), (2, -2), (2, 2), (3, -1), (3, 1), (3, -3), (3, 3), (4, 0)]
    assert [ansi_to_nm(j) for j in range(6)] == [(0, 0), (1, -1), (1, 1), (2, -2), (2, 0), (2, 2)]
    for j in range(1, 232):
        assert nm_to_noll(*noll_to_nm(j)) == j
    for j in range(0, 231):
        assert nm_to_ansi(*ansi_to_nm(j)) == j
    with pytest.raises(ValueError):
        noll_to_nm(0)
    with pytest.raises(ValueError):
        nm_to_noll(3, 2)


def test_orthonormal_up_to_j36():
    """<Z_i Z_j> over the unit disk = delta_ij (RMS normalisation), by exact polar quadrature.

    Gauss-Legendre in rho (weight rho) and a uniform grid in theta integrate these polynomials exactly.
    """
    xg, wg = np.polynomial.legendre.leggauss(40)
    rho = (xg + 1) / 2
    wr = wg / 2 * rho
    theta = np.arange(64) * 2 * np.pi / 64
    wt = np.full(64, 2 * np.pi / 64)
    R, T = np.meshgrid(rho, theta, indexing="ij")
    w = (wr[:, None] * wt[None, :]) / np.pi  # mean over the disk
    Z = np.stack([zernike_noll(j, R, T) for j in range(1, 37)])
    G = np.einsum("iab,jab,ab->ij", Z, Z, w)
    np.testing.assert_allclose(G, np.eye(36), atol=1e-10)


def test_signed_m_convention():
    r, t = 0.7, 0.3
    assert zernike(2, 2, r, t) == pytest.approx(np.sqrt(6) * r**2 * np.cos(2 * t))
    assert zernike(2, -2, r, t) == pytest.approx(np.sqrt(6) * r**2 * np.sin(2 * t))
