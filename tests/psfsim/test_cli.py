"""The ``psfsim`` command line: outputs of ``info``, ``psf`` and ``grid``, and user errors as one line on
stderr with exit status 2 (never a traceback, never a partial output file)."""

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from psfsim import load_lens
from psfsim.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TYPO_LENS = """\
name = "typo"
[optics]
wavelength_nm = 520.0
na = 0.4
pixle_pitch_um = 0.325
[field]
shape_px = [64, 64]
[psf]
size_px = 33
"""

UNDERSAMPLED_LENS = """\
name = "coarse"
[optics]
wavelength_nm = 520.0
na = 0.4
pixel_pitch_um = 0.5
[field]
shape_px = [64, 64]
[psf]
size_px = 33
oversample = 4
"""


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Run in an empty folder with the default presets; restore the global warning formatter main() sets."""
    monkeypatch.delenv("PSFSIM_PRESETS", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)


def run_main(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, *fragments):
    assert rc == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("psfsim: error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, err)


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# --------------------------------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------------------------------
def test_info_microscope(capsys):
    rc, out, err = run_main(capsys, "info", "microscope")
    assert rc == 0
    assert err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["lens", "microscope-20x-fieldcurv"]
    nyq = [ln for ln in lines if ln.startswith("pixel pitch")]
    assert len(nyq) == 1
    assert "Nyquist lambda_min/(4 NA) = 0.325 um" in nyq[0]
    assert "sampled" in nyq[0] and "UNDERSAMPLED" not in nyq[0]
    strehl = [ln for ln in lines if ln.startswith("Strehl / FWHM")]
    assert len(strehl) == 1
    # in focus on the axis (Strehl 1), field curvature lowers it toward the edge and corners
    assert "centre 1.000" in strehl[0]
    assert "edge" in strehl[0] and "corner" in strehl[0]


# --------------------------------------------------------------------------------------------------
# psf
# --------------------------------------------------------------------------------------------------
def test_psf_npy(capsys, tmp_path):
    (tmp_path / "tmp").mkdir()
    rc, out, err = run_main(capsys, "psf", "--lens", "microscope", "--field", "0.3,-0.2", "--out", "tmp/p.npy")
    assert rc == 0, err
    assert err == ""
    p = np.load(tmp_path / "tmp" / "p.npy")
    assert p.shape == (33, 33)
    assert p.dtype == np.float64
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(p >= 0)
    np.testing.assert_allclose(p, load_lens("microscope").psf(0.3, -0.2), rtol=1e-12, atol=1e-15)
    assert "(+0.3000, -0.2000)" in out and "Strehl" in out
    assert files_under(tmp_path / "tmp") == ["p.npy"]  # no temporary left behind


@pytest.mark.parametrize("suffix", [".tif", ".tiff"])
def test_psf_tif(capsys, tmp_path, suffix):
    tifffile = pytest.importorskip("tifffile")
    out_path = tmp_path / f"p{suffix}"
    rc, out, err = run_main(capsys, "psf", "--lens", "microscope", "--field", "0.3,-0.2", "--out", out_path)
    assert rc == 0, err
    p = tifffile.imread(out_path)
    assert p.shape == (33, 33)
    assert p.sum() == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(p, load_lens("microscope").psf(0.3, -0.2), rtol=1e-12, atol=1e-15)
    assert files_under(tmp_path) == [out_path.name]


def test_psf_field_points_differ(capsys, tmp_path):
    """The --field argument reaches the library: the axis PSF differs from the corner PSF."""
    rc0, *_ = run_main(capsys, "psf", "--lens", "microscope", "--field", "0,0", "--out", "a.npy")
    # a value starting with "-" must be attached with "=" (argparse would read it as an option)
    rc1, *_ = run_main(capsys, "psf", "--lens", "microscope", "--field=-0.7,0.7", "--out", "b.npy")
    assert rc0 == rc1 == 0
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.max() > b.max() * 1.5  # defocus at the corner spreads the PSF


# --------------------------------------------------------------------------------------------------
# grid
# --------------------------------------------------------------------------------------------------
def test_grid(capsys, tmp_path):
    out_dir = tmp_path / "grid_out"
    rc, out, err = run_main(capsys, "grid", "--lens", "microscope", "--n", "3,4", "--out", out_dir)
    assert rc == 0, err
    assert files_under(out_dir) == ["fwhm_map.png", "psf_grid.npz", "psf_montage.png", "strehl_map.png"]
    with np.load(out_dir / "psf_grid.npz") as z:
        psfs, x, y, rows, cols = z["psfs"], z["x"], z["y"], z["rows"], z["cols"]
        strehl = z["strehl"]
    assert psfs.shape == (3, 4, 33, 33)
    np.testing.assert_allclose(psfs.sum(axis=(2, 3)), 1.0, atol=1e-12)
    assert x.shape == y.shape == strehl.shape == (3, 4)
    np.testing.assert_array_equal(rows, [0.0, 1023.5, 2047.0])
    np.testing.assert_allclose(cols, np.linspace(0, 2047, 4))
    s = 1 / np.sqrt(2)
    assert (x[0, 0], y[0, 0]) == pytest.approx((-s, -s))
    assert (x[-1, -1], y[-1, -1]) == pytest.approx((s, s))
    # the grid's corner PSF equals the library's PSF at that field point
    np.testing.assert_allclose(psfs[2, 3], load_lens("microscope").psf(s, s), rtol=1e-10, atol=1e-15)
    # Strehl falls off toward the corners (field curvature)
    assert strehl[1].max() > strehl[0, 0]
    for name in ("psf_montage.png", "strehl_map.png", "fwhm_map.png"):
        data = (out_dir / name).read_bytes()
        assert data[:8] == PNG_MAGIC, name
        assert len(data) > 1000
    for key in ("grid", "montage", "strehl", "fwhm"):
        assert any(line.startswith(key) for line in out.splitlines()), out


# --------------------------------------------------------------------------------------------------
# user errors: one line, exit 2, no partial output
# --------------------------------------------------------------------------------------------------
def test_unknown_preset(capsys, tmp_path):
    rc, out, err = run_main(capsys, "info", "nosuchlens")
    assert_one_line_error(rc, err, "nosuchlens", "neither a file nor a preset", "microscope")
    rc, out, err = run_main(capsys, "psf", "--lens", "nosuchlens", "--field", "0,0", "--out", "p.npy")
    assert_one_line_error(rc, err, "nosuchlens")
    assert files_under(tmp_path) == []


def test_lens_file_with_typo(capsys, tmp_path):
    f = tmp_path / "typo.toml"
    f.write_text(TYPO_LENS)
    rc, out, err = run_main(capsys, "info", f)
    assert_one_line_error(rc, err, str(f), "unknown key optics.pixle_pitch_um")
    rc, out, err = run_main(capsys, "psf", "--lens", f, "--field", "0,0", "--out", "p.npy")
    assert_one_line_error(rc, err, "optics.pixle_pitch_um")
    rc, out, err = run_main(capsys, "grid", "--lens", f, "--n", "2,2", "--out", "g")
    assert_one_line_error(rc, err, "optics.pixle_pitch_um")
    assert files_under(tmp_path) == ["typo.toml"]


def test_invalid_toml_file(capsys, tmp_path):
    f = tmp_path / "broken.toml"
    f.write_text("[optics\nna = 0.4\n")
    rc, out, err = run_main(capsys, "info", f)
    assert_one_line_error(rc, err, str(f), "not valid TOML")


@pytest.mark.parametrize("field", ["1", "0.3", "1,2,3", "a,b", "0.3;0.2", "", "nan,0", "0,inf"])
def test_malformed_field(capsys, tmp_path, field):
    rc, out, err = run_main(capsys, "psf", "--lens", "microscope", "--field", field, "--out", "p.npy")
    assert_one_line_error(rc, err, "--field", repr(field), "two comma-separated numbers")
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    "n, msg",
    [
        ("0,3", "expected 1 <= NY, NX"),
        ("3,0", "expected 1 <= NY, NX"),
        ("-1,3", "expected 1 <= NY, NX"),
        ("100,100", "NY * NX <= 4096"),
        ("3", "two comma-separated integers"),
        ("2.5,3", "two comma-separated integers"),
    ],
)
def test_bad_grid_size(capsys, tmp_path, n, msg):
    rc, out, err = run_main(capsys, "grid", "--lens", "microscope", f"--n={n}", "--out", "g")
    assert_one_line_error(rc, err, "--n", msg)
    assert not (tmp_path / "g").exists()  # no output folder created
    assert out == ""


@pytest.mark.parametrize("name", ["p.bmp", "p.png", "p", "p.NPZ"])
def test_psf_unknown_out_suffix(capsys, tmp_path, name):
    rc, out, err = run_main(capsys, "psf", "--lens", "microscope", "--field", "0,0", "--out", name)
    assert_one_line_error(rc, err, "--out", name, "expected a .npy, .tif or .fits file")
    assert files_under(tmp_path) == []  # neither the file nor a temporary
    assert out == ""


def test_psf_out_in_missing_folder(capsys, tmp_path):
    rc, out, err = run_main(capsys, "psf", "--lens", "microscope", "--field", "0,0", "--out", "nope/p.npy")
    assert_one_line_error(rc, err, "does not exist")
    assert files_under(tmp_path) == []


def test_grid_out_is_a_file(capsys, tmp_path):
    (tmp_path / "taken").write_text("x")
    rc, out, err = run_main(capsys, "grid", "--lens", "microscope", "--n", "2,2", "--out", "taken")
    assert_one_line_error(rc, err, "exists and is not a folder")
    assert (tmp_path / "taken").read_text() == "x"
    assert files_under(tmp_path) == ["taken"]


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["psf", "--lens", "microscope", "--field", "0,0"], ["required", "--out"]),
        (["psf", "--field", "0,0", "--out", "p.npy"], ["required", "--lens"]),
        (["grid", "--lens", "microscope"], ["required", "--out"]),
        (["info"], ["required", "target"]),
        (["deblur", "microscope"], ["invalid choice", "deblur"]),
        (["info", "microscope", "--bogus"], ["unrecognized arguments", "--bogus"]),
    ],
)
def test_argparse_errors_are_one_line(capsys, tmp_path, argv, fragments):
    rc, out, err = run_main(capsys, *argv)
    assert_one_line_error(rc, err, *fragments)
    assert out == ""
    assert files_under(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# as a separate process
# --------------------------------------------------------------------------------------------------
def _commands():
    cmds = [pytest.param([sys.executable, "-m", "psfsim.cli"], id="python-m")]
    script = shutil.which("psfsim", path=str(Path(sys.executable).parent))
    cmds.append(
        pytest.param(
            [script] if script else None,
            id="console-script",
            marks=pytest.mark.skipif(script is None, reason="psfsim console script not installed next to python"),
        )
    )
    return cmds


def _env():
    env = dict(os.environ)
    env.pop("PSFSIM_PRESETS", None)
    return env


@pytest.mark.parametrize("cmd", _commands())
def test_subprocess_error_is_one_line_exit_2(tmp_path, cmd):
    f = tmp_path / "typo.toml"
    f.write_text(TYPO_LENS)
    res = subprocess.run(
        [*cmd, "psf", "--lens", str(f), "--field", "0,0", "--out", str(tmp_path / "p.npy")],
        capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120,
    )
    assert res.returncode == 2, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("psfsim: error:")
    assert "unknown key optics.pixle_pitch_um" in lines[0]
    assert "Traceback" not in res.stderr
    assert res.stdout == ""
    assert not (tmp_path / "p.npy").exists()


def test_subprocess_missing_argument(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "psfsim.cli", "grid", "--lens", "microscope"],
        capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120,
    )
    assert res.returncode == 2
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("psfsim: error:") and "--out" in lines[0]
    assert "Traceback" not in res.stderr


def test_subprocess_info_ok(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "psfsim.cli", "info", "telescope"],
        capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert "telescope-f12-obscured" in res.stdout
    assert "Nyquist lambda_min/(4 NA) = 2.7 um" in res.stdout


def test_subprocess_undersampled_lens_warns_in_one_line(tmp_path):
    f = tmp_path / "coarse.toml"
    f.write_text(UNDERSAMPLED_LENS)
    res = subprocess.run(
        [sys.executable, "-m", "psfsim.cli", "info", str(f)],
        capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "UNDERSAMPLED" in res.stdout
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("psfsim: warning: ")
    assert "coarser than Nyquist" in lines[0] and "0.325" in lines[0]


def test_negative_field_value_without_equals_sign(capsys, tmp_path):
    """``--field -0.5,0.2`` must be taken as the option's value, not as an unknown option."""
    rc, out, err = run_main(capsys, "psf", "--lens", "microscope", "--field", "-0.5,0.2", "--out", "p.npy")
    assert rc == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), load_lens("microscope").psf(-0.5, 0.2))


@pytest.mark.parametrize("extra, msg", [(["--seed", "-1", "--photons", "100"], "--seed"), (["--read-noise", "2"], "--photons")])
def test_blur_noise_argument_errors(capsys, tmp_path, extra, msg):
    np.save(tmp_path / "img.npy", np.ones((40, 40)))
    rc, out, err = run_main(capsys, "blur", "--lens", "microscope", "--input", "img.npy", "--out", "b.npy", *extra)
    assert_one_line_error(rc, err, msg)
    assert not (tmp_path / "b.npy").exists()


def test_blur_and_rl_with_tile_local_bases(capsys, tmp_path):
    """``--local`` gives the operator of ``make_operator(..., local=True)`` (same output) and records the ranks per
    block; refused with ``--exact``."""
    import json

    from psfsim import make_operator

    img = np.random.default_rng(0).random((300, 320)).astype(np.float32)
    np.save(tmp_path / "img.npy", img)
    rc, out, err = run_main(capsys, "blur", "--lens", "relay", "--input", "img.npy", "--out", "b.npy", "--local")
    assert rc == 0, err
    rec = json.loads((tmp_path / "b.npy.json").read_text())
    op = make_operator(load_lens("relay"), shape=img.shape, origin=tuple(rec["origin"]), local=True)
    np.testing.assert_allclose(np.load(tmp_path / "b.npy"), op(img), rtol=0, atol=1e-6)
    assert "tile-local bases" in out and rec["local_ranks"] == op.local_ranks
    rc, out, err = run_main(capsys, "rl", "--lens", "relay", "--input", "b.npy", "--out", "r.npy", "--local",
                            "--iters", "2")
    assert rc == 0, err
    assert json.loads((tmp_path / "r.npy.json").read_text())["local_ranks"] == op.local_ranks
    rc, out, err = run_main(capsys, "blur", "--lens", "relay", "--input", "img.npy", "--out", "c.npy", "--local",
                            "--exact")
    assert_one_line_error(rc, err, "--local")
    assert not (tmp_path / "c.npy").exists()
