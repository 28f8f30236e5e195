"""Differentiable fast blur in PyTorch: the low-rank product-convolution of :mod:`.lowrank` as a module.

Follows the input's device and dtype (the eigen-PSF transforms are made once per device/dtype and cached),
accepts ``(B, 1, H, W)`` (or ``(B, C, H, W)``, each channel blurred alike) and ``(H, W)``; autograd gives the
gradient, and :meth:`TorchLowRankOperator.adjoint` is the explicit adjoint.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["TorchLowRankOperator"]


class TorchLowRankOperator(torch.nn.Module):
    """Torch version of a :class:`~psfsim.operators.lowrank.LowRankOperator` (same window, same numbers).

    Parameters
    ----------
    op : LowRankOperator
        The numpy operator whose eigen-PSFs and coefficient maps to use.
    """

    def __init__(self, op):
        super().__init__()
        self.shape = op.shape
        self.origin = op.origin
        self.k = op.k
        self.pad_shape = op.pad_shape
        self.register_buffer("weights", torch.from_numpy(np.ascontiguousarray(op.weights, np.float64)), persistent=False)
        self.register_buffer("eigen_psfs", torch.from_numpy(np.ascontiguousarray(op.basis.eigen_psfs, np.float64)), persistent=False)
        self._cache: dict = {}

    @property
    def rank(self) -> int:
        return self.eigen_psfs.shape[0]

    def _consts(self, like: torch.Tensor):
        key = (like.device, like.dtype)
        if key not in self._cache:
            w = self.weights.to(device=like.device, dtype=like.dtype)
            kf = torch.fft.rfft2(self.eigen_psfs.to(device=like.device, dtype=like.dtype), s=self.pad_shape)
            self._cache = {key: (w, kf)}  # keep one device/dtype at a time
        return self._cache[key]

    def _batch(self, x: torch.Tensor):
        if x.shape[-2:] != torch.Size(self.shape):
            raise ValueError(f"expected (..., {self.shape[0]}, {self.shape[1]}), got {tuple(x.shape)}")
        if not torch.is_floating_point(x):
            raise TypeError(f"expected a floating-point tensor, got {x.dtype}")
        lead = x.shape[:-2]
        return x.reshape(-1, *self.shape), lead

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Blur ``x`` of shape ``(..., H, W)``; same shape, device and dtype."""
        xb, lead = self._batch(x)
        w, kf = self._consts(xb)
        H, W = self.shape
        c = self.k // 2
        F = torch.fft.rfft2(xb[:, None] * w[None], s=self.pad_shape)  # (N, K, Hp, Wf)
        acc = (F * kf[None]).sum(dim=1)
        out = torch.fft.irfft2(acc, s=self.pad_shape)[:, c : c + H, c : c + W]
        return out.reshape(*lead, H, W)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Adjoint blur ``A^T y`` of ``y (..., H, W)``."""
        yb, lead = self._batch(y)
        w, kf = self._consts(yb)
        H, W = self.shape
        c = self.k // 2
        Hp, Wp = self.pad_shape
        ypad = torch.nn.functional.pad(yb, (c, Wp - W - c, c, Hp - H - c))
        Y = torch.fft.rfft2(ypad)
        Z = torch.fft.irfft2(Y[:, None] * kf.conj()[None], s=self.pad_shape)[..., :H, :W]
        return (Z * w[None]).sum(dim=1).reshape(*lead, H, W)
