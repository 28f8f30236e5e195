"""The simulate route: psfsim's fast blur of a huge sharp frame, tile by tile, with optional Poisson-Gaussian
noise that does not depend on the tiling.

- Blur: :func:`psfsim.blur` of each block at its origin in the lens field (zero boundary at the frame's edge,
  as for a whole frame; the halo is the PSF's half-width ``k // 2``, so a tile equals the whole-frame blur).
- Noise (``photons`` and/or ``read_noise``): :class:`psfsim.NoiseModel` drawn per fixed block of
  ``noise_block x noise_block`` (256) pixels of the FRAME, with the generator
  ``numpy.random.default_rng([seed, frame index, block row, block col])``. Each noise block is blurred from its
  own window (the block plus ``k // 2``, clipped to the frame) and drawn whole, so its values are bit-identical
  whatever the tile size (Poisson draws consume a value-dependent number of random numbers: drawing part of a
  block, or a block whose blurred values differ in the last bit, would change the rest of its stream). The halo
  is then ``k // 2 + noise_block - 1`` (every noise block touching a chunk lies wholly in its reach); a tile
  that is a multiple of ``noise_block`` computes each noise block once, others recompute the blocks they share.
  Only the noise blocks touching the block's core (the block less ``halo`` on every side that is not the
  frame's edge, where :mod:`pipelines.tiling` puts the chunk) are computed; the other pixels of the returned
  block are NaN (they are never in the chunk).
- Scale: as in psfsim's datasets the noise model acts on the frame divided by a frame statistic (the sharp
  frame's robust maximum, :func:`~pipelines.routes.base.frame_scale`): ``photons`` are the photo-electrons at
  that value, ``read_noise`` is in electrons (in normalised units without ``photons``); the result is scaled
  back to the input's units.
"""

from __future__ import annotations

import numpy as np

from ..errors import PipelineError
from .base import ROBUST_FRACTION, check_call, check_frame_window, fill_block, frame_scale, positive_scale

__all__ = ["SimulateRoute", "simulate_route", "NOISE_BLOCK"]

#: Side of the frame's fixed noise blocks, pixels.
NOISE_BLOCK = 256


class SimulateRoute:
    """Blur (and noise) of a sharp frame, tiled (module docstring). Use :func:`simulate_route`."""

    name = "simulate"

    def __init__(self, lens, *, photons=None, read_noise=None, seed: int = 0, noise_block: int = NOISE_BLOCK,
                 robust_fraction: float = ROBUST_FRACTION, workers: int = 1):
        from psfsim import NoiseModel
        from psfsim.checks import as_lens
        from psfsim.errors import PsfsimError

        self.lens = as_lens(lens)
        try:
            self.noise = NoiseModel(photons=photons, read_noise=0.0 if read_noise is None else read_noise)
        except PsfsimError as e:
            raise PipelineError(str(e)) from None
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise PipelineError(f"seed = {seed!r}: expected a whole number >= 0")
        self.seed = int(seed)
        if isinstance(noise_block, bool) or not isinstance(noise_block, (int, np.integer)) or noise_block < 16:
            raise PipelineError(f"noise_block = {noise_block!r}: expected a whole number >= 16")
        self.noise_block = int(noise_block)
        self.robust_fraction = float(robust_fraction)
        self.workers = int(workers)
        k = int(self.lens.psf_sampling.size_px)
        self.psf_half = k // 2
        self.noisy = not self.noise.is_noiseless
        self.halo = self.psf_half + (self.noise_block - 1 if self.noisy else 0)
        self.align = 1

    def identity(self) -> dict:
        return {"route": self.name, "lens": self.lens.name, "lens_fingerprint": self.lens.fingerprint,
                "noise": self.noise.to_dict(), "seed": self.seed, "noise_block": self.noise_block,
                "robust_fraction": self.robust_fraction if self.noisy else None, "halo": self.halo,
                "align": self.align}

    def check_frame(self, frame_shape, origin=None):
        return check_frame_window(self.lens, frame_shape, origin)

    def prepare(self, frame, index: int, *, origin=None) -> dict:
        """The frame's origin, index and shape; with noise also ``scale`` (the sharp frame's robust maximum)."""
        (r0, c0), (H, W) = self.check_frame(frame.frame_shape, origin)
        stats = {"origin": [r0, c0], "index": int(index), "frame_shape": [H, W], "seed": self.seed}
        if self.noisy:
            s = frame_scale(frame, index, fraction=self.robust_fraction)
            positive_scale(s, frame, index)
            stats.update(s)
        return stats

    def __call__(self, blocks, origins, stats) -> list[np.ndarray]:
        from psfsim import blur
        from psfsim.checks import remask

        origins = check_call(blocks, origins)
        out = []
        for b, o in zip(blocks, origins):
            x, mask = fill_block(b)
            if not self.noisy:
                y = blur(x, self.lens, origin=o, workers=self.workers)
            else:
                y = self._noisy(x, o, stats)
            out.append(remask(np.asarray(y, np.float32), mask))
        return out

    def _noisy(self, x: np.ndarray, origin, stats) -> np.ndarray:
        from psfsim import blur

        fr, fc = (int(v) for v in stats["origin"])
        H, W = (int(v) for v in stats["frame_shape"])
        scale = float(stats["scale"])
        index = int(stats["index"])
        # the block's place in the frame
        br, bc = origin[0] - fr, origin[1] - fc
        h, w = x.shape
        if br < 0 or bc < 0 or br + h > H or bc + w > W:
            raise PipelineError(f"block of shape {(h, w)} at lens origin {tuple(origin)} lies outside the frame "
                                f"{(H, W)} at {(fr, fc)} (stats of another frame?)")
        nb, m = self.noise_block, self.psf_half
        # the chunk lies at least `halo` inside every read edge that is not the frame's (pipelines.tiling):
        # only the noise blocks touching that core are computed
        core_r = (br + self.halo if br > 0 else 0, br + h - self.halo if br + h < H else H)
        core_c = (bc + self.halo if bc > 0 else 0, bc + w - self.halo if bc + w < W else W)
        y = np.full((h, w), np.nan, np.float32)
        for bi in range(core_r[0] // nb, -(-core_r[1] // nb)):
            for bj in range(core_c[0] // nb, -(-core_c[1] // nb)):
                r0, r1 = bi * nb, min(H, (bi + 1) * nb)  # the noise block, frame pixels
                c0, c1 = bj * nb, min(W, (bj + 1) * nb)
                wr0, wr1 = max(0, r0 - m), min(H, r1 + m)  # its blur window
                wc0, wc1 = max(0, c0 - m), min(W, c1 + m)
                if wr0 < br or wc0 < bc or wr1 > br + h or wc1 > bc + w:
                    continue  # not wholly in this block's reach: never part of its chunk
                win = x[wr0 - br:wr1 - br, wc0 - bc:wc1 - bc]
                bl = blur(win, self.lens, origin=(fr + wr0, fc + wc0), workers=self.workers)
                core = bl[r0 - wr0:r1 - wr0, c0 - wc0:c1 - wc0]
                rng = np.random.default_rng([self.seed, index, bi, bj])
                noisy = self.noise.apply(core / np.float32(scale), rng) * np.float32(scale)
                y[r0 - br:r1 - br, c0 - bc:c1 - bc] = noisy
        return y

    def __repr__(self) -> str:
        return f"SimulateRoute({self.lens.name!r}, noise={self.noise}, seed={self.seed}, halo={self.halo})"


def simulate_route(lens, *, photons=None, read_noise=None, seed: int = 0, **options) -> SimulateRoute:
    """The ``simulate`` route (:class:`SimulateRoute`). Options: ``noise_block`` (256), ``robust_fraction``,
    ``workers`` (FFT threads per tile)."""
    return SimulateRoute(lens, photons=photons, read_noise=read_noise, seed=seed, **options)
