"""Classical routes: psfsim's restorations tiled, each tile with the PSFs of its own window of the lens field.

- ``wiener`` (global): :func:`psfsim.wiener` with the PSF on the optical axis (psfsim's reference choice,
  ``psfsim.restore.reference_psf(which="axis")``) and ONE balance for the whole frame, resolved in
  :meth:`WienerRoute.prepare` (psfsim's per-image rule on the frame, or the median over a fixed grid of
  windows when the frame is too large to hold): per-tile balances would make seams. The Wiener filter's
  impulse response is not compact, so a tile equals the whole-frame filter only up to the part of it beyond
  the halo: the default halo is 4 PSF sizes, where the filter's tail holds < 1e-10 of its L1 mass for
  balances >= 1e-4 (microscope preset; 1e-6 at 1e-5). ``prepare`` measures the tail for the frame's balance
  (``stats["tail_beyond_halo"]``) and warns when it exceeds 1e-5, naming the halo that would do.
- ``wiener --sv``: :func:`psfsim.sv_wiener` (patch-wise local PSFs). Exact tiling: reads are aligned to the
  patch stride (``patch // 2``) so a tile's patches are the frame's, and the halo is ``patch + k`` (a patch
  covering the chunk and its context margin of ``k`` both lie inside the read region). The patches' PSFs are
  by default the low-rank basis's interpolated ones (``psfs="lowrank"``: ``LowRankBasis.psfs_at``, within the
  basis's 1 % error), as :func:`psfsim.sv_wiener`'s own default (``psfs="basis"``); ``psfs="exact"`` uses the
  lens's exact PSFs (~25 ms each for the microscope preset, about 40 s for the 1600 patches of a 1024 px tile;
  each computed once per process and shared by neighbouring tiles, :func:`cached_psfs`), as
  ``psfsim.sv_wiener(..., psfs="exact")``. The two differ by a max abs of 212 on a range of about 26000 (0.8 %)
  on scikit-image's ``hubble_deep_field`` blurred with a 1024 x 1024 field of the test lens (review
  measurement), 3.8e-4 on a range of 0.68 (0.06 %) on the tests' 160 x 224 frame (patch 16). The record says
  which PSFs were used (``psf`` and ``psf_note``).
- ``rl``: :func:`psfsim.richardson_lucy` with the fast operator of each tile's window. Each iteration applies
  ``A`` and ``A^T`` (each reaches ``k // 2``), so ``iterations (k - 1)`` pixels of context make a tile exact;
  that is the default halo (costly for many iterations: pass a smaller ``halo`` to trade exactness for
  speed). richardson_lucy scales each image by its own peak and floors denominators at ``eps`` relative to
  it; the route passes ``eps * frame_peak / tile_peak`` so the floor is the frame's.
"""

from __future__ import annotations

import warnings

import numpy as np

from psfsim.cache import BoundedCache

from ..errors import PipelineError
from ..tiling import whole_number
from .base import check_call, check_frame_window, fill_block

__all__ = ["WienerRoute", "RLRoute", "wiener_route", "rl_route", "frame_balance", "wiener_tail", "WIENER_HALO_PSFS"]

#: What the record says of the SV route's default PSFs.
LOWRANK_NOTE = ("low-rank basis PSFs (LowRankBasis.psfs_at), as psfsim.sv_wiener's default psfs='basis': within "
                "about 1 % of the range of the lens's exact PSFs (psfs='exact')")
#: Default halo of the global Wiener route, in PSF sizes.
WIENER_HALO_PSFS = 4
#: Frames up to this many pixels are read whole to resolve the balance; larger ones by a grid of windows.
BALANCE_WHOLE_PX = 4096 * 4096
_BALANCE_WINDOW = 1024
_BALANCE_GRID = 4
_TAIL_WARN = 1e-5


def _lens(lens):
    from psfsim.checks import as_lens

    return as_lens(lens)


#: PSFs at patch centres of this process, keyed by (lens fingerprint, row, col): neighbouring tiles share the
#: patches of their overlap, so each PSF is computed once (bounded: 256 MiB, ~8000 PSFs of 65 x 65 in float64).
_PSF_CACHE = BoundedCache(max_bytes=256 * 2**20)


def cached_psfs(lens, rows, cols) -> np.ndarray:
    """Exact PSFs ``(N, k, k)`` at frame pixel positions ``(rows[i], cols[i])`` (lens field), each computed once
    per process (:data:`_PSF_CACHE`); the same values as ``lens.psfs`` at those points, so a tile's SV-Wiener
    equals psfsim's default (``psf_at=None``) exactly."""
    rows = np.asarray(rows, np.float64)
    cols = np.asarray(cols, np.float64)
    fp = lens.fingerprint
    keys = [(fp, float(r), float(c)) for r, c in zip(rows, cols)]
    hits = [_PSF_CACHE.peek(k) for k in keys]
    miss = [i for i, h in enumerate(hits) if h is None]
    if miss:
        x, y = lens.field.pixel_to_field(rows[miss], cols[miss])
        new = lens.psfs(x, y)
        for j, i in enumerate(miss):
            hits[i] = _PSF_CACHE.put(keys[i], np.array(new[j]))
    return np.stack(hits)


def frame_balance(frame, index: int, *, noise_sigma=None, reg: str = "gradient") -> dict:
    """One Wiener balance for a whole frame (psfsim's rule, :func:`psfsim.restore.wiener.resolve_balance`).

    A frame of at most ``BALANCE_WHOLE_PX`` pixels is read whole (the balance is exactly psfsim's for that
    image); a larger one gives the median of the balances of a fixed ``4 x 4`` grid of ``1024 x 1024`` windows
    spread over it (deterministic, independent of the tiling). Non-finite pixels are filled first.
    """
    from psfsim.field import grid_positions
    from psfsim.restore.wiener import resolve_balance

    H, W = (int(v) for v in frame.frame_shape)
    if H * W <= BALANCE_WHOLE_PX:
        img, _ = fill_block(frame.read(index, slice(0, H), slice(0, W)))
        return {"balance": float(resolve_balance(img, None, noise_sigma, reg)), "balance_from": "whole frame"}
    h, w = min(H, _BALANCE_WINDOW), min(W, _BALANCE_WINDOW)
    rows = np.unique(np.round(grid_positions(_BALANCE_GRID, H - h + 1)).astype(int))
    cols = np.unique(np.round(grid_positions(_BALANCE_GRID, W - w + 1)).astype(int))
    bals = []
    for r in rows:
        for c in cols:
            img, _ = fill_block(frame.read(index, slice(int(r), int(r) + h), slice(int(c), int(c) + w)))
            bals.append(resolve_balance(img, None, noise_sigma, reg))
    return {"balance": float(np.median(bals)), "balance_from": f"median of {len(bals)} windows of {h} x {w}"}


def wiener_tail(psf: np.ndarray, balance: float, reg: str, halo: int) -> tuple[float, int]:
    """Fraction of the Wiener filter's impulse-response L1 mass beyond ``halo`` pixels (Chebyshev distance),
    and the least halo (a multiple of 8) whose tail is below 1e-6. Evaluated on a grid of ``4 halo`` (at least
    256) pixels a side, so the tail beyond it is not resolved (the estimate is a lower bound there)."""
    from psfsim.fft import get_backend
    from psfsim.restore.wiener import psf_tf, regulariser_tf2

    fft = get_backend(None, 1)
    n = int(fft.next_fast_len(max(256, 4 * halo + 1), True))
    p = np.asarray(psf, np.float64)
    Hf = psf_tf(p / p.sum(), (n, n), fft)
    R2 = regulariser_tf2(reg, (n, n), np.float64)
    G = np.conj(Hf) / (np.abs(Hf) ** 2 + (balance if R2 is None else balance * R2))
    g = np.abs(np.fft.fftshift(fft.irfft2(G, s=(n, n))))
    c = n // 2
    d = np.maximum(np.abs(np.arange(n) - c)[:, None], np.abs(np.arange(n) - c)[None, :])
    total = float(g.sum())
    # mass beyond each radius, from a histogram of distances
    by_r = np.bincount(d.ravel(), weights=g.ravel(), minlength=c + 1)
    beyond = total - np.cumsum(by_r)
    tail = float(beyond[min(halo, len(beyond) - 1)] / total) if halo < len(beyond) else 0.0
    ok = np.nonzero(beyond / total < 1e-6)[0]
    need = int(ok[0]) if len(ok) else n // 2
    return tail, -(-need // 8) * 8


class WienerRoute:
    """Global or spatially-varying Wiener deconvolution, tiled (module docstring). Use :func:`wiener_route`."""

    name = "wiener"

    def __init__(self, lens, *, sv: bool = False, halo: int | None = None, balance: float | None = None,
                 noise_sigma: float | None = None, reg: str = "gradient", patch: int = 64, psfs: str = "lowrank",
                 workers: int = 1):
        from psfsim.restore.wiener import REGULARISERS

        self.lens = _lens(lens)
        self.sv = bool(sv)
        k = int(self.lens.psf_sampling.size_px)
        if reg not in REGULARISERS:
            raise PipelineError(f"reg = {reg!r}: expected one of {', '.join(REGULARISERS)}")
        self.reg = reg
        if balance is not None and not (isinstance(balance, (int, float)) and np.isfinite(balance) and balance > 0):
            raise PipelineError(f"balance = {balance!r}: expected a number > 0 (or None: resolved from the frame)")
        if noise_sigma is not None and not (isinstance(noise_sigma, (int, float)) and noise_sigma >= 0):
            raise PipelineError(f"noise_sigma = {noise_sigma!r}: expected a number >= 0 in the frame's units")
        self.balance = None if balance is None else float(balance)
        self.noise_sigma = None if noise_sigma is None else float(noise_sigma)
        self.workers = whole_number("workers", workers, 1)
        if psfs not in ("lowrank", "exact"):
            raise PipelineError(f"psfs = {psfs!r}: expected lowrank or exact")
        self.psfs = psfs
        if self.sv:
            self.patch = whole_number("patch", patch, 8)
            if self.patch % 2:
                raise PipelineError(f"patch = {patch!r}: expected an even number >= 8")
            self.align = self.patch // 2
            self.halo = self.patch + k if halo is None else whole_number("halo", halo, 0)
        else:
            self.patch = None
            self.align = 1
            self.halo = WIENER_HALO_PSFS * k if halo is None else whole_number("halo", halo, 0)
        self._psf = None

    def psf(self) -> np.ndarray:
        """The global filter's PSF: psfsim.restore.reference_psf(which="axis"), the on-axis PSF (the frame centre's when the axis lies off the lens's frame)."""
        if self._psf is None:
            from psfsim.restore import reference_psf

            self._psf = reference_psf(self.lens, origin=(0, 0), shape=(1, 1), which="axis")
        return self._psf

    def _psf_at(self):
        if self.psfs == "exact":
            return lambda r, c: cached_psfs(self.lens, r, c)
        from psfsim import lowrank_basis

        return lowrank_basis(self.lens).psfs_at  # cached per process by the lens's fingerprint

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_psf"] = None
        return d

    def identity(self) -> dict:
        return {"route": self.name, "sv": self.sv, "lens": self.lens.name, "lens_fingerprint": self.lens.fingerprint,
                "balance": self.balance, "noise_sigma": self.noise_sigma, "reg": self.reg, "patch": self.patch,
                "psf": self.psfs if self.sv else "axis", "halo": self.halo, "align": self.align,
                "psf_note": (LOWRANK_NOTE if self.sv and self.psfs == "lowrank" else None)}

    def check_frame(self, frame_shape, origin=None):
        return check_frame_window(self.lens, frame_shape, origin)

    def prepare(self, frame, index: int, *, origin=None) -> dict:
        """``{"balance", ...}``: one balance for the frame (given, or :func:`frame_balance`); for the global
        filter also the share of its impulse response beyond the halo (warned about above 1e-5)."""
        (r0, c0), _ = self.check_frame(frame.frame_shape, origin)
        if self.balance is not None:
            stats = {"balance": self.balance, "balance_from": "given"}
        else:
            stats = frame_balance(frame, index, noise_sigma=self.noise_sigma, reg=self.reg)
        if not self.sv:
            tail, need = wiener_tail(self.psf(), stats["balance"], self.reg, self.halo)
            stats.update(tail_beyond_halo=tail, halo_needed=need)
            if tail > _TAIL_WARN:
                warnings.warn(f"Wiener balance {stats['balance']:.3g}: {tail:.2g} of the filter's response lies beyond "
                              f"the halo of {self.halo} px, so tiles differ from a whole-frame filter by up to about "
                              f"that fraction of the image's range; a halo of {need} px makes it < 1e-6", stacklevel=2)
        stats.update(origin=[r0, c0], index=int(index))
        return stats

    def __call__(self, blocks, origins, stats) -> list[np.ndarray]:
        from psfsim import sv_wiener, wiener
        from psfsim.checks import remask

        origins = check_call(blocks, origins)
        bal = float(stats["balance"])
        out = []
        for b, o in zip(blocks, origins):
            x, mask = fill_block(b)
            if self.sv:
                y = sv_wiener(x, self.lens, origin=o, patch=self.patch, balance=bal, reg=self.reg, workers=self.workers,
                              psf_at=self._psf_at())
            else:
                y = wiener(x, self.psf(), balance=bal, reg=self.reg, boundary="reflect", workers=self.workers)
            out.append(remask(np.asarray(y, np.float32), mask))
        return out

    def __repr__(self) -> str:
        return f"WienerRoute({self.lens.name!r}, sv={self.sv}, halo={self.halo}, align={self.align})"


class RLRoute:
    """Richardson-Lucy with each tile's fast operator (module docstring). Use :func:`rl_route`."""

    name = "rl"

    def __init__(self, lens, *, iterations: int = 30, halo: int | None = None, eps: float = 1e-6,
                 method: str = "fast", workers: int = 1):
        self.lens = _lens(lens)
        self.iterations = whole_number("iterations", iterations, 1)
        k = int(self.lens.psf_sampling.size_px)
        self.halo = self.iterations * (k - 1) if halo is None else whole_number("halo", halo, 0)
        self.exact_halo = self.iterations * (k - 1)
        self.align = 1
        if not (isinstance(eps, (int, float)) and 0 < eps < 1):
            raise PipelineError(f"eps = {eps!r}: expected a number in (0, 1), relative to the frame's peak")
        self.eps = float(eps)
        if method not in ("fast", "exact"):
            raise PipelineError(f"method = {method!r}: expected fast or exact")
        self.method = method
        self.workers = whole_number("workers", workers, 1)

    def identity(self) -> dict:
        return {"route": self.name, "lens": self.lens.name, "lens_fingerprint": self.lens.fingerprint,
                "iterations": self.iterations, "eps": self.eps, "method": self.method, "halo": self.halo,
                "align": self.align}

    def check_frame(self, frame_shape, origin=None):
        return check_frame_window(self.lens, frame_shape, origin)

    def prepare(self, frame, index: int, *, origin=None) -> dict:
        """``{"peak"}``: the frame's largest value (negative values clipped to 0, as richardson_lucy does),
        from one chunked pass (:func:`~pipelines.routes.base.frame_scale` with no robust fraction)."""
        from .base import frame_scale

        (r0, c0), _ = self.check_frame(frame.frame_shape, origin)
        if self.halo < self.exact_halo:
            warnings.warn(f"Richardson-Lucy halo {self.halo} px < {self.exact_halo} px (iterations x (k - 1)): tiles "
                          "will differ slightly from a whole-frame run near their borders", stacklevel=2)
        s = frame_scale(frame, index, fraction=0.0)
        return {"peak": max(0.0, float(s["scale"])), "origin": [r0, c0], "index": int(index)}

    def __call__(self, blocks, origins, stats) -> list[np.ndarray]:
        from psfsim import make_operator, richardson_lucy
        from psfsim.checks import remask

        origins = check_call(blocks, origins)
        peak = float(stats["peak"])
        out = []
        for b, o in zip(blocks, origins):
            x, mask = fill_block(b)
            tile_peak = float(np.max(x)) if x.size else 0.0
            if peak <= 0 or tile_peak <= 0:  # no light here: RL's first update gives exactly zero
                out.append(remask(np.zeros(x.shape, np.float32), mask))
                continue
            op = make_operator(self.lens, shape=x.shape, origin=o, method=self.method, workers=self.workers)
            eps = min(0.5, self.eps * peak / tile_peak)
            r = richardson_lucy(x, op, iters=self.iterations, eps=eps)
            out.append(remask(np.asarray(r.image, np.float32), mask))
        return out

    def __repr__(self) -> str:
        return f"RLRoute({self.lens.name!r}, iterations={self.iterations}, halo={self.halo})"


def wiener_route(lens, *, sv: bool = False, **wiener_options) -> WienerRoute:
    """The ``wiener`` route (:class:`WienerRoute`): ``sv=True`` for psfsim's spatially-varying Wiener.

    Options: ``halo`` (default ``4 k`` global, ``patch + k`` SV), ``balance`` (default: resolved once from the
    frame), ``noise_sigma`` (frame units), ``reg``, ``patch`` and ``psfs`` (SV: ``"lowrank"`` interpolated, the
    default, or ``"exact"``), ``workers`` (FFT threads per tile).

    With ``sv=True`` the default ``psfs="lowrank"`` is NOT :func:`psfsim.sv_wiener`'s default (exact PSFs): the
    results differ by up to about 1 % of the range (0.8 % measured on a 1024 px astronomy frame; see the module
    docstring); ``psfs="exact"`` reproduces psfsim's result (tested) at a higher cost (3.5x on the tests'
    160 x 224 frame, first call). The record's ``psf`` / ``psf_note`` say which was used.
    """
    return WienerRoute(lens, sv=sv, **wiener_options)


def rl_route(lens, *, iterations: int = 30, **options) -> RLRoute:
    """The ``rl`` route (:class:`RLRoute`). Options: ``halo`` (default ``iterations (k - 1)``, exact), ``eps``,
    ``method`` (fast | exact operator), ``workers``."""
    return RLRoute(lens, iterations=iterations, **options)
