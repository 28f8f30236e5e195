"""``recon experiment deblur2d``: the quick run end to end through the CLI, resume, refusals, the paper scale's
settings, the boundary-aware Richardson-Lucy baseline against psfsim's Richardson-Lucy and psfsim's brute-force
operator, the baselines' scores against skimage computed directly, and the claim rules."""

import csv
import json

import numpy as np
import pytest

import psfsim
from recon.cli import main
from recon.experiments import deblur2d
from recon.experiments.deblur2d_baselines import masked_richardson_lucy


def _table(out):
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("deblur2d") / "exp"
    rc = main(["experiment", "deblur2d", "--quick", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    return out


@pytest.mark.slow
def test_quick_run_writes_table_figures_and_verdicts(quick_run, capsys):
    out = quick_run
    rows = _table(out)
    units = [r["unit"] for r in rows]
    assert sorted(deblur2d.RUN_ORDER) == sorted(deblur2d.MODELS)
    assert units == list(deblur2d.MODELS) + ["blurred", "wiener", "wiener_sv", "rl"]
    for r in rows:
        assert np.isfinite(float(r["psnr_db"])) and -1 <= float(r["ssim"]) <= 1
    for name in ("fig4b_psnr_vs_params.png", "curves.png", "radial_psnr.png", "fig5_examples.png"):
        p = out / name
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size < 300_000
    claims = (out / "claims.md").read_text()
    for c in ("CGUNet(3) beats UNet(6)", "CoordConvUNet(6) is no better", "MultiWienerNet", "CGUNet(6) beats"):
        assert c in claims
    assert claims.count("**held**") + claims.count("**did not hold**") == 4
    settings = json.loads((out / "experiment.json").read_text())["settings"]
    assert settings["seed"] == 0 and settings["quick"] is True
    rec = json.loads((out / "units" / "cgunet3.json").read_text())
    assert rec["seed"] == 0 and rec["epochs"] == 1 and rec["params"] == sum(
        p.numel() for p in __import__("recon").build_model("cgunet", depth=3, base_channels=4).parameters())


@pytest.mark.slow
def test_quick_run_resumes_only_missing_units(quick_run, capsys):
    out = quick_run
    before = _table(out)
    capsys.readouterr()
    assert main(["experiment", "deblur2d", "--quick", "--out", str(out), "--device", "cpu"]) == 0
    assert "0 unit(s) computed" in capsys.readouterr().out
    assert _table(out) == before
    # a unit whose record is lost re-runs (its training resumes from last.pt: nothing to train), alone
    (out / "units" / "unet3.json").unlink()
    res = deblur2d.run(out, quick=True, progress=False, device="cpu")
    assert res.computed == ["unet3"]
    assert _table(out) == before


@pytest.mark.slow
def test_baseline_scores_match_skimage_and_evaluate(quick_run):
    """The baselines unit's SV-Wiener scores against skimage run directly on the store, and against
    recon.evaluate's (another code path) for the same store."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    out = quick_run
    base = json.loads((out / "units" / "baselines.json").read_text())
    r = psfsim.DatasetReader(out / "data.zarr")
    b = r.read(r.splits["test"], arrays=("sharp", "wiener_sv", "blurred"))
    for k in ("wiener_sv", "blurred"):
        ps = np.mean([peak_signal_noise_ratio(t.astype(np.float64), x.astype(np.float64), data_range=1.0)
                      for t, x in zip(b.sharp, getattr(b, k))])
        ss = np.mean([structural_similarity(t.astype(np.float64), x.astype(np.float64), data_range=1.0)
                      for t, x in zip(b.sharp, getattr(b, k))])
        assert base["scores"][k]["psnr_db"] == pytest.approx(ps, abs=1e-6)
        assert base["scores"][k]["ssim"] == pytest.approx(ss, abs=1e-6)
    ev = json.loads((out / "runs" / "unet3" / "eval" / "results.json").read_text())
    assert ev["scores"]["wiener_sv"]["psnr_db"] == pytest.approx(base["scores"]["wiener_sv"]["psnr_db"], abs=1e-6)
    nan = [np.nan if v is None else v for v in ev["radial_psnr"]["wiener_sv"]]  # JSON: empty bins as null
    np.testing.assert_allclose(nan, base["radial_psnr"]["wiener_sv"], atol=1e-6)
    assert base["rl_iters"] in deblur2d.RL_ITERS


def test_other_settings_refused_with_exit_2(tmp_path, capsys):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "experiment.json").write_text(json.dumps(
        {"experiment": "deblur2d", "settings": deblur2d.settings_for("cpu", quick=True), "version": "x"}))
    assert main(["experiment", "deblur2d", "--quick", "--seed", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and "'seed': 1" in err[0]
    assert main(["experiment", "deblur2d", "--models", "unet3,nope", "--out", str(tmp_path / "b")]) == 2
    assert "nope" in capsys.readouterr().err


def test_paper_scale_settings_are_the_papers():
    s = deblur2d.settings_for("paper")
    assert (s["n"], s["size"], s["epochs"], s["lr_factor"], s["patience"]) == (20000, 256, 600, 0.5, 20)
    assert s["residual"] is False and s["models"] == list(deblur2d.MODELS)
    cfg = deblur2d.train_config("cgunet3", s, "DATA.zarr", "/nonexistent/run", device="cpu")
    assert (cfg.epochs, cfg.patience, cfg.lr_factor, cfg.crop) == (600, 20, 0.5, 256)
    assert cfg.model == "cgunet" and cfg.model_args == {"depth": 3, "base_channels": 16, "residual": False}
    mw = deblur2d.train_config("multiwienernet6", s, "DATA.zarr", "/nonexistent/run")
    assert mw.model_args == {"depth": 6, "base_channels": 16}  # MultiWienerNet has no residual option
    q = deblur2d.settings_for("paper", quick=True)
    assert (q["patience"], q["residual"], q["n"]) == (20, False, deblur2d.QUICK["n"])


@pytest.mark.slow
def test_paper_scale_runs_at_tiny_size(tmp_path):
    out = tmp_path / "paper"
    assert main(["experiment", "deblur2d", "--scale", "paper", "--quick", "--models", "unet3,cgunet3",
                 "--out", str(out), "--device", "cpu"]) == 0
    cfg = (out / "runs" / "cgunet3" / "config.toml").read_text()
    assert "patience = 20" in cfg and "lr_factor = 0.5" in cfg and "residual = false" in cfg
    assert "not decided" in (out / "claims.md").read_text()  # UNet(6) was not run: no verdict invented


#: A lens with a small PSF box (margin 4 px) so that psfsim's brute-force operator (one PSF per pixel) is cheap.
SMALL_LENS = {"name": "small", "optics": {"wavelength_nm": 520.0, "na": 0.4, "pixel_pitch_um": 0.325},
              "field": {"shape_px": [64, 64]}, "psf": {"size_px": 9, "oversample": 2},
              "seidel": {"W040": 0.3, "W131": 0.3, "W222": 0.3}}


@pytest.fixture(scope="module")
def small_lens():
    return psfsim.lens_from_dict(SMALL_LENS, check_psf_box=False)


def test_masked_rl_without_margin_is_psfsims_richardson_lucy(small_lens):
    """margin 0: the same iteration as psfsim.restore.richardson_lucy (an independent implementation)."""
    from psfsim.operators import make_operator
    from psfsim.restore import richardson_lucy

    rng = np.random.default_rng(0)
    img = rng.uniform(0.2, 1.0, (10, 10)).astype(np.float32)
    op = make_operator(small_lens, shape=(10, 10), origin=(30, 12), method="exact")
    y = op(img)
    got = masked_richardson_lucy(y, op, 0, [3, 7])
    for n in (3, 7):
        ref = richardson_lucy(y, op, iters=n).image
        np.testing.assert_allclose(got[n], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_masked_rl_beats_plain_rl_on_data_of_the_brute_force_operator(small_lens):
    """Data as the store makes them: a scene larger than the window blurred by psfsim's exact (per-pixel PSF)
    operator, then cropped to the window. Richardson-Lucy with the margin as unknowns (what the baseline runs)
    recovers the window better than plain RL on the window, which must explain the margin's light with its
    edge pixels."""
    from psfsim.operators import make_operator

    m = small_lens.psf_sampling.size_px // 2
    h = w = 8
    origin = (30, 20)
    rng = np.random.default_rng(1)
    scene = rng.uniform(0.0, 1.0, (h + 2 * m, w + 2 * m)).astype(np.float32)
    region = make_operator(small_lens, shape=scene.shape, origin=(origin[0] - m, origin[1] - m), method="exact")
    y = region(scene)[m : m + h, m : m + w]
    est = masked_richardson_lucy(y, region, m, [50])[50]
    plain = masked_richardson_lucy(y, make_operator(small_lens, shape=(h, w), origin=origin, method="exact"), 0,
                                   [50])[50]
    truth = scene[m : m + h, m : m + w]
    assert np.mean((est - truth) ** 2) < 0.7 * np.mean((plain - truth) ** 2)


def test_claim_rules():
    rows = {"cgunet3": {"psnr_db": 30.0, "ssim": 0.9, "params": 500_000},
            "unet6": {"psnr_db": 29.5, "ssim": 0.88, "params": 31_000_000},
            "coordconv_unet6": {"psnr_db": 29.55, "ssim": 0.88, "params": 31_100_000},
            "multiwienernet6": {"psnr_db": 29.8, "ssim": 0.89, "params": 31_000_000},
            "cgunet6": {"psnr_db": 30.05, "ssim": 0.9, "params": 32_000_000}}
    c = deblur2d.decide_claims(rows)
    assert [x.held for x in c] == [True, True, True, False]  # +0.05 dB is within the margin: not "beats"
    assert "62x fewer" in c[0].evidence
    rows["coordconv_unet6"]["psnr_db"] = 29.7
    rows["multiwienernet6"]["psnr_db"] = 30.3
    assert [x.held for x in deblur2d.decide_claims(rows)][1:3] == [False, False]
    del rows["unet6"]
    assert [x.held for x in deblur2d.decide_claims(rows)][:3] == [None, None, None]
