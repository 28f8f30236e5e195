"""The model zoo: the coordinate contract (levels, crops, tiles), receptive fields against impulse responses,
shapes, gradients, determinism, dtype/layout/autocast, the registry, and clear errors."""

import numpy as np
import pytest
import torch

import psfsim
import recon
from recon import ReconError, build_model, model_names
from recon.coords import batch_coords, coords_1d, frame_coords, pool_coords
from recon.models import MODELS


@pytest.fixture(scope="module")
def lens():
    return psfsim.load_lens("relay", check_psf_box=False)  # decentred axis: coordinates are not symmetric


def _inputs(name, B=2, size=(40, 48), seed=0):
    g = torch.Generator().manual_seed(seed)
    if MODELS[name].dims == 1:
        return torch.randn(B, 1, size[1], generator=g), coords_1d(size[1], B)
    return torch.randn(B, 1, *size, generator=g), frame_coords(size, B)


SMALL = {"unet": {"depth": 2, "base_channels": 4}, "cgunet": {"depth": 2, "base_channels": 4},
         "coordconv_unet": {"depth": 2, "base_channels": 4}, "pafu_unet": {"depth": 2, "base_channels": 4},
         "multiwienernet": {"depth": 2, "base_channels": 4, "psf_size": 7, "grid": [2, 2]}}


def _small(name, **kw):
    torch.manual_seed(0)
    return build_model(name, **{**SMALL.get(name, {}), **kw}).double()


def test_level_coordinates_of_a_crop_are_the_crop_of_the_frames(lens):
    """Pooling coordinates with the data: level-l coords of a crop at an origin multiple of 2^l equal the crop of
    the whole frame's level-l coords (psfsim.field_coords is affine in the pixel index)."""
    frame = batch_coords(lens, [(0, 0)], (256, 256), dtype=torch.float64)
    crop_o = (64, 96)
    crop = batch_coords(lens, [crop_o], (64, 64), dtype=torch.float64)
    for level in range(1, 5):
        frame = pool_coords(frame)
        crop = pool_coords(crop)
        s = 2**level
        r, c = crop_o[0] // s, crop_o[1] // s
        torch.testing.assert_close(crop, frame[..., r : r + 64 // s, c : c + 64 // s], rtol=0, atol=1e-15)
        # and equals psfsim's coordinates of the pooled pixels' centres (an independent statement)
        centre = psfsim.field_coords(lens, origin=crop_o, shape=(64, 64))[:, (s - 1) // 2 :: s, :][:, :, (s - 1) // 2 :: s]
        if s == 2:
            rows = np.arange(crop_o[0], crop_o[0] + 64, 2) + 0.5
            cols = np.arange(crop_o[1], crop_o[1] + 64, 2) + 0.5
            x, y = lens.field.pixel_to_field(rows[:, None], cols[None, :])
            np.testing.assert_allclose(crop[0, 0].numpy(), np.broadcast_to(x, (32, 32)), atol=1e-15)
            np.testing.assert_allclose(crop[0, 1].numpy(), np.broadcast_to(y, (32, 32)), atol=1e-15)
        assert centre.shape[1:] == (64 // s, 64 // s)


@pytest.mark.parametrize("name", ["unet", "cgunet", "coordconv_unet", "pafu_unet"])
def test_a_crop_gives_the_crop_of_the_frame_output(name, lens):
    """A crop at origin o (multiple of 2^d) with its own coords gives the frame output's region wherever the
    receptive field stays inside the crop: what makes tiled inference correct."""
    model = _small(name).eval()
    H, W = 128, 160
    x = torch.randn(1, 1, H, W, dtype=torch.float64)
    origin_in_frame = (200, 400)  # the frame itself is a window of the lens field
    frame_c = batch_coords(lens, [origin_in_frame], (H, W), dtype=torch.float64)
    o, (h_, w_) = (32, 28), (80, 96)  # origin a multiple of 2^d = 4
    crop_c = batch_coords(lens, [(origin_in_frame[0] + o[0], origin_in_frame[1] + o[1])], (h_, w_), dtype=torch.float64)
    with torch.no_grad():
        full = model(x, frame_c)
        part = model(x[..., o[0] : o[0] + h_, o[1] : o[1] + w_], crop_c)
    h = model.halo
    inner = part[..., h : h_ - h, h : w_ - h]
    assert inner.numel() > 0
    torch.testing.assert_close(inner, full[..., o[0] + h : o[0] + h_ - h, o[1] + h : o[1] + w_ - h], rtol=0, atol=1e-10)
    if model.position_aware:  # position-aware: the same pixels with another window's coordinates differ
        with torch.no_grad():
            moved = model(x[..., o[0] : o[0] + h_, o[1] : o[1] + w_], crop_c + 0.3)
        assert (moved[..., h : h_ - h, h : w_ - h] - inner).abs().max() > 1e-6


@pytest.mark.parametrize("name", sorted(MODELS))
def test_receptive_field_bounds_the_impulse_response(name):
    """The halo computed from the architecture contains the support of d(output pixel)/d(input), and is tight."""
    model = _small(name)
    if model.receptive_field is None:
        pytest.skip("global receptive field (FFT layer): tests/recon/test_multiwiener.py checks it is global")
    if MODELS[name].dims == 1:
        n = 4 * model.halo + 9
        x = torch.zeros(1, 1, n, dtype=torch.float64, requires_grad=True)
        c = coords_1d(n, dtype=torch.float64)
        centre = (n // 2,)
    else:
        n = 2 * model.halo + 17
        n += (-n) % 2 ** model.depth
        x = torch.zeros(1, 1, n, n, dtype=torch.float64, requires_grad=True)
        c = frame_coords((n, n), dtype=torch.float64)
        centre = (n // 2, n // 2 + 1)
    with torch.no_grad():  # make every weight positive so no contribution cancels
        for p in model.parameters():
            p.copy_(p.abs() + 0.01)
    out = model(x + 1.0, c)
    out[(0, 0) + centre].backward()
    g = x.grad[0, 0].abs() > 0
    idx = np.argwhere(g.numpy())
    reach = np.abs(idx - np.array(centre)).max()
    assert reach <= model.halo, (reach, model.halo)
    assert reach >= model.halo - (2 ** getattr(model, "depth", 0)), (reach, model.halo)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shapes_odd_sizes_and_gradients_reach_every_parameter(name):
    model = _small(name).float()
    x, c = _inputs(name, B=2, size=(37, 45))
    out = model(x, c)
    assert out.shape == x.shape[:1] + (1,) + x.shape[2:]
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not missing, missing


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registry_rebuilds_and_seed_determines_weights(name):
    torch.manual_seed(5)
    a = build_model(name, **SMALL.get(name, {}))
    torch.manual_seed(5)
    b = build_model(**a.model_config)
    assert a.model_config["name"] == name
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)
    x, c = _inputs(name)
    torch.manual_seed(1)  # a stochastic training-mode forward (PAFU's Gumbel noise) is seeded too
    ya = a(x, c)
    torch.manual_seed(1)
    torch.testing.assert_close(ya, b(x, c), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["unet", "cgunet", "coordconv_unet", "pafu_unet"])
def test_channels_last_and_bf16_autocast(name):
    model = _small(name).float().eval()
    x, c = _inputs(name, size=(32, 32))
    with torch.no_grad():
        ref = model(x, c)
        cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), c)
        torch.testing.assert_close(cl, ref, rtol=1e-5, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x, c)
    assert half.dtype == torch.bfloat16
    assert (half.float() - ref).abs().max() < 0.05 * ref.abs().max() + 0.05
    d = model.double()
    assert d(x.double(), c.double()).dtype == torch.float64  # dtype follows the input


def test_bad_construction_and_inputs_are_named():
    with pytest.raises(ReconError, match="depth d = 7: expected a whole number in 1..6"):
        build_model("unet", depth=7)
    with pytest.raises(ReconError, match="variant"):
        build_model("cgunet", variant="plain")
    with pytest.raises(ReconError, match="unknown argument 'width'"):
        build_model("unet", width=3)
    with pytest.raises(ReconError, match="model 'resnet'"):
        build_model("resnet")
    m = build_model("cgunet", depth=3, base_channels=4)
    with pytest.raises(ReconError, match="smaller than 2\\^d = 8"):
        m(torch.zeros(1, 1, 7, 32), frame_coords((7, 32)))
    with pytest.raises(ReconError, match="coords of shape"):
        m(torch.zeros(1, 1, 16, 16), frame_coords((16, 17)))
    with pytest.raises(ReconError, match="L = 0"):
        build_model("cg1d", L=0)
    with pytest.raises(ReconError, match="k = 4"):
        build_model("cnn1d", k=4)


def test_models_cli_lists_every_model():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "recon.cli", "models"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for name in model_names():
        assert name in out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cg1d", "cgunet", "coordconv_unet", "multiwienernet", "pafu_unet"])
def test_torch_compile_on_cpu(name):
    """Every layer kind under torch.compile (the plain UNet and the 1-D CNNs are subsets of these)."""
    model = _small(name).float().eval()
    x, c = _inputs(name, size=(32, 32))
    try:
        compiled = torch.compile(model)
        with torch.no_grad():
            out = compiled(x, c)
    except Exception as e:  # no C++ compiler on the machine: say why
        pytest.skip(f"torch.compile unavailable here: {type(e).__name__}: {str(e)[:200]}")
    with torch.no_grad():
        torch.testing.assert_close(out, model(x, c), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["unet", "cgunet", "coordconv_unet"])
def test_unet_dependency_interval_is_exact_at_every_parity(name):
    """The interval propagation (recon.models.unet.unet_input_interval) equals the set of input rows that can
    change an output pixel, at every position modulo 2^d: positive weights make the network monotone, so raising
    one input row changes the output pixel iff it depends on it (a gradient would miss max-pooling's losers)."""
    from recon.models.unet import unet_input_interval

    model = _small(name)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.abs() + 0.01)
    n = 2 * model.halo + 24
    n += (-n) % 2**model.depth
    c = frame_coords((n, n), dtype=torch.float64)
    x = torch.zeros(n, 1, n, n, dtype=torch.float64)
    for i in range(n):
        x[i, 0, i, :] = 1000.0  # sample i: row i raised
    with torch.no_grad():
        base = model(torch.zeros(1, 1, n, n, dtype=torch.float64), c[:1])
        out = model(x, c.expand(n, -1, -1, -1))
    for r in range(n // 2, n // 2 + 2**model.depth):
        rows = np.nonzero((out[:, 0, r, r] - base[0, 0, r, r]).abs().numpy() > 1e-9)[0]
        assert (rows.min(), rows.max()) == unet_input_interval(model.depth, r, r), r


@pytest.mark.parametrize("name", ["unet", "cgunet", "coordconv_unet", "pafu_unet"])
def test_residual_unet_starts_at_its_input(name):
    model = _small(name, residual=True)
    x, c = _inputs(name, size=(32, 36))
    x, c = x.double(), c.double()
    torch.testing.assert_close(model(x, c), x, rtol=0, atol=0)
    with pytest.raises(ReconError, match="residual = True needs in_channels >= out_channels"):
        build_model(name, residual=True, in_channels=1, out_channels=2)
