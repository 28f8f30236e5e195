"""Hostile lens files and field points (psfsim hardening, lens part): each reproduces a case that used to load,
return a wrong PSF, hang or fail with a traceback, and is now refused with a LensError / PsfsimError naming the
key, the value and what is allowed.

References: the transverse ray aberration ``lambda / NA * grad W`` (Born & Wolf, Principles of Optics, 7th ed.,
sec. 5.1) for defocus bounds; the stationary point of the field polynomial for where a bump peaks.
"""

import copy
import math
import re

import numpy as np
import pytest

import psfsim
from psfsim import LensError, PsfsimError, lens_from_dict
from psfsim import lens as lens_mod
from psfsim.lens import probe_points

# 520 nm, NA 0.4, 0.325 um pixels (Nyquist): 1 px = 0.325 um, lambda / NA = 1.3 um = 4 px
BASE = {
    "name": "adv",
    "optics": {"wavelength_nm": 520.0, "na": 0.4, "pixel_pitch_um": 0.325},
    "field": {"shape_px": [96, 96]},
    "psf": {"size_px": 33, "oversample": 4},
}
LAMBDA_OVER_NA_PX = 0.52 / 0.4 / 0.325


def make(**sections):
    d = copy.deepcopy(BASE)
    for k, v in sections.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            d[k].update(v)
        else:
            d[k] = v
    return d


def bump(a4, a2):
    """Defocus (Noll 4) RMS waves ``a4 x^4 + a2 x^2``: zero on the axis, peaking at x = sqrt(-a2 / (2 a4))."""
    return make(zernike=[{"noll": 4, "rms_waves": {"x4": a4, "x2": a2}}])


def _named_point(msg):
    m = re.search(r"field point \(([-+][\d.]+), ([-+][\d.]+)\)", msg)
    assert m, msg
    return float(m.group(1)), float(m.group(2))


# --------------------------------------------------------------------------------------------------
# 1. the energy outside the box is bounded over the whole field, not at 9 points
# --------------------------------------------------------------------------------------------------
GRID_STEP = 3.96 / 67.2  # field spacing of the 25-node probe grid on a 96 px frame (half-diagonal 67.2 px)


def test_strong_interior_bump_is_refused_naming_the_worst_point():
    """-100 x^4 + 50 x^2 RMS waves of defocus: 0 at the axis and at the edge midpoints/corners (|x| = 0.707),
    6.25 waves at x = +-0.5 (the stationary point). The 9 old probe points all pass; the lens must not."""
    d = bump(-100.0, 50.0)
    loose = lens_from_dict(d, check_psf_box=False)
    pts = probe_points(loose.field)
    assert np.all(np.isclose(np.abs(pts[:, 0]), 0.0, atol=1e-9) | np.isclose(np.abs(pts[:, 0]), np.sqrt(0.5)))
    # analytic: defocus a RMS waves sends the marginal ray 4 sqrt(3) a lambda/NA away; rays fill that disc
    # uniformly, so at most (box circumradius / r_max)^2 of the energy lands inside the box
    r_max = 4 * math.sqrt(3) * 6.25 * LAMBDA_OVER_NA_PX
    assert (16.5 * math.sqrt(2) / r_max) ** 2 < 0.02
    with pytest.raises(LensError, match=r"psf\.size_px = 33 is too small") as e:
        lens_from_dict(d)
    x, y = _named_point(str(e.value))
    assert abs(abs(x) - 0.5) <= GRID_STEP and abs(y) <= GRID_STEP, str(e.value)


def test_moderate_bump_is_refused_by_the_diffraction_estimate():
    """-16 x^4 + 8 x^2: 1 RMS wave of defocus at x = +-0.5 (marginal ray 4 sqrt(3) * 4 = 27.7 px out, box
    half-width 16.5 px), well sampled by the pupil: refused by the energy-outside estimate at the bump."""
    with pytest.raises(LensError, match=r"% of the PSF's energy falls outside the box at field point") as e:
        lens_from_dict(bump(-16.0, 8.0))
    x, y = _named_point(str(e.value))
    assert abs(abs(x) - 0.5) <= 2 * GRID_STEP and abs(y) <= GRID_STEP, str(e.value)


def test_gentle_bump_still_loads():
    lens = lens_from_dict(bump(-1.0, 0.5))  # 1/16 wave at the bump
    assert float(lens.energy_outside(0.5, 0.0)) < 0.05


@pytest.mark.parametrize("name", ["microscope", "relay", "telescope"])
def test_presets_still_load(name):
    lens = psfsim.load_lens(name)
    assert np.all(np.isfinite(lens.psf(0.1, 0.1)))


# --------------------------------------------------------------------------------------------------
# 2. NaN fails every check
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [1e308, -1e308, 1e5, float("nan"), float("inf")])
def test_huge_or_non_finite_aberrations_are_refused(value):
    with pytest.raises(LensError, match=r"zernike\[0\]\.rms_waves"):
        lens_from_dict(make(zernike=[{"noll": 4, "rms_waves": value}]))
    with pytest.raises(LensError, match=r"seidel\.W040"):
        lens_from_dict(make(seidel={"W040": value}))


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_non_finite_wavefront_fails_the_load_check(monkeypatch):
    """Without the coefficient bound, 1e308 waves overflow to inf/NaN: the box check must fail, not pass
    because ``nan > limit`` is False."""
    monkeypatch.setattr(lens_mod, "MAX_ABERRATION_WAVES", math.inf)
    d = make(zernike=[{"noll": 4, "rms_waves": {"x2": 1e308, "c": 1e308}}])
    with pytest.raises(LensError, match=r"not finite"):
        lens_from_dict(d)
    loose = lens_from_dict(d, check_psf_box=False)
    for f in (loose.psf, loose.strehl, loose.fwhm_px, loose.energy_outside):
        with pytest.raises(LensError, match=r"not finite"):
            f(0.3, 0.0)
    with pytest.raises(LensError, match=r"not finite"):
        loose.psf_metrics([0.3], [0.0])


# --------------------------------------------------------------------------------------------------
# 3. monomials written once, canonically; physical bounds
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("a, b", [("x", "x1"), ("c", "x0"), ("xy", "x1y1"), ("x2y", "x2y1"), ("y", "x0y")])
def test_duplicate_monomials_are_refused_naming_both_keys(a, b):
    d = make(zernike=[{"noll": 5, "rms_waves": {a: 0.01, b: 0.5}}])
    with pytest.raises(LensError, match=re.escape(f"keys {a!r} and {b!r} are the same monomial")):
        lens_from_dict(d)


@pytest.mark.parametrize("name, canonical", [("x1y", "xy"), ("x1", "x"), ("y1", "y"), ("x02", "x2"), ("x0", "c"),
                                             ("xy1", "xy"), ("x2y1", "x2y")])
def test_non_canonical_monomials_are_refused(name, canonical):
    d = make(zernike=[{"noll": 5, "rms_waves": {name: 0.01}}])
    with pytest.raises(LensError, match=re.escape(f"monomial {name!r} is not written canonically: write {canonical!r}")):
        lens_from_dict(d)


def test_canonical_monomials_are_accepted():
    d = make(zernike=[{"noll": 5, "rms_waves": {"c": 0.01, "x": 0.01, "y2": 0.01, "x2y": 0.01, "x10": 0.0}}])
    # x10 has degree 10 > 6: refused for its degree, not its spelling
    with pytest.raises(LensError, match=r"degree 10 > 6"):
        lens_from_dict(d)
    del d["zernike"][0]["rms_waves"]["x10"]
    lens = lens_from_dict(d)
    assert dict(lens.zernike[0].coefficients) == {(0, 0): 0.01, (1, 0): 0.01, (0, 2): 0.01, (2, 1): 0.01}


@pytest.mark.parametrize("n", [0.9, 2.5, 3.5, 100.0])
def test_immersion_index_outside_1_to_2_is_refused(n):
    with pytest.raises(LensError, match=r"optics\.immersion_index = .*1 <= immersion_index <= 2\.0 .*vector"):
        lens_from_dict(make(optics={"immersion_index": n}))


def test_oil_immersion_is_accepted():
    d = make(optics={"immersion_index": 1.515, "na": 1.4, "pixel_pitch_um": 0.09})
    assert lens_from_dict(d, check_psf_box=False).optics.immersion_index == 1.515


@pytest.mark.parametrize("axis", [[1e5, 0.0], [0.0, -1e9], [-193.0, 40.0], [40.0, 288.0]])
def test_axis_far_from_the_frame_is_refused(axis):
    with pytest.raises(LensError, match=r"field\.axis_px = .*more than 2 frame sizes from the frame"):
        lens_from_dict(make(field={"axis_px": axis}))


def test_axis_within_two_frame_sizes_is_accepted():
    lens = lens_from_dict(make(field={"axis_px": [-150.0, 250.0]}))
    assert lens.field.axis_px == (-150.0, 250.0)


# --------------------------------------------------------------------------------------------------
# 4. resources estimated before anything is allocated
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def no_engine(monkeypatch):
    """Any PSF engine built during the test fails it: refusals must come before allocation."""
    from psfsim import psf

    def boom(*a, **k):
        raise AssertionError("a PSF engine was built before the lens was refused")

    monkeypatch.setattr(psf.PSFEngine, "__init__", boom)


def test_huge_psf_box_is_refused_before_allocating(no_engine):
    with pytest.raises(LensError, match=r"psf\.size_px = 2001.*needs about [\d.]+ GiB .*> the memory budget 4 GiB"):
        lens_from_dict(make(psf={"size_px": 2001}))


def test_work_bound(no_engine, monkeypatch):
    monkeypatch.setenv("PSFSIM_MEMORY_BUDGET", "1e13")
    with pytest.raises(LensError, match=r"psf\.size_px = 2001.*one PSF costs about [\d.e+]+ floating-point operations"):
        lens_from_dict(make(psf={"size_px": 2001}))


def test_memory_budget_from_the_environment(no_engine, monkeypatch):
    monkeypatch.setenv("PSFSIM_MEMORY_BUDGET", "1e6")
    with pytest.raises(LensError, match=r"memory budget 0\.000931 GiB"):
        lens_from_dict(BASE)
    monkeypatch.setenv("PSFSIM_MEMORY_BUDGET", "lots")
    with pytest.raises(LensError, match=r"PSFSIM_MEMORY_BUDGET = 'lots': expected a number of bytes"):
        lens_from_dict(BASE)


def test_thousands_of_wavelengths_are_refused(no_engine):
    wl = [500.0 + 0.01 * i for i in range(2000)]
    with pytest.raises(LensError, match=r"optics\.wavelength_nm: 2000 wavelengths; at most 64"):
        lens_from_dict(make(optics={"wavelength_nm": wl}))


def test_huge_frame_is_refused_with_its_size(no_engine):
    with pytest.raises(LensError, match=r"field\.shape_px = \[1000000, 1000000\]: at most 131072 px per side .*3\.64 TiB"):
        lens_from_dict(make(field={"shape_px": [1000000, 1000000]}))


def test_astronomy_sized_frame_is_accepted():
    lens = lens_from_dict(make(field={"shape_px": [65536, 65536]}))
    assert lens.field.shape_px == (65536, 65536)


def test_huge_integers_are_refused_not_overflowing():
    with pytest.raises(LensError, match=r"optics\.na = 1000.*characters\): expected a finite number"):
        lens_from_dict(make(optics={"na": 10**400}))
    with pytest.raises(LensError, match=r"psf\.size_px = 1000.*at most 4095"):
        lens_from_dict(make(psf={"size_px": 10**400 + 1}))


# --------------------------------------------------------------------------------------------------
# 5. field points outside the lens field
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lens():
    d = make(seidel={"W220": 0.6})  # the microscope's field curvature on a 96 x 96 frame
    return lens_from_dict(d)


@pytest.mark.parametrize("pt", [(1e6, 0.0), (5.0, 5.0), (0.72, 0.0), (0.0, -0.75)])
def test_points_outside_the_field_are_refused(lens, pt):
    pattern = re.escape(f"field point ({pt[0]:+.6g}, {pt[1]:+.6g}) is outside the lens field: x in [-0.7146, +0.7146]")
    for f in (lens.psf, lens.strehl, lens.fwhm_px, lens.energy_outside):
        with pytest.raises(PsfsimError, match=pattern):
            f(*pt)
    with pytest.raises(PsfsimError, match=pattern):
        lens.psfs([0.0, pt[0]], [0.0, pt[1]])
    with pytest.raises(PsfsimError, match=pattern):
        lens.psf_metrics([pt[0]], [pt[1]])


@pytest.mark.parametrize("pt", [(1e6, 0.0), (5.0, 5.0)])
def test_allow_outside_still_refuses_where_the_model_breaks_down(lens, pt):
    """(1e6, 0): 3e11 waves of defocus alias in the pupil (it used to give the on-axis Airy, Strehl 1.000);
    (5, 5): W220 h^2 = 30 waves, marginal ray 2 * 30 * 4 = 240 px out of a 16.5 px half-box."""
    with pytest.raises(PsfsimError, match=r"the PSF model breaks down there: ray-traced RMS spot radius"):
        lens.psf(*pt, allow_outside=True)
    with pytest.raises(PsfsimError, match=r"breaks down"):
        lens.strehl(*pt, allow_outside=True)


def test_a_window_margin_past_the_frame_is_accepted(lens):
    """A window of the whole frame with a margin of the PSF half-width (16 px) on every side (what the
    ExactOperator computes with allow_outside): every PSF finite, unit sum."""
    m = lens.psf_sampling.size_px // 2
    xy = psfsim.field_coords(lens, origin=(-m, -m), shape=(96 + 2 * m, 96 + 2 * m), allow_outside=True)
    x, y = xy[0][:: 8, :: 8].ravel(), xy[1][:: 8, :: 8].ravel()
    corner = np.array([xy[0][0, 0], xy[0][-1, -1]]), np.array([xy[1][0, 0], xy[1][-1, -1]])
    p = lens.psfs(np.concatenate([x, corner[0]]), np.concatenate([y, corner[1]]), allow_outside=True)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=(1, 2)), 1.0, atol=1e-12)
    assert np.all(lens.strehl(corner[0], corner[1], allow_outside=True) > 0)


def test_half_pixel_tolerance(lens):
    f = lens.field
    xin, yin = f.pixel_to_field(-0.5, 95.5)  # the outer edge of the corner pixel
    assert np.isfinite(lens.psf(float(xin), float(yin))).all()
    xout, yout = f.pixel_to_field(-0.6, 40.0)
    with pytest.raises(PsfsimError, match="outside the lens field"):
        lens.psf(float(xout), float(yout))


@pytest.mark.parametrize("pt", [(float("nan"), 0.0), (0.0, float("inf"))])
def test_non_finite_field_points_are_refused(lens, pt):
    with pytest.raises(PsfsimError, match="field coordinates must be finite"):
        lens.psf(*pt, allow_outside=True)


def test_psf_grid_stays_inside(lens):
    g = lens.psf_grid(3, 3)
    assert np.all(np.isfinite(g.psfs))
