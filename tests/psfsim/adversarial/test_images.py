"""Adversarial images: read what is asked, no more; a lens that does not describe the image is reported.

References: header fields written by tifffile / numpy / astropy themselves; exact values written; for the
out-of-band fraction, two independent constructions: an image blurred by the lens's own PSF (band-limited by
the optics: no signal beyond the cutoff) and white noise, whose power is uniform over the frequency square,
so the fraction beyond the cutoff disc is an area ratio from the geometry alone.
"""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from psfsim import io as pio
from psfsim.cli import main
from psfsim.spectrum import OUT_OF_BAND_WARN, cutoff_cycles_per_px, out_of_band_fraction

from ..conftest import SMALL_LENS_TOML

from ..conftest import make_lens
from .test_cli_outputs import SMALL_LENS, assert_refused, snapshot

fits = pytest.importorskip("astropy.io.fits")
tifffile = pytest.importorskip("tifffile")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.delenv("PSFSIM_PRESETS", raising=False)
    monkeypatch.delenv("PSFSIM_MAX_IMAGE_BYTES", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    (tmp_path / "lens.toml").write_text(SMALL_LENS)


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _no_decode(monkeypatch):
    def boom(h):
        raise AssertionError("pixels decoded before the header was checked")

    monkeypatch.setattr(pio, "_decode", boom)


# --------------------------------------------------------------------------------------------------
# read what is asked, no more
# --------------------------------------------------------------------------------------------------
def test_tiled_tiff_over_budget_refused_from_its_header(capsys, tmp_path, monkeypatch):
    """A compressed tiled TIFF of zeros: a few kB on disk, far more decoded (the 40960^2 case, scaled down with
    PSFSIM_MAX_IMAGE_BYTES so the test stays small)."""
    def tiles():
        for _ in range(8 * 8):
            yield np.zeros((256, 256), np.uint8)

    tifffile.imwrite(tmp_path / "bomb.tif", tiles(), shape=(2048, 2048), dtype=np.uint8, tile=(256, 256),
                     compression="zlib")
    assert (tmp_path / "bomb.tif").stat().st_size < 100_000
    monkeypatch.setenv("PSFSIM_MAX_IMAGE_BYTES", str(4 * 2**20))
    _no_decode(monkeypatch)
    before = snapshot(tmp_path)
    rc, out, err = run(capsys, "blur", "--lens", "telescope", "--input", "bomb.tif", "--out", "o.tif")
    assert_refused(rc, err, "bomb.tif", "(2048, 2048) uint8", "20 MiB", "4 MiB", "PSFSIM_MAX_IMAGE_BYTES")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("cmd", ["blur", "wiener", "rl"])
def test_image_larger_than_the_field_refused_before_decoding(capsys, tmp_path, monkeypatch, cmd):
    np.save(tmp_path / "big.npy", np.zeros((80, 50), np.float32))
    _no_decode(monkeypatch)
    rc, out, err = run(capsys, cmd, "--lens", "lens.toml", "--input", "big.npy", "--out", "o.npy")
    assert_refused(rc, err, "big.npy", "80 x 50 px", "lens field 64 x 64 px")


@pytest.mark.parametrize("dtype, want", [(np.float32, np.float32), (np.float64, np.float64), (np.uint16, np.float32)])
@pytest.mark.parametrize("cmd", ["blur", "wiener", "rl"])
def test_outputs_keep_the_float_dtype(capsys, tmp_path, cmd, dtype, want):
    a = (np.random.default_rng(0).random((40, 40)) * 1000).astype(dtype)
    np.save(tmp_path / "img.npy", a)
    rc, out, err = run(capsys, cmd, "--lens", "lens.toml", "--input", "img.npy", "--out", "o.tif", "--iters", "2") \
        if cmd == "rl" else run(capsys, cmd, "--lens", "lens.toml", "--input", "img.npy", "--out", "o.tif")
    assert rc == 0, err
    got = tifffile.imread(tmp_path / "o.tif")
    assert got.dtype == want
    assert json.loads((tmp_path / "o.tif.json").read_text())["dtype"] == np.dtype(want).name


def test_fits_sci_extension_header_kept_big_endian_values(capsys, tmp_path):
    rng = np.random.default_rng(5)
    sci = rng.random((40, 40)).astype(">f4") * 100
    hdr = fits.Header()
    hdr["BUNIT"], hdr["EXPTIME"], hdr["CTYPE1"] = "electron/s", 120.0, "RA---TAN"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(sci, header=hdr, name="SCI"),
                  fits.ImageHDU(np.ones((40, 40), ">f4"), name="ERR"),
                  fits.ImageHDU(np.zeros((40, 40), ">i2"), name="DQ")]).writeto(tmp_path / "frame.fits")
    rc, out, err = run(capsys, "blur", "--lens", "lens.toml", "--input", "frame.fits", "--out", "b.fits")
    assert rc == 0, err
    with fits.open(tmp_path / "b.fits") as hdul:
        h, b = hdul[0].header, hdul[0].data
        assert h["BUNIT"] == "electron/s" and h["EXPTIME"] == 120.0 and h["CTYPE1"] == "RA---TAN"
        assert any("psfsim blur --lens lens.toml --input frame.fits" in str(v) for v in h["HISTORY"])
        assert b.dtype == np.dtype(">f4")
        b = b.astype("<f4")
    assert json.loads((tmp_path / "b.fits.json").read_text())["input_hdu"] == "SCI"
    # the numeric core saw the native-endian values of SCI (not ERR, not byte-swapped): compare with the library
    import psfsim

    lens = psfsim.load_lens(tmp_path / "lens.toml")
    ref = psfsim.blur(sci.astype("<f4"), lens, origin=psfsim.field.centred_origin(lens, (40, 40)))
    np.testing.assert_array_equal(b, ref)
    # --hdu ERR picks the error plane
    rc, out, err = run(capsys, "blur", "--lens", "lens.toml", "--input", "frame.fits", "--hdu", "ERR", "--out", "e.fits")
    assert rc == 0, err
    assert fits.getdata(tmp_path / "e.fits").max() < 1.01
    rc, out, err = run(capsys, "blur", "--lens", "lens.toml", "--input", "frame.fits", "--hdu", "VAR", "--out", "v.fits")
    assert_refused(rc, err, "--hdu VAR", "SCI", "ERR", "DQ")
    np.save(tmp_path / "img.npy", np.zeros((8, 8)))
    rc, out, err = run(capsys, "blur", "--lens", "lens.toml", "--input", "img.npy", "--hdu", "1", "--out", "x.npy")
    assert_refused(rc, err, "not a FITS file")


# --------------------------------------------------------------------------------------------------
# does the lens describe the image?
# --------------------------------------------------------------------------------------------------
def _fc_lens():
    return make_lens(optics={"pixel_pitch_um": 0.2})  # cutoff 2 * 0.4 * 0.2 / 0.52 = 0.308 cycles/px


def test_cutoff_in_cycles_per_pixel():
    assert cutoff_cycles_per_px(_fc_lens()) == pytest.approx(2 * 0.4 * 0.2 / 0.520)


@pytest.mark.parametrize("inner", [0.0, 0.5])
def test_white_noise_scores_the_area_outside_the_cutoff_disc(inner):
    """White noise: |DFT|^2 uniform over the unit frequency square, so (for f_c <= 1/2) the fraction beyond the
    disc of radius f_c, of the power beyond inner * f_c, is (1 - pi f_c^2) / (1 - pi (inner f_c)^2)."""
    lens = _fc_lens()
    fc = cutoff_cycles_per_px(lens)
    w = np.random.default_rng(7).normal(size=(256, 256))
    expected = (1 - np.pi * fc**2) / (1 - np.pi * (inner * fc) ** 2)
    assert out_of_band_fraction(w, lens, noise_sigma=0.0, inner=inner) == pytest.approx(expected, abs=0.01)
    # and it is all noise: with the noise floor estimated from the image, nothing is left beyond the cutoff
    assert out_of_band_fraction(w, lens) < 0.01


def _stars(shape, rng):
    img = np.zeros(shape)
    idx = rng.integers(4, shape[0] - 4, size=(60, 2))
    img[idx[:, 0], idx[:, 1]] = rng.uniform(0.2, 1.0, 60)
    return img


def test_blurred_by_the_lens_scores_low_sharp_scores_high():
    import psfsim

    lens = _fc_lens()
    rng = np.random.default_rng(3)
    sharp = _stars((128, 128), rng)
    blurred = psfsim.blur(sharp, lens, origin=(64, 64))  # the fast operator: a sum of convolutions with the PSFs
    noisy = blurred + rng.normal(0, 0.01 * blurred.max(), blurred.shape)
    assert out_of_band_fraction(sharp, lens) > 4 * OUT_OF_BAND_WARN
    assert out_of_band_fraction(blurred, lens) < OUT_OF_BAND_WARN / 10
    assert out_of_band_fraction(noisy, lens) < OUT_OF_BAND_WARN / 10


def test_cli_warns_in_one_line_and_records_the_figure(tmp_path):
    rng = np.random.default_rng(3)
    np.save(tmp_path / "sharp.npy", _stars((48, 48), rng))
    (tmp_path / "fine.toml").write_text(SMALL_LENS.replace("0.325", "0.2"))
    res = subprocess.run([sys.executable, "-m", "psfsim.cli", "wiener", "--lens", "fine.toml", "--input", "sharp.npy",
                          "--out", "w.npy"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("psfsim: warning: the lens small does not describe this image")
    frac = json.loads((tmp_path / "w.npy.json").read_text())["out_of_band_fraction"]
    assert frac > OUT_OF_BAND_WARN and f"{100 * frac:.1f} %" in lines[0]


@pytest.mark.parametrize("command", ["blur", "wiener", "rl"])
def test_nan_policy_fill_from_the_command_line(command, tmp_path, capsys):
    """FITS blanks / dead pixels: refused by default; --nan-policy fill restores the rest and leaves exactly the
    masked pixels NaN (recorded in OUT.json); PNG cannot hold them."""
    import json

    from psfsim.cli import main

    (tmp_path / "lens.toml").write_text(SMALL_LENS_TOML)
    img = np.random.default_rng(3).random((48, 48)).astype(np.float32)
    img[5, 7] = np.nan
    img[30:32, 20] = np.inf
    np.save(tmp_path / "img.npy", img)
    base = [command, "--lens", str(tmp_path / "lens.toml"), "--input", str(tmp_path / "img.npy")]
    extra = ["--iters", "3"] if command == "rl" else []
    assert main(base + ["--out", str(tmp_path / "a.npy")] + extra) == 2
    assert "NaN or inf" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "b.npy"), "--nan-policy", "fill"] + extra) == 0
    out = np.load(tmp_path / "b.npy")
    np.testing.assert_array_equal(~np.isfinite(out), ~np.isfinite(img))
    rec = json.loads((tmp_path / "b.npy.json").read_text())
    assert rec["nan_policy"] == "fill" and rec["masked_pixels"] == 3
    assert main(base + ["--out", str(tmp_path / "c.png"), "--nan-policy", "fill"] + extra) == 2
    assert "PNG cannot hold" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()



def test_fits_with_bscale_bzero_and_blank(tmp_path):
    """Standard integer FITS: BSCALE/BZERO applied, BLANK pixels read as NaN (the NaN policy then applies);
    reference: the physical values written by hand."""
    from astropy.io import fits

    raw = (np.arange(48 * 48, dtype=np.int16).reshape(48, 48) % 500)
    h = fits.PrimaryHDU(raw)
    h.header["BSCALE"] = 0.01
    h.header["BZERO"] = 5.0
    h.writeto(tmp_path / "bs.fits")
    got = pio.read_image(tmp_path / "bs.fits")
    np.testing.assert_allclose(got, 5.0 + 0.01 * raw, rtol=0, atol=1e-5)
    raw2 = raw.copy()
    raw2[3, 4] = -32768
    h2 = fits.PrimaryHDU(raw2)
    h2.header["BLANK"] = -32768
    h2.writeto(tmp_path / "blank.fits")
    with pytest.raises(pio.PsfsimError if hasattr(pio, "PsfsimError") else Exception, match="NaN or inf"):
        pio.read_image(tmp_path / "blank.fits")
    img = pio.load_image(tmp_path / "blank.fits", allow_nonfinite=True).data
    assert np.isnan(img[3, 4]) and np.isfinite(np.delete(img.ravel(), 3 * 48 + 4)).all()


def test_a_one_row_image_is_one_line_for_every_restoration(tmp_path, capsys):
    np.save(tmp_path / "row.npy", np.random.default_rng(0).random((1, 48)).astype(np.float32))
    (tmp_path / "lens.toml").write_text(SMALL_LENS_TOML)
    for cmd in ("wiener", "rl"):
        rc = main([cmd, "--lens", str(tmp_path / "lens.toml"), "--input", str(tmp_path / "row.npy"),
                   "--out", str(tmp_path / f"{cmd}.npy")])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
