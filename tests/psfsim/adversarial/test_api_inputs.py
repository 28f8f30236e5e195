"""The Python API under careless or hostile input: every misuse is a PsfsimError naming the argument (never a
raw numpy IndexError/TypeError/AttributeError, a silent truncation or a NaN result), and the NaN policy holds:
non-finite pixels are refused by default, and with nan_policy="fill" they stay exactly where they were.

The fuzz (hypothesis) throws arrays of any dtype, shape and content at the public functions: each call either
raises PsfsimError or returns a finite array of the input's shape and the documented dtype."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import psfsim
from psfsim import PsfsimError
from psfsim.operators import ExactOperator, blur, lowrank_basis, make_operator, result_dtype, torch_blur
from psfsim.restore import reference_psf, richardson_lucy, sv_wiener, wiener

from ..conftest import preset_on_field


@pytest.fixture(scope="module")
def lens():
    return preset_on_field("microscope", 64)


@pytest.fixture(scope="module")
def op(lens):
    return make_operator(lens, shape=(32, 32))


IMG = np.random.default_rng(0).random((32, 32))
PSF = np.ones((5, 5)) / 25

# (name, call(lens, op), text the message must contain: the argument and what was expected)
MISUSES = [
    ("lens None", lambda L, o: make_operator(None, shape=(8, 8)), "lens = None: expected a Lens"),
    ("shape int", lambda L, o: make_operator(L, shape=8), "shape=8: expected two integers"),
    ("shape float", lambda L, o: make_operator(L, shape=(8.5, 8)), "shape=(8.5, 8): expected two integers"),
    ("shape empty", lambda L, o: make_operator(L, shape=(0, 8)), "at least 1 x 1"),
    ("rank float", lambda L, o: make_operator(L, shape=(8, 8), rank=2.5), "rank = 2.5: expected a whole number"),
    ("rank str", lambda L, o: make_operator(L, shape=(8, 8), rank="3"), "rank = '3'"),
    ("rank bool", lambda L, o: make_operator(L, shape=(8, 8), rank=True), "rank = True"),
    ("tol nan", lambda L, o: make_operator(L, shape=(8, 8), tol=float("nan")), "tol = nan"),
    ("tol str", lambda L, o: make_operator(L, shape=(8, 8), tol="a"), "tol = 'a'"),
    ("dtype int", lambda L, o: make_operator(L, shape=(8, 8), dtype=np.int32), "dtype = int32: expected float32 or float64"),
    ("workers 0", lambda L, o: make_operator(L, shape=(8, 8), workers=0), "workers = 0"),
    ("origin short", lambda L, o: make_operator(L, shape=(8, 8), origin=(1,)), "origin=(1,)"),
    ("origin outside", lambda L, o: make_operator(L, shape=(8, 8), origin=(60, 0)), "does not fit in the lens field"),
    ("method", lambda L, o: make_operator(L, shape=(8, 8), method="magic"), "method = 'magic'"),
    ("grid", lambda L, o: lowrank_basis(L, grid=(0, 3)), "grid = (0, 3)"),
    ("image shape", lambda L, o: o(np.zeros((31, 32))), "image of shape (31, 32)"),
    ("image 4-D", lambda L, o: o(np.zeros((1, 1, 32, 32))), "expected (H, W) or (B, H, W)"),
    ("image str", lambda L, o: o("abc"), "not a real numeric type"),
    ("image None", lambda L, o: o(None), "not a real numeric type"),
    ("image complex", lambda L, o: o(IMG.astype(complex)), "complex"),
    ("image empty", lambda L, o: wiener(np.zeros((0, 4)), PSF), "is empty"),
    ("image nan", lambda L, o: o(np.where(IMG > 0.5, np.nan, IMG)), "NaN or infinite pixel"),
    ("image inf", lambda L, o: blur(np.where(IMG > 0.9, np.inf, IMG), L), "NaN or infinite pixel"),
    ("image huge", lambda L, o: o(np.full((32, 32), 1e308)), "overflow the float32 computation"),
    ("nan_policy", lambda L, o: blur(IMG, L, nan_policy="ignore"), "nan_policy = 'ignore'"),
    ("psf None", lambda L, o: wiener(IMG, None), "psf: dtype object"),
    ("psf zero", lambda L, o: wiener(IMG, np.zeros((5, 5))), "psf: sums to 0"),
    ("psf nan", lambda L, o: wiener(IMG, np.full((5, 5), np.nan)), "psf has 25 NaN"),
    ("psf 3-D", lambda L, o: wiener(IMG, np.ones((2, 5, 5))), "psf of shape (2, 5, 5)"),
    ("balance overflow", lambda L, o: wiener(IMG, PSF, balance=1e39), "balance = 1e+39"),
    ("balance str", lambda L, o: wiener(IMG, PSF, balance="a"), "balance = 'a'"),
    ("noise_sigma", lambda L, o: wiener(IMG, PSF, noise_sigma=-1.0), "noise_sigma = -1.0"),
    ("reg", lambda L, o: wiener(IMG, PSF, reg="tv"), "reg = 'tv'"),
    ("boundary", lambda L, o: wiener(IMG, PSF, boundary="wrap"), "boundary = 'wrap'"),
    ("backend", lambda L, o: wiener(IMG, PSF, backend="cufft"), "unknown FFT backend 'cufft'"),
    ("sv lens", lambda L, o: sv_wiener(IMG, 3), "lens = 3"),
    ("sv patch", lambda L, o: sv_wiener(IMG, L, patch=7), "patch = 7"),
    ("sv origin outside", lambda L, o: sv_wiener(IMG, L, origin=(10000, 10000)), "does not fit"),
    ("rl op", lambda L, o: richardson_lucy(IMG, None), "op = None"),
    ("rl iters", lambda L, o: richardson_lucy(IMG, o, iters=2.5), "iters = 2.5"),
    ("rl tol", lambda L, o: richardson_lucy(IMG, o, tol=-1), "tol = -1"),
    ("rl shape", lambda L, o: richardson_lucy(np.ones((16, 16)), o), "does not match the operator's window"),
    ("reference psf", lambda L, o: reference_psf(L, origin=(0, 0), shape=(8, 8), which="x"), "psf choice 'x'"),
    ("photons", lambda L, o: psfsim.NoiseModel(float("nan")), "photons = nan"),
    ("photons huge", lambda L, o: psfsim.NoiseModel(1e300), "photons = 1e+300"),
    ("noise nan", lambda L, o: psfsim.NoiseModel(100).apply(np.full((4, 4), np.nan), np.random.default_rng(0)), "NaN"),
    ("noise rng", lambda L, o: psfsim.NoiseModel(100).apply(IMG, None), "rng = None"),
    ("field lens", lambda L, o: psfsim.field_coords(None, origin=(0, 0), shape=(2, 2)), "expected a Lens"),
    ("torch lens", lambda L, o: torch_blur(None), "lens = None"),
    ("basis file", lambda L, o: psfsim.LowRankBasis.load("/nonexistent/b.npz"), "not a saved psfsim basis"),
]


@pytest.mark.parametrize("name, call, text", MISUSES, ids=[m[0] for m in MISUSES])
def test_misuse_is_a_psfsim_error_naming_the_argument(name, call, text, lens, op):
    with pytest.raises(PsfsimError) as e:
        call(lens, op)
    assert text in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_nan_policy_fill_keeps_the_mask_and_never_spreads(lens, op):
    """A dead pixel and a masked block: with nan_policy='fill' the output is NaN exactly there and finite elsewhere;
    and the fill is local: beyond the PSF's reach (half-width 16 px) from the mask, the blur equals the blur of
    the image with the masked pixels set to anything finite (zero here)."""
    img = IMG.copy()
    img[5, 7] = np.nan
    img[20:23, 10:12] = np.inf
    mask = ~np.isfinite(img)
    outs = {
        "blur": blur(img, lens, nan_policy="fill"),
        "wiener": wiener(img, PSF, balance=0.01, nan_policy="fill"),
        "sv_wiener": sv_wiener(img, lens, patch=16, balance=0.01, nan_policy="fill"),
        "rl": richardson_lucy(img, op, iters=3, nan_policy="fill").image,
    }
    for name, out in outs.items():
        np.testing.assert_array_equal(~np.isfinite(out), mask, err_msg=name)
    big = np.random.default_rng(1).random((64, 64))
    big[2:4, 3] = np.nan
    far = np.zeros((64, 64), bool)
    far[24:, 24:] = True  # more than 16 px from every masked pixel
    filled = blur(big, lens, nan_policy="fill")
    zeroed = blur(np.nan_to_num(big, nan=0.0), lens)
    # float64 input, float32 fast operator: FFT rounding 2e-7 measured; the fill's own effect near it is > 1e-3
    np.testing.assert_allclose(filled[far], zeroed[far], rtol=0, atol=1e-6)
    assert np.abs(filled - zeroed)[~far & np.isfinite(filled)].max() > 1e-3


def test_dtype_rule_under_the_nan_policy(lens):
    img = IMG.astype(np.float32)
    img[0, 0] = np.nan
    assert blur(img, lens, nan_policy="fill").dtype == np.float32
    assert wiener(img, PSF, nan_policy="fill").dtype == np.float32


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(a=hnp.arrays(dtype=st.sampled_from([np.float16, np.float32, np.float64, np.int16, np.uint8, np.bool_, np.complex64]),
                    shape=st.sampled_from([(32, 32), (2, 32, 32), (31, 32), (32,), (0, 32), (1, 1, 32, 32)])),
       which=st.sampled_from(["op", "adjoint", "blur", "wiener", "sv_wiener", "rl", "noise"]))
def test_fuzz_api_inputs(a, which, lens, op):
    """Any array into any public function: PsfsimError, or a finite result of the input's shape and dtype rule."""
    calls = {
        "op": lambda: op(a),
        "adjoint": lambda: op.adjoint(a),
        "blur": lambda: blur(a, lens, origin=(10, 10)),
        "wiener": lambda: wiener(a, PSF),
        "sv_wiener": lambda: sv_wiener(a, lens, origin=(10, 10), patch=16),
        "rl": lambda: richardson_lucy(a, op, iters=2).image,
        "noise": lambda: psfsim.NoiseModel(100.0).apply(a, np.random.default_rng(0)),
    }
    try:
        out = calls[which]()
    except PsfsimError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert out.shape == a.shape
    assert out.dtype == result_dtype(a)
    assert np.isfinite(out).all()


def test_exact_operator_refuses_like_the_fast_one(lens):
    ex = ExactOperator(lens, shape=(6, 6), origin=(0, 0))
    with pytest.raises(PsfsimError, match="NaN or infinite"):
        ex(np.full((6, 6), np.nan))
    with pytest.raises(PsfsimError, match="expected a Lens"):
        ExactOperator(None, shape=(6, 6))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1e-12, 1e-6, 1e6, 1e17])
def test_restorations_do_not_depend_on_the_image_units(scale, dtype, lens, op):
    """Wiener (automatic balance), SV Wiener and Richardson-Lucy commute with a change of units (flux in
    erg/s/cm^2/A is ~1e-17; counts can be 1e6): restore(s x) / s == restore(x); and a PSF in counts is the same
    PSF as its unit-sum version."""
    rng = np.random.default_rng(13)
    x = (op(rng.random((32, 32))) + rng.normal(0, 0.01, (32, 32))).astype(dtype)
    tol = 2e-3 if dtype == np.float32 else 1e-6
    for f in (lambda a: wiener(a, lens.psf(0, 0)), lambda a: sv_wiener(a, lens, patch=16),
              lambda a: richardson_lucy(a, op, iters=3).image):
        ref = f(x)
        got = f((x * scale).astype(dtype)) / scale
        assert np.abs(got - ref).max() <= tol * np.abs(ref).max(), (scale, dtype)
    psf = lens.psf(0, 0)
    np.testing.assert_allclose(wiener(x, psf * 1e6), wiener(x, psf), rtol=1e-4, atol=1e-6)
