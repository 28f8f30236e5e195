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
