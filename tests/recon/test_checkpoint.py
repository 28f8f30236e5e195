"""recon checkpoints: a round trip gives the same outputs and provenance; loading is weights_only and refuses
pickled code (never running it), truncated files, missing keys, other formats, unknown models, other lenses."""

import pathlib
import warnings

import pytest
import torch

import psfsim
import recon
from recon import CheckpointInfo, ReconError, StoreDataset, check_store_matches, load_checkpoint, save_checkpoint
from recon.checkpoint import FORMAT, read_checkpoint

RAN = []


class Evil:
    """Unpickling this would run code (append to RAN): a weights_only load must refuse it first."""

    def __reduce__(self):
        return (RAN.append, ("executed",))


@pytest.fixture(scope="module")
def saved(tiny_store, tmp_path_factory):
    ds = StoreDataset(tiny_store, crop=16, multiple_of=4)
    torch.manual_seed(0)
    model = recon.build_model("cgunet", depth=2, base_channels=4)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, model, lens=ds.lens, normalisation=ds.normalisation, dataset_identity=ds.identity,
                    train_args={"lr": 1e-3, "crop": (16, 16), "out": pathlib.Path("/runs/a")},
                    metrics={"val_psnr": 31.5, "epoch": 3},
                    extra={"optimizer": torch.optim.Adam(model.parameters()).state_dict(), "np": torch.arange(3)})
    return path, model, ds


def test_round_trip_same_outputs_and_provenance(saved):
    path, model, ds = saved
    loaded, info = load_checkpoint(path)
    assert isinstance(info, CheckpointInfo) and not loaded.training
    b = next(iter(recon.data.loader(ds, 2)))
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(b.x, b.coords), model(b.x, b.coords))
    assert info.model_config == {"name": "cgunet", "depth": 2, "base_channels": 4}
    assert info.lens == ds.lens and info.lens.fingerprint == ds.lens.fingerprint
    assert info.normalisation == ds.normalisation
    assert info.dataset == ds.identity and len(info.dataset["spec_sha256"]) == 64 and info.dataset["created"]
    assert info.train_args == {"lr": 1e-3, "crop": (16, 16), "out": "/runs/a"}
    assert info.metrics == {"val_psnr": 31.5, "epoch": 3}
    assert info.version == psfsim.__version__ and info.format == FORMAT
    assert set(info.extra) == {"optimizer", "np"}
    check_store_matches(info, ds)
    check_store_matches(info, ds.reader)
    raw = torch.load(path, weights_only=True)  # plain data: loads with the safe loader as is
    assert raw["format"] == FORMAT


def test_input_peak_recorded_and_old_checkpoints_load_with_a_warning_as_1(saved, tmp_path):
    """The typical peak of the model's training inputs rides in the normalisation dict (read by older code,
    which ignores the extra key); a checkpoint without it (the format before it) loads with a warning, as 1."""
    path, model, ds = saved
    with pytest.warns(UserWarning, match="no input_peak recorded.*taken as 1"):
        _, info = load_checkpoint(path)
    assert info.input_peak == 1.0 and info.normalisation == ds.normalisation
    new = save_checkpoint(tmp_path / "new.pt", model, lens=ds.lens, normalisation=ds.normalisation,
                          dataset_identity={}, train_args={}, metrics={}, input_peak=0.625)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, info = load_checkpoint(new)
    assert info.input_peak == 0.625 and info.normalisation == ds.normalisation
    assert read_checkpoint(new)["normalisation"]["input_peak"] == 0.625
    for bad in (0.0, -1.0, float("nan"), True):
        with pytest.raises(ReconError, match="input_peak"):
            save_checkpoint(tmp_path / "bad.pt", model, lens=ds.lens, normalisation=ds.normalisation,
                            dataset_identity={}, train_args={}, metrics={}, input_peak=bad)
    ckpt = read_checkpoint(new)
    ckpt["normalisation"]["input_peak"] = "high"
    torch.save(ckpt, tmp_path / "bad2.pt")
    with pytest.raises(ReconError, match="input_peak = 'high'"):
        load_checkpoint(tmp_path / "bad2.pt")


def test_pickled_code_is_refused_not_executed(saved, tmp_path):
    ckpt = read_checkpoint(saved[0])
    ckpt["metrics"] = {"evil": Evil()}
    bad = tmp_path / "evil.pt"
    torch.save(ckpt, bad)
    with pytest.raises(ReconError, match="refused, it holds pickled objects or code"):
        load_checkpoint(bad)
    assert RAN == []


def test_truncated_and_not_a_checkpoint(saved, tmp_path):
    data = saved[0].read_bytes()
    for n in (len(data) // 2, 100, 0):
        cut = tmp_path / f"cut{n}.pt"
        cut.write_bytes(data[:n])
        with pytest.raises(ReconError, match="truncated or not a recon checkpoint"):
            load_checkpoint(cut)
    with pytest.raises(ReconError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pt")
    other = tmp_path / "list.pt"
    torch.save([1, 2], other)
    with pytest.raises(ReconError, match="not a recon checkpoint"):
        load_checkpoint(other)


@pytest.mark.parametrize("change,match", [
    (lambda c: c.pop("lens"), "missing key 'lens'"),
    (lambda c: c.pop("state_dict"), "missing key 'state_dict'"),
    (lambda c: c.update(format="recon-checkpoint/0"), "format 'recon-checkpoint/0'.*is not 'recon-checkpoint/1'"),
    (lambda c: c.pop("format"), "format None"),
    (lambda c: c["model_config"].update(name="resnet"), "model 'resnet': unknown"),
    (lambda c: c["model_config"].update(depth=3), "weights do not fit model 'cgunet'"),
    (lambda c: c["normalisation"].pop("vmax"), "normalisation"),
])
def test_bad_contents_are_refused(saved, tmp_path, change, match):
    ckpt = read_checkpoint(saved[0])
    change(ckpt)
    p = tmp_path / "bad.pt"
    torch.save(ckpt, p)
    with pytest.raises(ReconError, match=match):
        load_checkpoint(p)


def test_save_refuses_non_plain_values_and_is_atomic(saved, tmp_path):
    path, model, ds = saved
    kw = dict(lens=ds.lens, normalisation=ds.normalisation, dataset_identity=ds.identity, metrics={})
    with pytest.raises(ReconError, match=r"train_args\['bad'\]: value of type Evil"):
        save_checkpoint(tmp_path / "x.pt", model, train_args={"bad": Evil()}, **kw)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left
    with pytest.raises(ReconError, match="no model_config"):
        save_checkpoint(tmp_path / "x.pt", torch.nn.Conv2d(1, 1, 3), train_args={}, **kw)
    with pytest.raises(ReconError, match="does not exist"):
        save_checkpoint(tmp_path / "no" / "x.pt", model, train_args={}, **kw)


def test_store_of_another_lens_is_refused(saved, tiny_lens):
    _, info = load_checkpoint(saved[0])
    other = psfsim.lens_from_dict({**tiny_lens.to_dict(), "name": "other", "seidel": {"W040": 1.0}}, check_psf_box=False)
    with pytest.raises(ReconError, match=rf"lens 'other' \(fingerprint {other.fingerprint[:12]}\) differs from the lens "
                                         rf"of checkpoint .*'tiny' \(fingerprint {tiny_lens.fingerprint[:12]}\)"):
        check_store_matches(info, other)


def test_weights_only_is_never_disabled():
    root = pathlib.Path(recon.__file__).parents[1]
    needle = "weights_only=" + "False"  # spelled apart so this file does not match itself
    offenders = [str(p) for d in ("recon", "psfsim", "tests", "benchmarks") for p in (root / d).rglob("*.py")
                 if needle in p.read_text()]
    assert offenders == []
