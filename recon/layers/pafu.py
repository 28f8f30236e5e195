"""PAFU: a Pixel Adaptive Filtering Unit (Kokkinos, Marras, Maggioni, Slabaugh & Zafeiriou, "Pixel Adaptive
Filtering Units", arXiv 1911.10581, ICCV 2019 workshops).

A drop-in replacement of a ``k x k`` convolution that picks, **per pixel**, one of ``n`` learnable kernels:

- a group of ``n`` kernels ``W_1 .. W_n``, each a full ``in -> out`` ``k x k`` filter bank (with its bias);
- a compact scoring CNN ``s(x)`` giving ``n`` logits per pixel from the input::

      Conv2d(in, scorer_hidden, scorer_kernel, same padding) -> ReLU -> Conv2d(scorer_hidden, n, 1)

  (defaults: ``scorer_hidden = 16``, ``scorer_kernel = 3``: it sees the same 3 x 3 neighbourhood as the kernels);
- the output at pixel ``p`` is the response of the selected kernel: ``y_p = sum_j z_{p,j} (W_j * x)_p`` with
  ``z_p`` a one-hot vector. All ``n`` responses come from **one** convolution of ``n * out`` channels, then are
  weighted by ``z`` (training) or gathered at the argmax (inference).
- Training: ``z = gumbel_softmax(s(x), tau, hard=True)``: a one-hot sample of the categorical distribution of
  the logits in the forward pass, and in the backward pass the gradient of the relaxed sample
  ``softmax((s + g) / tau)`` (straight-through Gumbel-softmax, Jang et al. 2017). ``tau`` is the temperature
  of that relaxation: small ``tau`` makes the relaxed sample close to the one-hot one (less biased, noisier
  gradients), large ``tau`` smooths it; it may be annealed during training by assigning ``module.tau``.
- Inference (eval mode): ``z = onehot(argmax_j s(x)_j)``: deterministic, no noise, same output every call.
- A decorrelation regulariser over the group, :meth:`PAFU.decorrelation_loss`: ``||W W^T - I||_F^2`` with ``W``
  the ``n x (out * in * k * k)`` matrix of the flattened kernels, each normalised to unit length; a trainer
  adds ``weight * pafu.decorrelation_loss()`` to its loss (it keeps the kernels of the group distinct, so the
  selection is meaningful).

PAFU is **content-adaptive, not position-aware**: the selection depends on the pixels of ``x`` around ``p``,
never on where ``p`` lies in the field. ``forward(x, coords=None)`` accepts the field coordinates for the
common model call signature and ignores them.

Reach: an output pixel depends on the input within ``max(k, scorer_kernel) // 2`` pixels on each side
(:attr:`PAFU.reach`), which is what a network's halo must count.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ReconError

__all__ = ["PAFU"]


def _whole(name: str, v, lo: int, hi: int | None = None, *, odd: bool = False) -> int:
    """``v`` as an int in ``lo..hi`` (odd if asked), or a ReconError naming ``name`` and the range."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or int(v) != v or v < lo \
            or (hi is not None and v > hi) or (odd and int(v) % 2 == 0):
        rng = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
        kind = f"an odd whole number {rng} (same padding)" if odd else f"a whole number {rng}"
        raise ReconError(f"{name} = {v!r}: expected {kind}")
    return int(v)


def _check_tau(tau) -> float:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ReconError(f"tau = {tau!r}: expected a finite number > 0 (the Gumbel-softmax temperature)")
    return float(tau)


class PAFU(nn.Module):
    """Pixel Adaptive Filtering Unit: ``(B, in_channels, H, W) -> (B, out_channels, H, W)``, per-pixel selection
    of one of ``n_kernels`` ``k x k`` kernels by a scoring CNN (see the module docstring).

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int
        Odd ``k`` of the kernels (same padding: output size = input size). Default 3.
    n_kernels : int
        Kernels in the group, ``n >= 1`` (``n = 1`` is a plain convolution). Default 4.
    tau : float
        Gumbel-softmax temperature (> 0) of the straight-through selection in training. Default 1.
    scorer_hidden : int
        Hidden width of the scoring CNN. Default 16.
    scorer_kernel : int
        Odd kernel size of the scoring CNN's first (spatial) convolution. Default 3.
    bias : bool
        A bias per kernel (``n x out_channels`` values).

    Attributes
    ----------
    weight : Parameter ``(n * out, in, k, k)``: kernel ``j`` is ``weight[j * out : (j + 1) * out]`` (:meth:`kernel`),
        stored 4-D as one convolution's weight (so ``model.to(memory_format=torch.channels_last)`` applies);
    bias : Parameter ``(n * out,)`` or None; ``scorer`` : nn.Sequential (None when ``n = 1``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, n_kernels: int = 4, *,
                 tau: float = 1.0, scorer_hidden: int = 16, scorer_kernel: int = 3, bias: bool = True):
        super().__init__()
        self.in_channels = _whole("in_channels", in_channels, 1)
        self.out_channels = _whole("out_channels", out_channels, 1)
        self.kernel_size = _whole("kernel_size k", kernel_size, 1, odd=True)
        self.n_kernels = _whole("n_kernels", n_kernels, 1)
        self.scorer_hidden = _whole("scorer_hidden", scorer_hidden, 1)
        self.scorer_kernel = _whole("scorer_kernel", scorer_kernel, 1, odd=True)
        self.tau = tau
        n, o, i, k = self.n_kernels, self.out_channels, self.in_channels, self.kernel_size
        self.weight = nn.Parameter(torch.empty(n * o, i, k, k))
        self.bias = nn.Parameter(torch.empty(n * o)) if bias else None
        # n = 1 has nothing to select: no scorer (a plain convolution)
        self.scorer = nn.Sequential(
            nn.Conv2d(i, self.scorer_hidden, self.scorer_kernel, padding=self.scorer_kernel // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(self.scorer_hidden, n, 1),
        ) if n > 1 else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each kernel initialised as ``nn.Conv2d`` initialises its weight and bias."""
        fan_in = self.in_channels * self.kernel_size**2
        o = self.out_channels
        for j in range(self.n_kernels):
            nn.init.kaiming_uniform_(self.weight.data[j * o : (j + 1) * o], a=math.sqrt(5))
        if self.bias is not None:
            b = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -b, b)

    @property
    def tau(self) -> float:
        return self._tau

    @tau.setter
    def tau(self, value) -> None:
        self._tau = _check_tau(value)

    @property
    def reach(self) -> int:
        """One-sided reach (pixels) of an output pixel into the input: kernels and scorer."""
        return max(self.kernel_size, self.scorer_kernel if self.scorer is not None else 1) // 2

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"n_kernels={self.n_kernels}, tau={self.tau:g}")

    # -- the pieces ---------------------------------------------------------------------------------
    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Selection logits ``(B, n, H, W)`` (zeros when ``n = 1``)."""
        if self.scorer is None:
            return x.new_zeros(x.shape[0], 1, *x.shape[2:])
        return self.scorer(x)

    def kernel(self, j: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Kernel ``j``'s weight ``(out, in, k, k)`` and bias ``(out,)`` (or None)."""
        o = self.out_channels
        return self.weight[j * o : (j + 1) * o], None if self.bias is None else self.bias[j * o : (j + 1) * o]

    def responses(self, x: torch.Tensor) -> torch.Tensor:
        """All kernels' responses ``(B, n, out, H, W)`` from one convolution of ``n * out`` channels."""
        r = F.conv2d(x, self.weight, self.bias, padding=self.kernel_size // 2)
        return r.unflatten(1, (self.n_kernels, self.out_channels))

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """Index ``(B, H, W)`` of the kernel each pixel uses at inference (argmax of the scores)."""
        return self.scores(x).argmax(dim=1)

    def decorrelation_loss(self) -> torch.Tensor:
        """``||W W^T - I||_F^2`` over the unit-normalised flattened kernels (``W``: ``n x out*in*k*k``; biases
        excluded). 0 for mutually orthogonal kernels, ``n (n - 1)`` for ``n`` identical (or parallel) ones."""
        w = F.normalize(self.weight.reshape(self.n_kernels, -1), dim=1, eps=1e-12)
        g = w @ w.t()
        eye = torch.eye(self.n_kernels, dtype=g.dtype, device=g.device)
        return (g - eye).square().sum()

    # -- forward ------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, coords: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, in, H, W) -> (B, out, H, W)``; ``coords`` is accepted and ignored (content-adaptive only)."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ReconError(f"x of shape {tuple(getattr(x, 'shape', ()))}: expected (B, {self.in_channels}, H, W)")
        r = self.responses(x)  # (B, n, out, H, W)
        if self.n_kernels == 1:
            return r[:, 0]
        s = self.scores(x)  # (B, n, H, W)
        if self.training:
            s = s if s.dtype in (torch.float32, torch.float64) else s.float()  # the relaxation in >= fp32
            z = F.gumbel_softmax(s, tau=self.tau, hard=True, dim=1).to(r.dtype)
            return (z.unsqueeze(2) * r).sum(dim=1)
        idx = s.argmax(dim=1)  # (B, H, W); ties: the first maximal index
        B, _, o, H, W = r.shape
        return r.gather(1, idx[:, None, None].expand(B, 1, o, H, W)).squeeze(1)
