"""recon fit: one command from a lens to an evaluated model; resumable; refuses a folder of another fit."""

import pytest

from recon import ReconError
from recon.fit import FitConfig, fit


@pytest.mark.filterwarnings("ignore::psfsim.NyquistWarning")
def test_fit_simulates_trains_evaluates_and_continues(tmp_path):
    cfg = FitConfig(lens="microscope", out=str(tmp_path / "run"), n=24, size=32, epochs=1, crop=32, batch=4,
                    model_args={"depth": 2, "base_channels": 4, "residual": True})
    res = fit(cfg, progress=False, log=None)
    for name in ("fit.toml", "data.zarr", "train/best.pt", "train/metrics.csv", "eval/results.md"):
        assert (tmp_path / "run" / name).exists(), name
    assert set(res.evaluation.scores) == {"blurred", "wiener", "wiener_sv", "model"}
    assert "spatially-varying Wiener" in res.summary()
    # the residual U-Net starts at its input: after one tiny epoch it is within 1 dB of the blurred input
    assert abs(res.evaluation.scores["model"].psnr_db - res.evaluation.scores["blurred"].psnr_db) < 1.0
    # more epochs continue the same fit (training resumes from last.pt)
    res2 = fit(FitConfig(**{**cfg.__dict__, "epochs": 2}), progress=False, log=None)
    assert res2.train.resumed_from == 1 and res2.train.epochs == 2
    with pytest.raises(ReconError, match="a fit with other arguments \\(n: was 24, now 30\\)"):
        fit(FitConfig(**{**cfg.__dict__, "n": 30}), progress=False, log=None)


@pytest.mark.filterwarnings("ignore::psfsim.NyquistWarning")
def test_fit_refuses_a_store_of_another_lens_and_keeps_model_args_typed(tmp_path):
    import tomllib

    cfg = FitConfig(lens="microscope", out=str(tmp_path / "a"), n=24, size=32, epochs=1, crop=32, batch=4,
                    model_args={"depth": 2, "base_channels": 4})
    fit(cfg, progress=False, log=None)
    other = FitConfig(**{**cfg.__dict__, "lens": "relay", "out": str(tmp_path / "b"), "data": str(tmp_path / "a" / "data.zarr")})
    with pytest.raises(ReconError, match="a store of lens 'microscope-20x-fieldcurv', not of --lens"):
        fit(other, progress=False, log=None)
    rec = tomllib.loads(FitConfig(lens="x", out="y", model_args={"grid": [2, 2]}).to_toml())
    assert rec["model_args"]["grid"] == [2, 2]
