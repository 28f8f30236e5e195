"""Noise statistics and classical deconvolution against references (scikit-image, analytic inverses)."""

import numpy as np
import pytest
from scipy.ndimage import convolve as nd_convolve
from skimage import data, restoration
from skimage.metrics import peak_signal_noise_ratio as psnr

import psfsim
from psfsim.noise import NoiseModel
from psfsim.operators import make_operator
from psfsim.restore import estimate_noise_sigma, reference_psf, richardson_lucy, sv_wiener, wiener

from .conftest import make_lens


def _camera(n=128):
    return data.camera()[::2, ::2][:n, :n].astype(float) / 255


def test_noise_is_seeded_and_poisson_gaussian():
    nm = NoiseModel(photons=200.0, read_noise=3.0)
    img = np.full((400, 400), 0.5, np.float32)
    a = nm.apply(img, np.random.default_rng(11))
    b = nm.apply(img, np.random.default_rng(11))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32
    # mean and variance of (Poisson(N x) + N(0, r^2)) / N
    assert a.mean() == pytest.approx(0.5, abs=3e-3)
    assert a.var() == pytest.approx((0.5 * 200 + 9) / 200**2, rel=0.03)
    assert float(nm.sigma(0.5)) == pytest.approx(np.sqrt(109) / 200)
    with pytest.raises(psfsim.PsfsimError, match="photons"):
        NoiseModel(photons=0)
    with pytest.raises(psfsim.PsfsimError, match="read_noise"):
        NoiseModel(photons=10, read_noise=-1)


def test_noise_sigma_estimate():
    rng = np.random.default_rng(0)
    img = data.camera()[:256, :256] / 255 + rng.normal(0, 0.02, (256, 256))
    assert estimate_noise_sigma(img) == pytest.approx(0.02, rel=0.2)
    smooth = np.add.outer(np.linspace(0, 1, 256), np.linspace(0, 0.5, 256)) + rng.normal(0, 0.02, (256, 256))
    assert estimate_noise_sigma(smooth) == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize("reg", ["laplacian", "identity"])
def test_wiener_matches_scikit_image(reg):
    """Same input, PSF, balance, regulariser and periodic boundary as skimage.restoration.wiener."""
    lens = make_lens(zernike=[{"noll": 4, "rms_waves": 0.15}])
    psf = lens.psf(0, 0)
    img = _camera()
    blurred = nd_convolve(img, psf, mode="wrap")
    kw = {} if reg == "laplacian" else {"reg": np.pad([[1.0]], 1)}
    ref = restoration.wiener(blurred, psf, balance=0.01, clip=False, **kw)
    ours = wiener(blurred, psf, balance=0.01, reg=reg, boundary="periodic")
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_wiener_recovers_noise_free_image():
    lens = make_lens(zernike=[{"noll": 4, "rms_waves": 0.1}])
    psf = lens.psf(0, 0)
    img = _camera()
    blurred = nd_convolve(img, psf, mode="wrap")
    rec = wiener(blurred, psf, balance=1e-6, reg="identity", boundary="periodic")
    # the OTF vanishes only in the corners of the frequency plane (beyond the 2 NA / lambda cut-off)
    assert psnr(img, rec, data_range=1) > 35
    assert psnr(img, rec, data_range=1) > psnr(img, blurred, data_range=1) + 8


def test_wiener_boundary_handling_avoids_wrap_ringing():
    """Zero-boundary blur of a non-periodic image: reflect/taper padding beats periodic at the edges."""
    lens = make_lens(zernike=[{"noll": 4, "rms_waves": 0.15}])
    psf = lens.psf(0, 0)
    img = _camera()
    blurred = make_operator(lens, shape=img.shape, origin=(0, 0), dtype=np.float64)(img)
    edge = np.zeros(img.shape, bool)
    edge[:12], edge[-12:], edge[:, :12], edge[:, -12:] = True, True, True, True
    err = {b: np.sqrt(np.mean((wiener(blurred, psf, balance=1e-3, boundary=b) - img)[edge] ** 2)) for b in ("periodic", "reflect", "taper")}
    assert err["reflect"] < 0.7 * err["periodic"]
    assert err["taper"] < 0.7 * err["periodic"]


def test_sv_wiener_beats_global_wiener_on_microscope():
    """Microscope preset, a window in the defocused corner of the field: local PSFs beat the on-axis one."""
    lens = psfsim.load_lens("microscope")
    img = _camera(192)
    nm = NoiseModel(photons=20000, read_noise=2)
    y = nm.apply(make_operator(lens, shape=img.shape, origin=(0, 0))(img), np.random.default_rng(3))
    inner = (slice(24, -24), slice(24, -24))
    sigma = float(nm.sigma(0.5))
    g = wiener(y, reference_psf(lens, origin=(0, 0), shape=img.shape, which="axis"), noise_sigma=sigma, balance=0.01)
    sv = sv_wiener(y, lens, origin=(0, 0), patch=64, noise_sigma=sigma, balance=0.01)
    p_g = psnr(img[inner], g[inner], data_range=1)
    p_sv = psnr(img[inner], sv[inner], data_range=1)
    assert p_sv > p_g + 1.0, (p_sv, p_g)


def test_sv_wiener_on_a_field_constant_lens_equals_global_wiener_inside():
    lens = make_lens(zernike=[{"noll": 4, "rms_waves": 0.1}])
    img = _camera()
    y = make_operator(lens, shape=img.shape, origin=(0, 0), dtype=np.float64)(img)
    g = wiener(y, lens.psf(0, 0), balance=1e-3)
    inner = (slice(40, -40), slice(40, -40))
    # with a context margin of the full PSF width (33 px): measured 2.6e-5 (the margin is tapered; the global
    # filter sees the whole image)
    sv = sv_wiener(y, lens, patch=64, overlap=32, balance=1e-3, context=33)
    assert np.abs(g - sv)[inner].max() < 1e-4
    # the default margin (2 r + 8 = 18 px, r holding 99.9 % of the PSF's energy, its outer half tapered):
    # measured 1.3e-5; with the default layout's narrower overlap (patch // 4): 4.0e-5
    sv = sv_wiener(y, lens, patch=64, balance=1e-3)
    assert np.abs(g - sv)[inner].max() < 5e-5
    sv = sv_wiener(y, lens, patch=64, overlap=16, balance=1e-3)
    assert np.abs(g - sv)[inner].max() < 1e-4


def test_sv_wiener_takes_batches_like_wiener():
    """A (B, H, W) batch equals each image alone (each its own noise-derived balance)."""
    d = psfsim.load_lens("microscope").to_dict()
    d["field"]["shape_px"] = [128, 128]
    lens = psfsim.lens_from_dict(d)
    rng = np.random.default_rng(12)
    y = make_operator(lens, shape=(64, 64), origin=(10, 20))(_camera()[:64, :64]) + rng.normal(0, 0.01, (64, 64))
    batch = np.stack([y, 0.3 * y[::-1]])
    out = sv_wiener(batch, lens, origin=(10, 20), patch=32, workers=1)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    for i in range(2):
        np.testing.assert_array_equal(out[i], sv_wiener(batch[i], lens, origin=(10, 20), patch=32))


def test_richardson_lucy_spatially_varying():
    d = psfsim.load_lens("microscope").to_dict()
    d["field"]["shape_px"] = [128, 128]
    lens = psfsim.lens_from_dict(d)
    img = _camera()
    op = make_operator(lens, shape=img.shape)
    y = NoiseModel(photons=50000).apply(op(img), np.random.default_rng(4))
    r10 = richardson_lucy(y, op, iters=10)
    r30 = richardson_lucy(y, op, iters=30)
    assert r30.image.min() >= 0 and r30.iterations == 30
    inner = (slice(16, -16), slice(16, -16))
    p0 = psnr(img[inner], y[inner], data_range=1)
    assert psnr(img[inner], r10.image[inner], data_range=1) > p0
    assert psnr(img[inner], r30.image[inner], data_range=1) > psnr(img[inner], r10.image[inner], data_range=1)
    stop = richardson_lucy(y, op, iters=200, tol=5e-3)
    assert stop.converged and stop.iterations < 200 and stop.last_change < 5e-3


def test_richardson_lucy_equals_scikit_image_on_an_invariant_blur():
    """A field-constant lens: our RL (fast operator, rank 1) equals skimage.restoration.richardson_lucy away from
    the edges (skimage does not divide by A^T 1, which differs from 1 only within the PSF of the edge; after two
    iterations that reaches 3 half-boxes inwards). A constant start cancels after one iteration in both."""
    lens = make_lens(zernike=[{"noll": 4, "rms_waves": 0.3}, {"noll": 7, "rms_waves": 0.1}])
    assert lens.field_constant
    img = _camera(160)
    psf = lens.psf(0.0, 0.0)
    op = make_operator(lens, shape=img.shape, dtype=np.float64)
    y = np.clip(op(img), 0, None) + 0.01
    ours = richardson_lucy(y, op, iters=2).image
    theirs = restoration.richardson_lucy(y, psf / psf.sum(), num_iter=2, clip=False)
    c = 3 * (psf.shape[0] // 2)
    np.testing.assert_allclose(ours[c:-c, c:-c], theirs[c:-c, c:-c], rtol=1e-4)
    assert np.abs(ours[c:-c, c:-c] - y[c:-c, c:-c]).max() > 1e-2  # two iterations did move the image


def test_batched_wiener_equals_one_by_one():
    """Each image of a batch gets its own noise-derived balance."""
    lens = make_lens(zernike=[{"noll": 4, "rms_waves": 0.15}])
    psf = lens.psf(0, 0)
    rng = np.random.default_rng(8)
    a = _camera() + rng.normal(0, 0.05, (128, 128))
    b = 0.1 * _camera()[::-1] + rng.normal(0, 0.002, (128, 128))
    both = wiener(np.stack([a, b]), psf)
    np.testing.assert_allclose(both[1], wiener(b, psf), atol=1e-6)
    np.testing.assert_allclose(both[0], wiener(a, psf), atol=1e-6)


def test_wiener_refuses_an_image_smaller_than_the_psf():
    with pytest.raises(psfsim.PsfsimError, match="smaller than the PSF"):
        wiener(np.ones((20, 20)), make_lens().psf(0, 0), boundary="periodic", balance=0.1)


def _balance_reference(image, noise_sigma=None, reg="gradient"):
    """resolve_balance's formulas as written before issue 9, on float64 copies of the whole image (the reference
    the fast path must reproduce): sigma = median |Haar HH| / 0.6745 in RMS units, floored at 1e-3 std."""
    img = np.asarray(image, np.float64)
    scale = float(np.sqrt(np.mean(img * img))) or 1.0
    img = img / scale
    b = img[: img.shape[0] // 2 * 2, : img.shape[1] // 2 * 2]
    hh = (b[0::2, 0::2] - b[0::2, 1::2] - b[1::2, 0::2] + b[1::2, 1::2]) / 2
    sigma = float(np.median(np.abs(hh)) / 0.6745) if noise_sigma is None else noise_sigma / scale
    sigma = max(sigma, 1e-3 * float(np.std(img)) + 1e-12)
    if reg == "gradient":
        r2, gain = float(np.mean(np.diff(img, axis=0) ** 2) + np.mean(np.diff(img, axis=1) ** 2)), 4
    elif reg == "laplacian":
        r2 = float(np.mean((4 * img[1:-1, 1:-1] - img[:-2, 1:-1] - img[2:, 1:-1] - img[1:-1, :-2] - img[1:-1, 2:]) ** 2))
        gain = 20
    else:
        r2, gain = float(np.var(img)), 1
    bal = sigma**2 / max(r2 - gain * sigma**2, 0.05 * r2, 1e-12)
    return max(bal, 1e-8) if reg == "identity" else bal


def _balance_images():
    """Named images for the balance estimate: skimage's camera (tiled to 1030 x 2050, odd sizes on purpose), blurred
    with the microscope's axis PSF and Poisson noise (1000 photons; the regime where c = mean |grad y|^2 - 4
    sigma^2 cancels most), the same sharp with Gaussian noise, a noise-only image, uint8 moon, a float64 image and
    images far from unit scale (1e25, 1e-25: the float64 route) or on an offset (1000 + small noise)."""
    from scipy.signal import fftconvolve

    rng = np.random.default_rng(5)
    cam = np.tile(data.camera().astype(np.float32) / 255, (3, 5))[:1031, :2050]
    psf = psfsim.load_lens("microscope").psf(0.0, 0.0)
    blurred = np.clip(fftconvolve(cam, psf / psf.sum(), mode="same"), 0, None).astype(np.float32)
    return {
        "camera blurred, 1000 photons": NoiseModel(photons=1000).apply(blurred, rng),
        "camera, Gaussian noise 0.01": (cam + rng.normal(0, 0.01, cam.shape)).astype(np.float32),
        "noise only": rng.normal(0.5, 0.1, (512, 700)).astype(np.float32),
        "moon uint8": data.moon(),
        "camera float64": _camera(255) + rng.normal(0, 0.02, (255, 255)),
        "1e25 scale": (rng.normal(0.5, 0.1, (200, 201)) * 1e25).astype(np.float32),
        "1e-25 scale": (rng.normal(0.5, 0.1, (200, 201)) * 1e-25).astype(np.float32),
        "offset": (1000 + rng.normal(0, 0.01, (200, 201))).astype(np.float32),
        "noise-free camera": cam,
    }


@pytest.mark.parametrize("reg", ["gradient", "laplacian", "identity"])
def test_balance_estimate_equals_the_whole_image_formula(reg):
    """The fast estimate (float32 row blocks, sample-select median) is the float64 whole-image one to float32
    rounding: measured <= 2.4e-5 relative (the offset image: 1000 + 0.01 noise in float32), 1e-5 elsewhere."""
    from psfsim.restore.wiener import resolve_balance

    for name, img in _balance_images().items():
        for ns in (None, 0.01):
            ref = _balance_reference(img, ns, reg)
            assert resolve_balance(img, None, ns, reg) == pytest.approx(ref, rel=5e-5), (name, ns)


def test_sample_select_median_is_numpys():
    from psfsim.restore.wiener import _median_nonneg

    rng = np.random.default_rng(2)
    for a in (np.abs(rng.normal(size=2**20 + 1)).astype(np.float32), rng.random(2**17).astype(np.float64),
              np.round(rng.random(300_000) * 20).astype(np.float32), np.zeros(70_000, np.float32), np.arange(9.0)):
        assert _median_nonneg(a.copy()) == np.median(a)


def test_sv_wiener_blend_weights_sum_to_one():
    """Neighbours ``patch - overlap`` apart: the raised-cosine ramps sum to one over the whole (extended) axis."""
    from psfsim.restore.sv_wiener import blend_weights_1d, patch_starts

    for n, patch, overlap in ((1000, 256, 64), (2048, 256, None), (300, 64, 16), (64, 64, 16), (97, 32, 1)):
        starts = patch_starts(n, patch, overlap)
        end = starts[-1] + patch
        assert end >= n and (len(starts) == 1 or starts[-2] + patch < n)  # covers n, no patch wholly past it
        total = np.zeros(max(end, n))
        for s0 in starts:
            total[s0 : s0 + patch] += blend_weights_1d(s0, patch, end, overlap)
        np.testing.assert_allclose(total[:n], 1.0, atol=1e-12)


def test_sv_wiener_basis_psfs_match_exact_psfs_on_microscope():
    """psfs="basis" (rank-K PSFs of the low-rank basis, transfer functions from the eigen-PSFs' transforms) against
    the lens's exact PSFs at the same patch centres: a 256 x 256 window in the defocused corner, 2000 photons.
    Measured: max difference 3.0e-4 (values ~0.5; the basis's PSF error is ~0.5 %), PSNRs equal within 1e-3 dB."""
    lens = psfsim.load_lens("microscope")
    img = _camera(256)
    y = NoiseModel(photons=2000).apply(make_operator(lens, shape=img.shape, origin=(0, 0))(img),
                                       np.random.default_rng(6))
    a = sv_wiener(y, lens, origin=(0, 0), patch=128, psfs="basis")
    b = sv_wiener(y, lens, origin=(0, 0), patch=128, psfs="exact")
    assert np.abs(a - b).max() < 1e-3
    assert abs(psnr(img, a, data_range=1) - psnr(img, b, data_range=1)) < 0.01


def test_sv_wiener_refuses_bad_options():
    y = np.zeros((64, 64), np.float32)
    lens = make_lens()
    for kw, msg in ((dict(patch=32, overlap=17), "overlap"), (dict(patch=32, overlap=0), "overlap"),
                    (dict(psfs="fast"), "psfs"), (dict(context=-1), "context"), (dict(context=2.5), "context")):
        with pytest.raises(psfsim.PsfsimError, match=msg):
            sv_wiener(y, lens, balance=0.1, **kw)
