"""The contract every linear blur operator of the project satisfies, as one reusable check.

deepinv's pattern: one test loops over every registered operator. psfsim's numpy operators, the torch batch
module and the pipelines' tiled operators all present themselves as a pair of functions on ``(B, H, W)``
float64 arrays, ``forward`` and ``adjoint``, and :func:`check_linear_operator` measures:

- adjointness ``|<A x, y> - <x, A^T y>| / max(|<A x, y>|, |<x, A^T y>|)`` for random ``x, y``;
- linearity ``||A(a x + b z) - a A x - b A z|| / ||a A x + b A z||``;
- batching: ``A`` of a batch equals ``A`` of each image stacked (max abs difference over max abs value).

It returns the measured figures, so a test asserts them against tolerances and a benchmark prints them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["OperatorCheck", "check_linear_operator"]


@dataclass(frozen=True)
class OperatorCheck:
    """Measured figures of :func:`check_linear_operator` (all relative, dimensionless)."""

    adjoint_gap: float
    linearity_gap: float
    batch_gap: float
    adjoint_batch_gap: float


def check_linear_operator(forward: Callable, adjoint: Callable, shape, *, batch: int = 3, seed: int = 0) -> OperatorCheck:
    """Measure adjointness, linearity and batch consistency of ``forward``/``adjoint`` on ``(B, *shape)`` float64."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *shape))
    y = rng.standard_normal((batch, *shape))
    z = rng.standard_normal((batch, *shape))
    Ax = np.asarray(forward(x), np.float64)
    Aty = np.asarray(adjoint(y), np.float64)
    lhs, rhs = float(np.sum(Ax * y)), float(np.sum(x * Aty))
    adj = abs(lhs - rhs) / max(abs(lhs), abs(rhs))
    a, b = 0.7, -1.3
    Az = np.asarray(forward(z), np.float64)
    comb = a * Ax + b * Az
    lin = float(np.linalg.norm(np.asarray(forward(a * x + b * z), np.float64) - comb) / np.linalg.norm(comb))
    one = np.stack([np.asarray(forward(x[i : i + 1]), np.float64)[0] for i in range(batch)])
    bat = float(np.max(np.abs(one - Ax)) / np.max(np.abs(Ax)))
    one_t = np.stack([np.asarray(adjoint(y[i : i + 1]), np.float64)[0] for i in range(batch)])
    bat_t = float(np.max(np.abs(one_t - Aty)) / np.max(np.abs(Aty)))
    return OperatorCheck(adjoint_gap=adj, linearity_gap=lin, batch_gap=bat, adjoint_batch_gap=bat_t)
