"""Every registered blur operator against one contract (deepinv's pattern: one test, all operators).

``OPERATORS`` maps a name to a factory ``lens -> (forward, adjoint, shape, reference)`` on ``(B, H, W)``
float64 arrays, ``reference`` being an independent operator it must equal within its stated error (the exact,
brute-force operator: every source pixel spread with its own PSF). The pipelines' tiled operators register
here too. Checked: adjointness, linearity, batching, and agreement with the reference (numpy vs torch, fast
vs exact).
"""

import numpy as np
import pytest
import torch

import psfsim
from psfsim.operators import ExactOperator, lowrank_basis, make_operator, to_torch, torch_blur
from psfsim.operators.testing import check_linear_operator

from .conftest import preset_on_field

SHAPE = (24, 20)
ORIGIN = (50, 60)


@pytest.fixture(scope="module")
def lens():
    """The microscope preset's optics on a 96 x 96 field: the blur changes strongly across a small window."""
    return preset_on_field("microscope", 96)


@pytest.fixture(scope="module")
def exact(lens):
    return ExactOperator(lens, shape=SHAPE, origin=ORIGIN)


def _numpy(op):
    return op.forward, op.adjoint


def _torch_window(lens):
    T = to_torch(make_operator(lens, shape=SHAPE, origin=ORIGIN, dtype=np.float64))
    return (lambda x: T(torch.from_numpy(x)).numpy()), (lambda y: T.adjoint(torch.from_numpy(y)).numpy())


def _torch_batch(lens):
    """The batch module, each sample of the batch at ORIGIN (other origins: test_operators.py)."""
    m = torch_blur(lens)

    def o(n):
        return torch.tensor([ORIGIN] * n)

    return (lambda x: m(torch.from_numpy(x)[:, None], o(len(x)))[:, 0].numpy(),
            lambda y: m.adjoint(torch.from_numpy(y)[:, None], o(len(y)))[:, 0].numpy())


#: name -> (factory lens -> (forward, adjoint), tolerance vs the exact operator: the automatic rank's target,
#: 1 % on point sources (measured 0.58 % on this window's random image at the rank that rule picks; adjointness,
#: linearity and batching are checked to rounding by the contract itself).
#: Each operator sees the same window of the same lens, so the exact operator is built once (480 PSFs).
OPERATORS = {
    "exact": (None, 1e-12),  # the reference itself: the contract only
    "fast-numpy": (lambda lens: _numpy(make_operator(lens, shape=SHAPE, origin=ORIGIN, dtype=np.float64)), 1e-2),
    "fast-numpy-1-thread": (lambda lens: _numpy(make_operator(lens, shape=SHAPE, origin=ORIGIN, dtype=np.float64, workers=1)), 1e-2),
    "fast-numpy-local": (lambda lens: _numpy(make_operator(lens, shape=SHAPE, origin=ORIGIN, dtype=np.float64, local=True)), 1e-2),
    "fast-torch-window": (_torch_window, 1e-2),
    "fast-torch-batch": (_torch_batch, 1e-2),
}


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_operator_contract(name, lens, exact):
    make, tol = OPERATORS[name]
    forward, adjoint = _numpy(exact) if make is None else make(lens)
    c = check_linear_operator(forward, adjoint, SHAPE)
    # measured: adjoint gap <= 3e-16, linearity <= 3e-16, batching <= 4e-16 (float64 throughout)
    assert c.adjoint_gap < 1e-13, c
    assert c.linearity_gap < 1e-13, c
    assert c.batch_gap < 1e-13 and c.adjoint_batch_gap < 1e-13, c
    x = np.random.default_rng(1).random((2, *SHAPE))
    ref, got = exact(x), forward(x)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < tol
    ref_t, got_t = exact.adjoint(x), adjoint(x)
    assert np.linalg.norm(got_t - ref_t) / np.linalg.norm(ref_t) < tol


@pytest.mark.parametrize("name", [n for n in sorted(OPERATORS)
                                  if n.startswith("fast-") and n not in ("fast-numpy", "fast-numpy-local")])
def test_fast_variants_equal_the_numpy_fast_operator(name, lens):
    """Same basis, same window: every fast variant (threads, torch) gives the numpy operator's numbers (the local
    one has other eigen-PSFs by design: only the contract and the error target above)."""
    fwd, adj = OPERATORS[name][0](lens)
    ref = make_operator(lens, shape=SHAPE, origin=ORIGIN, dtype=np.float64)
    x = np.random.default_rng(2).random((2, *SHAPE))
    np.testing.assert_allclose(fwd(x), ref(x), rtol=0, atol=1e-13)
    np.testing.assert_allclose(adj(x), ref.adjoint(x), rtol=0, atol=1e-13)
