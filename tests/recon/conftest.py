"""Shared fixtures of recon's tests: one tiny psfsim store per session (24 samples of 32 x 32, cells, noisy)."""

import pytest

import psfsim

TINY_LENS = {"name": "tiny", "optics": {"wavelength_nm": 520.0, "na": 0.4, "pixel_pitch_um": 0.325},
             "field": {"shape_px": [256, 256]}, "psf": {"size_px": 33, "oversample": 4},
             "seidel": {"W040": 0.5, "W131": 0.6, "W222": 0.4}}


@pytest.fixture(scope="session")
def tiny_lens():
    return psfsim.lens_from_dict(TINY_LENS, check_psf_box=False)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "tiny.zarr"
    spec = psfsim.SimulationSpec(lens=TINY_LENS, source="cells", n=24, size=(32, 32), seed=3, photons=1000.0,
                                 read_noise=2.0)
    psfsim.simulate(spec, path, workers=1, progress=False)
    return path
