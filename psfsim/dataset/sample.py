"""One training sample, computed in memory (no IO): source window + margin -> blur -> noise -> baselines."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .spec import SimulationSpec, validate_spec

__all__ = ["SampleContext", "SimulatedSample", "make_sample"]


class SampleContext:
    """Per-process state shared by the samples of one spec: lens, source, low-rank basis, noise, axis PSF.

    Attributes
    ----------
    margin : int
        PSF half-width ``k // 2`` in pixels: the source is drawn over the window plus this margin.
    """

    def __init__(self, spec: SimulationSpec):
        from ..noise import NoiseModel
        from ..operators import lowrank_basis

        self.spec = spec
        self.lens, self.source = validate_spec(spec)
        self.basis = lowrank_basis(self.lens, tol=spec.tol)
        self.noise = NoiseModel(spec.photons, spec.read_noise)
        from ..restore import reference_psf

        self.psf_axis = reference_psf(self.lens, origin=(0, 0), shape=(1, 1), which="axis")
        self.margin = self.lens.psf_sampling.size_px // 2


@dataclass(frozen=True)
class SimulatedSample:
    """One sample's images, each ``(h, w)`` float32 (``sharp`` in [0, 1]; see the store's normalisation)."""

    sharp: np.ndarray
    blurred: np.ndarray
    wiener: np.ndarray
    wiener_sv: np.ndarray


def source_region(source, field_shape, region_origin, region_shape, rng, *, index: int = 0) -> np.ndarray:
    """One normalised source region ``region_shape`` float32 at ``region_origin`` (row, col) of a field of
    ``field_shape``: drawn from ``source`` with ``rng``, zero where it lies outside the field (no light comes from
    beyond the frame), divided by its maximum (the store's ``source_region_max`` normalisation). The one rule of
    stores and of recon's on-the-fly data."""
    from ..sources import MixtureSource

    H, W = field_shape
    if isinstance(source, MixtureSource):
        src = source.sample(region_shape, rng, index=int(index))
    else:
        src = source.sample(region_shape, rng)
    src = np.asarray(src, np.float64)
    r0, c0 = region_origin
    h, w = src.shape
    if r0 < 0 or c0 < 0 or r0 + h > H or c0 + w > W:  # part of the region lies outside the field
        src = src.copy()  # never write into what the source returned (an image source's cached crop)
        src[: max(0, -r0)] = 0
        src[:, : max(0, -c0)] = 0
        src[max(0, H - r0) :] = 0
        src[:, max(0, W - c0) :] = 0
    peak = float(src.max())
    return (src / peak if peak > 0 else src).astype(np.float32)


def make_sample(ctx: SampleContext, index: int, origin, timings: dict | None = None) -> SimulatedSample:
    """One sample: sharp window, noisy blurred window (light from around it included), Wiener baselines.

    Parameters
    ----------
    ctx : SampleContext
    index : int
        Sample index; with ``ctx.spec.seed`` it determines all randomness (source crop, noise).
    origin : (int, int)
        Window origin ``(row, col)`` in the lens field.
    timings : dict, optional
        Accumulates seconds spent per stage (source, blur, noise, wiener, wiener_sv).
    """
    clock = [time.perf_counter()]

    def lap(stage):
        if timings is not None:
            now = time.perf_counter()
            timings[stage] = timings.get(stage, 0.0) + now - clock[0]
            clock[0] = now

    from ..restore import sv_wiener, wiener

    spec, lens, m = ctx.spec, ctx.lens, ctx.margin
    h, w = spec.size
    H, W = lens.field.shape_px
    origin = (int(origin[0]), int(origin[1]))
    ss = np.random.SeedSequence([spec.seed, int(index), 0])
    r_src, r_noise = (np.random.default_rng(s) for s in ss.spawn(2))
    region_origin = (origin[0] - m, origin[1] - m)
    region_shape = (h + 2 * m, w + 2 * m)
    src = source_region(ctx.source, (H, W), region_origin, region_shape, r_src, index=int(index))
    lap("source")
    op = ctx.basis.operator(shape=region_shape, origin=region_origin, allow_outside=True)
    blurred = op(src)[m : m + h, m : m + w]
    sharp = src[m : m + h, m : m + w]
    lap("blur")
    noisy = ctx.noise.apply(blurred, r_noise)
    lap("noise")
    sigma = None if ctx.noise.is_noiseless else float(ctx.noise.sigma(float(np.mean(blurred))))
    wien = wiener(noisy, ctx.psf_axis, noise_sigma=sigma)
    lap("wiener")
    patch = max(16, min(128, (min(h, w) // 4) * 2))  # 4 patches across (x2 overlap): 128 for 256 px samples
    wsv = sv_wiener(noisy, lens, origin=origin, patch=patch, noise_sigma=sigma, psf_at=ctx.basis.psfs_at)
    lap("wiener_sv")
    return SimulatedSample(sharp=np.ascontiguousarray(sharp), blurred=noisy.astype(np.float32, copy=False),
                           wiener=wien.astype(np.float32, copy=False), wiener_sv=wsv.astype(np.float32, copy=False))
