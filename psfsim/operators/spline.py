"""Separable cubic-spline interpolation weights, as piecewise polynomials evaluable in numpy or torch.

The low-rank operator's coefficient maps are ``w_k(r, c) = sum_ab Wr[r, a] C[a, b, k] Wc[c, b]``: the
eigen-PSF coefficients ``C`` at the grid nodes, interpolated along rows and columns by the cardinal functions
of a not-a-knot cubic spline through the nodes (``Wr``, ``Wc``). Those cardinal functions are stored here as
Taylor coefficients per interval, so the same weights come out of numpy (:meth:`SplineAxis.weights`) and out
of torch on any device (:meth:`SplineAxis.weights_torch`), without a dense ``(K, H, W)`` array anywhere.
Fewer than 4 nodes fall back to the highest order possible (quadratic, linear, constant); positions outside
the nodes are extrapolated with the end pieces (as ``scipy.interpolate.BSpline`` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import factorial

import numpy as np

__all__ = ["SplineAxis", "spline_weights"]


@dataclass(frozen=True, eq=False)
class SplineAxis:
    """Cardinal spline functions of ``n`` nodes along one axis.

    Attributes
    ----------
    nodes : ndarray, (n,) float64
        Node positions (pixels).
    breaks : ndarray, (m + 1,) float64
        Interval boundaries of the piecewise polynomials.
    coefs : ndarray, (4, m, n) float64
        ``coefs[p, i, a]``: coefficient of ``(t - breaks[i])**p`` of node ``a``'s cardinal function on interval ``i``.
    """

    nodes: np.ndarray
    breaks: np.ndarray
    coefs: np.ndarray

    @classmethod
    def build(cls, nodes) -> "SplineAxis":
        from scipy.interpolate import make_interp_spline

        nodes = np.asarray(nodes, np.float64)
        n = len(nodes)
        if n == 1:
            return cls(nodes, np.array([nodes[0], nodes[0] + 1.0]), np.concatenate([np.ones((1, 1, 1)), np.zeros((3, 1, 1))]))
        spl = make_interp_spline(nodes, np.eye(n), k=min(3, n - 1))
        breaks = np.unique(spl.t)
        left = breaks[:-1]
        coefs = np.zeros((4, len(left), n))
        for p in range(spl.k + 1):
            coefs[p] = spl(left, nu=p) / factorial(p)
        return cls(nodes, breaks, coefs)

    def _locate(self, at):
        m = self.coefs.shape[1]
        i = np.clip(np.searchsorted(self.breaks, at, side="right") - 1, 0, m - 1)
        return i, at - self.breaks[i]

    def weights(self, at) -> np.ndarray:
        """Interpolation weights ``(len(at), n)`` float64 at positions ``at``."""
        at = np.asarray(at, np.float64).ravel()
        i, t = self._locate(at)
        c = self.coefs[:, i]  # (4, P, n)
        return ((c[3] * t[:, None] + c[2]) * t[:, None] + c[1]) * t[:, None] + c[0]

    @staticmethod
    def weights_torch(at, coefs, breaks):
        """Torch form of :meth:`weights`: ``at (...,)`` tensor -> ``(..., n)``; ``coefs``/``breaks`` are an axis's
        :attr:`coefs` and :attr:`breaks` as tensors on ``at``'s device (buffers of the module that calls it)."""
        import torch

        m = coefs.shape[1]
        i = (torch.searchsorted(breaks, at.contiguous(), right=True) - 1).clamp(0, m - 1)
        t = (at - breaks[i])[..., None]
        c = coefs[:, i]  # (4, ..., n)
        return ((c[3] * t + c[2]) * t + c[1]) * t + c[0]


def spline_weights(nodes, at) -> np.ndarray:
    """Weights ``(len(at), len(nodes))`` of not-a-knot cubic-spline interpolation from ``nodes`` to ``at``."""
    return SplineAxis.build(nodes).weights(at)
