"""``recon experiment conv1d`` (CoordGate Sec. IV.A): the blur matrix H against a direct evaluation of Eq. 5 with
scipy's normal density, the data against a per-signal product, impulse responses against numpy's correlation,
the one-layer CoordGate and the controls against their formulas, the verdict margins, and the command end to end
(quick run through the CLI, resume, one unit re-run, settings mismatch and bad options refused with exit 2)."""

import json
import math

import numpy as np
import pytest
import torch

from recon.coords import coords_1d
from recon.experiments import conv1d as E
from recon.models.cnn1d import CNN1d, CoordGateCNN1d, FreeGateLC1d, NoiseGateCNN1d


# -- the data --------------------------------------------------------------------------------------------------
def test_blur_matrix_is_eq5_evaluated_directly_with_scipy():
    """Each column against scipy.stats.norm.pdf at the offset and width of the stated reading of Eq. 5 (first half:
    offset 1 -> 0 linearly, width 0.5; second half: offset 0, width 0.5 -> 2 linearly)."""
    from scipy.stats import norm

    H = E.blur_matrix(30)
    assert H.shape == (30, 30) and H.dtype == np.float64
    for xp in range(30):
        if xp < 15:
            delta, sigma = 1.0 - xp / 15.0, 0.5
        else:
            delta, sigma = 0.0, 0.5 + 1.5 * (xp - 15) / 14.0
        np.testing.assert_allclose(H[:, xp], norm.pdf(np.arange(30), loc=xp + delta, scale=sigma), rtol=1e-12,
                                   atol=1e-300)
    delta, sigma = E.offsets_widths(30)
    assert (delta[0], delta[15], sigma[0], sigma[14], sigma[15], sigma[29]) == (1.0, 0.0, 0.5, 0.5, 0.5, 2.0)
    # interior columns: a sampled unit-area Gaussian keeps about its area, mean and variance (aliasing error
    # ~exp(-2 pi^2 sigma^2): 0.7 % at sigma = 0.5)
    x = np.arange(30.0)
    for xp in (5, 12, 20):
        col = H[:, xp]
        assert col.sum() == pytest.approx(1.0, abs=0.02)
        assert (x * col).sum() / col.sum() == pytest.approx(xp + delta[xp], abs=0.05)
    col = H[:, 20]
    assert ((x - 20) ** 2 * col).sum() / col.sum() == pytest.approx(sigma[20] ** 2, rel=0.01)


def test_make_data_is_h_times_uniform_signals_split_80_10_10():
    d = E.make_data(200, seed=5)
    H = E.blur_matrix(30)
    assert {k: v[0].shape for k, v in d.items()} == {"train": (160, 30), "val": (20, 30), "test": (20, 30)}
    m = np.concatenate([d[k][0] for k in ("train", "val", "test")]).astype(np.float64)
    n = np.concatenate([d[k][1] for k in ("train", "val", "test")]).astype(np.float64)
    assert m.min() >= 0.0 and m.max() < 1.0 and abs(m.mean() - 0.5) < 0.02
    for i in (0, 77, 199):  # one signal at a time: n[x] = sum_x' H[x, x'] m[x']
        want = [sum(H[x, xp] * m[i, xp] for xp in range(30)) for x in range(30)]
        np.testing.assert_allclose(n[i], want, rtol=1e-6, atol=1e-6)
    again = E.make_data(200, seed=5)
    assert all(np.array_equal(d[k][0], again[k][0]) for k in d)
    assert not np.array_equal(E.make_data(200, seed=6)["train"][0], d["train"][0])
    with pytest.raises(Exception, match="n_signals = 10"):
        E.make_data(10, seed=0)


# -- the models and the probe ----------------------------------------------------------------------------------
def test_impulse_response_of_a_linear_cnn_is_its_correlation_matrix():
    """CNN(1, 5, 1) is affine: f(e_j) - f(0) is column j of the matrix of its cross-correlation, built here with
    numpy.correlate of each impulse (zero padding)."""
    torch.manual_seed(0)
    model = CNN1d(1, 5, 1).double()
    w = model.convs[0].weight.detach().numpy()[0, 0]
    got = E.impulse_response(model, 30)
    want = np.stack([np.correlate(np.pad(np.eye(30)[j], 2), w, mode="valid") for j in range(30)], axis=1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_one_layer_coordgate_is_a_rank_c_mix_of_gated_filters():
    """CG(1, k, c, p) = b + sum_j a_j g_j(x) (w_j * m)(x): one gated conv, channels mixed by a 1 x 1 conv, checked
    against numpy.correlate and the gate MLP's output; its impulse response changes with the coordinates."""
    torch.manual_seed(1)
    model = CoordGateCNN1d(1, 7, 3, 2).double().eval()
    assert len(model.gated) == 1 and model.last is None and model.halo == 3
    m = np.random.default_rng(0).random(30)
    c = coords_1d(30, 1, dtype=torch.float64)
    layer = model.gated[0]
    w = layer.block[0].weight.detach().numpy()[:, 0]
    b0 = layer.block[0].bias.detach().numpy()
    g = layer.gate(c).detach().numpy()[0]
    a = layer.mix.weight.detach().numpy()[0, :, 0]
    b = layer.mix.bias.detach().numpy()[0]
    want = b + sum(a[j] * g[j] * (np.correlate(np.pad(m, 3), w[j], mode="valid") + b0[j]) for j in range(3))
    with torch.no_grad():
        got = model(torch.from_numpy(m)[None, None], c)[0, 0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        moved = model(torch.from_numpy(m)[None, None], c + 0.5)[0, 0].numpy()
    assert np.abs(moved - got).max() > 1e-6


def test_random_input_control_uses_fixed_seeded_noise_instead_of_coordinates():
    a = NoiseGateCNN1d(1, 7, 3, 2, length=30, noise_seed=4).double().eval()
    b = NoiseGateCNN1d(1, 7, 3, 2, length=30, noise_seed=4)
    other = NoiseGateCNN1d(1, 7, 3, 2, length=30, noise_seed=5)
    assert torch.equal(a.static.float(), b.static) and not torch.equal(b.static, other.static)
    s = a.static.numpy().ravel()
    assert s.shape == (30,) and s.min() >= -1.0 and s.max() < 1.0 and len(np.unique(s)) == 30
    assert "static" in a.state_dict()
    x = torch.rand(2, 1, 30, dtype=torch.float64)
    with torch.no_grad():  # coordinates ignored: the gates see the noise; equal to CG fed the noise as coords
        y = a(x, coords_1d(30, 2, dtype=torch.float64))
        torch.testing.assert_close(y, a(x, None), rtol=0, atol=0)
        torch.testing.assert_close(y, a.gated[0](x, a.static.expand(2, -1, -1)), rtol=0, atol=0)
    with pytest.raises(Exception, match="x of length 31"):
        a(torch.zeros(1, 1, 31, dtype=torch.float64))


def test_free_gate_reference_is_a_locally_connected_layer_of_rank_c():
    torch.manual_seed(2)
    model = FreeGateLC1d(k=5, c=2, length=30).double()
    G = model.gates.detach().numpy()[0]
    w = model.conv.weight.detach().numpy()[:, 0]
    a = model.mix.weight.detach().numpy()[0, :, 0]
    got = E.impulse_response(model, 30)
    want = np.zeros((30, 30))
    for j in range(2):
        corr = np.stack([np.correlate(np.pad(np.eye(30)[i], 2), w[j], mode="valid") for i in range(30)], axis=1)
        want += a[j] * G[j][:, None] * corr
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    with pytest.raises(Exception, match="x of length 29"):
        model(torch.zeros(1, 1, 29, dtype=torch.float64))


def test_model_list_is_the_issues():
    labels = [s.label for s in E.model_specs(15, 2)]
    assert labels == ["CNN(1,15,1)", "CNN(3,7,4)", "CNN(4,7,4)", "CNN(4,7,20)", "CNN(8,7,4)", "cCNN(1,15,1)",
                      "cCNN(3,7,4)", "cCNN(4,7,4)", "cCNN(4,7,20)", "cCNN(8,7,4)", "CG(1,15,3,2)",
                      "CG(1,15,3,2) random input", "free gates (1,15,3)"]
    params = {s.label: sum(p.numel() for p in s.build(0).parameters()) for s in E.model_specs(15, 2)}
    # hand counts: CNN(1,15,1) = 15 + 1; CG(1,15,3,2) = conv 3*15+3, gate 1*3+3 + 3*3+3, mix 3+1
    assert params["CNN(1,15,1)"] == 16 and params["CG(1,15,3,2)"] == 48 + 18 + 4
    assert params["CNN(4,7,20)"] == (7 * 20 + 20) + 2 * (20 * 20 * 7 + 20) + (20 * 7 + 1)


# -- the verdicts ----------------------------------------------------------------------------------------------
def _rows(cg=30.0, best_cnn=26.0, ccnn_gain=0.0, wide_gain=0.0, control=20.0):
    rows = []
    for fam in ("cnn", "ccnn"):
        for key, base in (("1_15_1", 18.0), ("4_7_4", 24.0), ("4_7_20", 24.0 + wide_gain), ("8_7_4", best_cnn)):
            rows.append({"key": f"{fam}_{key}", "label": f"{'c' if fam == 'ccnn' else ''}CNN({key.replace('_', ',')})",
                         "family": fam, "psnr_db": base + (ccnn_gain if fam == "ccnn" and key == "4_7_4" else 0.0),
                         "psnr_spread": 0.1, "h_rel_err": 0.5, "stopped": "plateau"})
    rows.append({"key": "cg_1_15_3_2", "label": "CG(1,15,3,2)", "family": "cg", "psnr_db": cg, "psnr_spread": 0.1,
                 "h_rel_err": 0.1, "stopped": "plateau"})
    rows.append({"key": "cg_noise_1_15_3_2", "label": "ctrl", "family": "control", "psnr_db": control,
                 "psnr_spread": 0.1, "h_rel_err": 0.9, "stopped": "plateau"})
    return rows


def test_verdicts_follow_the_stated_margins():
    held = lambda rows: [c.held for c in E.judge(rows)]  # noqa: E731
    assert held(_rows()) == [True, True, True, True]
    assert held(_rows(cg=28.9))[0] is False  # 2.9 dB over the best CNN is not "far better"
    assert held(_rows(cg=29.0))[0] is True
    assert held(_rows(ccnn_gain=1.0))[1] is False and held(_rows(ccnn_gain=0.9))[1] is True
    assert held(_rows(wide_gain=1.0))[2] is False and held(_rows(wide_gain=0.99))[2] is True
    assert held(_rows(control=27.5))[3] is False and held(_rows(control=27.0))[3] is True
    assert "margin +4.00 dB" in E.judge(_rows())[0].evidence


# -- the command -----------------------------------------------------------------------------------------------
def _cli(capsys, *args):
    from recon.cli import main

    rc = main(["experiment", "conv1d", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_bad_options_exit_2_with_one_line(tmp_path, capsys):
    for opt, val, want in (("--kernel", "4", "--kernel 4"), ("--seeds", "0", "--seeds 0"),
                           ("--workers", "0", "--workers 0")):
        rc, out, err = _cli(capsys, "--quick", "--out", str(tmp_path / "x"), opt, val)
        assert rc == 2 and want in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_quick_run_end_to_end_resume_and_rerun_one_unit(tmp_path, capsys):
    out = tmp_path / "conv1d"
    rc, text, err = _cli(capsys, "--quick", "--out", str(out), "--device", "cpu")
    assert rc == 0, err
    n_units = len(E.model_specs()) + 1  # models x 1 seed, and the timing unit
    assert f"{n_units} unit(s) computed, 0 already done" in text
    for f in ("table.md", "table.csv", "claims.md", "fig3.png", "experiment.json"):
        assert (out / f).is_file(), f
    png = (out / "fig3.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 300_000
    table = (out / "table.csv").read_text()
    assert len(table.strip().splitlines()) == 1 + len(E.model_specs())
    claims = (out / "claims.md").read_text()
    assert claims.count("**held**") + claims.count("**did not hold**") == 4
    assert text.count("[held]") + text.count("[did not hold]") == 4
    rec = json.loads((out / "units" / "cg_1_15_3_2__seed0.json").read_text())
    assert rec["seed"] == 0 and rec["stopped"] in ("plateau", "max_epochs") and math.isfinite(rec["psnr_db"])
    assert np.asarray(rec["learned_h"]).shape == (30, 30)
    assert json.loads((out / "units" / "cg_noise_1_15_3_2__seed0.json").read_text())["args"]["noise_seed"] == 0

    # resume: nothing new, the same table
    rc, text, _ = _cli(capsys, "--quick", "--out", str(out), "--device", "cpu")
    assert rc == 0 and f"0 unit(s) computed, {n_units} already done" in text
    assert (out / "table.csv").read_text() == table

    # one unit record deleted: only that unit re-runs, with the same result (seeded, CPU)
    (out / "units" / "cg_1_15_3_2__seed0.json").unlink()
    rc, text, _ = _cli(capsys, "--quick", "--out", str(out), "--device", "cpu")
    assert rc == 0 and f"1 unit(s) computed, {n_units - 1} already done" in text
    again = json.loads((out / "units" / "cg_1_15_3_2__seed0.json").read_text())
    assert again["psnr_db"] == pytest.approx(rec["psnr_db"], rel=1e-6)
    np.testing.assert_allclose(again["learned_h"], rec["learned_h"], rtol=0, atol=2e-6)

    # other settings in the same folder: refused, exit 2, one line naming --overwrite
    rc, _, err = _cli(capsys, "--quick", "--seeds", "2", "--out", str(out), "--device", "cpu")
    assert rc == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "table.csv").read_text().splitlines()[0] == table.splitlines()[0]
