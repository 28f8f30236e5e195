"""Zernike polynomials on the unit disk: Noll and ANSI/OSA indexing, RMS normalisation.

Conventions
-----------
* Noll (1976), J. Opt. Soc. Am. 66, 207, Table 1: ``j = 1, 2, ...``; even ``j`` carries ``cos(m theta)``
  and odd ``j`` carries ``sin(m theta)`` for ``m != 0``.
* ANSI Z80.28 / OSA: ``j = (n (n + 2) + m) / 2`` starting at 0, with signed ``m`` (``m < 0`` is ``sin``).
* Normalisation: RMS over the unit disk is 1 for every polynomial (except the piston's mean of 1), i.e.
  ``Z_j = sqrt(n + 1) R_n^m(rho)`` for ``m = 0`` and ``sqrt(2 (n + 1)) R_n^|m|(rho) cos/sin(|m| theta)``.
  For an annular (obscured) pupil the polynomials stay the circular ones: they are then no longer orthogonal
  over the pupil, which is the common convention for telescope specifications (and poppy's default).

Signed ``m`` is used throughout: ``m > 0`` means ``cos(m theta)``, ``m < 0`` means ``sin(|m| theta)``.
"""

from __future__ import annotations

from math import factorial

import numpy as np

__all__ = [
    "MAX_NOLL",
    "noll_to_nm",
    "nm_to_noll",
    "ansi_to_nm",
    "nm_to_ansi",
    "radial",
    "zernike",
    "zernike_noll",
]

#: Largest Noll index accepted in lens files (radial order n <= 20).
MAX_NOLL = 231


def _check_nm(n: int, m: int) -> None:
    if n < 0 or abs(m) > n or (n - abs(m)) % 2:
        raise ValueError(f"invalid Zernike order (n={n}, m={m}): need n >= |m| >= 0 and n - |m| even")


def noll_to_nm(j: int) -> tuple[int, int]:
    """Noll index ``j >= 1`` -> ``(n, m)`` with signed ``m`` (Noll 1976, Table 1)."""
    if int(j) != j or j < 1:
        raise ValueError(f"Noll index must be an integer >= 1, got {j!r}")
    j = int(j)
    n = 0
    while (n + 1) * (n + 2) // 2 < j:
        n += 1
    # position of j inside row n (0-based); row n holds n + 1 polynomials
    k = j - n * (n + 1) // 2 - 1
    # |m| in row n runs over n%2, n%2, n%2+2, n%2+2, ... (m=0 appears once)
    if n % 2 == 0:
        mabs = 2 * ((k + 1) // 2)
    else:
        mabs = 2 * (k // 2) + 1
    if mabs == 0:
        return n, 0
    return n, (mabs if j % 2 == 0 else -mabs)


def nm_to_noll(n: int, m: int) -> int:
    """``(n, m)`` -> Noll index (inverse of :func:`noll_to_nm`)."""
    _check_nm(n, m)
    base = n * (n + 1) // 2  # number of polynomials with order < n
    for j in range(base + 1, base + n + 2):
        if noll_to_nm(j) == (n, m):
            return j
    raise AssertionError("unreachable")  # pragma: no cover


def ansi_to_nm(j: int) -> tuple[int, int]:
    """ANSI/OSA index ``j >= 0`` -> ``(n, m)``."""
    if int(j) != j or j < 0:
        raise ValueError(f"ANSI index must be an integer >= 0, got {j!r}")
    j = int(j)
    n = int((np.sqrt(8 * j + 1) - 1) // 2)
    while (n + 1) * (n + 2) // 2 <= j:
        n += 1
    while n * (n + 1) // 2 > j:
        n -= 1
    m = 2 * j - n * (n + 2)
    return n, m


def nm_to_ansi(n: int, m: int) -> int:
    """``(n, m)`` -> ANSI/OSA index ``(n (n + 2) + m) / 2``."""
    _check_nm(n, m)
    return (n * (n + 2) + m) // 2


def radial(n: int, m: int, rho: np.ndarray) -> np.ndarray:
    """Radial polynomial ``R_n^|m|(rho)`` (unnormalised, ``R(1) = 1``)."""
    _check_nm(n, m)
    m = abs(m)
    rho = np.asarray(rho, dtype=float)
    out = np.zeros_like(rho)
    for s in range((n - m) // 2 + 1):
        c = (-1) ** s * factorial(n - s) / (
            factorial(s) * factorial((n + m) // 2 - s) * factorial((n - m) // 2 - s)
        )
        out += c * rho ** (n - 2 * s)
    return out


def zernike(n: int, m: int, rho: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """RMS-normalised Zernike polynomial ``Z_n^m(rho, theta)``; zero is *not* imposed outside the disk.

    Parameters
    ----------
    n, m : int
        Radial order and signed azimuthal frequency (``m < 0``: ``sin``).
    rho, theta : ndarray
        Normalised pupil radius (1 at the pupil edge) and azimuth in radians, broadcastable.
    """
    r = radial(n, m, rho)
    if m == 0:
        return np.sqrt(n + 1.0) * r * np.ones_like(np.asarray(theta, float))
    ang = np.cos(m * theta) if m > 0 else np.sin(-m * theta)
    return np.sqrt(2.0 * (n + 1)) * r * ang


def zernike_noll(j: int, rho: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """RMS-normalised Zernike polynomial by Noll index ``j`` (e.g. ``j=4`` defocus)."""
    n, m = noll_to_nm(j)
    return zernike(n, m, rho, theta)
