"""Property-based fuzz of lens descriptions (hypothesis): every description, plausible or hostile, is either
refused with a LensError (never another exception) or gives finite, unit-sum PSFs whose energy outside the box
stays within ``max_energy_outside`` at random field points of the frame (not only where the load check probed).

Reference for the energy bound: the load check's own limit; the tolerance (+1 percentage point) covers the
Richardson extrapolation's error, measured at up to 0.6 points against the analytic Airy pattern
(:mod:`psfsim.psf_metrics`), and the gap between the probed points and the worst point of the field.
"""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from psfsim import LensError, lens_from_dict

FUZZ = settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

#: Values no lens key accepts, or accepts only in some places: NaN, inf, huge, negative, zero, wrong types.
HOSTILE = st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -1e308, 1e5, 0, 0.0, -1.0, -0.0, 1e-300,
                           10**400, 2001, 10**6, True, None, "520", "", [], [1.0, 2.0], [float("nan")], {"a": 1}])


MONOMIALS = ["c", "x", "y", "x2", "xy", "y2", "x3", "x2y", "xy2", "y3", "x4", "x2y2", "y4", "x6", "x3y3"]
#: Non-canonical, unknown or too-high monomials, and spellings that duplicate a canonical one.
BAD_MONOMIALS = ["x1", "x1y", "y1", "x0", "z", "", "x7", "X", "xx", "x-1", "x1y1", "x02"]


@st.composite
def plausible_descriptions(draw):
    """Descriptions a user could mean: any of them may still be refused (a box too small, undersampling)."""
    lam = draw(st.floats(400.0, 1100.0))
    na = draw(st.floats(0.02, 0.9))
    nyq = lam * 1e-3 / (4 * na)
    optics = {"wavelength_nm": lam, "na": na, "pixel_pitch_um": draw(st.floats(0.8, 1.5)) * nyq}
    if draw(st.booleans()):
        optics["wavelength_nm"] = draw(st.lists(st.floats(400.0, 1100.0), min_size=1, max_size=3))
        optics["weights"] = draw(st.lists(st.floats(0.0, 2.0), min_size=len(optics["wavelength_nm"]),
                                          max_size=len(optics["wavelength_nm"])))
    if draw(st.booleans()):
        optics["obscuration"] = draw(st.floats(0.0, 0.6))
    if draw(st.booleans()):
        optics["immersion_index"] = draw(st.floats(1.0, 2.0))
    H, W = draw(st.integers(1, 128)), draw(st.integers(2, 128))
    field = {"shape_px": [H, W]}
    if draw(st.booleans()):
        field["axis_px"] = [draw(st.floats(-0.5 * H, 1.5 * H)), draw(st.floats(-0.5 * W, 1.5 * W))]
    psf = {"size_px": 2 * draw(st.integers(2, 12)) + 1, "oversample": draw(st.integers(1, 4))}
    if draw(st.integers(0, 3)):  # mostly a box and a fine grid that suit the optics (small: the fuzz stays fast)
        psf = {"size_px": 2 * draw(st.integers(14, 20)) + 1, "oversample": draw(st.integers(2, 3))}
    if draw(st.booleans()):
        psf["pupil_samples"] = draw(st.integers(16, 64))
    if draw(st.booleans()):
        psf["max_energy_outside"] = draw(st.floats(0.01, 0.5))
    d = {"name": draw(st.text(min_size=1, max_size=8)), "optics": optics, "field": field, "psf": psf}
    small = st.floats(-0.15, 0.15) if draw(st.integers(0, 4)) else st.floats(-3.0, 3.0)
    if draw(st.booleans()):
        keys = draw(st.lists(st.sampled_from(["W040", "W131", "W222", "W220", "W311"]), max_size=3, unique=True))
        d["seidel"] = {k: draw(small) for k in keys}
    if draw(st.booleans()):
        terms = []
        for _ in range(draw(st.integers(1, 3))):
            if draw(st.booleans()):
                rw = draw(small)
            else:
                rw = {n: draw(small) for n in draw(st.lists(st.sampled_from(MONOMIALS), max_size=4, unique=True))}
            terms.append({"noll": draw(st.integers(1, 40)), "rms_waves": rw})
        d["zernike"] = terms
    return d


def _leaves(d, path=()):
    """Paths of every value in a description (tables and lists walked)."""
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else ()
    for k, v in items:
        yield path + (k,)
        yield from _leaves(v, path + (k,))


@st.composite
def hostile_descriptions(draw):
    """A plausible description with one to three corruptions: a hostile value anywhere, an unknown key, a
    non-canonical or duplicate monomial, a list of the wrong length."""
    d = draw(plausible_descriptions())
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["value", "value", "value", "key", "monomial", "length"]))
        if kind == "value":
            path = draw(st.sampled_from(list(_leaves(d))))
            parent = d
            for k in path[:-1]:
                parent = parent[k]
            parent[path[-1]] = draw(HOSTILE)
        elif kind == "key":
            table = draw(st.sampled_from(["", "optics", "field", "psf"]))
            target = d if table == "" else d[table]
            if isinstance(target, dict):
                target[draw(st.sampled_from(["nA", "size", "zernikes", "wavelength", "W040"]))] = 1
        elif kind == "monomial":
            d.setdefault("zernike", []).append({"noll": 4, "rms_waves": {draw(st.sampled_from(MONOMIALS)): 0.01,
                                                                        draw(st.sampled_from(BAD_MONOMIALS)): 0.02}})
        else:
            table, key = draw(st.sampled_from([("field", "shape_px"), ("field", "axis_px"), ("optics", "weights")]))
            d[table][key] = draw(st.lists(st.integers(1, 64), max_size=4))
    return d


@FUZZ
@pytest.mark.filterwarnings("ignore::psfsim.NyquistWarning")
@given(d=st.one_of(plausible_descriptions(), hostile_descriptions()), u=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=3, max_size=3))
def test_lens_is_refused_cleanly_or_gives_sound_psfs(d, u):
    try:
        lens = lens_from_dict(d)
    except LensError as e:
        event(f"refused: {str(e).split(':')[1].strip()[:30]}")
        return
    event("accepted")
    H, W = lens.field.shape_px
    rows = np.array([a for a, _ in u]) * (H - 1)
    cols = np.array([b for _, b in u]) * (W - 1)
    x, y = lens.field.pixel_to_field(rows, cols)
    p = lens.psfs(x, y)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=(1, 2)), 1.0, atol=1e-9)
    assert np.all(p >= 0)
    m = lens.psf_metrics(x, y)
    assert np.all(np.isfinite(m.strehl)) and np.all(np.isfinite(m.fwhm_px))
    assert np.all(m.energy_outside <= lens.psf_sampling.max_energy_outside + 0.01), (m.energy_outside, x, y)
    assert math.isfinite(lens.optics.reference_wavelength_nm)
