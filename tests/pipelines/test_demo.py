"""``make demo``'s pipelines stage (``pipelines.demo``) at a tiny size: the commands run, the report links to
files that exist, and its PSNR figures are scikit-image's ``peak_signal_noise_ratio`` of the stores' arrays
against the sharp frame (the reference)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

PL_TOML = """name = "pl-small"
[optics]
wavelength_nm = 520.0
na = 0.4
pixel_pitch_um = 0.325
[field]
shape_px = [160, 224]
[psf]
size_px = 17
oversample = 2
pupil_samples = 32
[seidel]
W220 = 0.3
W131 = 0.15
"""


@pytest.mark.slow  # five tiled runs with QC and six figures: ~30 s on a busy 2-core machine
def test_demo_pipelines_stage_tiny(checkpoints, pl_lens, tmp_path, monkeypatch):
    import zarr
    from skimage.metrics import peak_signal_noise_ratio

    import psfsim
    from pipelines.demo import main

    lens_file = tmp_path / "pl.toml"
    lens_file.write_text(PL_TOML)
    assert psfsim.load_lens(str(lens_file)).fingerprint == pl_lens.fingerprint  # the checkpoints' lens
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "demo_out"
    argv = ["--out", str(out), "--stages", "pipelines", "--lens", str(lens_file), "--tile", "64",
            "--checkpoint", f"UNet={checkpoints['unet']}", "--checkpoint", f"CGUNet={checkpoints['cgunet']}"]
    assert main(argv) == 0
    report = (out / "report.md").read_text()
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (out / link).is_file(), link
    assert "pipelines simulate --lens" in report and "pipelines deblur --checkpoint" in report
    assert "(pipelines/cgunet.qc/gates.png)" in report and "(pipelines/unet.qc/gates.png)" not in report
    res = json.loads((out / "pipelines" / "scores.json").read_text())
    assert res["frame_shape"] == [160, 224]
    sharp = np.load(out / "pipelines" / "sharp.npy")
    stores = {"blurred": "blurred", "wiener": "wiener", "wiener_sv": "wiener_sv", "UNet": "unet", "CGUNet": "cgunet"}
    for label, name in stores.items():
        img = np.asarray(zarr.open_group(str(out / "pipelines" / f"{name}.zarr"), mode="r")["0"][...])
        want = peak_signal_noise_ratio(sharp.astype(np.float64), img.astype(np.float64), data_range=1.0)
        assert res["scores"][label]["whole"] == pytest.approx(want, abs=1e-6)
        assert f"{res['scores'][label]['whole']:.2f}" in report
    assert res["scores"]["wiener_sv"]["whole"] > res["scores"]["blurred"]["whole"]  # a restoration restores
    # run again: every store is complete with the same record, nothing is recomputed and the frame is kept
    mtime = (out / "pipelines" / "sharp.npy").stat().st_mtime_ns
    assert main(argv) == 0
    assert (out / "pipelines" / "sharp.npy").stat().st_mtime_ns == mtime
    meta = zarr.open_group(str(out / "pipelines" / "unet.zarr"), mode="r").attrs["pipelines"]
    assert meta["status"] == "complete" and meta["qc"]["status"] == "complete"
