"""recon evaluate / compare: the metrics against independent computations (numpy by hand, skimage), the
evaluation path (an identity model scores exactly the store's baselines), the files, the refusals, the CLI."""

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import psfsim
import recon
from recon import ReconError, StoreDataset, save_checkpoint
from recon import evaluate as evaluate_module
from recon import metrics
from recon.cli import main
from recon.evaluate import METHODS, EvalResult, Score, compare, evaluate

from .conftest import TINY_LENS


# ----------------------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------------------
def test_psnr_by_hand_and_skimage_without_clipping():
    rng = np.random.default_rng(0)
    t = rng.random((20, 24)).astype(np.float32)
    p = t + rng.normal(0, 0.05, t.shape).astype(np.float32)  # leaves [0, 1]: scored as is, never clipped
    assert p.max() > 1 and p.min() < 0
    mse = sum(float(a - b) ** 2 for a, b in zip(p.ravel().tolist(), t.ravel().tolist())) / p.size
    assert metrics.psnr(p, t) == pytest.approx(10 * np.log10(1 / mse), rel=1e-12)
    assert metrics.psnr(p, t) == pytest.approx(peak_signal_noise_ratio(t, p, data_range=1.0), rel=1e-6)
    assert metrics.psnr(t, t) == float("inf")
    assert metrics.psnr(p, t, data_range=2.0) == pytest.approx(metrics.psnr(p, t) + 20 * np.log10(2))
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.psnr(p, t[:3])


def test_ssim_is_skimage_with_data_range_1():
    rng = np.random.default_rng(1)
    t = rng.random((32, 32))
    p = np.clip(t + rng.normal(0, 0.1, t.shape), 0, 1)
    assert metrics.ssim(p, t) == pytest.approx(structural_similarity(t, p, data_range=1.0), rel=1e-12)
    assert metrics.ssim(t, t) == pytest.approx(1.0)


def test_radial_psnr_against_a_loop_over_bins():
    rng = np.random.default_rng(2)
    t = rng.random((3, 16, 16))
    p = t + rng.normal(0, 0.03, t.shape)
    r = rng.random((3, 16, 16)) * 1.0
    r[0, 0, 0] = 1.0  # the last edge belongs to the last bin
    edges = metrics.radial_edges(5, 1.0)
    got, count = metrics.radial_psnr(p, t, r, edges)
    for i in range(5):
        inside = (r >= edges[i]) & ((r < edges[i + 1]) | ((i == 4) & (r == 1.0)))
        assert count[i] == inside.sum()
        assert got[i] == pytest.approx(10 * np.log10(1 / np.mean((p[inside] - t[inside]) ** 2)), rel=1e-12)
    assert count.sum() == t.size
    # sums pool: two halves added give the whole
    s1, c1 = metrics.radial_sums(p[:1], t[:1], r[:1], edges)
    s2, c2 = metrics.radial_sums(p[1:], t[1:], r[1:], edges)
    np.testing.assert_allclose(metrics.psnr_from_mse((s1 + s2) / (c1 + c2)), got, rtol=1e-12)
    empty, c = metrics.radial_psnr(p, t, r * 0.1, edges)  # every pixel in bin 0: the others NaN
    assert c[0] == t.size and np.isnan(empty[1:]).all()


# ----------------------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(tiny_store, tmp_path_factory):
    ds = StoreDataset(tiny_store)
    torch.manual_seed(0)
    model = recon.build_model("cgunet", depth=2, base_channels=4)
    path = tmp_path_factory.mktemp("eval_ckpt") / "best.pt"
    save_checkpoint(path, model, lens=ds.lens, normalisation=ds.normalisation, dataset_identity=ds.identity,
                    train_args={}, metrics={})
    return path


@pytest.fixture(scope="module")
def evaluated(tiny_store, ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    return evaluate(tiny_store, ckpt, out, device="cpu", batch=2)


def test_evaluate_writes_results_on_whole_test_samples(evaluated, tiny_store):
    res = evaluated
    reader = psfsim.DatasetReader(tiny_store)
    test = reader.splits["test"]
    assert isinstance(res, EvalResult) and all(isinstance(res.scores[m], Score) for m in METHODS)
    assert res.n_samples == len(test) > 0 and res.model == "cgunet" and res.device == "cpu"
    assert res.params == sum(p.numel() for p in recon.build_model("cgunet", depth=2, base_channels=4).parameters())
    # the baselines are the store's, on the same samples: psfsim's own scoring agrees
    ref = psfsim.report.baseline_scores(reader, test)
    for m in ("blurred", "wiener", "wiener_sv"):
        assert res.scores[m].psnr_db == pytest.approx(ref[m].psnr_db, rel=1e-6)
        assert res.scores[m].ssim == pytest.approx(ref[m].ssim, rel=1e-6)  # float64 here, float32 there
    h, w = reader.size
    assert sum(res.radial_pixels) == len(test) * h * w  # whole samples, every pixel in a bin
    assert len(res.radial_edges) == 9 and res.radial_edges[0] == 0 and res.radial_edges[-1] == pytest.approx(1.0)
    for f in ("results.md", "results.csv", "radial.csv", "results.json", "before_after.png", "radial_psnr.png"):
        assert (res.out / f).is_file() and res.files[f] == res.out / f
    rows = list(csv.DictReader((res.out / "results.csv").open()))
    assert [r["method"] for r in rows] == list(METHODS)
    assert float(rows[0]["psnr_db"]) == res.scores["model"].psnr_db
    j = json.loads((res.out / "results.json").read_text())
    assert j["model"] == "cgunet" and j["n_samples"] == len(test) and j["scores"]["wiener_sv"]["psnr_db"] == \
        res.scores["wiener_sv"].psnr_db
    md = (res.out / "results.md").read_text()
    assert "no clipping" in md and "SV-Wiener" in md and "before_after.png" in md
    assert not list(res.out.glob(".*"))  # no temporaries left
    assert "against SV-Wiener" in res.summary()


class Pick(torch.nn.Module):
    """Returns input channel ``k`` unchanged: scores exactly as that store image."""

    def __init__(self, k=0):
        super().__init__()
        self.k = k
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, coords):
        assert coords.shape[1] == 2 and coords.shape[2:] == x.shape[2:]
        return x[:, self.k : self.k + 1] + 0 * self.w


@pytest.mark.parametrize("k, cin, same_as", [(0, 1, "blurred"), (2, 3, "wiener_sv")])
def test_identity_model_scores_exactly_as_the_store_image(tiny_store, ckpt, tmp_path, monkeypatch, k, cin, same_as):
    _, info = recon.load_checkpoint(ckpt)
    info = dataclasses.replace(info, model_config={**info.model_config, "in_channels": cin})
    monkeypatch.setattr(evaluate_module, "load_checkpoint", lambda path, device="cpu": (Pick(k), info))
    res = evaluate(tiny_store, ckpt, tmp_path / "id", batch=3)
    assert res.scores["model"] == res.scores[same_as]
    np.testing.assert_array_equal(res.radial_psnr["model"], res.radial_psnr[same_as])  # NaN bins too


def test_coords_are_each_samples_own(tiny_store, ckpt, tmp_path, monkeypatch):
    seen = []

    class Spy(Pick):
        def forward(self, x, coords):
            seen.append(coords.clone())
            return super().forward(x, coords)

    _, info = recon.load_checkpoint(ckpt)
    monkeypatch.setattr(evaluate_module, "load_checkpoint", lambda path, device="cpu": (Spy(), info))
    evaluate(tiny_store, ckpt, tmp_path / "spy", batch=2)
    reader = psfsim.DatasetReader(tiny_store)
    got = torch.cat(seen).numpy()
    want = np.stack([reader.field_coords(i) for i in reader.splits["test"]])
    np.testing.assert_array_equal(got, want)


def test_refusals(tiny_store, ckpt, evaluated, tmp_path):
    with pytest.raises(ReconError, match="exists and is not empty"):
        evaluate(tiny_store, ckpt, evaluated.out)
    with pytest.raises(ReconError, match="no such file"):
        evaluate(tiny_store, tmp_path / "missing.pt", tmp_path / "a")
    # a checkpoint of another lens
    other = dict(TINY_LENS, seidel={"W040": 0.1})
    ds = StoreDataset(tiny_store)
    p = tmp_path / "other.pt"
    save_checkpoint(p, recon.build_model("unet", depth=1, base_channels=2), lens=other, normalisation=ds.normalisation,
                    dataset_identity={}, train_args={}, metrics={})
    with pytest.raises(ReconError, match="differs from the lens of checkpoint"):
        evaluate(tiny_store, p, tmp_path / "b")
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())
    with pytest.raises(ReconError, match="--device"):
        evaluate(tiny_store, ckpt, tmp_path / "c", device="tpu")


def test_overwrite_replaces_results(tiny_store, ckpt, evaluated, tmp_path):
    import shutil

    out = shutil.copytree(evaluated.out, tmp_path / "copy")
    res = evaluate(tiny_store, ckpt, out, overwrite=True, bins=4)
    assert len(res.radial_pixels) == 4
    assert len(list(csv.DictReader((res.out / "radial.csv").open()))) == 4


# ----------------------------------------------------------------------------------------------------------
# compare and the CLI
# ----------------------------------------------------------------------------------------------------------
def test_compare_table_and_figure(evaluated, tmp_path):
    res = compare([evaluated.out, evaluated.out], tmp_path / "cmp")
    assert len(res.rows) == 2 and res.rows[0]["psnr_db"] == evaluated.scores["model"].psnr_db
    rows = list(csv.DictReader((tmp_path / "cmp" / "compare.csv").open()))
    assert len(rows) == 2 and rows[0]["model"] == "cgunet" and int(rows[0]["params"]) == evaluated.params
    assert (tmp_path / "cmp" / "psnr_vs_params.png").stat().st_size > 1000
    assert "| cgunet |" in (tmp_path / "cmp" / "compare.md").read_text()
    with pytest.raises(ReconError, match="already holds a comparison"):
        compare([evaluated.out], tmp_path / "cmp")
    with pytest.raises(ReconError, match="no results.json"):
        compare([tmp_path], tmp_path / "cmp2")


def test_cli_evaluate_compare_and_errors(tiny_store, ckpt, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["evaluate", "--data", str(tiny_store), "--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu"]) == 0
    assert "SV-Wiener" in capsys.readouterr().out and (out / "results.md").is_file()
    assert main(["evaluate", "--data", str(tiny_store), "--checkpoint", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recon: error: --out") and err.count("\n") == 1
    assert main(["evaluate", "--data", str(tiny_store), "--checkpoint", str(tmp_path / "nope.pt"), "--out",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recon: error: checkpoint") and "no such file" in err and err.count("\n") == 1
    assert main(["evaluate", "--data", str(tmp_path / "no.zarr"), "--checkpoint", str(ckpt), "--out",
                 str(tmp_path / "y")]) == 2
    assert capsys.readouterr().err.startswith("recon: error: ")
    assert main(["compare", str(out), "--out", str(tmp_path / "cmp")]) == 0
    assert "cgunet" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "nothing"), "--out", str(tmp_path / "cmp3")]) == 2
    assert capsys.readouterr().err.startswith("recon: error: ")
    with pytest.raises(SystemExit) as e:  # argparse: a missing required option
        main(["evaluate", "--data", str(tiny_store)])
    assert e.value.code == 2
