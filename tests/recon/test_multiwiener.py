"""MultiWienerNet and its MultiWiener layer: each channel against a numpy zero-padded Wiener and psfsim's wiener,
the non-negative regularisation, gradients, shapes/dtypes/autocast, the registry round trip, and linear (not
circular) convolution."""

import json
import tomllib

import numpy as np
import pytest
import torch

import psfsim
from psfsim.restore import wiener as psfsim_wiener
from recon import build_model
from recon.coords import frame_coords
from recon.layers import MultiWiener
from recon.layers.wiener import gaussian_psfs, lens_psfs, padded_size
from recon.models import MultiWienerNet


@pytest.fixture(scope="module")
def grid_psfs():
    lens = psfsim.load_lens("microscope")
    return lens_psfs(lens, (2, 2))  # (4, 33, 33), global max 1


def _numpy_wiener(y, psf, reg):
    """Reference: zero-pad ``y (H, W)`` to (max(2H, H+k-1), max(2W, W+k-1)), identity-regularised Wiener with the
    PSF centre (k // 2) at pixel (0, 0), crop the top-left H x W (float64 throughout)."""
    H, W = y.shape
    k0, k1 = psf.shape
    P, Q = max(2 * H, H + k0 - 1), max(2 * W, W + k1 - 1)
    yp = np.zeros((P, Q))
    yp[:H, :W] = y
    hp = np.zeros((P, Q))
    hp[:k0, :k1] = psf
    hp = np.roll(hp, (-(k0 // 2), -(k1 // 2)), axis=(0, 1))
    Hf = np.fft.fft2(hp)
    X = np.conj(Hf) * np.fft.fft2(yp) / (np.abs(Hf) ** 2 + reg)
    return np.fft.ifft2(X).real[:H, :W]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_each_channel_is_a_zero_padded_identity_wiener(grid_psfs, dtype, tol):
    """With frozen PSFs and regularisation, channel k is the Wiener deconvolution by PSF k with the identity
    regulariser on the zero-padded image: equal to a numpy reference and to psfsim's wiener on the same
    zero-padded image with boundary="periodic" (psfsim pads by reflection otherwise; periodic + our own zero
    padding is the setup where the two coincide), cropped back."""
    H, W = 37, 45
    rng = np.random.default_rng(0)
    y = rng.random((2, H, W))
    raw = np.array([1, 2, 4, 256]) / 1024  # reg = 1000 * raw: 0.48828125 ... 250, exact in float32 (psfsim casts)
    layer = MultiWiener(grid_psfs, reg_init=raw, learn_psfs=False, learn_reg=False).to(dtype)
    with torch.no_grad():
        out = layer(torch.as_tensor(y, dtype=dtype)[:, None]).double().numpy()
    assert out.shape == (2, 4, H, W)
    psfs = layer.psfs.detach().double().numpy()
    reg = layer.reg.detach().double().numpy()
    np.testing.assert_allclose(reg, 1000 * raw.astype(np.float32 if dtype == torch.float32 else np.float64))
    P, Q = padded_size(H, 33), padded_size(W, 33)
    for k in range(4):
        for b in range(2):
            ref = _numpy_wiener(y[b], psfs[k], reg[k])
            scale = np.abs(ref).max()
            np.testing.assert_allclose(out[b, k], ref, rtol=0, atol=tol * scale)
        # psfsim, same setup: zero-pad ourselves, periodic boundary, identity regulariser, then crop
        npdt = np.float32 if dtype == torch.float32 else np.float64
        yp = np.zeros((2, P, Q), npdt)
        yp[:, :H, :W] = y
        ps = psfsim_wiener(yp, psfs[k].astype(npdt), balance=float(reg[k]), reg="identity", boundary="periodic",
                               normalize_psf=False)
        assert ps.dtype == npdt
        np.testing.assert_allclose(out[:, k], ps[:, :H, :W], rtol=0, atol=tol * np.abs(ps).max())


def test_regularisation_stays_nonnegative_and_does_not_die():
    layer = MultiWiener(gaussian_psfs((1, 2), 7))
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    y = torch.rand(1, 1, 16, 16)
    loss = layer.reg.sum() + layer(y).mean()  # pushes the regularisation down by ~1000 per unit of lr
    loss.backward()
    opt.step()
    assert (layer.reg_raw < 0).all()  # the raw parameter went negative ...
    assert (layer.reg >= 0).all() and (layer.reg == 0).all()  # ... the regularisation did not
    layer.constrain_()  # the authors' Keras projection (relu after the step)
    assert torch.equal(layer.reg_raw.detach(), torch.zeros(2))
    opt.zero_grad()
    (-layer.reg.sum()).backward()  # at exactly 0 the gradient still passes: the regularisation can come back
    assert (layer.reg_raw.grad != 0).all()
    opt.step()
    assert (layer.reg > 0).all()
    # the model delegates the projection
    m = MultiWienerNet(depth=1, base_channels=2, psf_size=5, grid=(1, 1))
    with torch.no_grad():
        m.wiener.reg_raw.fill_(-3.0)
    assert (m.wiener.reg == 0).all()
    m.constrain_()
    assert (m.wiener.reg_raw == 0).all()


def test_gradients_reach_psfs_regularisation_and_every_unet_parameter():
    torch.manual_seed(0)
    m = MultiWienerNet(grid=(2, 2), psf_size=7, depth=2, base_channels=4, reg_init=1e-3)
    x = torch.rand(2, 1, 24, 28)
    m(x, frame_coords((24, 28), 2)).square().mean().backward()
    names = [n for n, _ in m.named_parameters()]
    assert "wiener.psfs" in names and "wiener.reg_raw" in names and any(n.startswith("unet.") for n in names)
    missing = [n for n, p in m.named_parameters()
               if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not missing, missing
    assert (m.wiener.psfs.grad.flatten(1).abs().sum(1) > 0).all()  # every PSF
    assert (m.wiener.reg_raw.grad != 0).all()  # every regularisation


def test_shapes_odd_sizes_batch_channels_last_and_bf16_autocast():
    torch.manual_seed(0)
    m = MultiWienerNet(grid=(3, 3), psf_size=9, depth=2, base_channels=4, reg_init=1e-3).eval()
    x = torch.rand(3, 1, 37, 45)
    c = frame_coords((37, 45), 3)
    with torch.no_grad():
        ref = m(x, c)
        assert ref.shape == (3, 1, 37, 45) and ref.dtype == torch.float32
        assert m.wiener(x).shape == (3, 9, 37, 45)
        assert torch.equal(m(x, None), ref) and torch.equal(m(x, c + 5.0), ref)  # coords accepted, unused
        cl = m.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), c)
        torch.testing.assert_close(cl, ref, rtol=1e-5, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            w = m.wiener(x)
            half = m(x, c)
        assert w.dtype == torch.float32  # the FFT layer ran in float32 under autocast
        torch.testing.assert_close(w, m.wiener(x), rtol=0, atol=0)
        assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
        assert (half.float() - ref).abs().max() < 0.05 * ref.abs().max() + 0.05
        # a bf16 input: computed in float32, returned in bf16
        wb = m.wiener(x.bfloat16())
        assert wb.dtype == torch.bfloat16 and torch.isfinite(wb).all()
        d = m.double()
        assert d(x.double(), c.double()).dtype == torch.float64  # dtype follows the input
    # any size: smaller than the PSF box too (the FFT size follows the input)
    small = MultiWiener(gaussian_psfs((1, 1), 15))
    assert small(torch.rand(2, 1, 5, 8)).shape == (2, 1, 5, 8)


def test_registry_round_trip_and_json_config():
    cfg = dict(lens="microscope", grid=[2, 2], depth=2, base_channels=4)
    torch.manual_seed(3)
    a = build_model("multiwienernet", **cfg)
    s = json.dumps(a.model_config)
    torch.manual_seed(3)
    b = build_model(**json.loads(s))
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]), k
    assert a.wiener.psfs.shape == (4, 33, 33) and float(a.wiener.psfs.detach().max()) == 1.0
    x = torch.rand(1, 1, 32, 36)
    torch.testing.assert_close(a(x, None), b(x, None), rtol=0, atol=0)
    # a lens TOML dict rebuilds the same PSFs as the preset name
    d = tomllib.loads(psfsim.lens.resolve_lens_path("microscope").read_text())
    torch.manual_seed(3)
    c = build_model("multiwienernet", **{**cfg, "lens": d})
    json.dumps(c.model_config)
    assert torch.equal(c.wiener.psfs, a.wiener.psfs)
    # no lens: Gaussian stand-ins, still JSON-able and rebuildable; PSFs as a nested list too
    g = build_model("multiwienernet")
    assert g.receptive_field is None and g.halo is None and g.tile_halo > 0
    json.dumps(g.model_config)
    p = build_model("multiwienernet", psfs=gaussian_psfs((1, 2), 5).tolist(), depth=1, base_channels=2)
    assert json.loads(json.dumps(p.model_config))["psfs"] and p.wiener.n_psfs == 2


def test_linear_not_circular_convolution():
    """An impulse next to the left edge does not wrap around to the right edge (zero padding to ~2x), while a
    circular Wiener filter of the same PSF (no padding) does."""
    psf = gaussian_psfs((1, 1), 15)[0]
    layer = MultiWiener(psf, reg_init=1e-4).double()  # weak regularisation: a long inverse-filter tail
    H, W = 48, 64
    y = torch.zeros(1, 1, H, W, dtype=torch.float64)
    y[0, 0, H // 2, 1] = 1.0
    with torch.no_grad():
        out = layer(y)[0, 0].numpy()
    peak = np.abs(out).max()
    right = np.abs(out[:, -8:]).max()
    assert right < 1e-6 * peak, right / peak
    # the circular version of the same filter leaks a visible fraction of the peak to the right edge
    Hf = np.fft.fft2(np.roll(np.pad(psf, ((0, H - 15), (0, W - 15))), (-7, -7), axis=(0, 1)))
    circ = np.fft.ifft2(np.conj(Hf) * np.fft.fft2(y[0, 0].numpy()) / (np.abs(Hf) ** 2 + 0.1)).real
    assert np.abs(circ[:, -8:]).max() > 1e-2 * np.abs(circ).max()


def test_wiener_layer_is_global():
    """Honest receptive field: a pixel far outside any PSF box still changes the output (through the inverse
    filter's tail), so receptive_field/halo are None ("global")."""
    layer = MultiWiener(gaussian_psfs((1, 1), 7), reg_init=1e-5).double()
    y = torch.zeros(1, 1, 64, 64, dtype=torch.float64, requires_grad=True)
    layer(y)[0, 0, 32, 32].backward()
    assert y.grad[0, 0, 32, 60].abs() > 0  # 28 px away with a 7 px PSF


def test_bad_arguments_are_named():
    from recon import ReconError

    with pytest.raises(ReconError, match="lens and psfs"):
        MultiWienerNet(lens="microscope", psfs=np.ones((1, 3, 3)))
    with pytest.raises(ReconError, match="grid"):
        MultiWienerNet(grid=(0, 3))
    with pytest.raises(ReconError, match="reg_init"):
        MultiWiener(np.ones((2, 3, 3)), reg_init=[1.0, -1.0])
    with pytest.raises(ReconError, match="expected \\(B, 1, H, W\\)"):
        MultiWiener(np.ones((2, 3, 3)))(torch.zeros(1, 2, 8, 8))


def test_an_off_centre_crop_matches_the_frame_beyond_the_tile_halo():
    """The coordinate contract for a global model: a crop's output equals the frame's region beyond
    ``tile_halo`` from the crop's edges up to the Wiener inverse's tail (measured 3e-11 of the peak 32 px in at
    the authors' initial regularisation; tile_halo is 56 px here)."""
    import psfsim
    from recon.coords import batch_coords

    torch.manual_seed(0)
    model = build_model("multiwienernet", lens="microscope", depth=2, base_channels=4).double().eval()
    lens = psfsim.load_lens("microscope")
    x = torch.rand(1, 1, 192, 192, dtype=torch.float64)
    o, (h, w) = (48, 40), (128, 128)
    with torch.no_grad():
        full = model(x, batch_coords(lens, [(300, 300)], (192, 192), dtype=torch.float64))
        part = model(x[..., o[0] : o[0] + h, o[1] : o[1] + w],
                     batch_coords(lens, [(300 + o[0], 300 + o[1])], (h, w), dtype=torch.float64))
    t = 32
    assert t < model.tile_halo
    a = part[..., t : h - t, t : w - t]
    b = full[..., o[0] + t : o[0] + h - t, o[1] + t : o[1] + w - t]
    assert float((a - b).abs().max() / b.abs().max()) < 1e-8
    assert float((part - full[..., o[0] : o[0] + h, o[1] : o[1] + w]).abs().max()) > 1e-3  # edges do differ


def test_checkpoint_of_a_lens_file_model_loads_after_the_file_is_gone(tmp_path):
    """The config keeps the lens description, not the path: one checkpoint file is enough anywhere."""
    from recon.checkpoint import load_checkpoint, save_checkpoint

    lens_file = tmp_path / "mylens.toml"
    lens_file.write_text('name = "mine"\n[optics]\nwavelength_nm = 520.0\nna = 0.4\npixel_pitch_um = 0.325\n'
                         '[field]\nshape_px = [64, 64]\n[psf]\nsize_px = 33\noversample = 4\n')
    torch.manual_seed(0)
    model = build_model("multiwienernet", lens=str(lens_file), depth=1, base_channels=4)
    assert isinstance(model.model_config["lens"], dict)
    lens = psfsim.load_lens(lens_file)
    from psfsim.dataset.reader import Normalisation

    norm = Normalisation(kind="source_region_max", margin_px=16, vmin=0.0, vmax=1.0)
    ck = save_checkpoint(tmp_path / "m.pt", model, lens=lens, normalisation=norm, dataset_identity={},
                         train_args={}, metrics={})
    lens_file.unlink()
    loaded, info = load_checkpoint(ck)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, frame_coords((32, 32))), model.eval()(x, frame_coords((32, 32))))
