"""recon export: ONNX (image and coords inputs, dynamic batch / height / width) and torch.export .pt2, checked
against the torch model; models whose ops do not export are refused naming the operator or node."""

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import recon  # noqa: E402
from recon import ReconError, StoreDataset, save_checkpoint  # noqa: E402
from recon.cli import main  # noqa: E402
from recon.export import TOLERANCE, ExportResult, export, export_onnx, export_pt2  # noqa: E402


def _model(name, **kw):
    torch.manual_seed(0)
    return recon.build_model(name, depth=2, base_channels=4, **kw)


@pytest.mark.parametrize("name", ["unet", "cgunet", "coordconv_unet"])
def test_onnx_export_matches_torch_at_other_sizes(name, tmp_path):
    model = _model(name)
    res = export_onnx(model, tmp_path / "m.onnx", size=(32, 32))
    assert isinstance(res, ExportResult) and res.ok and res.format == "onnx" and res.model == name
    assert res.shapes == ((2, 32, 32), (1, 36, 40)) and max(res.max_abs_diff) < TOLERANCE
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image", "coords"]  # also the plain U-Net (coords unused)
    assert [o.name for o in sess.get_outputs()] == ["output"]
    g = torch.Generator().manual_seed(5)
    x, c = torch.rand(3, 1, 24, 48, generator=g), torch.rand(3, 2, 24, 48, generator=g) * 2 - 1  # a third shape
    got = sess.run(None, {"image": x.numpy(), "coords": c.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model.eval()(x, c).numpy(), atol=TOLERANCE, rtol=0)
    assert not list(tmp_path.glob(".*"))


def test_pt2_export_matches_torch(tmp_path):
    model = _model("cgunet")
    res = export_pt2(model, tmp_path / "m.pt2", size=(16, 16))
    assert res.ok and res.format == "pt2" and max(res.max_abs_diff) < TOLERANCE
    ep = torch.export.load(str(tmp_path / "m.pt2"))
    x, c = torch.rand(3, 1, 28, 20), torch.rand(3, 2, 28, 20)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x, c), model(x, c), atol=TOLERANCE, rtol=0)


def test_models_that_do_not_export_are_refused_by_name(tmp_path):
    with pytest.raises(ReconError, match=r"multiwienernet.*aten::fft_rfft2"):
        export_onnx(_model("multiwienernet"), tmp_path / "w.onnx", size=(32, 32))
    with pytest.raises(ReconError, match=r"pafu_unet.*dynamic size.*Expand"):
        export_onnx(_model("pafu_unet"), tmp_path / "p.onnx", size=(32, 32))
    assert not list(tmp_path.iterdir())  # nothing written, no temporaries
    res = export_pt2(_model("pafu_unet"), tmp_path / "p.pt2", size=(16, 16))  # torch.export handles the gather
    assert res.ok


def test_tolerance_is_enforced(tmp_path):
    model = _model("coordconv_unet")
    res = export_onnx(model, tmp_path / "a.onnx", size=(16, 16))
    d = max(res.max_abs_diff)
    if d == 0:  # pragma: no cover - bit-identical runtime: nothing to refuse
        pytest.skip("onnxruntime matched torch bit for bit")
    with pytest.raises(ReconError, match="more than the tolerance.*nothing written"):
        export_onnx(model, tmp_path / "b.onnx", size=(16, 16), tolerance=d / 4)
    assert not (tmp_path / "b.onnx").exists()


def test_bad_arguments(tmp_path):
    model = _model("cgunet")
    with pytest.raises(ReconError, match="not a multiple of 2\\^depth = 4"):
        export_onnx(model, tmp_path / "a.onnx", size=(30, 32))
    with pytest.raises(ReconError, match="--size"):
        export_onnx(model, tmp_path / "a.onnx", size="big")
    with pytest.raises(ReconError, match="unknown format"):
        export(model, tmp_path / "a.tflite")
    (tmp_path / "b.onnx").write_bytes(b"x")
    with pytest.raises(ReconError, match="exists"):
        export(model, tmp_path / "b.onnx")
    with pytest.raises(ReconError, match="does not exist"):
        export(model, tmp_path / "no" / "c.onnx")


def test_cli_export_from_a_checkpoint(tiny_store, tmp_path, capsys):
    ds = StoreDataset(tiny_store)
    ck = tmp_path / "best.pt"
    save_checkpoint(ck, _model("cgunet"), lens=ds.lens, normalisation=ds.normalisation, dataset_identity=ds.identity,
                    train_args={}, metrics={})
    assert main(["export", str(ck), "--to", str(tmp_path / "m.onnx"), "--size", "32,32"]) == 0
    out = capsys.readouterr().out
    assert "max abs difference to torch" in out and (tmp_path / "m.onnx").is_file()
    assert main(["export", str(ck), "--to", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recon: error: --to") and err.count("\n") == 1
    assert main(["export", str(tmp_path / "missing.pt"), "--to", str(tmp_path / "n.onnx")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["export", str(ck), "--to", str(tmp_path / "m.pt2"), "--size", "16"]) == 0
    assert (tmp_path / "m.pt2").is_file()
