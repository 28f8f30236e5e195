"""recon train: run folder, metrics, resume bit-exactness, refusals, NaN stop, SSIM, config TOML."""

import csv
import importlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import recon
from recon.checkpoint import load_checkpoint, read_checkpoint
from recon.cli import main
from recon.config import TrainConfig, config_to_toml, load_config, parse_model_arg, resolve_config, save_config
from recon.errors import ReconError
from recon.losses import make_loss, ssim

train_mod = importlib.import_module("recon.train")
train = train_mod.train

TINY = {"model": "unet", "model_args": {"depth": 2, "base_channels": 4}, "batch": 4, "crop": 16}


def cfg_for(store, out, **kw):
    return TrainConfig(data=str(store), out=str(out), **{**TINY, **kw})


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------------------------------------
def test_run_folder_metrics_and_loss_decreases(tiny_store, tmp_path):
    out = tmp_path / "run"
    res = train(cfg_for(tiny_store, out, epochs=3, lr=3e-3), progress=False, log=None)
    for name in ("config.toml", "last.pt", "best.pt", "metrics.csv", "curves.png"):
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if p.name not in train_mod.RUN_FILES]  # no temporaries left
    r = rows(out / "metrics.csv")
    assert list(r[0]) == ["epoch", "train_loss", "val_loss", "val_psnr", "lr", "seconds"]
    assert [int(x["epoch"]) for x in r] == [1, 2, 3]
    val = [float(x["val_loss"]) for x in r]
    assert val[-1] < val[0] and float(r[-1]["train_loss"]) < float(r[0]["train_loss"])
    for x in r:  # PSNR of the validation loss (MSE): per-crop mean >= the PSNR of the mean MSE (Jensen)
        assert float(x["val_psnr"]) >= 10 * np.log10(1 / float(x["val_loss"])) - 1e-4
    assert isinstance(res, recon.TrainResult) and res.epochs == 3 and res.resumed_from == 0
    assert res.best_val_loss == min(val) and res.best_epoch == 1 + int(np.argmin(val))
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, info = load_checkpoint(out / "best.pt")
    assert info.model_config == {"name": "unet", "depth": 2, "base_channels": 4, "in_channels": 1}
    assert info.train_args["lr"] == 3e-3 and info.metrics["epoch"] == res.best_epoch
    assert info.dataset["kind"] == "store"
    # the typical peak of the model's inputs: the median over the best epoch's training inputs of their maximum
    # (reference: the same crops read again through StoreDataset at that epoch)
    ds = recon.StoreDataset(tiny_store, "train", crop=16, seed=res.config.seed, multiple_of=4)
    ds.set_epoch(res.best_epoch - 1)
    batches = recon.data.loader(ds, res.config.batch, seed=res.config.seed)  # the trainer's order and drop_last
    ref = float(torch.median(torch.cat([b.x[:, 0].amax(dim=(-2, -1)) for b in batches])))
    assert info.input_peak == pytest.approx(ref, rel=1e-6) and 0 < info.input_peak < 1
    # the run folder alone reproduces the configuration
    assert load_config(out / "config.toml") == res.config.replace(out="", resume=False, overwrite=False)


def test_resume_is_bit_exact(tiny_store, tmp_path):
    full = train(cfg_for(tiny_store, tmp_path / "a", epochs=3, patience=0), progress=False, log=None)
    train(cfg_for(tiny_store, tmp_path / "b", epochs=1, patience=0), progress=False, log=None)
    res = train(cfg_for(tiny_store, tmp_path / "b", epochs=3, patience=0, resume=True), progress=False, log=None)
    assert res.resumed_from == 1 and res.epochs == 3
    a, b = read_checkpoint(tmp_path / "a" / "last.pt"), read_checkpoint(tmp_path / "b" / "last.pt")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for k, v in a["extra"]["optimizer"]["state"].items():
        for n, t in v.items():
            assert torch.equal(t, b["extra"]["optimizer"]["state"][k][n]), (k, n)
    assert a["extra"]["scheduler"] == b["extra"]["scheduler"]  # patience 0: the lr was halved on the way
    key = ("epoch", "train_loss", "val_loss", "val_psnr", "lr")
    assert [[r[k] for k in key] for r in full.history] == [[r[k] for k in key] for r in res.history]
    assert len(rows(tmp_path / "b" / "metrics.csv")) == 3
    # resuming a finished run does nothing
    again = train(cfg_for(tiny_store, tmp_path / "b", epochs=3, patience=0, resume=True), progress=False, log=None)
    assert again.epochs == 3 and again.resumed_from == 3


def test_refusals(tiny_store, tmp_path):
    out = tmp_path / "run"
    train(cfg_for(tiny_store, out, epochs=1), progress=False, log=None)
    with pytest.raises(ReconError, match="exists, a training run.*--resume.*--overwrite"):
        train(cfg_for(tiny_store, out, epochs=1), progress=False, log=None)
    with pytest.raises(ReconError, match=r"other arguments \(lr: 0.01 != 0.001"):
        train(cfg_for(tiny_store, out, epochs=2, lr=1e-2, resume=True), progress=False, log=None)
    with pytest.raises(ReconError, match=r"model_args.depth: 1 != 2"):
        train(cfg_for(tiny_store, out, epochs=2, model_args={"depth": 1, "base_channels": 4}, resume=True),
              progress=False, log=None)
    with pytest.raises(ReconError, match=r"model: 'cgunet' != 'unet'"):  # a folder of another run
        train(cfg_for(tiny_store, out, epochs=2, model="cgunet", resume=True), progress=False, log=None)
    res = train(cfg_for(tiny_store, out, epochs=1, seed=5, overwrite=True), progress=False, log=None)
    assert res.epochs == 1 and load_config(out / "config.toml").seed == 5
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ReconError, match="not empty"):
        train(cfg_for(tiny_store, tmp_path / "other", epochs=1), progress=False, log=None)
    # bad input: nothing written
    with pytest.raises(ReconError, match=r"crop 18x18: not a multiple of 4 \(2\^depth"):
        train(cfg_for(tiny_store, tmp_path / "c", epochs=1, crop=18), progress=False, log=None)
    with pytest.raises(ReconError, match="model 'nope': unknown; expected one of"):
        train(cfg_for(tiny_store, tmp_path / "d", epochs=1, model="nope"), progress=False, log=None)
    with pytest.raises(ReconError, match="unknown argument 'depht'"):
        train(cfg_for(tiny_store, tmp_path / "e", epochs=1, model_args={"depht": 2}), progress=False, log=None)
    with pytest.raises(ReconError, match="--amp: mixed precision is for CUDA only"):
        train(cfg_for(tiny_store, tmp_path / "f", epochs=1, amp=True, device="cpu"), progress=False, log=None)
    assert not any((tmp_path / n).exists() for n in "cdef")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_store, tmp_path, monkeypatch):
    real = make_loss("mse")
    calls = []

    def fake(name):
        def loss(pred, target):
            if torch.is_grad_enabled():
                calls.append(1)
                if len(calls) == 6:
                    return real(pred, target) * float("nan")
            return real(pred, target)
        return loss

    monkeypatch.setattr(recon.losses, "make_loss", fake)
    out = tmp_path / "run"
    steps = len(recon.StoreDataset(tiny_store, "train")) // TINY["batch"]
    assert steps < 6 <= 2 * steps  # the NaN comes in epoch 2
    with pytest.raises(recon.TrainingDiverged, match=rf"loss is nan at epoch 2, step {6 - steps} \(global step 6\).*"
                                                      r"last.pt \(epoch 1\) kept.*lower --lr"):
        train(cfg_for(tiny_store, out, epochs=3), progress=False, log=None)
    assert read_checkpoint(out / "last.pt")["extra"]["epoch"] == 1
    assert len(rows(out / "metrics.csv")) == 1


def test_out_of_memory_suggests_half_the_batch(tiny_store, tmp_path, monkeypatch):
    def fake(name):
        def loss(pred, target):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return loss

    monkeypatch.setattr(recon.losses, "make_loss", fake)
    with pytest.raises(ReconError, match=r"out of memory on cpu with a batch of 4 x 1 x 16 x 16 \(epoch 1, step 1, "
                                         r"training\); try --batch 2"):
        train(cfg_for(tiny_store, tmp_path / "run", epochs=1), progress=False, log=None)


def test_multiwienernet_and_pafu_train(tiny_store, tmp_path, monkeypatch):
    # constrain_ after each step keeps the Wiener regularisation >= 0; PAFU's regulariser is added
    from recon.models.multiwienernet import MultiWienerNet
    from recon.models.pafu_unet import PAFUUNet

    calls = {"constrain": 0, "decorrelation": 0}

    def counting(cls, name):
        real = getattr(cls, name)

        def f(self):
            calls[name.rstrip("_").replace("_loss", "")] += 1
            return real(self)
        monkeypatch.setattr(cls, name, f)

    counting(MultiWienerNet, "constrain_")
    counting(PAFUUNet, "decorrelation_loss")
    steps = len(recon.StoreDataset(tiny_store, "train")) // TINY["batch"]
    res = train(cfg_for(tiny_store, tmp_path / "mw", epochs=1, model="multiwienernet",
                        model_args={"depth": 1, "base_channels": 4, "grid": [2, 2], "psf_size": 7}, loss="l1_ssim",
                        lr=0.5),
                progress=False, log=None)
    model, _ = load_checkpoint(res.last_checkpoint)
    assert float(model.wiener.reg_raw.detach().min()) >= 0 and calls["constrain"] == steps
    res = train(cfg_for(tiny_store, tmp_path / "pafu", epochs=1, model="pafu_unet",
                        model_args={"depth": 1, "base_channels": 4}, decorrelation_weight=0.1),
                progress=False, log=None)
    assert np.isfinite(res.best_val_loss) and calls["decorrelation"] == steps


# ----------------------------------------------------------------------------------------------------------
def test_ssim_matches_skimage():
    from skimage.data import camera
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    cam = camera()[100:164, 200:280].astype(np.float64) / 255
    pairs = [(cam, np.clip(cam + 0.05 * rng.standard_normal(cam.shape), 0, 1)),
             (cam, cam[::-1].copy()),
             (rng.random((32, 32)), rng.random((32, 32))),
             (np.full((20, 23), 0.5), np.full((20, 23), 0.5) + 0.01 * rng.standard_normal((20, 23)))]
    for a, b in pairs:
        ref = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        got = ssim(torch.from_numpy(a), torch.from_numpy(b)).item()
        assert abs(got - ref) < 1e-6, (got, ref)  # float64: to 1e-6
        got32 = ssim(torch.from_numpy(a).float(), torch.from_numpy(b).float()).item()
        assert abs(got32 - ref) < 1e-4, (got32, ref)  # float32: to 1e-4
    x = torch.from_numpy(pairs[0][1]).requires_grad_()
    (1 - ssim(x, torch.from_numpy(cam))).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    per = ssim(torch.rand(3, 1, 16, 16), torch.rand(3, 1, 16, 16), reduction="none")
    assert per.shape == (3, 1)
    with pytest.raises(ReconError, match="smaller than the 11x11 window"):
        ssim(torch.rand(8, 8), torch.rand(8, 8))


def test_config_toml_round_trip_and_validation(tmp_path):
    cfg = TrainConfig(data="d.zarr", model="multiwienernet", epochs=7, lr=2.5e-4, loss="l1_ssim", amp=True,
                      model_args={"grid": [3, 3], "lens": 'mic "x"\\é', "learn_psfs": False, "reg_init": 0.5},
                      out=str(tmp_path / "run"), resume=True)
    p = save_config(cfg, tmp_path / "c.toml")
    back = load_config(p)
    assert back == cfg.replace(out="", resume=False)
    text = config_to_toml(cfg)
    assert not any(line.split(" = ")[0] in ("out", "resume", "overwrite") for line in text.splitlines())
    (tmp_path / "bad.toml").write_text('epochs = 3\nlearning_rate = 0.1\n')
    with pytest.raises(ReconError, match=r"bad.toml: unknown option 'learning_rate'; expected some of data"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "bad2.toml").write_text('epochs = "ten"\n')
    with pytest.raises(ReconError, match=r"bad2.toml: epochs = 'ten': expected an integer, not str"):
        load_config(tmp_path / "bad2.toml")
    (tmp_path / "bad3.toml").write_text('loss = "huber"\n')
    with pytest.raises(ReconError, match=r"loss = 'huber': unknown; expected one of mse, l1, l1_ssim"):
        load_config(tmp_path / "bad3.toml")
    (tmp_path / "bad4.toml").write_text('epochs = \n')
    with pytest.raises(ReconError, match="not valid TOML"):
        load_config(tmp_path / "bad4.toml")
    with pytest.raises(ReconError, match="crop = 8: loss l1_ssim needs a crop of at least 11"):
        TrainConfig(crop=8, loss="l1_ssim")
    assert parse_model_arg("depth=3") == ("depth", 3) and parse_model_arg("grid=[2, 2]") == ("grid", [2, 2])
    assert parse_model_arg("lens=microscope") == ("lens", "microscope")
    # precedence: defaults < --config < flags; --model-arg merges into the file's model_args
    c = resolve_config({"lr": 0.1, "epochs": None}, config_file=p, model_args=["depth=2"], out="R")
    assert c.lr == 0.1 and c.epochs == 7 and c.model_args["depth"] == 2 and c.model_args["grid"] == [3, 3]
    assert resolve_config({"lens": "microscope", "source": "cells"}, config_file=p, out="R").data is None


# ----------------------------------------------------------------------------------------------------------
def test_cli_train_resume_and_errors(tiny_store, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--data", str(tiny_store), "--model", "unet", "--model-arg", "depth=1", "--model-arg",
            "base_channels=4", "--crop", "16", "--batch", "4", "--out", str(out), "--quiet"]
    assert main(base + ["--epochs", "1"]) == 0
    o = capsys.readouterr().out
    assert "epoch 1/1" in o and "best validation loss" in o
    assert main(base + ["--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recon: error: --out ") and err.count("\n") == 1 and "--resume" in err
    assert main(base + ["--epochs", "2", "--lr", "0.5", "--resume"]) == 2
    assert "lr: 0.5 != 0.001" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--quiet"]) == 0  # the rest from config.toml
    assert len(rows(out / "metrics.csv")) == 2
    # the folder alone reproduces the run
    assert main(["train", "--config", str(out / "config.toml"), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    a, b = read_checkpoint(out / "last.pt"), read_checkpoint(tmp_path / "again" / "last.pt")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["train", "--out", str(out), "--loss", "huber"])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("recon: error: train: argument --loss")


@pytest.mark.slow
def test_cli_sigkill_then_resume_is_bit_exact(tiny_store, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    args = ["--data", str(tiny_store), "--model", "cgunet", "--model-arg", "depth=1", "--model-arg", "base_channels=4",
            "--crop", "16", "--batch", "4", "--epochs", "5", "--quiet"]
    cmd = [sys.executable, "-m", "recon.cli", "train"]
    killed = tmp_path / "killed"
    p = subprocess.Popen(cmd + args + ["--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not (killed / "metrics.csv").is_file() and time.time() - t0 < 60:
        time.sleep(0.02)
    time.sleep(0.3)  # somewhere in the middle of a later epoch (or of writing its files)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    done = read_checkpoint(killed / "last.pt")["extra"]["epoch"]
    assert done < 5, "the run finished before the kill: nothing tested"
    r = subprocess.run(cmd + args + ["--out", str(killed), "--resume"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(cmd + args + ["--out", str(tmp_path / "full")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a, b = read_checkpoint(killed / "last.pt"), read_checkpoint(tmp_path / "full" / "last.pt")
    assert a["extra"]["epoch"] == b["extra"]["epoch"] == 5
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert [int(x["epoch"]) for x in rows(killed / "metrics.csv")] == [1, 2, 3, 4, 5]


@pytest.mark.slow  # ~25 s: three fast blur operators built for the lens
def test_on_the_fly_resume_is_bit_exact(tmp_path):
    from tests.recon.conftest import TINY_LENS

    lens = tmp_path / "tiny.toml"
    lens.write_text('name = "tiny"\n[optics]\nwavelength_nm = 520.0\nna = 0.4\npixel_pitch_um = 0.325\n[field]\n'
                    'shape_px = [256, 256]\n[psf]\nsize_px = 33\noversample = 4\n[seidel]\n'
                    + "".join(f"{k} = {v}\n" for k, v in TINY_LENS["seidel"].items()))
    kw = dict(lens=str(lens), source="cells", model="cgunet", model_args={"depth": 1, "base_channels": 4}, crop=16,
              batch=2, steps_per_epoch=2, val_samples=2, photons=500.0, read_noise=1.0)
    full = train(TrainConfig(out=str(tmp_path / "a"), epochs=2, **kw), progress=False, log=None)
    train(TrainConfig(out=str(tmp_path / "b"), epochs=1, **kw), progress=False, log=None)
    res = train(TrainConfig(out=str(tmp_path / "b"), epochs=2, resume=True, **kw), progress=False, log=None)
    assert res.resumed_from == 1 and full.history[-1]["val_loss"] == res.history[-1]["val_loss"]
    a, b = read_checkpoint(tmp_path / "a" / "last.pt"), read_checkpoint(tmp_path / "b" / "last.pt")
    assert a["dataset"]["kind"] == "on-the-fly"
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_resume_with_the_store_spelled_another_way_and_models_get_the_data_lens(tiny_store, tmp_path, monkeypatch):
    """A store is its content (identity), not its path: a relative spelling resumes; config.toml stores absolute
    paths. A model that takes a lens (MultiWienerNet) starts from the data's lens, not from stand-in PSFs."""
    import os

    from recon.config import resolve_config

    monkeypatch.chdir(tiny_store.parent)
    rel = os.path.relpath(tiny_store)
    first = train(cfg_for(rel, tmp_path / "r", epochs=1), progress=False, log=None)
    again = resolve_config({"data": "./" + rel, "epochs": 2}, out=tmp_path / "r", resume=True)
    assert os.path.isabs(again.data)
    res = train(again, progress=False, log=None)
    assert res.resumed_from == first.epochs == 1 and res.epochs == 2
    # MultiWienerNet trained on the store: its PSFs come from the store's lens grid
    import psfsim
    from recon.layers.wiener import lens_psfs

    from recon.checkpoint import load_checkpoint

    mw = train(cfg_for(tiny_store, tmp_path / "mw", model="multiwienernet", epochs=1,
                       model_args={"depth": 1, "base_channels": 4, "learn_psfs": False}), progress=False, log=None)
    model, info = load_checkpoint(mw.last_checkpoint)
    lens = psfsim.DatasetReader(tiny_store).lens
    expected = torch.as_tensor(lens_psfs(lens, (3, 3)))
    got = model.wiener.psfs.detach().double().reshape(expected.shape)
    torch.testing.assert_close(got, expected.to(got.dtype), rtol=1e-5, atol=1e-7)
