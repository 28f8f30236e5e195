"""A lens from a table of Zernikes at field points (``[field_table]``, issue 17).

References: scipy's own interpolators on the same points (LinearNDInterpolator, CloughTocher2DInterpolator,
RegularGridInterpolator), exact reproduction of affine and bilinear functions, a brute-force nearest point of
the hull, the polynomial Zernike path of the same lens (wavelength scaling, sums), the Fourier shift theorem
(tilt), the analytic pixel-integrated Airy pattern (the OTF of a circular pupil times the pixel's sinc), and
GalSim's ``OpticalPSF`` given the interpolated coefficients.
"""

import copy
import pickle
import warnings

import numpy as np
import pytest
from scipy.interpolate import CloughTocher2DInterpolator, LinearNDInterpolator, RegularGridInterpolator

import psfsim
from psfsim import LensError, NyquistWarning, PsfsimError, lens_from_dict, load_lens
from psfsim.cli import main
from psfsim.field_table import format_table_csv, read_table_csv, table_from_columns
from psfsim.wavefront import field_coefficients

# 520 nm, NA 0.4: Nyquist lambda/(4 NA) = 0.325 um = the pixel pitch (as test_lens.py's BASE)
BASE = {
    "name": "tab",
    "optics": {"wavelength_nm": 520.0, "na": 0.4, "pixel_pitch_um": 0.325},
    "field": {"shape_px": [64, 64]},
    "psf": {"size_px": 33, "oversample": 4},
}


def build(d, **kw):
    """A lens without the box check (each test here is about something else; test_lens.py covers the check,
    and the command-line test below runs it on a tabulated lens)."""
    return lens_from_dict(d, check_psf_box=False, **kw)


def grid_cols(nr=3, nc=3, H=64, W=64, **terms):
    """Columns of a table on an ``nr x nc`` grid spanning the frame's pixel centres; ``terms``: Z<j> = f(r, c)."""
    rr, cc = np.meshgrid(np.linspace(0, H - 1, nr), np.linspace(0, W - 1, nc), indexing="ij")
    cols = {"row_px": rr.ravel().tolist(), "col_px": cc.ravel().tolist()}
    for name, f in terms.items():
        cols[name] = [float(f(r, c)) for r, c in zip(rr.ravel(), cc.ravel())]
    return cols


def lens_dict(cols, *, base=BASE, **settings):
    d = copy.deepcopy(base)
    d["field_table"] = {"wavelength_nm": 520.0, **settings, **copy.deepcopy(cols)}
    return d


def scattered(n=14, seed=3, H=64, W=64):
    """The frame's corner pixels plus ``n - 4`` seeded random points inside."""
    rng = np.random.default_rng(seed)
    pts = np.concatenate([[[0, 0], [0, W - 1], [H - 1, 0], [H - 1, W - 1]], rng.uniform(2, [H - 3, W - 3], (n - 4, 2))])
    return pts


# --------------------------------------------------------------------------------------------------
# reading the table, the description, the fingerprint
# --------------------------------------------------------------------------------------------------
def test_csv_file_and_inline_table_are_one_lens(tmp_path):
    """A CSV (comments, sparse Z columns in any order) and the same columns inline make equal lenses; the
    description holds the table inline, so it rebuilds the lens without the file."""
    cols = grid_cols(Z7=lambda r, c: 0.02 + 1e-4 * c, Z4=lambda r, c: 1e-3 * r)
    (tmp_path / "t.csv").write_text("# exported from a design\n" + format_table_csv(cols).replace(",", " , "))
    d = copy.deepcopy(BASE)
    d["field_table"] = {"file": "t.csv", "wavelength_nm": 520.0}
    (tmp_path / "lens.toml").write_text(
        "name = 'tab'\n[optics]\nwavelength_nm = 520.0\nna = 0.4\npixel_pitch_um = 0.325\n[field]\nshape_px = [64, 64]\n"
        "[psf]\nsize_px = 33\noversample = 4\n[field_table]\nfile = 't.csv'\nwavelength_nm = 520.0\n")
    from_file = load_lens(tmp_path / "lens.toml", check_psf_box=False)
    inline = build(lens_dict(cols))
    assert from_file == inline and from_file.fingerprint == inline.fingerprint
    desc = from_file.to_dict()["field_table"]
    assert "file" not in desc and desc["source"] == "t.csv" and desc["Z7"] == cols["Z7"]
    rebuilt = build(from_file.to_dict())  # no folder needed any more
    assert rebuilt == from_file
    np.testing.assert_array_equal(rebuilt.psf(0.3, -0.2), from_file.psf(0.3, -0.2))
    assert pickle.loads(pickle.dumps(from_file)) == from_file
    assert from_file.field_table.nolls == (4, 7)


def test_a_changed_table_is_a_new_lens(tmp_path):
    """The fingerprint (cache and checkpoint key) follows the table's contents, not its file name."""
    cols = grid_cols(Z4=lambda r, c: 1e-3 * r)
    (tmp_path / "t.csv").write_text(format_table_csv(cols))
    d = lens_dict({}, file="t.csv")
    a = build(d, base_dir=tmp_path)
    cols["Z4"][4] += 1e-6
    (tmp_path / "t.csv").write_text(format_table_csv(cols))
    b = build(d, base_dir=tmp_path)
    assert a != b and a.fingerprint != b.fingerprint
    assert build(lens_dict(grid_cols(Z4=lambda r, c: 1e-3 * r))) == a


# --------------------------------------------------------------------------------------------------
# interpolation against scipy's interpolators on the same points
# --------------------------------------------------------------------------------------------------
def _table(points, values, interpolation="linear", extrapolate="none"):
    cols = {"row_px": points[:, 0].tolist(), "col_px": points[:, 1].tolist()}
    cols.update({f"Z{j}": values[:, i].tolist() for i, j in enumerate(range(4, 4 + values.shape[1]))})
    return table_from_columns(cols, wavelength_nm=500.0, interpolation=interpolation, extrapolate=extrapolate)


@pytest.mark.parametrize("layout", ["scattered", "grid"])
def test_linear_matches_scipy_linearnd(layout):
    rng = np.random.default_rng(0)
    pts = scattered() if layout == "scattered" else np.stack(np.meshgrid([0, 20, 63], [0, 30, 50, 63], indexing="ij"), -1).reshape(-1, 2).astype(float)
    vals = rng.normal(0, 0.05, (len(pts), 3))
    t = _table(pts, vals)
    q = np.concatenate([rng.uniform(0, 63, (300, 2)), pts])
    ref = LinearNDInterpolator(pts, vals)(q)
    np.testing.assert_allclose(t.coefficients(q[:, 0], q[:, 1]), ref, atol=1e-12)


def test_linear_reproduces_affine_functions_exactly():
    pts = scattered()
    f = lambda p: np.stack([0.01 + 2e-3 * p[:, 0] - 1e-3 * p[:, 1], -0.3 + 1e-4 * p[:, 1]], 1)  # noqa: E731
    t = _table(pts, f(pts))
    q = np.random.default_rng(1).uniform(0, 63, (200, 2))
    np.testing.assert_allclose(t.coefficients(q[:, 0], q[:, 1]), f(q), atol=1e-13)


def test_cubic_matches_scipy_clough_tocher():
    rng = np.random.default_rng(2)
    pts = scattered(20)
    vals = np.stack([np.sin(pts[:, 0] / 20) * 0.05, np.cos(pts[:, 1] / 15) * 0.03], 1)
    t = _table(pts, vals, "cubic")
    q = rng.uniform(0, 63, (300, 2))
    np.testing.assert_allclose(t.coefficients(q[:, 0], q[:, 1]), CloughTocher2DInterpolator(pts, vals)(q), atol=1e-12)
    # and it reproduces affine functions, to the tolerance of the iterative global gradient estimate (scipy's
    # tol = 1e-6 relative; 1.2e-6 measured on values up to 0.19)
    aff = np.stack([1e-3 * pts[:, 0] + 2e-3 * pts[:, 1]], 1)
    np.testing.assert_allclose(_table(pts, aff, "cubic").coefficients(q[:, 0], q[:, 1])[:, 0],
                               1e-3 * q[:, 0] + 2e-3 * q[:, 1], atol=5e-6)


def test_bilinear_matches_scipy_regular_grid():
    """A non-uniform rectangular grid, the points listed in a shuffled order."""
    rng = np.random.default_rng(4)
    r, c = np.array([0.0, 10.0, 40.0, 63.0]), np.array([0.0, 25.0, 63.0])
    V = rng.normal(0, 0.05, (4, 3, 2))
    rr, cc = np.meshgrid(r, c, indexing="ij")
    order = rng.permutation(12)
    pts = np.stack([rr.ravel(), cc.ravel()], 1)[order]
    t = _table(pts, V.reshape(12, 2)[order], "bilinear")
    q = np.concatenate([rng.uniform(0, 63, (300, 2)), pts])
    ref = RegularGridInterpolator((r, c), V, method="linear")(q)
    np.testing.assert_allclose(t.coefficients(q[:, 0], q[:, 1]), ref, atol=1e-13)
    # exact on a bilinear function
    g = lambda a, b: 0.01 + 1e-3 * a - 2e-3 * b + 1e-5 * a * b  # noqa: E731
    tb = _table(np.stack([rr.ravel(), cc.ravel()], 1), g(rr, cc).reshape(12, 1), "bilinear")
    np.testing.assert_allclose(tb.coefficients(q[:, 0], q[:, 1])[:, 0], g(q[:, 0], q[:, 1]), atol=1e-13)


def test_nearest_extrapolation_is_the_nearest_point_of_the_hull():
    """Outside the hull: the value at the nearest point of the hull, found here by brute force on a dense
    sampling of the hull's boundary (linear), and by clamping to the grid (bilinear, RegularGridInterpolator)."""
    from scipy.spatial import ConvexHull

    rng = np.random.default_rng(5)
    pts = rng.uniform(10, 50, (12, 2))
    vals = rng.normal(0, 0.05, (12, 1))
    t = _table(pts, vals, extrapolate="nearest")
    hv = pts[ConvexHull(pts).vertices]
    s = np.linspace(0, 1, 20001)[:-1, None]
    boundary = np.concatenate([a + s * (b - a) for a, b in zip(hv, np.roll(hv, -1, 0))])
    q = rng.uniform(-30, 90, (40, 2))
    nearest = boundary[np.argmin(np.hypot(*(q[:, None] - boundary[None]).transpose(2, 0, 1)), axis=1)]
    lin = LinearNDInterpolator(pts, vals)
    inside = np.isfinite(lin(q)[:, 0])
    assert 0 < inside.sum() < 30
    ref = np.where(inside[:, None], lin(q), lin(nearest + (pts.mean(0) - nearest) * 1e-9))
    np.testing.assert_allclose(t.coefficients(q[:, 0], q[:, 1]), ref, atol=2e-4 * np.abs(vals).max())

    r, c = np.array([5.0, 30.0, 55.0]), np.array([5.0, 55.0])
    V = rng.normal(0, 0.05, (3, 2, 1))
    rr, cc = np.meshgrid(r, c, indexing="ij")
    tg = _table(np.stack([rr.ravel(), cc.ravel()], 1), V.reshape(6, 1), "bilinear", "nearest")
    ref = RegularGridInterpolator((r, c), V)(np.stack([np.clip(q[:, 0], 5, 55), np.clip(q[:, 1], 5, 55)], 1))
    np.testing.assert_allclose(tg.coefficients(q[:, 0], q[:, 1]), ref, atol=1e-13)


# --------------------------------------------------------------------------------------------------
# the wavefront: wavelength scaling, sums with the other terms, tilt, an off-axis frame
# --------------------------------------------------------------------------------------------------
def test_table_waves_scale_as_lambda_table_over_lambda_and_add_to_the_other_terms():
    """Table waves at 700 nm in a polychromatic lens (reference 540 nm) are a fixed path difference:
    700/540 waves at the reference; with Seidel and polynomial terms, the PSF equals the one of the same
    wavefront written as polynomial terms only (the path every other lens takes)."""
    cols = grid_cols(nr=2, nc=2, Z4=lambda r, c: 0.02 + 1e-3 * c, Z8=lambda r, c: 0.03 - 5e-4 * r)
    base = copy.deepcopy(BASE)
    base["optics"].update(wavelength_nm=[500.0, 580.0], weights=[1.0, 1.0], pixel_pitch_um=0.3)
    base["seidel"] = {"W222": 0.1}
    base["zernike"] = [{"noll": 4, "rms_waves": {"c": 0.01, "y": 0.02}}]
    tab = build(lens_dict(cols, base=base, wavelength_nm=700.0))
    s = 700.0 / 540.0
    # the 2 x 2 grid's bilinear interpolant written as field polynomials: pixel (r, c) = (y R + 31.5, x R + 31.5)
    R = tab.field.half_diagonal_px
    poly = copy.deepcopy(base)
    poly["zernike"] = [
        {"noll": 4, "rms_waves": {"c": 0.01 + s * (0.02 + 1e-3 * 31.5), "x": s * 1e-3 * R, "y": 0.02}},
        {"noll": 8, "rms_waves": {"c": s * (0.03 - 5e-4 * 31.5), "y": -s * 5e-4 * R}},
    ]
    ref = build(poly)
    xs, ys = np.array([0.0, 0.5, -0.6, 0.2]), np.array([0.0, -0.4, 0.6, 0.7])
    np.testing.assert_allclose(field_coefficients(tab, xs, ys), field_coefficients(ref, xs, ys), atol=1e-12)
    np.testing.assert_allclose(tab.psfs(xs, ys), ref.psfs(xs, ys), atol=1e-12)


@pytest.mark.parametrize("keep", [False, True])
def test_tilt_dropped_by_default_kept_on_request(keep):
    """Z2 = 2 rho cos(theta) of a RMS waves shifts the PSF by 2 a lambda / NA (Fourier shift theorem),
    only with keep_tilt = true; by default the PSF stays centred on its source pixel."""
    a = 1.0 * 0.325 * 0.4 / (2 * 0.52)  # one pixel
    cols = grid_cols(nr=2, nc=2, Z1=lambda r, c: 0.3, Z2=lambda r, c: a, Z4=lambda r, c: 0.02)
    lens = build(lens_dict(cols, keep_tilt=keep, base={**BASE, "psf": {"size_px": 45}}))
    p = lens.psf(0.1, 0.2)
    yy, xx = np.indices(p.shape)
    cx = (p * xx).sum() - 22
    assert cx == pytest.approx(1.0 if keep else 0.0, abs=0.03)
    assert lens.field_table.nolls == ((1, 2, 4) if keep else (4,))


def test_table_is_in_pixels_whatever_the_axis():
    """An off-axis detector (axis_px far outside the frame): the table still refers to the frame's pixels,
    the field coordinates keep their definition, and psfsim info reports the frame's centre."""
    cols = grid_cols(Z4=lambda r, c: 1e-3 * r, Z6=lambda r, c: 5e-4 * c)
    centred = build(lens_dict(cols))
    d = lens_dict(cols)
    d["field"]["axis_px"] = [-100.0, 150.0]
    off = build(d)
    xy = psfsim.field_coords(off, origin=(10, 20), shape=(3, 4))
    R = off.field.half_diagonal_px
    np.testing.assert_allclose(xy[0, 0], (np.arange(20, 24) - 150.0) / R)
    np.testing.assert_allclose(xy[1, :, 0], (np.arange(10, 13) + 100.0) / R)
    for r, c in [(0, 0), (10, 50), (63, 63)]:
        a = field_coefficients(centred, *centred.field.pixel_to_field(r, c))
        b = field_coefficients(off, *off.field.pixel_to_field(r, c))
        np.testing.assert_allclose(a[:, -2:], b[:, -2:], atol=1e-15)  # the table's Z4, Z6
    text = psfsim.report.lens_summary(off)
    assert "frame centre" in text and "field table     9 points (3 x 3 grid)" not in text
    assert "field table     9 points from inline" in text and "interpolation   linear" in text


# --------------------------------------------------------------------------------------------------
# refusals: one clear line each
# --------------------------------------------------------------------------------------------------
def test_points_outside_the_table_are_refused_naming_them():
    cols = grid_cols(H=64, W=64, Z4=lambda r, c: 1e-3 * r)
    lens = build(lens_dict(cols))
    lens.psf(*lens.field.pixel_to_field(-0.5, 63.5))  # the edge pixels' own area: within half a pixel
    with pytest.raises(PsfsimError, match=r"pixel \(row 31.5, col 8[0-9.]+\) lies [0-9.]+ px outside the field "
                                          r"table's convex hull \(9 points, rows 0..63, cols 0..63 px\)"):
        lens.psf(1.2, 0.0, allow_outside=True)
    near = build(lens_dict(cols, extrapolate="nearest"))
    np.testing.assert_allclose(near.psf(1.2, 0.0, allow_outside=True), near.psf(*near.field.pixel_to_field(31.5, 63)),
                               atol=1e-12)


def test_a_table_not_covering_the_frame_is_refused_on_load():
    cols = grid_cols(H=50, W=64, Z4=lambda r, c: 1e-3 * r)
    with pytest.raises(LensError, match=r"corner pixel \(row 63, col 0\) lies 14 px outside the table's convex hull"
                                        r".*set field_table.extrapolate = \"nearest\""):
        build(lens_dict(cols))
    build(lens_dict(cols, extrapolate="nearest"))


def _bad_tables():
    g = grid_cols(Z4=lambda r, c: 0.01)
    dup = copy.deepcopy(g)
    dup["row_px"][4], dup["col_px"][4] = dup["row_px"][0], dup["col_px"][0]
    notgrid = copy.deepcopy(g)
    notgrid["row_px"][4] += 1.0
    two = {"row_px": [0.0, 63.0], "col_px": [0.0, 63.0], "Z4": [0.01, 0.02]}
    line = {"row_px": [0.0, 30.0, 63.0], "col_px": [0.0, 30.0, 63.0], "Z4": [0.01, 0.02, 0.0]}
    return [
        (dup, {}, r"duplicate field point \(row 0, col 0\) at table rows 1, 5"),
        (notgrid, {"interpolation": "bilinear"}, r"bilinear.*not a rectangular grid \(4 distinct rows x 3"),
        (two, {}, r"2 point\(s\): \"linear\" interpolation needs at least 3 field points"),
        (line, {}, r"lie on one line"),
        (g, {"interpolation": "quintic"}, r"field_table.interpolation = 'quintic': expected one of 'linear', 'cubic'"),
        (g, {"extrapolate": "linear"}, r"field_table.extrapolate = 'linear': expected one of 'none', 'nearest'"),
        ({**g, "Z400": g["Z4"]}, {}, r"column 'Z400': unknown Noll index 400 \(expected 1..231\)"),
        ({**g, "Z4": [0.01] * 8}, {}, r"field_table.Z4: 8 values for 9 field points"),
        ({**g, "Z4": [0.01] * 8 + [float("nan")]}, {}, r"field_table.Z4 = .*expected finite numbers"),
        ({**g, "Z4": [0.01] * 8 + ["x"]}, {}, r"field_table.Z4 = .*expected finite numbers"),
        ({**g, "Z4": [0.01] * 8 + [2e4]}, {}, r"field_table.Z4\[8\] = 20000.0: expected \|waves\| <= 10000"),
        ({**g, "tilt": 1}, {}, r"unknown key field_table.tilt"),
        (g, {"wavelength_nm": -5.0}, r"field_table.wavelength_nm = -5.0: expected the table's wavelength in nm, > 0"),
        (g, {"file": "t.csv"}, r"both file = 't.csv' and inline columns"),
    ]


@pytest.mark.parametrize("cols, settings, message", _bad_tables())
def test_bad_tables_are_refused(cols, settings, message):
    with pytest.raises(LensError, match=message):
        build(lens_dict(cols, **settings))


def test_relative_file_needs_a_folder():
    with pytest.raises(LensError, match=r"field_table.file = 't.csv' is relative and this description has no folder"):
        build(lens_dict({}, file="t.csv"))


@pytest.mark.parametrize("text, message", [
    ("row_px,col_px,Z4\n0,0,0.1\n0,63,NaN\n63,0,0\n63,63,0\n", r"t.csv: line 3, column Z4: 'NaN': expected a finite number"),
    ("row_px,col_px,Z4\n0,0,0.1\n0,63,abc\n63,0,0\n63,63,0\n", r"t.csv: line 3, column Z4: 'abc' is not a number"),
    ("row_px,col_px,Z4\n0,0,0.1\n0,63,\n63,0,0\n63,63,0\n", r"t.csv: line 3, column Z4: '' is not a number"),
    ("row_px,col_px,Z4\n0,0,0.1\n0,63\n63,0,0\n63,63,0\n", r"t.csv: line 3: 2 cells for the 3 columns"),
    ("row_px,Z4\n0,0.1\n", r"no col_px column"),
    ("row_px,col_px,Z4,Z4\n0,0,0.1,0.1\n", r"column 'Z4' appears twice"),
    ("row_px,col_px,defocus\n0,0,0.1\n", r"unknown column 'defocus'"),
    ("row_px,col_px,Z4\n0,0,0.1\n0,0,0.2\n63,0,0\n63,63,0\n", r"duplicate field point \(row 0, col 0\) at table rows 1, 2"),
    ("row_px,col_px,Z4\n0,0,0.1\n63,63,0.2\n", r"2 point\(s\): \"linear\" interpolation needs at least 3"),
])
def test_cli_refuses_bad_csv_in_one_line(tmp_path, capsys, text, message):
    import re

    (tmp_path / "t.csv").write_text(text)
    rc = main(["lens", "from-table", str(tmp_path / "t.csv"), "--table-wavelength-nm", "520", "--na", "0.4",
               "--pixel-pitch-um", "0.325", "--shape-px", "64,64", "--out", str(tmp_path / "lens.toml")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("psfsim: error: "), err
    assert re.search(message, err), err
    assert not (tmp_path / "lens.toml").exists()


# --------------------------------------------------------------------------------------------------
# the command line: from-table, info, grid; downstream operators
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_from_table_info_and_grid(tmp_path, capsys):
    cols = grid_cols(Z4=lambda r, c: 0.02 + 5e-4 * r, Z5=lambda r, c: 3e-4 * c)
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "t.csv").write_text(format_table_csv(cols))
    out = tmp_path / "lens.toml"
    args = ["lens", "from-table", str(tmp_path / "tables" / "t.csv"), "--table-wavelength-nm", "600", "--na", "0.4",
            "--pixel-pitch-um", "0.325", "--shape-px", "64,64", "--out", str(out), "--interpolation", "bilinear",
            "--size-px", "21"]
    assert main(args) == 0
    assert 'file = "tables/t.csv"' in out.read_text()
    lens = load_lens(out)
    same = build(lens_dict(cols, wavelength_nm=600.0, interpolation="bilinear"))
    assert lens.field_table.canonical() == same.field_table.canonical()
    assert main(args) == 2 and "exists (use --overwrite" in capsys.readouterr().err  # never overwritten silently
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "field table     9 points (3 x 3 grid) from tables/t.csv; rows 0..63, cols 0..63 px" in info
    assert "Z4, Z5 RMS waves at 600 nm (x1 at the reference wavelength); piston/tilt dropped" in info
    assert "interpolation   bilinear" in info
    assert main(["grid", "--lens", str(out), "--n", "3,3", "--out", str(tmp_path / "g")]) == 0
    assert (tmp_path / "g" / "strehl_map.png").stat().st_size > 1000


def test_strehl_map_marks_the_table_points(tmp_path):
    """The overlay draws one marker per table point at its pixel position (checked on the figure's artists)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from psfsim import figures

    lens = build(lens_dict(grid_cols(Z4=lambda r, c: 1e-3 * r)))
    grid = lens.psf_grid(3, 3)
    seen = {}
    orig = figures.save_atomic_figure

    def capture(fig, path, dpi=120):
        seen["offsets"] = [c.get_offsets() for c in fig.axes[0].collections]
        return orig(fig, path, dpi)

    figures.save_atomic_figure = capture
    try:
        figures.field_map(np.ones((3, 3)), grid, tmp_path / "m.png", label="S", points=lens.field_table.points_px)
    finally:
        figures.save_atomic_figure = orig
        plt.close("all")
    (offsets,) = seen["offsets"]
    np.testing.assert_allclose(np.asarray(offsets)[:, ::-1], lens.field_table.points_px)


@pytest.mark.slow
def test_operators_work_on_a_tabulated_lens():
    """The fast (low-rank) operator of a tabulated lens against its exact operator, on a window."""
    cols = grid_cols(Z4=lambda r, c: 0.1 * (r - 31.5) / 31.5, Z7=lambda r, c: 0.05 * (c - 31.5) / 31.5)
    lens = build(lens_dict(cols, interpolation="cubic", base={**BASE, "psf": {"size_px": 17, "oversample": 2}}))
    x = np.random.default_rng(0).random((16, 16))
    fast = psfsim.make_operator(lens, shape=(16, 16), origin=(44, 40))
    exact = psfsim.make_operator(lens, shape=(16, 16), origin=(44, 40), method="exact")
    assert np.linalg.norm(fast(x) - exact(x)) / np.linalg.norm(exact(x)) < 0.01


# --------------------------------------------------------------------------------------------------
# undersampled detectors: the Nyquist warning, and the pixel-integrated PSF against the analytic one
# --------------------------------------------------------------------------------------------------
def _pixel_airy(k: int, fc: float, n: int = 800) -> np.ndarray:
    """Analytic pixel-integrated PSF of a circular pupil at pixel centres, unit sum over the ``k x k`` box:
    ``P(n, m) = integral OTF(f) sinc(fx) sinc(fy) exp(2 pi i (fx n + fy m)) df`` with the diffraction-limited
    OTF ``(2/pi)(acos v - v sqrt(1 - v^2))``, ``v = |f| / fc`` (Goodman, eq. 7-34), ``fc`` in cycles per pixel;
    midpoint quadrature on ``n x n`` (converged to 5e-7 of the peak at n = 800 against n = 1600)."""
    f = (np.arange(n) + 0.5) / n * 2 * fc - fc
    fx, fy = np.meshgrid(f, f)
    v = np.minimum(np.hypot(fx, fy) / fc, 1.0)
    otf = (2 / np.pi) * (np.arccos(v) - v * np.sqrt(1 - v * v))
    E = np.exp(2j * np.pi * np.outer(np.arange(k) - (k - 1) / 2, f))
    p = (E @ (otf * np.sinc(fx) * np.sinc(fy)) @ E.T).real
    return p / p.sum()


def test_undersampled_table_lens_warns_and_stays_correct():
    """lambda/D = 1 px (a space telescope at 1293 nm): the Nyquist warning, and the pixel-integrated PSF
    against the analytic one. The midpoint rule over ``oversample^2`` sub-pixels converges as
    0.33 / oversample^2 of the peak here: 2.1e-2 at 4, 6.3e-3 at 8, 2.8e-3 at 16 (the largest allowed)."""
    lam, na = 1293.0, 0.25
    d = {"name": "under", "optics": {"wavelength_nm": lam, "na": na, "pixel_pitch_um": lam * 1e-3 / (2 * na)},
         "field": {"shape_px": [64, 64]}, "psf": {"size_px": 21, "oversample": 16},
         "field_table": {"wavelength_nm": lam, **grid_cols(Z4=lambda r, c: 0.0)}}
    with pytest.warns(NyquistWarning, match=r"coarser than Nyquist"):
        lens = build(d)
    ref = _pixel_airy(21, 1.0)
    errs = {}
    for s in (4, 8, 16):
        d["psf"]["oversample"] = s
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NyquistWarning)
            p = build(d).psf(0.0, 0.0)
        errs[s] = np.abs(p - ref).max() / ref.max()
    assert errs[16] < 3e-3 and errs[8] < 7e-3 and errs[4] < 2.2e-2, errs
    assert 3 < errs[4] / errs[8] < 4.5  # second order: the remaining error is the pixel quadrature
    assert lens.psf_sampling.oversample == 16


# --------------------------------------------------------------------------------------------------
# against GalSim's OpticalPSF, given the interpolated coefficients
# --------------------------------------------------------------------------------------------------
GS_LAM, GS_LOD = 1293.0, 2.5  # lambda / D = 2.5 px in GalSim's terms (lambda / (2 NA) in psfsim's)
GS_NA = 0.25


def _synthetic_table():
    """A 3 x 4 grid over a 96 x 128 frame: defocus, astigmatism and coma varying across it, spherical constant
    (RMS waves, written in GalSim's sign, i.e. poppy's: convention = "poppy")."""
    u = lambda r: (r - 47.5) / 47.5  # noqa: E731
    v = lambda c: (c - 63.5) / 63.5  # noqa: E731
    return grid_cols(nr=3, nc=4, H=96, W=128,
                     Z4=lambda r, c: 0.04 + 0.03 * u(r) ** 2 + 0.02 * v(c),
                     Z5=lambda r, c: 0.03 * u(r) * v(c),
                     Z6=lambda r, c: 0.02 * (v(c) ** 2 - u(r) ** 2),
                     Z7=lambda r, c: 0.03 * u(r),
                     Z8=lambda r, c: -0.025 * v(c),
                     Z11=lambda r, c: 0.02)


def _galsim_psf(galsim, coeffs: dict, k: int, lod: float) -> np.ndarray:
    ab = np.zeros(12)
    for j, a in coeffs.items():
        ab[j] = a  # GalSim: waves, Noll-indexed, aberrations[0] unused
    psf = galsim.OpticalPSF(lam_over_diam=lod, aberrations=ab, oversampling=2.0, pad_factor=2.0)
    im = psf.drawImage(nx=k, ny=k, scale=1.0).array  # convolved with the pixel (method "auto"), centred
    return im / im.sum()


@pytest.mark.slow
def test_table_lens_matches_galsim_at_and_between_table_points():
    """psfsim's PSFs of a tabulated lens against ``galsim.OpticalPSF`` with the coefficients that scipy's
    LinearNDInterpolator gives on the same table, at table points and between them (4e-3 of the peak; 2.2e-3 to
    3.2e-3 measured, mostly psfsim's midpoint pixel quadrature at oversample 8), and the field variation (PSF
    minus the frame-centre PSF, 4 % to 13 % of the peak here) to 2 % of its norm (0.7 % to 1.0 % measured)."""
    galsim = pytest.importorskip("galsim")
    cols = _synthetic_table()
    k = 33
    base = {"name": "gs", "convention": "poppy",
            "optics": {"wavelength_nm": GS_LAM, "na": GS_NA, "pixel_pitch_um": GS_LAM * 1e-3 / (2 * GS_NA) / GS_LOD},
            "field": {"shape_px": [96, 128]}, "psf": {"size_px": k, "oversample": 8}}
    lens = build(lens_dict(cols, base=base, wavelength_nm=GS_LAM))
    pts = np.stack([cols["row_px"], cols["col_px"]], 1)
    vals = np.stack([cols[f"Z{j}"] for j in (4, 5, 6, 7, 8, 11)], 1)
    interp = LinearNDInterpolator(pts, vals)
    centre = np.array([47.5, 63.5])
    at = np.array([[0.0, 0.0], [47.5, 127.0], [95.0, 42.333333333333336]])  # table points
    between = np.array([[20.0, 100.0], [80.0, 15.0], [60.0, 70.0]])
    q = np.concatenate([[centre], at, between])
    x, y = lens.field.pixel_to_field(q[:, 0], q[:, 1])
    ours = lens.psfs(x, y)
    theirs = np.stack([_galsim_psf(galsim, dict(zip((4, 5, 6, 7, 8, 11), interp(p)[0])), k, GS_LOD) for p in q])
    for i in range(len(q)):
        assert np.abs(ours[i] - theirs[i]).max() < 4e-3 * theirs[i].max(), (q[i], np.abs(ours[i] - theirs[i]).max())
    d_ours, d_theirs = ours[1:] - ours[0], theirs[1:] - theirs[0]
    for i in range(len(d_ours)):
        rel = np.linalg.norm(d_ours[i] - d_theirs[i]) / np.linalg.norm(d_theirs[i])
        assert np.abs(d_theirs[i]).max() > 0.01 * theirs[0].max()  # the variation is real, not noise
        assert rel < 0.02, (q[i + 1], rel)


@pytest.mark.slow
def test_undersampled_table_lens_matches_galsim():
    """lambda/D = 1 px (Roman-like at 1293 nm): the Nyquist warning on load, and the pixel-integrated PSFs
    with the table's aberrations at a table point and between points against GalSim to 3e-3 of the peak at
    oversample 16 (2.0e-3 and 2.3e-3 measured; 5.4e-3 and 5.7e-3 at oversample 8)."""
    galsim = pytest.importorskip("galsim")
    cols = _synthetic_table()
    k = 15
    base = {"name": "gs-under", "convention": "poppy",
            "optics": {"wavelength_nm": GS_LAM, "na": GS_NA, "pixel_pitch_um": GS_LAM * 1e-3 / (2 * GS_NA)},
            "field": {"shape_px": [96, 128]}, "psf": {"size_px": k, "oversample": 16}}
    with pytest.warns(NyquistWarning, match=r"x2\.00\): the PSF is undersampled"):
        lens = build(lens_dict(cols, base=base, wavelength_nm=GS_LAM))
    pts = np.stack([cols["row_px"], cols["col_px"]], 1)
    interp = LinearNDInterpolator(pts, np.stack([cols[f"Z{j}"] for j in (4, 5, 6, 7, 8, 11)], 1))
    q = np.array([[0.0, 0.0], [60.0, 70.0]])
    x, y = lens.field.pixel_to_field(q[:, 0], q[:, 1])
    ours = lens.psfs(x, y)
    for i, p in enumerate(q):
        theirs = _galsim_psf(galsim, dict(zip((4, 5, 6, 7, 8, 11), interp(p)[0])), k, 1.0)
        assert np.abs(ours[i] - theirs).max() < 3e-3 * theirs.max(), (p, np.abs(ours[i] - theirs).max() / theirs.max())
