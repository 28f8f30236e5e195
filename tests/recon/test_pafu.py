"""PAFU (recon.layers.PAFU) and PAFU-UNet: deterministic inference, straight-through training gradients, the
selected kernel's response against an independent convolution, the decorrelation regulariser's values, the
halo, shapes/layouts/autocast and named construction errors."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recon import ReconError, build_model
from recon.coords import frame_coords
from recon.layers import PAFU
from recon.models import PAFUUNet, UNet


def _x(B=2, C=2, size=(24, 28), seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, *size, generator=g).to(dtype)


def _pafu(seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"in_channels": 2, "out_channels": 3, "n_kernels": 4, **kw}
    return PAFU(**kw)


def _force(p: PAFU, j: int, margin: float = 60.0) -> None:
    """Make the scorer pick kernel j everywhere: zero last-layer weights, logit j ahead by `margin`."""
    last = p.scorer[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[j] = margin


def test_eval_is_deterministic_and_seeded():
    p = _pafu().eval()
    x = _x()
    with torch.no_grad():
        a, b = p(x), p(x)
    assert torch.equal(a, b)
    q = _pafu().eval()
    for (na, pa), (nb, pb) in zip(p.state_dict().items(), q.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)
    with torch.no_grad():
        assert torch.equal(q(x), a)
    # and it is the argmax selection: each pixel's output is exactly its selected kernel's response
    with torch.no_grad():
        r, idx = p.responses(x), p.select(x)
    ref = torch.stack([r[:, j] for j in range(p.n_kernels)], 1)
    picked = torch.take_along_dim(ref, idx[:, None, None], dim=1)[:, 0]
    assert torch.equal(a, picked)
    assert len(torch.unique(idx)) > 1  # a random scorer really mixes kernels


def test_coords_are_accepted_and_ignored():
    p = _pafu().eval()
    x = _x()
    with torch.no_grad():
        assert torch.equal(p(x), p(x, frame_coords(x.shape[-2:], x.shape[0]) + 0.7))


def test_training_gradients_reach_every_kernel_and_the_scorer():
    p = _pafu(seed=3).train().double()
    x = _x(B=2, size=(31, 33), dtype=torch.float64)
    torch.manual_seed(0)
    out = p(x)
    # the forward value is one-hot: every pixel equals one kernel's response (up to the ST estimator's rounding)
    r = p.responses(x).detach()
    err = (out.detach()[:, None] - r).abs().amax(dim=2).amin(dim=1)
    assert err.max() < 1e-12
    out.square().mean().backward()
    g = p.weight.grad
    assert g is not None and torch.isfinite(g).all()
    for j in range(p.n_kernels):
        assert g[j * p.out_channels : (j + 1) * p.out_channels].abs().sum() > 0, j
        assert p.bias.grad[j * p.out_channels : (j + 1) * p.out_channels].abs().sum() > 0, j
    for name, q in p.scorer.named_parameters():  # straight-through: the scorer learns from the task loss
        assert q.grad is not None and q.grad.abs().sum() > 0, name


def test_training_samples_while_eval_does_not():
    p = _pafu().train()
    x = _x()
    torch.manual_seed(0)
    a = p(x)
    torch.manual_seed(1)
    b = p(x)
    torch.manual_seed(0)
    c = p(x)
    assert not torch.equal(a, b) and torch.equal(a, c)  # Gumbel noise from torch's RNG: seeded, reproducible


@pytest.mark.parametrize("j", [0, 2, 3])
@pytest.mark.parametrize("training", [False, True])
def test_forced_selection_equals_a_plain_conv_with_that_kernel(j, training):
    p = _pafu(seed=7).double()
    _force(p, j)
    p.train(training)
    x = _x(B=3, size=(19, 22), dtype=torch.float64)
    w, b = p.kernel(j)
    with torch.no_grad():
        ref = F.conv2d(x, w.detach().clone(), b.detach().clone(), padding=1)  # the independent reference
        out = p(x)
    if training:
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)  # 1 - s + s: the ST value's rounding
    else:
        assert torch.equal(out, ref)


def test_decorrelation_loss_values():
    # orthogonal kernels (disjoint supports, any scale): 0
    p = PAFU(1, 1, 3, n_kernels=4)
    with torch.no_grad():
        p.weight.zero_()
        for j in range(4):
            p.weight[j, 0].view(-1)[2 * j] = (j + 1) * 0.3
    assert p.decorrelation_loss().item() == pytest.approx(0.0, abs=1e-12)
    # identical (or parallel / anti-parallel) kernels: G = +-1 everywhere, ||G - I||^2 = n^2 - n
    for n in (2, 3, 5):
        q = PAFU(2, 3, 3, n_kernels=n).double()
        base = torch.randn(3, 2, 3, 3, dtype=torch.float64)
        with torch.no_grad():
            for j in range(n):
                q.weight[j * 3 : (j + 1) * 3] = base * (j + 1) * (-1) ** j
        assert q.decorrelation_loss().item() == pytest.approx(n * (n - 1), rel=1e-12)
    # two kernels at 45 degrees: off-diagonal cos = 1/sqrt(2) twice, ||G - I||^2 = 2 * 1/2 = 1
    r2 = PAFU(2, 1, 1, n_kernels=2, bias=False).double()
    with torch.no_grad():
        r2.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64).view(2, 2, 1, 1))
    assert r2.decorrelation_loss().item() == pytest.approx(1.0, rel=1e-12)
    # hand computation on random kernels, and the loss is differentiable
    s = _pafu(seed=2).double()
    W = s.weight.detach().reshape(4, -1).numpy()
    W = W / np.linalg.norm(W, axis=1, keepdims=True)
    want = np.sum((W @ W.T - np.eye(4)) ** 2)
    loss = s.decorrelation_loss()
    assert loss.item() == pytest.approx(want, rel=1e-12)
    loss.backward()
    assert s.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("training", [False, True])
def test_shapes_odd_sizes_batch_channels_last_and_bf16(training):
    p = _pafu(seed=1).train(training)
    x = _x(B=3, size=(37, 45))
    torch.manual_seed(0)
    ref = p(x)
    assert ref.shape == (3, 3, 37, 45)
    q = _pafu(seed=1).train(training).to(memory_format=torch.channels_last)
    torch.manual_seed(0)
    cl = q(x.to(memory_format=torch.channels_last))
    if not training:
        torch.testing.assert_close(cl, ref, rtol=1e-5, atol=1e-5)
    assert cl.shape == ref.shape
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(0)
        half = p(x)
    assert half.dtype == torch.bfloat16 and half.shape == ref.shape
    if not training:  # same selection at almost every pixel (near-ties may flip in bf16)
        close = ((half.float() - ref).abs() <= 0.05 * ref.abs().max() + 0.05).float().mean()
        assert close > 0.95, close
    assert p.double()(x.double()).dtype == torch.float64


def test_single_kernel_is_a_plain_conv():
    p = PAFU(2, 3, 3, n_kernels=1).double()
    assert p.scorer is None and p.reach == 1
    x = _x(dtype=torch.float64)
    for mode in (True, False):
        p.train(mode)
        with torch.no_grad():
            assert torch.equal(p(x), F.conv2d(x, p.weight, p.bias, padding=1))


@pytest.mark.parametrize("scorer_kernel", [3, 7])
def test_pafu_reach_is_exact(scorer_kernel):
    """The gradient of one output pixel (training mode: the ST soft path carries the scorer's reach) has support
    of exactly `reach` on each side."""
    p = PAFU(1, 2, 3, n_kernels=3, scorer_kernel=scorer_kernel).double().train()
    with torch.no_grad():
        for q in p.parameters():
            q.copy_(q.abs() + 0.01)
        p.scorer[-1].weight.mul_(torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64).view(3, 1, 1, 1))
    assert p.reach == max(3, scorer_kernel) // 2
    x = torch.rand(1, 1, 21, 21, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(0)
    p(x)[0, 0, 10, 10].backward()
    idx = np.argwhere(x.grad[0, 0].abs().numpy() > 0)
    assert np.abs(idx - 10).max() == p.reach


def test_pafu_unet_structure_and_halo():
    m = build_model("pafu_unet", depth=2, base_channels=4, n_kernels=3)
    u = UNet(2, base_channels=4)
    assert isinstance(m, PAFUUNet) and isinstance(m.enc[0].body.c1, PAFU) and not m.position_aware
    assert m.channels == u.channels and m.pafu.out_channels == 4 and m.pafu.n_kernels == 3
    n_pafu = sum(q.numel() for q in m.pafu.parameters())
    n_conv = sum(q.numel() for q in u.enc[0].body.c1.parameters())
    assert sum(q.numel() for q in m.parameters()) - n_pafu == sum(q.numel() for q in u.parameters()) - n_conv
    assert m.halo == u.halo  # scorer 3 x 3: the reach of the conv it replaces
    wide = PAFUUNet(2, base_channels=4, scorer_kernel=9)
    assert wide.halo == u.halo + 3  # level-0 reach 4 instead of 1
    assert m.model_config == {"name": "pafu_unet", "depth": 2, "base_channels": 4, "n_kernels": 3}
    assert m.decorrelation_loss().item() >= 0


def test_pafu_unet_halo_bounds_a_wide_scorers_impulse_response():
    """With a 9 x 9 scorer the dependency reaches past the plain U-Net's halo, and equals PAFU-UNet's halo."""
    torch.manual_seed(0)
    m = PAFUUNet(1, base_channels=2, scorer_kernel=9).double().train()
    with torch.no_grad():
        for q in m.parameters():
            q.copy_(q.abs() + 0.01)
        m.pafu.scorer[-1].weight.mul_(torch.tensor([1.0, -1.0, 0.5, -0.3], dtype=torch.float64).view(4, 1, 1, 1))
    n = 2 * m.halo + 16
    reach = 0
    for c in (n // 2, n // 2 + 1):
        x = torch.rand(1, 1, n, n, dtype=torch.float64, requires_grad=True)
        torch.manual_seed(0)
        m(x)[0, 0, c, c].backward()
        idx = np.argwhere(x.grad[0, 0].abs().numpy() > 0)
        reach = max(reach, int(np.abs(idx - c).max()))
    assert UNet(1).halo < reach == m.halo, (reach, UNet(1).halo, m.halo)  # 12 > 9: tight at depth 1


def test_tau_is_documented_and_checked():
    p = _pafu(tau=0.5)
    assert p.tau == 0.5
    p.tau = 2  # annealing
    assert p.tau == 2.0
    with pytest.raises(ReconError, match=r"tau = -1: expected a finite number > 0"):
        p.tau = -1


@pytest.mark.parametrize("kw, msg", [
    ({"n_kernels": 0}, r"n_kernels = 0: expected a whole number >= 1"),
    ({"n_kernels": 2.5}, r"n_kernels = 2.5: expected a whole number >= 1"),
    ({"kernel_size": 4}, r"kernel_size k = 4: expected an odd whole number >= 1"),
    ({"kernel_size": 0}, r"kernel_size k = 0: expected an odd whole number >= 1"),
    ({"tau": 0}, r"tau = 0: expected a finite number > 0"),
    ({"tau": -0.1}, r"tau = -0.1: expected a finite number > 0"),
    ({"tau": math.inf}, r"tau = inf: expected a finite number > 0"),
    ({"scorer_kernel": 2}, r"scorer_kernel = 2: expected an odd whole number >= 1"),
    ({"scorer_hidden": 0}, r"scorer_hidden = 0: expected a whole number >= 1"),
    ({"in_channels": 0}, r"in_channels = 0: expected a whole number >= 1"),
])
def test_bad_construction_is_named(kw, msg):
    with pytest.raises(ReconError, match=msg):
        PAFU(**{"in_channels": 1, "out_channels": 2, **kw})


def test_bad_model_config_and_input_are_named():
    with pytest.raises(ReconError, match=r"n_kernels = 0: expected a whole number >= 1"):
        build_model("pafu_unet", n_kernels=0)
    with pytest.raises(ReconError, match=r"tau = 0: expected a finite number > 0"):
        build_model("pafu_unet", tau=0)
    with pytest.raises(ReconError, match=r"x of shape \(1, 3, 8, 8\): expected \(B, 2, H, W\)"):
        _pafu()(torch.zeros(1, 3, 8, 8))
