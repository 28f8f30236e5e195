"""psfsim.io: headers read before pixels, the dtype rule, FITS headers and HDUs, outputs that land whole.

References: numpy's own ``.npy`` writer, tifffile, imageio and astropy (the files are written by those
libraries, independently of psfsim's reader), and the byte-exact values that were written.
"""

import errno
import json
import os

import numpy as np
import pytest

from psfsim import io as pio
from psfsim.errors import PsfsimError
from psfsim.io import image_header, load_image, read_image, sidecar_path, write_array, write_image
from psfsim.store import check_not_input

fits = pytest.importorskip("astropy.io.fits")
tifffile = pytest.importorskip("tifffile")


def _no_decode(monkeypatch):
    def boom(h):
        raise AssertionError("pixels decoded before the header was checked")

    monkeypatch.setattr(pio, "_decode", boom)


# --------------------------------------------------------------------------------------------------
# headers and the dtype rule
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, want", [(np.float32, np.float32), (np.float64, np.float64), (np.int16, np.float32),
                                         (np.uint8, np.float32), (np.float16, np.float32), (bool, np.float32)])
def test_npy_dtype_rule(tmp_path, dtype, want):
    a = (np.arange(12).reshape(3, 4) % 2).astype(dtype)
    np.save(tmp_path / "a.npy", a)
    h = image_header(tmp_path / "a.npy")
    assert h.shape == (3, 4) and h.dtype == np.dtype(dtype)
    got = read_image(tmp_path / "a.npy")
    assert got.dtype == want
    np.testing.assert_array_equal(got, a.astype(want))


def test_tiff_and_png_headers_and_dtypes(tmp_path):
    iio = pytest.importorskip("imageio.v3")
    a = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    tifffile.imwrite(tmp_path / "a.tif", a)
    assert image_header(tmp_path / "a.tif").shape == (4, 5)
    got = read_image(tmp_path / "a.tif")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, a)
    u = (np.arange(20, dtype=np.uint16) * 1000).reshape(4, 5)
    iio.imwrite(tmp_path / "u.png", u)
    h = image_header(tmp_path / "u.png")
    assert h.shape == (4, 5) and h.dtype == np.uint16
    got = read_image(tmp_path / "u.png")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, u)


def test_budget_refuses_before_decoding(tmp_path, monkeypatch):
    np.save(tmp_path / "a.npy", np.zeros((64, 64), np.float32))
    _no_decode(monkeypatch)
    monkeypatch.setenv("PSFSIM_MAX_IMAGE_BYTES", "1000")
    with pytest.raises(PsfsimError, match=r"a.npy: image of shape \(64, 64\) float32 needs 32 KiB to read, more than the budget of 1000 bytes \(PSFSIM_MAX_IMAGE_BYTES\)"):
        read_image(tmp_path / "a.npy")
    monkeypatch.setenv("PSFSIM_MAX_IMAGE_BYTES", "lots")
    with pytest.raises(PsfsimError, match="PSFSIM_MAX_IMAGE_BYTES='lots'"):
        read_image(tmp_path / "a.npy")


def test_larger_than_field_refused_before_decoding(tmp_path, monkeypatch):
    np.save(tmp_path / "a.npy", np.zeros((70, 50), np.float32))
    _no_decode(monkeypatch)
    with pytest.raises(PsfsimError, match="image of 70 x 50 px is larger than the lens field 64 x 64 px"):
        read_image(tmp_path / "a.npy", field_shape=(64, 64))


def test_non_numeric_and_nd_refused_from_the_header(tmp_path, monkeypatch):
    np.save(tmp_path / "s.npy", np.array([["a", "b"]]))
    np.save(tmp_path / "c.npy", np.zeros((2, 3, 4)))
    _no_decode(monkeypatch)
    with pytest.raises(PsfsimError, match="not numeric"):
        read_image(tmp_path / "s.npy")
    with pytest.raises(PsfsimError, match=r"expected a 2-D image, got shape \(2, 3, 4\)"):
        read_image(tmp_path / "c.npy")


# --------------------------------------------------------------------------------------------------
# FITS
# --------------------------------------------------------------------------------------------------
def _mef(path, sci):
    hdr = fits.Header()
    hdr["BUNIT"] = "electron"
    hdr["EXPTIME"] = 30.0
    hdr["CTYPE1"], hdr["CTYPE2"] = "RA---TAN", "DEC--TAN"
    hdr["CRVAL1"], hdr["CRVAL2"] = 150.1, 2.2
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(sci, header=hdr, name="SCI"),
                  fits.ImageHDU(np.full(sci.shape, 7, ">f4"), name="ERR"),
                  fits.ImageHDU(np.zeros(sci.shape, ">i2"), name="DQ")]).writeto(path)


def test_fits_default_hdu_is_the_first_2d_image_and_big_endian_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    sci = rng.normal(100, 5, (16, 24)).astype(">f4")  # FITS is big-endian
    _mef(tmp_path / "f.fits", sci)
    im = load_image(tmp_path / "f.fits")
    assert im.header.hdu == 1 and im.header.hdu_name == "SCI"
    assert im.data.dtype == np.dtype("float32") and im.data.dtype.isnative
    np.testing.assert_array_equal(im.data, sci.astype("<f4"))  # exact values
    assert im.fits_header["BUNIT"] == "electron"
    assert read_image(tmp_path / "f.fits", hdu="ERR")[0, 0] == 7
    assert read_image(tmp_path / "f.fits", hdu="2")[0, 0] == 7
    assert read_image(tmp_path / "f.fits", hdu="dq").dtype == np.float32  # integers -> float32
    with pytest.raises(PsfsimError, match="no HDU of that name.*1 SCI"):
        read_image(tmp_path / "f.fits", hdu="VAR")
    with pytest.raises(PsfsimError, match=r"HDUs 0\.\.3"):
        read_image(tmp_path / "f.fits", hdu=9)
    with pytest.raises(PsfsimError, match="holds no image"):
        read_image(tmp_path / "f.fits", hdu=0)


def test_fits_output_keeps_the_header_adds_history_and_values_round_trip(tmp_path):
    sci = np.random.default_rng(2).normal(0, 1, (8, 8)).astype(">f8")
    _mef(tmp_path / "f.fits", sci)
    im = load_image(tmp_path / "f.fits")
    assert im.data.dtype == np.float64
    write_image(tmp_path / "o.fits", im.data, record={"command": "test"}, fits_header=im.fits_header,
                history=("psfsim 9.9: psfsim wiener --input f.fits --out o.fits",))
    with fits.open(tmp_path / "o.fits") as hdul:
        h, data = hdul[0].header, hdul[0].data
        assert h["BUNIT"] == "electron" and h["EXPTIME"] == 30.0 and h["CTYPE1"] == "RA---TAN"
        assert h["CRVAL1"] == 150.1
        assert "EXTNAME" not in h and h["BITPIX"] == -64
        assert any("psfsim wiener" in str(v) for v in h["HISTORY"])
        np.testing.assert_array_equal(data, sci)  # exact through a big-endian write and read
    np.testing.assert_array_equal(read_image(tmp_path / "o.fits"), sci.astype("<f8"))


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------
def test_non_finite_result_is_never_written(tmp_path):
    a = np.ones((4, 4), np.float32)
    a[1, 2] = np.nan
    with pytest.raises(PsfsimError, match=r"o.npy: the result has 1 NaN or infinite pixel"):
        write_image(tmp_path / "o.npy", a, record={})
    with pytest.raises(PsfsimError, match="non"):
        write_array(tmp_path / "p.npy", np.full((2, 2), np.inf))
    assert list(tmp_path.iterdir()) == []


def test_png_records_offset_and_scale(tmp_path):
    iio = pytest.importorskip("imageio.v3")
    a = np.random.default_rng(3).uniform(-3.5, 1200.0, (20, 30))
    rec = write_image(tmp_path / "o.png", a, record={"command": "test"})
    side = json.loads(sidecar_path(tmp_path / "o.png").read_text())
    assert side["png_offset"] == rec["png_offset"] == pytest.approx(a.min())
    png = iio.imread(tmp_path / "o.png")
    assert png.dtype == np.uint16
    back = side["png_offset"] + side["png_scale"] * png.astype(np.float64)
    np.testing.assert_allclose(back, a, atol=side["png_scale"] / 2 * (1 + 1e-9))
    with pytest.raises(PsfsimError, match="PNG.*needs a record"):
        write_image(tmp_path / "p.png", a)
    flat = write_image(tmp_path / "f.png", np.full((3, 3), 5.0), record={})
    assert (flat["png_offset"], flat["png_scale"]) == (5.0, 0.0)


def test_write_keeps_the_dtype(tmp_path):
    for dt in (np.float32, np.float64):
        write_image(tmp_path / f"o{np.dtype(dt).name}.tif", np.ones((3, 3), dt), record={})
        assert tifffile.imread(tmp_path / f"o{np.dtype(dt).name}.tif").dtype == dt
        write_image(tmp_path / f"o{np.dtype(dt).name}.npy", np.ones((3, 3), dt))
        assert np.load(tmp_path / f"o{np.dtype(dt).name}.npy").dtype == dt


def test_failing_sidecar_leaves_neither(tmp_path):
    out = tmp_path / "o.npy"
    with pytest.raises(TypeError):
        write_image(out, np.ones((3, 3)), record={"bad": object()})  # JSON cannot hold it
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"old")
    sidecar_path(out).write_text("old record")
    with pytest.raises(TypeError):
        write_image(out, np.ones((3, 3)), record={"bad": object()})
    assert out.read_bytes() == b"old" and sidecar_path(out).read_text() == "old record"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.npy", "o.npy.json"]


def test_os_error_names_the_users_path(tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # no file name, as np.save raises it

    monkeypatch.setattr(np, "save", full)
    with pytest.raises(PsfsimError) as e:
        write_image(tmp_path / "o.npy", np.ones((3, 3)), record={})
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'o.npy'}: cannot write (No space left on device)"), msg
    assert ".tmp" not in msg
    assert list(tmp_path.iterdir()) == []


def test_links_at_the_temporary_and_at_the_sidecar_are_not_followed(tmp_path, monkeypatch):
    import tempfile

    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    out = tmp_path / "o.npy"
    (tmp_path / ".o.npy.AAAA.tmp.npy").symlink_to(victim)  # the first temporary name tried
    sidecar_path(out).symlink_to(victim)  # a link where the record goes
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: iter(["AAAA", "BBBB", "CCCC", "DDDD"]))
    write_image(out, np.ones((3, 3)), record={"command": "test"})
    assert victim.read_text() == "keep"
    assert not sidecar_path(out).is_symlink()
    assert json.loads(sidecar_path(out).read_text())["command"] == "test"
    np.testing.assert_array_equal(np.load(out), np.ones((3, 3)))


def test_check_not_input_by_inode(tmp_path, monkeypatch):
    a = tmp_path / "a.npy"
    a.write_bytes(b"x")
    (tmp_path / "link.npy").symlink_to(a)
    os.link(a, tmp_path / "hard.npy")
    monkeypatch.chdir(tmp_path)
    for out in ("a.npy", "./a.npy", tmp_path / "link.npy", "hard.npy", tmp_path / "sub" / ".." / "a.npy"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(PsfsimError, match="is the input"):
            check_not_input(out, a)
    check_not_input(tmp_path / "b.npy", a)  # a new file is fine
