"""CoordGate against independent constructions: the paper's appendix (a complete basis of one-hot kernels with
a free gate map is an arbitrary spatially-varying filter, i.e. a locally connected layer), constant gates (the
plain conv block), the linear gate (each gate a plane in the coordinates), and the gate cache."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from recon import ReconError
from recon.coords import frame_coords
from recon.layers import CoordGate


def _locally_connected(x, kernels):
    """Brute force: out[i, j] = sum_ab kernels[i, j, a, b] x[i + a - r, j + b - r] (zero padding)."""
    H, W, k, _ = kernels.shape
    r = k // 2
    xp = np.pad(x, r)
    out = np.zeros((H, W))
    for i in range(H):
        for j in range(W):
            out[i, j] = np.sum(kernels[i, j] * xp[i : i + k, j : j + k])
    return out


def test_one_hot_basis_with_free_gates_is_any_spatially_varying_filter():
    """Paper appendix: k*k one-hot kernels, gates = the per-pixel kernel taps, summed by a 1x1 mix of ones."""
    torch.manual_seed(0)
    k, H, W = 3, 7, 9
    layer = CoordGate(1, k * k, k, mix=1).double()
    conv = layer.block[0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        for t in range(k * k):
            conv.weight[t, 0, t // k, t % k] = 1.0
        layer.mix.weight.fill_(1.0)
        layer.mix.bias.zero_()
    rng = np.random.default_rng(1)
    kernels = rng.standard_normal((H, W, k, k))
    gate_map = torch.from_numpy(kernels.reshape(H, W, k * k).transpose(2, 0, 1)[None].copy())
    layer.gates = lambda coords: gate_map  # "a directly trainable gate map"
    x = rng.standard_normal((H, W))
    out = layer(torch.from_numpy(x)[None, None], frame_coords((H, W), dtype=torch.float64))
    np.testing.assert_allclose(out[0, 0].detach().numpy(), _locally_connected(x, kernels), rtol=0, atol=1e-12)


def test_constant_gates_give_the_plain_conv_block():
    torch.manual_seed(2)
    layer = CoordGate(2, 5, 3, block_layers=2, gate_layers=2)
    last = layer.gate.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(1.0)
    x = torch.randn(2, 2, 11, 13)
    torch.testing.assert_close(layer(x, frame_coords((11, 13), 2)), layer.block(x), rtol=0, atol=0)


def test_linear_gate_is_a_plane_in_the_coordinates():
    """gate='linear' (the authors' code): no activation between layers, so g(x, y) = a x + b y + c exactly."""
    torch.manual_seed(3)
    layer = CoordGate(1, 4, 3, gate_layers=3, gate="linear").double()
    c = frame_coords((9, 12), dtype=torch.float64)
    g = layer.gate(c)[0]  # (4, 9, 12)
    X = c[0].reshape(2, -1).T.numpy()
    A = np.concatenate([X, np.ones((len(X), 1))], axis=1)
    for ch in range(4):
        coef, res, *_ = np.linalg.lstsq(A, g[ch].reshape(-1).detach().numpy(), rcond=None)
        assert np.abs(A @ coef - g[ch].reshape(-1).detach().numpy()).max() < 1e-12
    mlp = CoordGate(1, 4, 3, gate_layers=3, gate="mlp").double()
    gm = mlp.gate(c)[0].reshape(4, -1).detach().numpy()
    worst = max(np.abs(A @ np.linalg.lstsq(A, gm[ch], rcond=None)[0] - gm[ch]).max() for ch in range(4))
    assert worst > 1e-4  # the default MLP is not a plane


def test_gate_cache_equals_uncached_and_is_never_used_in_training():
    torch.manual_seed(4)
    layer = CoordGate(1, 6, 3, fourier=2, gate_activation="sigmoid").eval()
    x = torch.randn(1, 1, 16, 16)
    c = frame_coords((16, 16))
    with torch.no_grad():
        ref = layer(x, c)
        assert len(layer._gates) == 1
        again = layer(x, c)
        c2 = c + 0.25  # another window
        layer(x, c2)
    assert len(layer._gates) == 2
    torch.testing.assert_close(again, ref, rtol=0, atol=1e-6)
    layer.cache_gates = False
    with torch.no_grad():
        torch.testing.assert_close(layer(x, c), ref, rtol=0, atol=1e-6)
    # training: the cache is dropped and gradients flow to the gate
    layer.cache_gates = True
    layer.train()
    assert len(layer._gates) == 0
    out = layer(x, c)
    out.sum().backward()
    assert layer.gate.net[0].weight.grad is not None and len(layer._gates) == 0
    # after an update the eval output changes (no stale gate)
    with torch.no_grad():
        for p in layer.gate.parameters():
            p.add_(0.1)
    layer.eval()
    with torch.no_grad():
        assert not torch.allclose(layer(x, c), ref)


def test_bad_arguments_name_the_value():
    with pytest.raises(ReconError, match="kernel_size = 4"):
        CoordGate(1, 4, 4)
    with pytest.raises(ReconError, match="gate = 'cubic'"):
        CoordGate(1, 4, 3, gate="cubic")
    with pytest.raises(ReconError, match="gate_layers = 0"):
        CoordGate(1, 4, 3, gate_layers=0)
    layer = CoordGate(1, 4, 3)
    with pytest.raises(ReconError, match=r"coords of shape \(1, 2, 8, 9\): expected \(1, 2, 8, 8\)"):
        layer(torch.zeros(1, 1, 8, 8), torch.zeros(1, 2, 8, 9))
    with pytest.raises(ReconError, match="coords = None"):
        layer(torch.zeros(1, 1, 8, 8), None)


def test_one_dimensional_coordgate():
    from recon.coords import coords_1d

    layer = CoordGate(1, 3, 5, dims=1)
    out = layer(torch.randn(2, 1, 33), coords_1d(33, 2))
    assert out.shape == (2, 3, 33)


def test_gate_cache_never_serves_stale_or_foreign_gates():
    """Keyed by the whole window, the autocast state and the gate parameters' versions: a load_state_dict, an
    autocast call or another map with the same corners each get their own gates (uncached equality 1e-6)."""
    torch.manual_seed(7)
    layer = CoordGate(1, 4, 3).eval()
    other = CoordGate(1, 4, 3).eval()
    x = torch.randn(1, 1, 12, 12)
    c = frame_coords((12, 12))

    def uncached(m, xx, cc):
        m.cache_gates = False
        try:
            return m(xx, cc)
        finally:
            m.cache_gates = True

    with torch.no_grad():
        layer(x, c)
        layer.load_state_dict(other.state_dict())  # new weights, still in eval mode
        torch.testing.assert_close(layer(x, c), uncached(layer, x, c), rtol=0, atol=1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x, c)
        out = layer(x, c)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, uncached(layer, x, c), rtol=0, atol=1e-6)
        flipped = c.clone()
        flipped[..., 1:-1, 1:-1] = flipped[..., 1:-1, 1:-1].flip(-1)  # same corners, another map
        torch.testing.assert_close(layer(x, flipped), uncached(layer, x, flipped), rtol=0, atol=1e-6)
