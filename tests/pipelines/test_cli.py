"""The ``pipelines`` command line: every bad input of issue 13 is one line on stderr, exit 2, and no store left
looking complete; the routes end to end on a real astronomy frame (scikit-image's ``hubble_deep_field``), with
the restoration checked against the sharp frame it came from (PSNR) and the export read back by astropy.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.cli import main

from .conftest import tiny_lens_toml

LENS_TOML = tiny_lens_toml("tiny-cli")


@pytest.fixture(scope="module")
def lens_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("lens") / "tiny.toml"
    p.write_text(LENS_TOML)
    return p


@pytest.fixture(scope="module")
def hubble(tmp_path_factory):
    """scikit-image's bundled Hubble Deep Field (no download): a 256 x 256 luminance crop in [0, 1], .npy."""
    from skimage import data

    rgb = data.hubble_deep_field().astype(np.float32) / 255.0
    lum = (0.2126 * rgb[..., 0] + 0.7152 * rgb[..., 1] + 0.0722 * rgb[..., 2])[300:556, 400:656]
    p = tmp_path_factory.mktemp("hubble") / "hubble.npy"
    np.save(p, np.ascontiguousarray(lum, np.float32))
    return p, lum


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("pipelines: error: ") and "\n" not in err, err  # exactly one line
    return err


def _not_complete(path) -> None:
    """The store does not exist, or it is refused as incomplete by open_result."""
    from pipelines.errors import PipelineError
    from pipelines.output import open_result

    if path.exists():
        with pytest.raises(PipelineError):
            open_result(path)


def _psnr(a, b) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.mark.slow
def test_simulate_wiener_export_on_hubble_deep_field(lens_file, hubble, tmp_path, capsys):
    from astropy.io import fits

    from pipelines.output import open_result

    path, sharp = hubble
    blurred = tmp_path / "blurred.zarr"
    assert main(["simulate", "--lens", str(lens_file), "--input", str(path), "--out", str(blurred), "--tile", "96",
                 "--photons", "20000", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "simulate:" in out and "9 computed" in out and "Mpix/s" in out
    y = open_result(blurred)[0][:]
    assert main(["export", str(blurred), "--to", str(tmp_path / "blurred.fits")]) == 0
    yb = fits.getdata(tmp_path / "blurred.fits")  # astropy reads back what the store holds
    np.testing.assert_array_equal(yb, y)
    restored = tmp_path / "wiener.zarr"
    assert main(["wiener", "--lens", str(lens_file), "--input", str(blurred), "--out", str(restored),
                 "--tile", "96"]) == 0
    x = open_result(restored)[0][:]
    assert x.shape == sharp.shape and np.isfinite(x).all()
    # the restoration is closer to the sharp frame than the blurred one (crop away the frame border)
    c = (slice(16, -16), slice(16, -16))
    assert _psnr(x[c], sharp[c]) > _psnr(y[c], sharp[c]) + 1.0
    capsys.readouterr()
    assert main(["export", str(restored), "--to", str(tmp_path / "wiener.fits")]) == 0
    assert main(["export", str(restored), "--to", str(tmp_path / "wiener.fits")]) == 2  # no silent overwrite
    assert "exists" in _err(capsys)


def test_bad_inputs_one_line_exit_2_nothing_complete(lens_file, hubble, tmp_path, capsys):
    path, sharp = hubble
    out = tmp_path / "out.zarr"
    base = ["simulate", "--lens", str(lens_file), "--out", str(out), "--tile", "64"]

    (tmp_path / "garbage.npy").write_bytes(b"not a numpy file at all")
    assert main(base + ["--input", str(tmp_path / "garbage.npy")]) == 2
    assert "garbage.npy" in _err(capsys)
    assert main(base + ["--input", str(tmp_path / "missing.npy")]) == 2
    assert "missing.npy" in _err(capsys)

    np.save(tmp_path / "line.npy", np.zeros(300, np.float32))  # 1-D
    assert main(base + ["--input", str(tmp_path / "line.npy")]) == 2
    _err(capsys)
    np.save(tmp_path / "cube4.npy", np.zeros((2, 2, 64, 64), np.float32))  # 4-D
    assert main(base + ["--input", str(tmp_path / "cube4.npy")]) == 2
    _err(capsys)

    assert main(base[:-1] + ["512", "--input", str(path)]) == 2  # tile larger than the 256 x 256 frame
    assert "smaller than one tile" in _err(capsys)

    nan = sharp.copy()
    nan[10, 20] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    assert main(base + ["--input", str(tmp_path / "nan.npy"), "--nan", "raise"]) == 2
    assert "1 NaN or infinite pixel(s), at (row, col) (10, 20)" in _err(capsys)

    assert main(base + ["--input", str(path), "--origin", "10,0"]) == 2  # 10 + 256 > the 256-px lens field
    assert "does not lie inside the lens field" in _err(capsys)
    assert main(base + ["--input", str(path), "--origin", "1,x"]) == 2
    assert "--origin" in _err(capsys)

    assert main(base + ["--input", str(path), "--scheduler", "tcp://127.0.0.1:9", "--connect-timeout", "1"]) == 2
    assert "no Dask scheduler answered" in _err(capsys)
    assert main(base + ["--input", str(path), "--scheduler", "not-an-address"]) == 2
    assert "tcp://HOST:PORT" in _err(capsys)
    assert main(base + ["--input", str(path), "--workers", "2", "--scheduler", "tcp://127.0.0.1:9"]) == 2
    _err(capsys)
    assert main(base + ["--input", str(path), "--workers", "0"]) == 2
    _err(capsys)
    assert main(["simulate", "--lens", str(tmp_path / "nolens.toml"), "--input", str(path), "--out", str(out)]) == 2
    _err(capsys)
    assert main(["frobnicate"]) == 2
    _err(capsys)
    _not_complete(out)

    # the output is the input: refused, the input untouched
    before = path.read_bytes()
    assert main(["simulate", "--lens", str(lens_file), "--input", str(path), "--out", str(path), "--tile", "64"]) == 2
    _err(capsys)
    assert path.read_bytes() == before


def test_checkpoint_of_another_field_refused(lens_file, hubble, tmp_path, capsys):
    """A checkpoint trained for a 256 x 256 field refuses a 300 x 300 frame (and the same frame placed off the
    field by --origin); the frame that fits passes that check."""
    import recon
    import psfsim
    from psfsim.dataset.reader import Normalisation

    lens = psfsim.load_lens(lens_file)
    model = recon.build_model("cgunet", depth=2, base_channels=4)
    ckpt = tmp_path / "model.pt"
    recon.save_checkpoint(ckpt, model, lens=lens,
                          normalisation=Normalisation(kind="source_region_max", margin_px=8, vmin=0.0, vmax=1.0),
                          dataset_identity={}, train_args={}, metrics={})
    np.save(tmp_path / "big.npy", np.random.default_rng(0).random((300, 300)).astype(np.float32))
    out = tmp_path / "out.zarr"
    assert main(["deblur", "--checkpoint", str(ckpt), "--input", str(tmp_path / "big.npy"), "--out", str(out),
                 "--tile", "64", "--device", "cpu"]) == 2
    assert "does not lie inside the lens field" in _err(capsys)
    path, _ = hubble
    assert main(["deblur", "--checkpoint", str(ckpt), "--input", str(path), "--out", str(out), "--tile", "64",
                 "--origin", "0,8"]) == 2
    assert "does not lie inside the lens field" in _err(capsys)
    assert main(["deblur", "--checkpoint", str(tmp_path / "none.pt"), "--input", str(path), "--out", str(out)]) == 2
    _err(capsys)
    assert main(["deblur", "--checkpoint", str(ckpt), "--input", str(path), "--out", str(out), "--device", "tpu"]) == 2
    assert "--device" in _err(capsys)
    _not_complete(out)


def test_env(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "dask" in out and "torch" in out


def test_wiener_psfs_flag_needs_sv(tmp_path, capsys):
    """``--psfs`` chooses the SV-Wiener's patch PSFs; without ``--sv`` it is refused in one line, exit 2."""
    lens = tmp_path / "lens.toml"
    lens.write_text(LENS_TOML)
    np.save(tmp_path / "f.npy", np.ones((256, 256), np.float32))
    rc = main(["wiener", "--lens", str(lens), "--input", str(tmp_path / "f.npy"), "--out", str(tmp_path / "o.zarr"),
               "--psfs", "exact", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--psfs exact" in err[0] and "--sv" in err[0]
    assert not (tmp_path / "o.zarr").exists()
