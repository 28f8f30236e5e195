"""The shared experiment folder (recon/experiments/common.py): resumable unit records, settings check, tables."""

import csv

import pytest

from recon.errors import ReconError
from recon.experiments import Claim, ExperimentDir, claims_markdown, experiment_module, mean_spread, write_table


def test_units_resume_and_records(tmp_path):
    exp = ExperimentDir(tmp_path / "e", "conv1d", {"seeds": 3})
    assert not exp.done("cnn/seed0")
    exp.save("cnn/seed0", {"psnr": 20.5})
    again = ExperimentDir(tmp_path / "e", "conv1d", {"seeds": 3})  # same settings: resumes
    assert again.done("cnn/seed0") and again.load("cnn/seed0") == {"psnr": 20.5}
    assert again.records() == {"cnn/seed0": {"psnr": 20.5}}


def test_other_settings_refused_unless_overwrite(tmp_path):
    ExperimentDir(tmp_path / "e", "conv1d", {"seeds": 3}).save("a", {"x": 1})
    with pytest.raises(ReconError, match="seeds.*overwrite"):
        ExperimentDir(tmp_path / "e", "conv1d", {"seeds": 1})
    fresh = ExperimentDir(tmp_path / "e", "conv1d", {"seeds": 1}, overwrite=True)
    assert fresh.records() == {}


def test_foreign_folder_refused(tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "precious.txt").write_text("keep")
    with pytest.raises(ReconError, match="not empty"):
        ExperimentDir(tmp_path / "f", "sad", {})
    assert (tmp_path / "f" / "precious.txt").read_text() == "keep"


def test_table_markdown_and_csv(tmp_path):
    exp = ExperimentDir(tmp_path / "e", "sad", {})
    md, cs = write_table(exp, "results", [{"model": "pafu", "l1": 0.012345678, "params": 12345}],
                         ["model", "l1", "params"], title="SAD")
    assert "| pafu | 0.01235 | 12,345 |" in md.read_text()
    rows = list(csv.DictReader(cs.open()))
    assert rows == [{"model": "pafu", "l1": "0.012345678", "params": "12345"}]  # full precision in the CSV


def test_claims_and_spread():
    text = claims_markdown([Claim("A beats B", True, "30.1 vs 28.0 dB"), Claim("C", None, "n/a")])
    assert "**held**" in text and "**not decided**" in text
    assert mean_spread([1.0, 3.0]) == (2.0, 1.0)


def test_unknown_experiment_named():
    with pytest.raises(ReconError, match="'nope'.*conv1d"):
        experiment_module("nope")


def test_markdown_cells_escape_pipes_and_newlines(tmp_path):
    text = claims_markdown([Claim("A | B", False, "x|y\nz")])
    assert "A \\| B" in text and "x\\|y z" in text
    assert text.splitlines()[2].count(" | ") == 2  # three cells, the escaped pipes inside them
