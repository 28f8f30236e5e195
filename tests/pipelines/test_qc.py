"""QC: the re-blur residual against its analytic expectation (the true image leaves exactly the added noise),
and the CoordGate gate figure against the gate MLP evaluated directly."""

import numpy as np
import pytest

import psfsim
from pipelines.errors import PipelineError
from pipelines.qc import ResidualSummary, gate_figure, gate_maps, reblur_residual, residual_block

from .conftest import PL_LENS, scene

ORIGIN = (20, 30)
SHAPE = (120, 160)


@pytest.fixture(scope="module")
def observed(pl_lens):
    sharp = scene(SHAPE, seed=11)
    sigma = 0.002
    y = psfsim.blur(sharp, pl_lens, origin=ORIGIN) + sigma * np.random.default_rng(0).standard_normal(SHAPE)
    return sharp, y.astype(np.float32), sigma


def test_residual_of_the_truth_is_the_noise_and_a_wrong_lens_is_larger(pl_lens, observed):
    sharp, y, sigma = observed
    r, s = reblur_residual(pl_lens, sharp, y, origin=ORIGIN)
    assert r.shape == SHAPE and r.dtype == np.float32
    # A(x) - y is minus the added Gaussian noise: rms = sigma, mean |.| = sigma sqrt(2 / pi)
    assert s["rms"] == pytest.approx(sigma, rel=0.05)
    assert s["mean_abs"] == pytest.approx(sigma * np.sqrt(2 / np.pi), rel=0.05)
    assert 0.8 < s["rms_over_noise"] < 1.25 and s["border_px"] == 8
    d = dict(PL_LENS, seidel={"W220": 0.0, "W131": 0.0, "W040": 0.4})
    wrong = psfsim.lens_from_dict(d, check_psf_box=False)  # only its operator is used
    _, s_wrong = reblur_residual(wrong, sharp, y, origin=ORIGIN)
    assert s_wrong["rms"] > 2 * s["rms"] and s_wrong["rms_over_noise"] > 2
    # the blurred image itself (no deblur at all) disagrees with the physics too
    _, s_blur = reblur_residual(pl_lens, y, y, origin=ORIGIN)
    assert s_blur["rms"] > 2 * s["rms"]


def test_residual_chunked_equals_whole_and_nans_stay_put(pl_lens, observed):
    sharp, y, _ = observed
    x = sharp.copy()
    x[40, 50] = np.nan
    r = residual_block(pl_lens, x, y, origin=ORIGIN)
    assert np.isnan(r[40, 50]) and np.isfinite(np.delete(r.ravel(), 40 * SHAPE[1] + 50)).all()
    whole = ResidualSummary()
    whole.add(r, y)
    parts = ResidualSummary()
    for i in range(0, SHAPE[0], 40):
        parts.add(r[i:i + 40], y[i:i + 40])
    a, b = whole.summary(), parts.summary()
    assert a["n_nan"] == b["n_nan"] == 1
    for k in ("mean_abs", "rms", "max"):
        assert a[k] == pytest.approx(b[k], rel=1e-9)
    with pytest.raises(PipelineError, match="one shape"):
        residual_block(pl_lens, x[:10], y, origin=ORIGIN)


def test_gate_maps_are_the_gate_mlp_over_the_field(checkpoints, pl_lens):
    import torch

    import recon

    maps = gate_maps(checkpoints["cgunet"], None, SHAPE, origin=ORIGIN, points=16)
    assert len(maps) == 5  # depth 2: two encoder levels, the bottleneck, two decoder levels
    # reference: the first layer's gate MLP on psfsim's coordinates of the frame's corner pixels
    model, _ = recon.load_checkpoint(checkpoints["cgunet"])
    layer = next(m for m in model.modules() if isinstance(m, recon.layers.CoordGate))
    xy = psfsim.field_coords(pl_lens, origin=ORIGIN, shape=SHAPE)
    with torch.no_grad():
        g = layer.gate(torch.from_numpy(xy[None].astype(np.float32)))[0].numpy()
    name, g0 = maps[0]
    assert g0.shape == (4, 16, 16)
    for (i, j), (pi, pj) in {(0, 0): (0, 0), (-1, -1): (-1, -1), (0, -1): (0, -1)}.items():
        np.testing.assert_allclose(g0[:, i, j], g[:, pi, pj], rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # matplotlib import and a PNG render: ~5 s on a busy 2-core machine
def test_gate_figure_png_and_refusals(checkpoints, pl_lens, tmp_path):
    png = gate_figure(checkpoints["cgunet"], pl_lens, SHAPE, tmp_path / "gates.png", origin=ORIGIN, channels=1)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(PipelineError, match="exists"):
        gate_figure(checkpoints["cgunet"], pl_lens, SHAPE, png, origin=ORIGIN)
    with pytest.raises(PipelineError, match="no CoordGate layers"):
        gate_figure(checkpoints["unet"], pl_lens, SHAPE, tmp_path / "plain.png")
    assert not (tmp_path / "plain.png").exists()
    with pytest.raises(PipelineError, match="does not lie inside the lens field"):
        gate_maps(checkpoints["cgunet"], pl_lens, (200, 100))
