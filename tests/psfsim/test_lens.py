"""Lens descriptions: validation at the edge (messages name the key and the value), presets, round-trips,
and the field-coordinate convention of :mod:`psfsim.field`."""

import copy
import math
import re
import warnings

import numpy as np
import pytest

import psfsim
from psfsim import LensError, NyquistWarning, PsfsimError, field_coords, lens_from_dict, lens_from_toml, load_lens
from psfsim.lens import FieldGeometry, resolve_lens_path

# 520 nm, NA 0.4: Nyquist lambda/(4 NA) = 0.325 um, so this base lens is sampled exactly at Nyquist.
BASE = {
    "name": "base",
    "optics": {"wavelength_nm": 520.0, "na": 0.4, "pixel_pitch_um": 0.325},
    "field": {"shape_px": [64, 64]},
    "psf": {"size_px": 33, "oversample": 4},
}


def make(*, drop=(), **changes):
    """A deep copy of BASE with ``section__key=value`` (or top-level ``key=value``) changes applied.

    ``drop`` lists ``section__key`` entries to delete.
    """
    d = copy.deepcopy(BASE)
    for path, value in changes.items():
        sec, _, key = path.rpartition("__")
        table = d.setdefault(sec, {}) if sec else d
        table[key] = value
    for path in drop:
        sec, _, key = path.rpartition("__")
        del (d[sec] if sec else d)[key]
    return d


def with_zernike(*terms, **changes):
    d = make(**changes)
    d["zernike"] = [copy.deepcopy(t) for t in terms]
    return d


@pytest.fixture(autouse=True)
def _default_presets(monkeypatch):
    monkeypatch.delenv("PSFSIM_PRESETS", raising=False)


def test_base_lens_is_valid_and_loads_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lens = lens_from_dict(BASE)
    assert lens.name == "base"
    assert lens.optics.wavelength_nm == (520.0,)
    assert lens.optics.spectral_weights == (1.0,)
    assert lens.optics.na == 0.4
    assert lens.optics.nyquist_pitch_um == pytest.approx(0.325)
    assert lens.field.shape_px == (64, 64)
    assert lens.psf_sampling.size_px == 33
    assert lens.psf_sampling.oversample == 4
    assert lens.field_constant
    assert lens.psf(0.0, 0.0).shape == (33, 33)


# --------------------------------------------------------------------------------------------------
# invalid descriptions: each message names the key and the offending value
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "d, pattern",
    [
        (make(optics__na=0), r"optics\.na = 0\b.*0 < na < immersion_index"),
        (make(optics__na=0.0), r"optics\.na = 0\.0\b"),
        (make(optics__na=-0.4), r"optics\.na = -0\.4\b"),
        # NA must stay below the immersion index (default 1.0, or the given one)
        (make(optics__na=1.0), r"optics\.na = 1\.0\b.*immersion_index \(1\.0\)"),
        (make(optics__na=1.3), r"optics\.na = 1\.3\b"),
        (make(optics__na=1.6, optics__immersion_index=1.515), r"optics\.na = 1\.6\b.*immersion_index \(1\.515\)"),
        (make(optics__na=1.515, optics__immersion_index=1.515), r"optics\.na = 1\.515\b"),
    ],
)
def test_na_out_of_range(d, pattern):
    with pytest.raises(LensError, match=pattern):
        lens_from_dict(d)


def test_na_just_below_immersion_index_is_accepted():
    # oil immersion: NA 1.4 in n = 1.515 is valid (pitch fine enough for Nyquist at 520 nm)
    lens = lens_from_dict(
        make(optics__na=1.4, optics__immersion_index=1.515, optics__pixel_pitch_um=0.09), check_psf_box=False
    )
    assert lens.optics.na == 1.4
    assert lens.optics.immersion_index == 1.515


@pytest.mark.parametrize(
    "wl, shown",
    [(0, "0"), (0.0, "0.0"), (-520.0, "-520.0"), ([520.0, 0.0], "[520.0, 0.0]"), ([600.0, -1.0], "[600.0, -1.0]")],
)
def test_wavelength_not_positive(wl, shown):
    with pytest.raises(LensError, match=re.escape(f"optics.wavelength_nm = {shown}") + r".*> 0"):
        lens_from_dict(make(optics__wavelength_nm=wl))


@pytest.mark.parametrize(
    "d, key",
    [
        (make(colour="red"), "colour"),
        (make(optic={"na": 0.4}), "optic"),
        (make(optics__numerical_aperture=0.4), "optics.numerical_aperture"),
        (make(optics__wavelength=520.0), "optics.wavelength"),
        (make(field__shape=[64, 64]), "field.shape"),
        (make(psf__size=33), "psf.size"),
        (make(seidel__W221=0.1), "seidel.W221"),
        (make(seidel__w220=0.1), "seidel.w220"),
        (with_zernike({"noll": 4, "rms_wave": 0.1}), "zernike[0].rms_wave"),
        (with_zernike({"noll": 4, "rms_waves": 0.01}, {"nol": 5, "rms_waves": 0.01}), "zernike[1].nol"),
    ],
)
def test_unknown_keys_are_errors(d, key):
    """A typo must never be silently ignored: the message names the unknown key (with its table)."""
    with pytest.raises(LensError, match=r"unknown key " + re.escape(key) + r" \(allowed in"):
        lens_from_dict(d)


def test_unknown_key_message_lists_allowed_keys():
    with pytest.raises(LensError, match=r"W040, W131, W220, W222, W311"):
        lens_from_dict(make(seidel__W221=0.1))


@pytest.mark.parametrize(
    "wl, weights, shown, counts",
    [
        (520.0, [0.5, 0.5], "[0.5, 0.5]", "2 weights for 1 wavelengths"),
        ([450.0, 550.0, 650.0], [0.3, 0.7], "[0.3, 0.7]", "2 weights for 3 wavelengths"),
        ([450.0, 550.0], [1.0, 1.0, 1.0], "[1.0, 1.0, 1.0]", "3 weights for 2 wavelengths"),
    ],
)
def test_weights_length_must_match_wavelengths(wl, weights, shown, counts):
    d = make(optics__wavelength_nm=wl, optics__weights=weights, optics__pixel_pitch_um=0.25)
    with pytest.raises(LensError, match=re.escape(f"optics.weights = {shown}: {counts}")):
        lens_from_dict(d)


@pytest.mark.parametrize("size", [32, 34, 4, 3, 0, -33])
def test_psf_size_must_be_odd_and_at_least_5(size):
    with pytest.raises(LensError, match=re.escape(f"psf.size_px = {size}: expected an odd whole number >= 5")):
        lens_from_dict(make(psf__size_px=size))


def test_psf_box_too_small_for_aberrated_psf():
    # 3 waves of field curvature (defocus growing as h^2): at the corners the PSF is far wider than 5 px
    d = make(psf__size_px=5, seidel__W220=3.0)
    with pytest.raises(LensError, match=r"psf\.size_px = 5 is too small.*energy falls outside the box") as ei:
        lens_from_dict(d)
    msg = str(ei.value)
    assert "max_energy_outside" in msg
    # the worst point is a corner (|x| = |y| = 1/sqrt 2 on a square frame), not the axis
    m = re.search(r"field point \(([-+]\d\.\d+), ([-+]\d\.\d+)\)", msg)
    assert m is not None, msg
    assert abs(float(m.group(1))) == pytest.approx(1 / math.sqrt(2), abs=1e-3)
    assert abs(float(m.group(2))) == pytest.approx(1 / math.sqrt(2), abs=1e-3)
    # the same box with no aberration is fine, and the check can be switched off
    lens_from_dict(make(psf__size_px=5, psf__max_energy_outside=0.5))
    lens = lens_from_dict(d, check_psf_box=False)
    assert lens.psf(0.0, 0.0).shape == (5, 5)


@pytest.mark.parametrize("noll", [0, -1, 232, 1000])
def test_noll_index_out_of_range(noll):
    d = with_zernike({"noll": noll, "rms_waves": 0.01})
    with pytest.raises(LensError, match=re.escape(f"zernike[0].noll = {noll}: unknown Noll index (expected 1..231)")):
        lens_from_dict(d)


@pytest.mark.parametrize("noll", [1, 231])
def test_noll_index_bounds_are_accepted(noll):
    lens = lens_from_dict(with_zernike({"noll": noll, "rms_waves": 0.0}))
    assert lens.zernike[0].noll == noll


@pytest.mark.parametrize("mono", ["z", "q2", "yx", "x-1", "X", "cx", "xyz", ""])
def test_unknown_monomial(mono):
    d = with_zernike({"noll": 5, "rms_waves": {"c": 0.01, mono: 0.02}})
    with pytest.raises(LensError, match=r"zernike\[0\]\.rms_waves: unknown monomial " + re.escape(repr(mono))):
        lens_from_dict(d)


def test_monomial_degree_limit():
    d = with_zernike({"noll": 5, "rms_waves": {"x4y3": 0.01}})
    with pytest.raises(LensError, match=r"monomial 'x4y3' has degree 7 > 6"):
        lens_from_dict(d)


def test_non_numeric_rms_coefficient():
    d = with_zernike({"noll": 5, "rms_waves": {"x": "0.1"}})
    with pytest.raises(LensError, match=re.escape("zernike[0].rms_waves.x = '0.1'")):
        lens_from_dict(d)


@pytest.mark.parametrize("obsc", [-0.1, 1.0, 1.5])
def test_obscuration_out_of_range(obsc):
    with pytest.raises(LensError, match=re.escape(f"optics.obscuration = {obsc}: expected 0 <= obscuration < 1")):
        lens_from_dict(make(optics__obscuration=obsc))


def test_oversample_too_low_for_nyquist():
    # 1.0 um pixels at Nyquist 0.325 um: oversample 2 gives a 0.5 um grid, still too coarse; need ceil(3.08) = 4
    d = make(optics__pixel_pitch_um=1.0, psf__oversample=2)
    with pytest.raises(LensError, match=r"psf\.oversample = 2: .*coarser than Nyquist.*0\.325.*need oversample >= 4"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NyquistWarning)
            lens_from_dict(d)
    # the suggested value is enough
    with pytest.warns(NyquistWarning):
        lens_from_dict(make(optics__pixel_pitch_um=1.0, psf__oversample=4))
    # and one less is not
    with pytest.raises(LensError, match=r"psf\.oversample = 3\b"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NyquistWarning)
            lens_from_dict(make(optics__pixel_pitch_um=1.0, psf__oversample=3))


@pytest.mark.parametrize("ovs", [0, 17])
def test_oversample_range(ovs):
    with pytest.raises(LensError, match=re.escape(f"psf.oversample = {ovs}: expected a whole number in 1..16")):
        lens_from_dict(make(psf__oversample=ovs))


@pytest.mark.parametrize(
    "d, pattern",
    [
        (make(optics__na="0.4"), r"optics\.na = '0\.4': expected a finite number"),
        (make(optics__na=True), r"optics\.na = True"),
        (make(optics__na=float("nan")), r"optics\.na = nan"),
        (make(psf__size_px=33.0), r"psf\.size_px = 33\.0: expected a whole number"),
        (make(optics__pixel_pitch_um=0.0), r"optics\.pixel_pitch_um = 0\.0: expected > 0"),
        (make(field__shape_px=[64]), r"field\.shape_px = \[64\]"),
        (make(field__shape_px=[1, 1]), r"field\.shape_px = \[1, 1\]: a field of one pixel"),
        (make(field__axis_px=[1.0, "a"]), r"field\.axis_px = \[1\.0, 'a'\]"),
        (make(drop=["optics__na"]), r"missing key optics\.na"),
        (make(drop=["optics__wavelength_nm"]), r"missing key optics\.wavelength_nm"),
        (make(drop=["psf"]), r"missing table \[psf\]"),
        (make(name=""), r"name = ''"),
    ],
)
def test_other_invalid_values(d, pattern):
    with pytest.raises(LensError, match=pattern):
        lens_from_dict(d)


def test_error_message_names_origin():
    with pytest.raises(LensError, match=r"^my-lens\.toml: optics\.na = 0\b"):
        lens_from_dict(make(optics__na=0), where="my-lens.toml")


def test_lens_error_is_a_psfsim_error_and_a_value_error():
    with pytest.raises(PsfsimError):
        lens_from_dict(make(optics__na=0))
    with pytest.raises(ValueError):
        lens_from_dict(make(optics__na=0))


# --------------------------------------------------------------------------------------------------
# Nyquist warning and presets
# --------------------------------------------------------------------------------------------------
def test_pitch_coarser_than_nyquist_warns_and_still_loads():
    # 0.5 um pixels for a 0.325 um Nyquist pitch; oversample 4 gives a 0.125 um grid, fine enough to compute
    d = make(optics__pixel_pitch_um=0.5, psf__oversample=4)
    with pytest.warns(NyquistWarning, match=r"coarser than Nyquist.*0\.325 um") as rec:
        lens = lens_from_dict(d)
    msg = str(rec[0].message)
    assert "pixel_pitch_um = 0.5" in msg
    assert "x1.54" in msg  # 0.5 / 0.325
    assert lens.optics.pixel_pitch_um == 0.5
    p = lens.psf(0.0, 0.0)
    assert p.shape == (33, 33)
    assert p.sum() == pytest.approx(1.0)


def test_nyquist_uses_shortest_wavelength():
    # 450 nm at NA 0.4: Nyquist 0.28125 um; 0.3 um pixels are fine for 520 nm but undersample 450 nm
    d = make(optics__wavelength_nm=[450.0, 520.0], optics__pixel_pitch_um=0.3)
    with pytest.warns(NyquistWarning, match=r"0\.2812"):
        lens_from_dict(d)


def test_pitch_at_nyquist_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lens_from_dict(make(optics__pixel_pitch_um=0.325, psf__oversample=1))


def test_preset_names():
    names = psfsim.preset_names()
    assert {"microscope", "relay", "telescope"} <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", ["microscope", "relay", "telescope"])
def test_presets_load_without_warning(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lens = load_lens(name)
    k = lens.psf_sampling.size_px
    p = lens.psf(0.3, -0.2)
    assert p.shape == (k, k)
    assert p.sum() == pytest.approx(1.0)
    assert np.all(p >= 0)
    assert not lens.field_constant


def test_preset_details():
    relay = load_lens("relay")
    assert relay.field.shape_px == (1536, 2048)
    assert relay.field.axis_px == (700.0, 1100.0)
    assert [z.noll for z in relay.zernike] == [5, 6]
    tele = load_lens("telescope")
    assert tele.optics.wavelength_nm == (450.0, 550.0, 650.0)
    assert tele.optics.obscuration == 0.3
    assert sum(tele.optics.spectral_weights) == pytest.approx(1.0)
    micro = load_lens("microscope")
    assert micro.seidel.W220 == 0.6
    assert micro.field.axis_px == (1023.5, 1023.5)


def test_unknown_preset():
    with pytest.raises(LensError, match=r"lens 'nosuchlens' is neither a file nor a preset; presets: .*microscope"):
        load_lens("nosuchlens")


def test_load_lens_passes_lens_through():
    lens = lens_from_dict(BASE)
    assert load_lens(lens) is lens


# --------------------------------------------------------------------------------------------------
# parsed values
# --------------------------------------------------------------------------------------------------
def test_polynomial_rms_waves():
    d = with_zernike({"noll": 6, "rms_waves": {"c": 0.02, "x": 0.1, "y2": -0.03, "xy": 0.01}})
    lens = lens_from_dict(d)
    (term,) = lens.zernike
    assert term.noll == 6
    assert not term.field_constant
    assert not lens.field_constant
    pts = [(0.0, 0.0), (0.5, -0.3), (-0.7, 0.7), (1.0, 1.0), (-0.2, 0.9)]
    for x, y in pts:
        expected = 0.02 + 0.1 * x - 0.03 * y**2 + 0.01 * x * y
        assert float(term.rms_waves(x, y)) == pytest.approx(expected, abs=1e-15)
    # broadcast over arrays
    xs = np.array([p[0] for p in pts])
    ys = np.array([p[1] for p in pts])
    np.testing.assert_allclose(term.rms_waves(xs, ys), 0.02 + 0.1 * xs - 0.03 * ys**2 + 0.01 * xs * ys, atol=1e-15)


def test_higher_monomials_and_scalar_rms():
    d = with_zernike({"noll": 5, "rms_waves": {"x2y": 0.05, "y3": -0.02, "x": 0.01}}, {"noll": 4, "rms_waves": 0.03})
    lens = lens_from_dict(d)
    t5, t4 = lens.zernike
    x, y = 0.6, -0.4
    assert float(t5.rms_waves(x, y)) == pytest.approx(0.05 * x**2 * y - 0.02 * y**3 + 0.01 * x)
    assert t4.field_constant
    assert float(t4.rms_waves(x, y)) == pytest.approx(0.03)


def test_weights_normalised():
    d = make(optics__wavelength_nm=[500.0, 600.0], optics__weights=[1.0, 3.0], optics__pixel_pitch_um=0.3)
    lens = lens_from_dict(d)
    assert lens.optics.spectral_weights == pytest.approx((0.25, 0.75))
    assert sum(lens.optics.spectral_weights) == pytest.approx(1.0)
    assert lens.optics.reference_wavelength_nm == pytest.approx(575.0)
    # no weights: equal
    lens = lens_from_dict(make(optics__wavelength_nm=[500.0, 520.0, 600.0], optics__pixel_pitch_um=0.3))
    assert lens.optics.spectral_weights == pytest.approx((1 / 3, 1 / 3, 1 / 3))


def test_negative_or_zero_weights_rejected():
    with pytest.raises(LensError, match=re.escape("optics.weights = [1.0, -1.0]")):
        lens_from_dict(make(optics__wavelength_nm=[500.0, 600.0], optics__weights=[1.0, -1.0], optics__pixel_pitch_um=0.3))
    with pytest.raises(LensError, match=re.escape("optics.weights = [0.0, 0.0]: weights must not all be 0")):
        lens_from_dict(make(optics__wavelength_nm=[500.0, 600.0], optics__weights=[0.0, 0.0], optics__pixel_pitch_um=0.3))


@pytest.mark.parametrize("shape, axis", [([64, 64], (31.5, 31.5)), ([48, 81], (23.5, 40.0)), ([5, 7], (2.0, 3.0))])
def test_axis_defaults_to_frame_centre(shape, axis):
    lens = lens_from_dict(make(field__shape_px=shape), check_psf_box=False)
    assert lens.field.shape_px == tuple(shape)
    assert lens.field.axis_px == axis


def test_explicit_axis_kept():
    lens = lens_from_dict(make(field__axis_px=[10, 20.5]))
    assert lens.field.axis_px == (10.0, 20.5)


@pytest.mark.parametrize(
    "text",
    [
        "name = ",
        "[optics\nna = 0.4",
        "[optics]\nna = 0.4\nna = 0.5\n",
        "this is not toml",
    ],
)
def test_invalid_toml(text):
    with pytest.raises(LensError, match=r"^bad\.toml: not valid TOML"):
        lens_from_toml(text, where="bad.toml")


def test_valid_toml_text():
    text = """
name = "from-toml"
[optics]
wavelength_nm = 520.0
na = 0.4
pixel_pitch_um = 0.325
[field]
shape_px = [64, 64]
[psf]
size_px = 33
[[zernike]]
noll = 5
rms_waves = { c = 0.02, x = 0.05 }
"""
    lens = lens_from_toml(text)
    assert lens.name == "from-toml"
    assert lens.psf_sampling.oversample == 4  # default
    assert lens.zernike[0].coefficients == (((0, 0), 0.02), ((1, 0), 0.05))


def test_load_lens_from_file(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('name = "file-lens"\n[optics]\nwavelength_nm = 520.0\nna = 0.4\npixel_pitch_um = 0.325\n'
                    "[field]\nshape_px = [64, 64]\n[psf]\nsize_px = 33\n")
    assert load_lens(good).name == "file-lens"
    assert load_lens(str(good)).name == "file-lens"
    assert resolve_lens_path(str(good)) == good

    bad = tmp_path / "typo.toml"
    bad.write_text(good.read_text().replace("pixel_pitch_um", "pixle_pitch_um"))
    with pytest.raises(LensError, match=re.escape(str(bad)) + r": unknown key optics\.pixle_pitch_um"):
        load_lens(bad)

    broken = tmp_path / "broken.toml"
    broken.write_text("[optics\n")
    with pytest.raises(LensError, match=re.escape(str(broken)) + r": not valid TOML"):
        load_lens(broken)

    with pytest.raises(LensError, match=r"is not a file"):
        load_lens(tmp_path)


def test_to_dict_round_trip():
    d = with_zernike(
        {"noll": 6, "rms_waves": {"c": 0.02, "x": 0.1, "y2": -0.03, "xy": 0.01}},
        {"noll": 8, "rms_waves": 0.04},
        seidel__W131=0.2,
        seidel__W220=0.3,
        field__axis_px=[20.0, 40.0],
    )
    lens = lens_from_dict(d)
    dd = lens.to_dict()
    assert dd == d
    again = lens_from_dict(dd)
    assert again.optics == lens.optics
    assert again.field == lens.field
    assert again.psf_sampling == lens.psf_sampling
    assert again.seidel == lens.seidel
    assert again.zernike == lens.zernike
    x = np.array([0.0, 0.4, -0.7, 0.5])  # inside the decentred 64 x 64 frame: x in [-0.91, 0.53]
    y = np.array([0.0, -0.3, 0.6, 0.9])
    p1 = lens.psfs(x, y)
    np.testing.assert_array_equal(again.psfs(x, y), p1)
    # the field actually varies, so equality above is a real check
    assert np.abs(p1[0] - p1[3]).max() > 1e-3


def test_to_dict_is_a_copy():
    d = make()
    lens = lens_from_dict(d)
    out = lens.to_dict()
    out["optics"]["na"] = 0.1
    d["optics"]["na"] = 0.2  # mutating the input after load does not change the lens either
    assert lens.to_dict()["optics"]["na"] == 0.4
    assert lens.optics.na == 0.4


def test_preset_round_trip():
    lens = load_lens("relay")
    again = lens_from_dict(lens.to_dict())
    assert again.name == lens.name
    assert again.zernike == lens.zernike
    np.testing.assert_array_equal(again.psf(0.5, -0.4), lens.psf(0.5, -0.4))


# --------------------------------------------------------------------------------------------------
# field coordinates
# --------------------------------------------------------------------------------------------------
def _lens_5x7(axis=None):
    d = make(field__shape_px=[5, 7])
    if axis is not None:
        d["field"]["axis_px"] = list(axis)
    return lens_from_dict(d, check_psf_box=False)


def test_field_coords_centred_5x7():
    lens = _lens_5x7()
    c = field_coords(lens)
    assert c.shape == (2, 5, 7)
    assert c.dtype == np.float64
    R = math.sqrt(13.0)  # hypot((5 - 1) / 2, (7 - 1) / 2) = hypot(2, 3)
    # (row, col) -> (x, y): x = (col - 3) / R grows with the column, y = (row - 2) / R with the row
    for (r, col), (x, y) in {
        (0, 0): (-3 / R, -2 / R),
        (4, 6): (3 / R, 2 / R),
        (2, 3): (0.0, 0.0),
        (1, 5): (2 / R, -1 / R),
        (4, 0): (-3 / R, 2 / R),
        (0, 6): (3 / R, -2 / R),
    }.items():
        assert c[0, r, col] == pytest.approx(x, abs=1e-15)
        assert c[1, r, col] == pytest.approx(y, abs=1e-15)
    # x is constant down a column, y constant along a row
    assert np.all(c[0] == c[0][:1])
    assert np.all(c[1] == c[1][:, :1])


def test_field_coords_decentred_5x7():
    lens = _lens_5x7(axis=(1.0, 2.5))
    c = field_coords(lens)
    R = math.sqrt(13.0)  # the scale is the frame's half-diagonal, wherever the axis is
    for (r, col), (x, y) in {
        (0, 0): (-2.5 / R, -1 / R),
        (1, 2): (-0.5 / R, 0.0),
        (4, 6): (3.5 / R, 3 / R),
        (3, 1): (-1.5 / R, 2 / R),
    }.items():
        assert c[0, r, col] == pytest.approx(x, abs=1e-15)
        assert c[1, r, col] == pytest.approx(y, abs=1e-15)
    # the same through a bare FieldGeometry and through the Lens method
    g = FieldGeometry(shape_px=(5, 7), axis_px=(1.0, 2.5))
    np.testing.assert_array_equal(field_coords(g), c)
    np.testing.assert_array_equal(lens.field_coords(), c)


@pytest.mark.parametrize("shape", [(5, 7), (64, 64), (48, 81), (2, 9)])
def test_field_height_is_one_at_corners_of_centred_frame(shape):
    g = FieldGeometry(shape_px=shape, axis_px=((shape[0] - 1) / 2, (shape[1] - 1) / 2))
    c = field_coords(g)
    h = np.hypot(c[0], c[1])
    H, W = shape
    for r, col in [(0, 0), (0, W - 1), (H - 1, 0), (H - 1, W - 1)]:
        assert h[r, col] == pytest.approx(1.0, abs=1e-14)
    assert h.max() == pytest.approx(1.0, abs=1e-14)
    np.testing.assert_allclose(np.hypot(*g.corners_field.T), 1.0, atol=1e-14)
    # azimuth convention: atan2(y, x); the top-right corner (row 0, last column) has x > 0, y < 0
    assert c[0, 0, W - 1] > 0 and c[1, 0, W - 1] < 0


def test_window_coords_equal_slice_of_full_frame():
    lens = lens_from_dict(make(field__shape_px=[40, 56], field__axis_px=[12.0, 30.5]), check_psf_box=False)
    full = field_coords(lens)
    for origin, shape in [((0, 0), (40, 56)), ((10, 20), (8, 5)), ((32, 48), (8, 8)), ((39, 55), (1, 1)), ((5, 0), (3, 56))]:
        win = field_coords(lens, origin=origin, shape=shape)
        r0, c0 = origin
        h, w = shape
        assert win.shape == (2, h, w)
        np.testing.assert_array_equal(win, full[:, r0 : r0 + h, c0 : c0 + w])
    w32 = field_coords(lens, origin=(10, 20), shape=(8, 5), dtype=np.float32)
    assert w32.dtype == np.float32
    np.testing.assert_allclose(w32, full[:, 10:18, 20:25], rtol=1e-6)


@pytest.mark.parametrize(
    "origin, shape",
    [((60, 0), (8, 8)), ((0, 57), (8, 8)), ((-1, 0), (8, 8)), ((0, -3), (4, 4)), ((0, 0), (65, 64)), ((1, 1), (64, 64))],
)
def test_window_outside_frame_raises(origin, shape):
    lens = lens_from_dict(BASE)
    with pytest.raises(PsfsimError, match=re.escape(f"window of shape {shape} at origin {origin} does not fit")) as ei:
        field_coords(lens, origin=origin, shape=shape)
    assert "(64, 64)" in str(ei.value)


def test_window_outside_frame_allowed_on_request():
    lens = lens_from_dict(BASE)
    c = field_coords(lens, origin=(-2, 60), shape=(4, 8), allow_outside=True)
    R = math.hypot(31.5, 31.5)
    assert c[0, 0, 0] == pytest.approx((60 - 31.5) / R)
    assert c[1, 0, 0] == pytest.approx((-2 - 31.5) / R)
    assert c[0, 0, -1] > 1 / math.sqrt(2)  # continues past the frame's edge


def test_empty_window_raises():
    with pytest.raises(PsfsimError, match=r"window shape \(0, 4\)"):
        field_coords(lens_from_dict(BASE), origin=(0, 0), shape=(0, 4))


# --------------------------------------------------------------------------------------------------
# equality, shared engines, pickling
# --------------------------------------------------------------------------------------------------
def test_equal_lenses_share_one_engine_and_pickle_small():
    import pickle

    a, b = load_lens("microscope"), load_lens("microscope")
    assert a is not b and a == b and hash(a) == hash(b)
    assert a._engine is b._engine  # one PSF engine per fingerprint (psfsim.psf.engine_for)
    a.psf(0.3, 0.1)  # engine and canonical form cached on the instance
    blob = pickle.dumps(a)
    assert len(blob) < 50_000, len(blob)  # the DFT matrices alone are > 100 kB
    c = pickle.loads(blob)
    assert c == a and hash(c) == hash(a) and c.to_dict() == a.to_dict()
    assert c._engine is a._engine
    np.testing.assert_array_equal(c.psf(0.3, 0.1), a.psf(0.3, 0.1))
    assert a != load_lens("relay")


def test_engine_cache_is_bounded():
    from psfsim.psf import ENGINE_CACHE_SIZE, _engines

    for i in range(ENGINE_CACHE_SIZE + 3):
        lens_from_dict(make(seidel__W040=0.01 * i), check_psf_box=False)._engine
    assert len(_engines) <= ENGINE_CACHE_SIZE


def test_description_keeps_the_file_as_written():
    d = make(optics__wavelength_nm=[500.0, 600.0], optics__weights=[1.0, 3.0], optics__pixel_pitch_um=0.3)
    lens = lens_from_dict(d)
    assert lens.description == d and lens.to_dict() == d
    assert lens.description["optics"]["weights"] == [1.0, 3.0]  # the TOML key stays `weights`
    assert lens.optics.spectral_weights == pytest.approx((0.25, 0.75))


# --------------------------------------------------------------------------------------------------
# sign convention: born-wolf (default) or poppy
# --------------------------------------------------------------------------------------------------
def _centroid(p):
    yy, xx = np.indices(p.shape)
    c = (p.shape[0] - 1) / 2
    return (p * xx).sum() - c, (p * yy).sum() - c


@pytest.mark.parametrize("convention, sign", [(None, 1), ("born-wolf", 1), ("poppy", -1)])
def test_tilt_sign_convention(convention, sign):
    """Noll Z2 = 2 rho cos(theta) (RMS-normalised, Noll 1976), so a RMS waves is W = 2 a u waves: the linear
    pupil phase 2 pi (2 a) u, with u in units of the pupil radius (frequency u NA / lambda), shifts the PSF by
    2 a lambda / NA (Fourier shift theorem): toward +x in Born & Wolf's sign, -x in poppy's."""
    lam, na, pitch, shift_px = 0.52, 0.4, 0.325, 2.0
    a = shift_px * pitch * na / (2 * lam)
    d = with_zernike({"noll": 2, "rms_waves": a}, psf__size_px=45)
    if convention:
        d["convention"] = convention
    lens = lens_from_dict(d)
    cx, cy = _centroid(lens.psf(0.0, 0.0))
    assert cx == pytest.approx(sign * shift_px, abs=0.03)
    assert abs(cy) < 1e-6
    assert lens.to_dict() == d  # the convention is recorded in the description


def test_coma_tail_flips_under_poppy():
    """W131 > 0: the comatic tail points away from the axis in Born & Wolf's sign, toward it in poppy's."""
    m3 = {}
    for conv in ("born-wolf", "poppy"):
        # (0.9, 0) lies past the square frame's edge (|x| <= 0.72): a margin point, the model still holds
        p = lens_from_dict(make(convention=conv, seidel__W131=0.6, psf__size_px=45)).psf(0.9, 0.0, allow_outside=True)
        yy, xx = np.indices(p.shape)
        m3[conv] = (p * (xx - (p * xx).sum()) ** 3).sum()
    assert m3["born-wolf"] > 0.5 and m3["poppy"] == pytest.approx(-m3["born-wolf"], rel=1e-9)


def test_poppy_convention_mirrors_the_psf():
    """poppy's PSF is Born & Wolf's mirrored through the axis: odd terms flip (tilt, coma, W131, W311),
    even ones (defocus, astigmatism, spherical) stay."""
    terms = [{"noll": 2, "rms_waves": 0.1}, {"noll": 4, "rms_waves": 0.1}, {"noll": 6, "rms_waves": {"x": 0.08}},
             {"noll": 8, "rms_waves": {"c": 0.05, "y": 0.05}}, {"noll": 9, "rms_waves": 0.04}]
    kw = dict(seidel__W131=0.2, seidel__W311=0.1, seidel__W040=0.1, seidel__W222=0.1, psf__size_px=45)
    bw = lens_from_dict(with_zernike(*terms, **kw))
    pp = lens_from_dict(with_zernike(*terms, convention="poppy", **kw))
    assert pp != bw
    for x, y in [(0.0, 0.0), (0.5, -0.3), (-0.4, 0.6)]:
        np.testing.assert_allclose(pp.psf(x, y), bw.psf(x, y)[::-1, ::-1], atol=1e-12)
    assert [z.coefficients[0][1] for z in pp.zernike] == [-0.1, 0.1, 0.08, -0.05, -0.04]
    assert (pp.seidel.W131, pp.seidel.W311, pp.seidel.W040) == (-0.2, -0.1, 0.1)


def test_unknown_convention():
    with pytest.raises(LensError, match=r"convention = 'zemax': expected one of 'born-wolf', 'poppy'"):
        lens_from_dict(make(convention="zemax"))
