"""Blur operators against references: the lens PSF, scipy.signal.convolve, adjointness, finite differences."""

import numpy as np
import pytest
import torch
from scipy.signal import convolve

import psfsim
from psfsim.operators import ExactOperator, LowRankBasis, blur, lowrank_basis, make_operator, to_torch

from .conftest import make_lens


@pytest.fixture(scope="module")
def microscope_small():
    """The microscope preset's optics on a 96 x 96 field: the blur changes strongly across a small image."""
    d = psfsim.load_lens("microscope").to_dict()
    d["field"]["shape_px"] = [96, 96]
    return psfsim.lens_from_dict(d)


@pytest.fixture(scope="module")
def exact_small(microscope_small):
    return ExactOperator(microscope_small, (48, 48), (0, 0))


def test_impulse_response_is_the_psf_of_the_source_pixel(microscope_small, exact_small):
    lens = microscope_small
    k = lens.psf_sampling.size_px
    src = (20, 17)
    img = np.zeros((48, 48))
    img[src] = 1.0
    x, y = lens.field.pixel_to_field(*src)
    psf = lens.psf(float(x), float(y))
    c = k // 2
    # the response is cropped by the window's edge where the box reaches past it
    r0, c0 = max(0, src[0] - c), max(0, src[1] - c)
    out = exact_small(img)
    ref = psf[r0 - (src[0] - c):, c0 - (src[1] - c):][: 48 - r0, : 48 - c0]
    np.testing.assert_allclose(out[r0 : r0 + ref.shape[0], c0 : c0 + ref.shape[1]], ref, atol=1e-14)
    fast = make_operator(lens, (48, 48), (0, 0), dtype=np.float64)(img)
    got = fast[r0 : r0 + ref.shape[0], c0 : c0 + ref.shape[1]]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.01


@pytest.mark.parametrize("method", ["fast", "exact"])
def test_field_constant_lens_is_a_plain_convolution(method):
    """Only constant Zernike terms: both operators equal scipy.signal.convolve(image, psf, mode='same')."""
    lens = make_lens(zernike=[{"noll": 7, "rms_waves": 0.1}, {"noll": 5, "rms_waves": 0.05}])
    assert lens.field_constant
    img = np.random.default_rng(1).random((40, 52))
    ref = convolve(img, lens.psf(0.0, 0.0), mode="same")
    op = make_operator(lens, img.shape, (3, 5), method=method, dtype=np.float64)
    if method == "fast":
        assert op.rank == 1
    np.testing.assert_allclose(op(img), ref, atol=1e-12 if method == "exact" else 1e-10)


def _adjoint_gap(A, At, shape, rng):
    x = rng.standard_normal(shape)
    y = rng.standard_normal(shape)
    lhs = float(np.sum(A(x) * y))
    rhs = float(np.sum(x * At(y)))
    return abs(lhs - rhs) / max(abs(lhs), abs(rhs))


def test_adjointness_numpy(microscope_small, exact_small):
    """<A x, y> = <x, A^T y> to 1e-5 relative in float64 (deepinv's adjointness check, for every operator)."""
    rng = np.random.default_rng(2)
    fast = make_operator(microscope_small, (48, 48), (0, 0), dtype=np.float64)
    relay = make_operator(psfsim.load_lens("relay"), (40, 56), (100, 900), dtype=np.float64)
    for op in (exact_small, fast, relay):
        assert _adjoint_gap(op.forward, op.adjoint, op.shape, rng) < 1e-5
    # batched (B, H, W) too
    x = rng.standard_normal((3, 48, 48))
    np.testing.assert_allclose(fast(x)[1], fast(x[1]), atol=1e-12)


def test_adjointness_and_gradients_torch(microscope_small):
    op = make_operator(microscope_small, (24, 20), (30, 40), dtype=np.float64)
    T = to_torch(op)
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.standard_normal((2, 1, 24, 20)))
    y = torch.from_numpy(rng.standard_normal((2, 1, 24, 20)))
    lhs = float((T(x) * y).sum())
    rhs = float((x * T.adjoint(y)).sum())
    assert abs(lhs - rhs) / abs(lhs) < 1e-5
    # autograd's gradient equals finite differences (torch.autograd.gradcheck, float64)
    xs = torch.from_numpy(rng.standard_normal((1, 1, 24, 20))).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: T(t).square().sum(), (xs,), eps=1e-6, atol=1e-6)
    # and the gradient of <A x, y> is A^T y
    xg = x.clone().requires_grad_(True)
    (T(xg) * y).sum().backward()
    torch.testing.assert_close(xg.grad, T.adjoint(y))


def test_numpy_and_torch_fast_operators_agree_float32(microscope_small):
    op = make_operator(microscope_small, (48, 48), (10, 20))
    T = to_torch(op)
    x = np.random.default_rng(4).random((2, 48, 48)).astype(np.float32)
    out_t = T(torch.from_numpy(x)[:, None])
    assert out_t.dtype == torch.float32 and out_t.shape == (2, 1, 48, 48)
    np.testing.assert_allclose(out_t[:, 0].numpy(), op(x), atol=2e-6 * float(x.max()))
    np.testing.assert_allclose(T.adjoint(torch.from_numpy(x)).numpy(), op.adjoint(x), atol=2e-6 * float(x.max()))


def test_error_falls_with_rank_and_auto_rank_is_below_one_percent(microscope_small, exact_small):
    img = np.random.default_rng(5).random((48, 48))
    ref = exact_small(img)
    basis = lowrank_basis(microscope_small)
    errs = []
    for K in (1, 2, 3, 5):
        op = basis.with_rank(K).operator((48, 48), (0, 0), dtype=np.float64)
        errs.append(np.linalg.norm(op(img) - ref) / np.linalg.norm(ref))
    assert all(a > b for a, b in zip(errs[:2], errs[1:3]))
    auto = basis.operator((48, 48), (0, 0), dtype=np.float64)
    assert np.linalg.norm(auto(img) - ref) / np.linalg.norm(ref) < 0.01


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["microscope", "relay", "telescope"])
def test_auto_rank_below_one_percent_for_every_preset(preset):
    """Fast vs exact on a window at the field's corner (strongest aberrations) for each preset."""
    lens = psfsim.load_lens(preset)
    shape = (40, 40)
    exact = ExactOperator(lens, shape, (0, 0))
    img = np.random.default_rng(6).random(shape)
    ref = exact(img)
    basis = lowrank_basis(lens)
    fast = basis.operator(shape, (0, 0), dtype=np.float64)
    err = np.linalg.norm(fast(img) - ref) / np.linalg.norm(ref)
    assert err < 0.01, (preset, basis.rank, err)
    lower = basis.with_rank(max(1, basis.rank // 3)).operator(shape, (0, 0), dtype=np.float64)
    assert np.linalg.norm(lower(img) - ref) / np.linalg.norm(ref) > err


def test_window_of_the_fast_operator_is_consistent():
    """Coefficient maps of a window are the crop of the full frame's (one field convention)."""
    lens = psfsim.load_lens("relay")
    b = lowrank_basis(lens)
    full = b.coefficient_maps((0, 0), (200, 300))
    win = b.coefficient_maps((50, 70), (64, 80))
    np.testing.assert_allclose(win, full[:, 50:114, 70:150], rtol=1e-5, atol=1e-7)


def test_blur_api_and_errors(microscope_small):
    img = np.random.default_rng(7).random((32, 32))
    out = blur(img, microscope_small, origin=(8, 8))
    assert out.shape == (32, 32) and out.dtype == np.float32
    with pytest.raises(psfsim.PsfsimError, match="does not fit"):
        blur(img, microscope_small, origin=(80, 0))
    with pytest.raises(psfsim.PsfsimError, match="method"):
        make_operator(microscope_small, (8, 8), method="magic")
    with pytest.raises(psfsim.PsfsimError, match="rank"):
        LowRankBasis.build(microscope_small, rank=0)
