"""Lens presets: package data inside psfsim (so a wheel carries them), mirrored at data/lenses, overridable."""

from pathlib import Path

import pytest

import psfsim
from psfsim.lens import preset_names, presets_dir, resolve_lens_path

ROOT = Path(__file__).resolve().parents[2]
PRESETS = ("microscope", "relay", "telescope")


@pytest.fixture(autouse=True)
def _default_presets(monkeypatch):
    monkeypatch.delenv("PSFSIM_PRESETS", raising=False)


def test_presets_live_in_the_package():
    d = presets_dir()
    assert d.resolve() == Path(psfsim.__file__).resolve().parent / "presets"
    assert set(PRESETS) <= set(preset_names())
    for name in PRESETS:
        assert resolve_lens_path(name).parent == d


def test_data_lenses_is_the_same_files():
    """``data/lenses`` (the documented place in the repository) shows exactly the package's presets."""
    data = ROOT / "data" / "lenses"
    assert sorted(p.name for p in data.glob("*.toml")) == sorted(p.name for p in presets_dir().glob("*.toml"))
    for p in presets_dir().glob("*.toml"):
        assert (data / p.name).read_bytes() == p.read_bytes()


def test_environment_overrides_presets(tmp_path, monkeypatch):
    (tmp_path / "mine.toml").write_text((presets_dir() / "microscope.toml").read_text().replace(
        'name = "microscope-20x-fieldcurv"', 'name = "mine"'))
    monkeypatch.setenv("PSFSIM_PRESETS", str(tmp_path))
    assert presets_dir() == tmp_path
    assert preset_names() == ["mine"]
    assert psfsim.load_lens("mine").name == "mine"
    with pytest.raises(psfsim.LensError, match=r"presets: mine"):
        psfsim.load_lens("microscope")


def test_pyproject_declares_the_presets_as_package_data():
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "presets/*.toml" in cfg["tool"]["setuptools"]["package-data"]["psfsim"]
