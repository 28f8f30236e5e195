"""Adversarial command lines, outputs side: nothing lost, nothing followed.

Every command (psf, grid, blur, wiener, rl, info, simulate, export) answers each class of bad input (missing
file, bad value, bad output path, existing output without --overwrite) with exit status 2, exactly one stderr
line ``psfsim: error: ...``, and no file changed (the folder's files and mtimes are compared before/after).
Reference: the files' own bytes and ``os.stat`` before the command.
"""

import errno
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from psfsim.cli import main

from ..conftest import SMALL_LENS_TOML

SMALL_LENS = SMALL_LENS_TOML


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.delenv("PSFSIM_PRESETS", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    (tmp_path / "lens.toml").write_text(SMALL_LENS)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "img.npy", rng.random((48, 48)).astype(np.float32))


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def snapshot(root: Path) -> dict:
    """Every file and link under ``root`` with its size and mtime (links: their target)."""
    snap = {}
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        snap[str(p.relative_to(root))] = (os.readlink(p) if p.is_symlink() else None, st.st_size, st.st_mtime_ns)
    return snap


def assert_refused(rc, err, *fragments):
    lines = err.splitlines()
    assert rc == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("psfsim: error: ") and "Traceback" not in err, err
    assert ": : " not in lines[0] and ".tmp" not in lines[0], err  # never an empty name, never a temporary
    for f in fragments:
        assert f in lines[0], (f, err)


IMG = ["--lens", "lens.toml", "--input", "img.npy"]


# --------------------------------------------------------------------------------------------------
# --out is the input
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", ["blur", "wiener", "rl"])
@pytest.mark.parametrize("how", ["same", "relative", "symlink", "hardlink"])
def test_out_equal_to_input_is_refused(capsys, tmp_path, cmd, how):
    out = {"same": "img.npy", "relative": f"../{tmp_path.name}/img.npy", "symlink": "alias.npy", "hardlink": "hard.npy"}[how]
    if how == "symlink":
        (tmp_path / "alias.npy").symlink_to(tmp_path / "img.npy")
    if how == "hardlink":
        os.link(tmp_path / "img.npy", tmp_path / "hard.npy")
    before = snapshot(tmp_path)
    data = (tmp_path / "img.npy").read_bytes()
    # even with --overwrite: an input is never an output
    rc, out_, err = run(capsys, cmd, *IMG, "--out", out, "--overwrite")
    assert_refused(rc, err, "is the input", "img.npy")
    assert (tmp_path / "img.npy").read_bytes() == data
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------------
# existing outputs: refused unless --overwrite (the image, its record, the grid's files)
# --------------------------------------------------------------------------------------------------
CASES = {
    "psf": (["psf", "--lens", "lens.toml", "--field", "0,0", "--out", "o.npy"], ["o.npy"]),
    "blur": (["blur", *IMG, "--out", "o.npy"], ["o.npy", "o.npy.json"]),
    "wiener": (["wiener", *IMG, "--out", "o.npy"], ["o.npy", "o.npy.json"]),
    "rl": (["rl", *IMG, "--out", "o.npy", "--iters", "2"], ["o.npy", "o.npy.json"]),
    "grid": (["grid", "--lens", "lens.toml", "--n", "2,2", "--out", "g"], ["g/psf_grid.npz"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_existing_outputs_refused_without_overwrite(capsys, tmp_path, name):
    argv, made = CASES[name]
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    for m in made:
        assert (tmp_path / m).exists()
    before = snapshot(tmp_path)
    rc, out, err = run(capsys, *argv)
    assert_refused(rc, err, "--overwrite")
    assert snapshot(tmp_path) == before
    rc, out, err = run(capsys, *argv, "--overwrite")
    assert rc == 0, err


@pytest.mark.parametrize("cmd", ["blur", "wiener", "rl"])
def test_existing_sidecar_alone_counts(capsys, tmp_path, cmd):
    (tmp_path / "o.npy.json").write_text("someone's record")
    before = snapshot(tmp_path)
    rc, out, err = run(capsys, cmd, *IMG, "--out", "o.npy", "--iters" if cmd == "rl" else "--origin", "2" if cmd == "rl" else "0,0")
    assert_refused(rc, err, "o.npy.json", "--overwrite")
    assert snapshot(tmp_path) == before


def test_grid_folder_with_other_files_is_fine_and_keeps_them(capsys, tmp_path):
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "notes.txt").write_text("mine")
    rc, out, err = run(capsys, *CASES["grid"][0])
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == [
        "fwhm_map.png", "notes.txt", "psf_grid.npz", "psf_montage.png", "strehl_map.png"]
    assert (tmp_path / "g" / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------------------------------
# links at output names are replaced, never followed
# --------------------------------------------------------------------------------------------------
def test_link_at_the_sidecar_is_replaced_not_followed(capsys, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (tmp_path / "o.npy.json").symlink_to(victim)
    rc, out, err = run(capsys, "blur", *IMG, "--out", "o.npy")
    assert_refused(rc, err, "o.npy.json", "exists")  # a link is an existing output
    rc, out, err = run(capsys, "blur", *IMG, "--out", "o.npy", "--overwrite")
    assert rc == 0, err
    assert victim.read_text() == "keep"
    assert not (tmp_path / "o.npy.json").is_symlink()


def test_link_at_the_temporary_name_is_not_followed(capsys, tmp_path, monkeypatch):
    import tempfile

    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    for stem in ("o.npy", "o.npy.json"):
        suffix = Path(stem).suffix
        (tmp_path / f".{stem}.AAAA.tmp{suffix}").symlink_to(victim)
    names = iter(["AAAA", "BBBB", "AAAA", "CCCC"] + [f"N{i:03d}" for i in range(100)])
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: names)
    rc, out, err = run(capsys, "blur", *IMG, "--out", "o.npy")
    assert rc == 0, err
    assert victim.read_text() == "keep"
    assert np.load(tmp_path / "o.npy").shape == (48, 48)


# --------------------------------------------------------------------------------------------------
# file-system failures name the user's path; nothing half-written is left
# --------------------------------------------------------------------------------------------------
def test_full_disk_names_the_output(capsys, tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", full)
    before = snapshot(tmp_path)
    rc, out, err = run(capsys, "wiener", *IMG, "--out", "o.npy")
    assert_refused(rc, err, "o.npy: cannot write (No space left on device)")
    assert snapshot(tmp_path) == before


def test_read_only_folder_names_the_output(capsys, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        rc, out, err = run(capsys, "blur", *IMG, "--out", "ro/o.npy")
        assert_refused(rc, err, "ro/o.npy")
    finally:
        ro.chmod(0o700)


# --------------------------------------------------------------------------------------------------
# non-finite results: refused, nothing written
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", ["blur", "wiener", "rl"])
def test_huge_pixels_refused(capsys, tmp_path, cmd):
    np.save(tmp_path / "huge.npy", np.full((48, 48), 1e308))
    before = snapshot(tmp_path)
    rc, out, err = run(capsys, cmd, "--lens", "lens.toml", "--input", "huge.npy", "--out", "o.npy")
    assert_refused(rc, err)
    assert snapshot(tmp_path) == before


def test_extreme_balance_refused(capsys, tmp_path):
    before = snapshot(tmp_path)
    rc, out, err = run(capsys, "wiener", *IMG, "--out", "o.npy", "--balance", "1e39")
    assert_refused(rc, err, "balance")
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------------
# every command, every class of bad input: exit 2, one line, nothing changed
# --------------------------------------------------------------------------------------------------
SIM = ["simulate", "--lens", "lens.toml", "--source", "cells", "--n", "2", "--size", "32,32", "--workers", "1"]

BAD = {
    # missing file
    "psf-missing": ["psf", "--lens", "nope.toml", "--field", "0,0", "--out", "o.npy"],
    "grid-missing": ["grid", "--lens", "nope.toml", "--out", "g"],
    "blur-missing": ["blur", "--lens", "lens.toml", "--input", "nope.npy", "--out", "o.npy"],
    "wiener-missing": ["wiener", "--lens", "lens.toml", "--input", "nope.npy", "--out", "o.npy"],
    "rl-missing": ["rl", "--lens", "lens.toml", "--input", "nope.npy", "--out", "o.npy"],
    "info-missing": ["info", "nope.toml"],
    "simulate-missing": ["simulate", "--lens", "nope.toml", "--source", "cells", "--n", "2", "--out", "d.zarr"],
    "export-missing": ["export", "nope.zarr", "--to", "o.h5"],
    # bad value
    "psf-value": ["psf", "--lens", "lens.toml", "--field", "a,b", "--out", "o.npy"],
    "grid-value": ["grid", "--lens", "lens.toml", "--n", "0,2", "--out", "g"],
    "blur-value": ["blur", *IMG, "--out", "o.npy", "--rank", "0"],
    "wiener-value": ["wiener", *IMG, "--out", "o.npy", "--balance", "-1"],
    "rl-value": ["rl", *IMG, "--out", "o.npy", "--iters", "0"],
    "info-value": ["info", "img.npy"],
    "simulate-value": [*SIM[:-4], "--n", "-3", "--out", "d.zarr"],
    "export-value": ["export", "lens.toml", "--to", "o.h5"],
    # bad output path
    "psf-outpath": ["psf", "--lens", "lens.toml", "--field", "0,0", "--out", "nofolder/o.npy"],
    "grid-outpath": ["grid", "--lens", "lens.toml", "--out", "nofolder/g"],
    "blur-outpath": ["blur", *IMG, "--out", "nofolder/o.npy"],
    "wiener-outpath": ["wiener", *IMG, "--out", "o.bmp"],
    "rl-outpath": ["rl", *IMG, "--out", "."],
    "simulate-outpath": [*SIM, "--out", "nofolder/d.zarr"],
    "export-outpath": ["export", "data.zarr", "--to", "nofolder/o.h5"],
    # existing output without --overwrite
    "psf-exists": ["psf", "--lens", "lens.toml", "--field", "0,0", "--out", "taken.npy"],
    "blur-exists": ["blur", *IMG, "--out", "taken.npy"],
    "wiener-exists": ["wiener", *IMG, "--out", "taken.npy"],
    "rl-exists": ["rl", *IMG, "--out", "taken.npy"],
    "grid-exists": ["grid", "--lens", "lens.toml", "--out", "taken_grid"],
    "simulate-exists": [*SIM[:-6], "--n", "3", "--size", "32,32", "--workers", "1", "--out", "data.zarr"],
    "export-exists": ["export", "data.zarr", "--to", "taken.h5"],
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A tiny complete dataset (2 samples of 32 x 32) for simulate/export cases."""
    root = tmp_path_factory.mktemp("ds")
    (root / "lens.toml").write_text(SMALL_LENS)
    old = os.getcwd()
    os.chdir(root)
    try:
        rc = main([*SIM, "--out", "data.zarr"])
    finally:
        os.chdir(old)
    assert rc == 0
    return root / "data.zarr"


@pytest.mark.parametrize("case", list(BAD))
def test_every_command_refuses_in_one_line_and_changes_nothing(capsys, tmp_path, case, dataset, request):
    import shutil

    if "data.zarr" in BAD[case]:
        shutil.copytree(dataset, tmp_path / "data.zarr")
    np.save(tmp_path / "taken.npy", np.zeros(3))
    (tmp_path / "taken.npy.json").write_text("{}")
    (tmp_path / "taken.h5").write_bytes(b"not yours")
    (tmp_path / "taken_grid").mkdir()
    (tmp_path / "taken_grid" / "psf_grid.npz").write_bytes(b"old grid")
    capsys.readouterr()
    before = snapshot(tmp_path)
    rc, out, err = run(capsys, *BAD[case])
    assert_refused(rc, err)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("argv", [["wiener", "--lens", "lens.toml", "--input", "huge.npy", "--out", "o.npy"],
                                  ["wiener", *IMG, "--out", "o.npy", "--balance", "1e39"]])
def test_separate_process_prints_one_line_and_no_warnings(tmp_path, argv):
    """In a separate process (no pytest warning capture): no RuntimeWarning line joins the error."""
    import subprocess
    import sys

    np.save(tmp_path / "huge.npy", np.full((48, 48), 1e308))
    before = snapshot(tmp_path)
    res = subprocess.run([sys.executable, "-m", "psfsim.cli", *argv], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert_refused(res.returncode, res.stderr)
    assert snapshot(tmp_path) == before
