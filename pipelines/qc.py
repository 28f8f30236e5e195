"""Quality control beside a deblurred frame: where the result disagrees with the physics, and what a CoordGate
model's gates do over the field.

- Re-blur residual ``|A(x_hat) - y|``: the estimate blurred again by psfsim's fast operator of the frame's
  window (``psfsim.make_operator(lens, shape=, origin=)``) against the observed frame. A correct deblur of a
  frame the lens describes leaves about the noise (``rms / noise_sigma ~ 1``, the noise estimated from the
  observed frame by psfsim's robust Haar estimate); a wrong lens, a wrong origin or a hallucinating model
  leaves more, where it is wrong. The operator's zero boundary misses light from outside the frame, so the
  summary leaves out a border of ``k // 2`` pixels (the map keeps it).
  For frames too large to hold, :func:`residual_block` maps one read region (use it with a halo >= ``k // 2``
  and keep the inner part) and :class:`ResidualSummary` accumulates the summary chunk by chunk; the runner's
  QC pass (:mod:`pipelines.runner`) keeps each chunk's partial sums (:func:`chunk_stats`) in the output store so
  the summary (:func:`merge_chunk_stats`, with the worst chunks) is assembled again on resume without
  recomputing, and draws a downsampled map (:func:`overview`, :func:`residual_figure`).
- Gate figure: a CoordGate layer's gates are a function of the field coordinates only (Howard et al.,
  arXiv 2401.04680, Eq. 3), so they are evaluated on a grid of points over the frame's window of the field
  (``psfsim.field_coords_batch``) and drawn, one row per layer, one panel per gate channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import PipelineError
from .routes.base import check_frame_window, fill_block

__all__ = ["reblur_residual", "residual_block", "ResidualSummary", "gate_figure", "gate_maps", "chunk_stats",
           "merge_chunk_stats", "overview", "residual_figure", "has_coordgate", "CHUNK_STATS"]

#: The per-chunk partial sums of a residual summary, in this order (:func:`chunk_stats`).
CHUNK_STATS = ("sum_abs", "sum_sq", "max", "n", "n_nan", "noise_sigma")


def residual_block(lens, estimate, observed, *, origin=(0, 0), workers: int | None = 1) -> np.ndarray:
    """``|A(estimate) - observed|`` ``(h, w)`` float32 of one window at ``origin`` (lens field).

    NaN where either input is not finite (the estimate is filled from its neighbours for the blur, so NaNs do
    not spread).
    """
    from psfsim import make_operator

    x = np.asarray(estimate)
    y = np.asarray(observed)
    if x.ndim != 2 or x.shape != y.shape:
        raise PipelineError(f"estimate of shape {x.shape} and observed of shape {y.shape}: expected two (h, w) "
                            "arrays of one shape")
    xf, xmask = fill_block(x)
    yf = np.asarray(y, np.float32)
    op = make_operator(lens, shape=x.shape, origin=tuple(int(v) for v in origin), workers=workers)
    r = np.abs(op(xf) - yf).astype(np.float32)
    bad = ~np.isfinite(yf)
    if xmask is not None:
        bad |= xmask
    r[bad] = np.nan
    return r


@dataclass
class ResidualSummary:
    """Summary of a residual map, accumulated chunk by chunk (memory flat in frame size).

    ``add(residual, observed)`` with the same region of both; ``summary()`` returns ``mean_abs``, ``rms``,
    ``max`` (image units), ``noise_sigma`` (median of the chunks' robust Haar noise estimates of the observed
    frame), ``rms_over_noise``, ``n_pixels`` (finite residual pixels used) and ``n_nan``.
    """

    total: float = 0.0
    total_sq: float = 0.0
    peak: float = 0.0
    n: int = 0
    n_nan: int = 0
    sigmas: list = field(default_factory=list)

    def add(self, residual, observed) -> None:
        from psfsim.restore.wiener import estimate_noise_sigma

        r = np.asarray(residual, np.float64)
        ok = np.isfinite(r)
        v = r[ok]
        self.total += float(v.sum())
        self.total_sq += float((v * v).sum())
        self.peak = max(self.peak, float(v.max()) if v.size else 0.0)
        self.n += int(v.size)
        self.n_nan += int(r.size - v.size)
        y = np.asarray(observed, np.float64)
        if y.shape[0] >= 8 and y.shape[1] >= 8 and np.isfinite(y).all():
            self.sigmas.append(estimate_noise_sigma(y))

    def summary(self) -> dict:
        if self.n == 0:
            raise PipelineError("residual summary of no finite pixel")
        rms = float(np.sqrt(self.total_sq / self.n))
        sigma = float(np.median(self.sigmas)) if self.sigmas else float("nan")
        return {"mean_abs": self.total / self.n, "rms": rms, "max": self.peak, "noise_sigma": sigma,
                "rms_over_noise": rms / sigma if sigma > 0 else float("inf"), "n_pixels": self.n, "n_nan": self.n_nan}


def chunk_stats(residual, observed) -> np.ndarray:
    """The partial sums of one chunk's residual, ``(6,)`` float64 in the order of :data:`CHUNK_STATS`: sum of
    ``|r|``, sum of ``r^2``, max, finite pixels, NaN pixels, and the observed chunk's robust noise sigma (NaN
    when the chunk is under 8 px a side or holds a non-finite pixel). Give both arrays over the pixels the
    summary counts (the chunk less the frame's border). :func:`merge_chunk_stats` of the chunks of a frame equals
    :class:`ResidualSummary` fed with the same chunks."""
    acc = ResidualSummary()
    r = np.asarray(residual)
    if r.size:
        acc.add(r, observed)
    sigma = acc.sigmas[0] if acc.sigmas else np.nan
    return np.array([acc.total, acc.total_sq, acc.peak, acc.n, acc.n_nan, sigma], np.float64)


def merge_chunk_stats(stats, regions=None, *, worst: int = 5) -> dict:
    """The summary of a frame from its chunks' :func:`chunk_stats`: :meth:`ResidualSummary.summary` plus
    ``worst_tiles``, the ``worst`` chunks of largest residual RMS (``chunk``, ``rows``/``cols`` from
    ``regions``, ``rms``, ``rms_over_noise`` against the frame's noise sigma), worst first.

    Parameters
    ----------
    stats : ndarray, (..., 6)
        One row per chunk, indexed by the chunk's grid index (e.g. ``(gi, gj, 6)``).
    regions : callable, optional
        ``regions(index) -> ((r0, r1), (c0, c1))``: a chunk's pixels in the frame, for ``worst_tiles``.
    """
    st = np.asarray(stats, np.float64)
    flat = st.reshape(-1, len(CHUNK_STATS))
    sig = flat[:, 5]
    acc = ResidualSummary(total=float(flat[:, 0].sum()), total_sq=float(flat[:, 1].sum()),
                          peak=float(flat[:, 2].max(initial=0.0)), n=int(flat[:, 3].sum()),
                          n_nan=int(flat[:, 4].sum()), sigmas=[float(v) for v in sig[np.isfinite(sig)]])
    s = acc.summary()
    idx = list(np.ndindex(*st.shape[:-1]))
    with np.errstate(invalid="ignore", divide="ignore"):
        rms = np.sqrt(flat[:, 1] / flat[:, 3])
    order = [k for k in np.argsort(-np.nan_to_num(rms, nan=-1.0), kind="stable") if flat[k, 3] > 0][:worst]
    tiles = []
    for k in order:
        t = {"chunk": [int(v) for v in idx[k]], "rms": float(rms[k]),
             "rms_over_noise": float(rms[k] / s["noise_sigma"]) if s["noise_sigma"] > 0 else float("inf")}
        if regions is not None:
            (r0, r1), (c0, c1) = regions(idx[k])
            t.update(rows=[int(r0), int(r1)], cols=[int(c0), int(c1)])
        tiles.append(t)
    s["worst_tiles"] = tiles
    return s


def _block_nanmean(a: np.ndarray, f: int) -> np.ndarray:
    h, w = a.shape
    b = np.pad(np.asarray(a, np.float64), ((0, -h % f), (0, -w % f)), constant_values=np.nan)
    b = b.reshape(b.shape[0] // f, f, b.shape[1] // f, f)
    ok = np.isfinite(b)
    cnt = ok.sum(axis=(1, 3))
    tot = np.where(ok, b, 0.0).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan).astype(np.float32)


def overview(read, shape, *, max_side: int = 1024, block: int = 128) -> tuple[np.ndarray, int]:
    """A map too large to hold, downsampled by an integer factor for a figure, region by region.

    Parameters
    ----------
    read : callable
        ``read(rows: slice, cols: slice) -> (h, w)`` array of the map (e.g. a Zarr array's ``__getitem__``).
    shape : (int, int)
        ``(H, W)`` of the map.
    max_side : int
        The longest side of the result, pixels.
    block : int
        Output pixels a side per read (each read is ``block * factor`` a side: memory flat in map size).

    Returns
    -------
    small : ndarray, (ceil(H / f), ceil(W / f)), float32
        The NaN-aware mean of each ``f x f`` block (an edge block averages the pixels it has; a block with no
        finite pixel is NaN).
    f : int
        The factor, ``ceil(max(H, W) / max_side)``.
    """
    H, W = (int(v) for v in shape)
    f = max(1, -(-max(H, W) // int(max_side)))
    out = np.full((-(-H // f), -(-W // f)), np.nan, np.float32)
    step = int(block) * f
    for r in range(0, H, step):
        for c in range(0, W, step):
            a = np.asarray(read(slice(r, min(H, r + step)), slice(c, min(W, c + step))))
            m = _block_nanmean(a, f)
            out[r // f:r // f + m.shape[0], c // f:c // f + m.shape[1]] = m
    return out, f


def residual_figure(small, factor: int, path, *, noise_sigma: float, frame_shape, tile: int | None = None,
                    worst=(), title: str = "") -> Path:
    """PNG of a downsampled residual map (:func:`overview`) in units of the noise sigma, with the tile grid and
    the worst tiles (``merge_chunk_stats(...)["worst_tiles"]``) outlined and numbered. Axes: frame pixels.
    Written atomically (an existing file is replaced: the caller decides whether it may be)."""
    from psfsim.figures import _plt, save_atomic_figure

    plt = _plt()
    H, W = (int(v) for v in frame_shape)
    unit = noise_sigma if noise_sigma and np.isfinite(noise_sigma) and noise_sigma > 0 else 1.0
    img = np.asarray(small, np.float64) / unit
    finite = img[np.isfinite(img)]
    vmax = float(np.percentile(finite, 99.5)) if finite.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    fig, ax = plt.subplots(figsize=(6.4, 5.4 * min(2.0, max(0.4, H / W))))
    im = ax.imshow(img, cmap="magma", vmin=0.0, vmax=vmax, extent=(-0.5, W - 0.5, H - 0.5, -0.5),
                   interpolation="nearest")
    if tile and max(H, W) // tile <= 64:
        for v in range(tile, H, tile):
            ax.axhline(v - 0.5, color="w", lw=0.3, alpha=0.4)
        for v in range(tile, W, tile):
            ax.axvline(v - 0.5, color="w", lw=0.3, alpha=0.4)
    for rank, t in enumerate(worst, 1):
        if "rows" in t:
            (r0, r1), (c0, c1) = t["rows"], t["cols"]
            ax.add_patch(plt.Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, ec="c", lw=1.0))
            ax.text(c0 + 0.02 * W, r0 + 0.06 * H, f"{rank}: {t['rms_over_noise']:.2g}", color="c", fontsize=7)
    ax.set_xlabel("column (px)")
    ax.set_ylabel("row (px)")
    what = "noise sigma" if unit != 1.0 else "image units (no noise estimate)"
    fig.colorbar(im, ax=ax, label=f"|A(x_hat) - y| / {what}" + (f", {factor} x {factor} px means" if factor > 1 else ""))
    ax.set_title(title, fontsize=8)
    return save_atomic_figure(fig, path)


def has_coordgate(model) -> bool:
    """Whether an nn.Module holds CoordGate layers (it has gate maps to draw)."""
    from recon.layers.coordgate import CoordGate

    return any(isinstance(m, CoordGate) for m in model.modules())


def reblur_residual(lens, estimate, observed, *, origin=(0, 0), workers: int | None = None) -> tuple[np.ndarray, dict]:
    """Re-blur residual of a frame that fits in memory: its map and a summary.

    Parameters
    ----------
    lens : psfsim.Lens
        The lens the frame was taken with.
    estimate, observed : ndarray, (H, W)
        The deblurred frame and the observed (blurred, noisy) one, in the same units.
    origin : (int, int)
        The frame's top-left pixel in the lens field.

    Returns
    -------
    map : ndarray, (H, W), float32
        ``|A(estimate) - observed|``, NaN where an input is not finite.
    summary : dict
        :meth:`ResidualSummary.summary` over the frame less a border of ``k // 2`` pixels, plus ``border_px``.
    """
    from psfsim.checks import as_lens

    lens = as_lens(lens)
    check_frame_window(lens, np.shape(observed), origin)
    r = residual_block(lens, estimate, observed, origin=origin, workers=workers)
    b = int(lens.psf_sampling.size_px) // 2
    H, W = r.shape
    inner = (slice(b, H - b), slice(b, W - b)) if H > 2 * b and W > 2 * b else (slice(None), slice(None))
    acc = ResidualSummary()
    acc.add(r[inner], np.asarray(observed)[inner])
    s = acc.summary()
    s["border_px"] = b if inner[0].start else 0
    return r, s


def _model_of(checkpoint_or_model):
    """``(model, lens or None, name)`` of a checkpoint path or an nn.Module."""
    import os

    if isinstance(checkpoint_or_model, (str, os.PathLike)):
        from recon import load_checkpoint
        from recon.errors import ReconError

        try:
            model, info = load_checkpoint(checkpoint_or_model)
        except ReconError as e:
            raise PipelineError(str(e)) from None
        return model, info.lens, f"checkpoint {checkpoint_or_model} ({info.model_config.get('name')})"
    cfg = getattr(checkpoint_or_model, "model_config", {}) or {}
    return checkpoint_or_model, None, f"model {cfg.get('name', type(checkpoint_or_model).__name__)!r}"


def gate_maps(checkpoint_or_model, lens, frame_shape, *, origin=(0, 0), points: int = 96) -> list[tuple[str, np.ndarray]]:
    """Every CoordGate layer's gates over the frame's window of the field: ``[(layer name, (C, n, m))]``.

    The gates are evaluated at ``n x m`` points (at most ``points`` a side) spread over the frame, pixel
    centres from the first to the last pixel, at the origin's place in the lens field.

    Raises
    ------
    PipelineError
        A model without CoordGate layers, or a frame outside the lens field.
    """
    import torch

    from psfsim import field_coords_batch
    from psfsim.checks import as_lens
    from psfsim.field import grid_positions
    from recon.layers.coordgate import CoordGate

    model, ck_lens, what = _model_of(checkpoint_or_model)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, CoordGate)]
    if not layers:
        raise PipelineError(f"{what} has no CoordGate layers: there are no gate maps to draw (gate figures are for "
                            "CoordGate models such as cgunet)")
    lens = lens if lens is not None else ck_lens
    if lens is None:
        raise PipelineError(f"{what}: no lens given and the model carries none; pass the lens")
    lens = as_lens(lens)
    (r0, c0), (H, W) = check_frame_window(lens, frame_shape, origin)
    rows = np.round(grid_positions(min(points, H), H)).astype(np.int64)
    cols = np.round(grid_positions(min(points, W), W)).astype(np.int64)
    rr, cc = np.meshgrid(r0 + rows, c0 + cols, indexing="ij")
    pts = np.stack([rr.ravel(), cc.ravel()], axis=1)
    xy = field_coords_batch(lens, origins=pts, shape=(1, 1))  # (n*m, 2, 1, 1): the one coordinate function
    coords = torch.from_numpy(xy[:, :, 0, 0].T.reshape(1, 2, len(rows), len(cols)).copy())
    out = []
    with torch.no_grad():
        for name, layer in layers:
            p = next(layer.gate.parameters())
            g = layer.gate(coords.to(device=p.device, dtype=p.dtype))[0].float().cpu().numpy()
            out.append((name or "coordgate", g))
    return out


def gate_figure(checkpoint_or_model, lens, frame_shape, path, *, origin=(0, 0), channels: int = 4,
                overwrite: bool = False) -> Path:
    """PNG of a CoordGate model's gate maps over the frame's window of the field (:func:`gate_maps`): one row
    per CoordGate layer, its first ``channels`` gates (each with its own colour scale).

    Parameters
    ----------
    checkpoint_or_model : path or nn.Module
    lens : psfsim.Lens or None
        None: the checkpoint's lens.
    frame_shape : (int, int)
    path : path
        The PNG, written atomically; an existing file is refused unless ``overwrite``.

    Raises
    ------
    PipelineError
        A model without CoordGate layers (nothing is written), a frame outside the lens field, an existing file.
    """
    from psfsim.errors import PsfsimError
    from psfsim.figures import _plt, save_atomic_figure
    from psfsim.store import check_output

    try:
        path = check_output(path, overwrite=overwrite, what="gate figure")
    except PsfsimError as e:
        raise PipelineError(str(e)) from None
    maps = gate_maps(checkpoint_or_model, lens, frame_shape, origin=origin)
    ncol = max(1, min(int(channels), max(g.shape[0] for _, g in maps)))
    plt = _plt()
    H, W = (int(v) for v in frame_shape)
    fig, axes = plt.subplots(len(maps), ncol, figsize=(2.4 * ncol, 2.1 * len(maps) * max(0.4, H / W) + 0.6),
                             squeeze=False)
    extent = (origin[1] - 0.5, origin[1] + W - 0.5, origin[0] + H - 0.5, origin[0] - 0.5)
    for i, (name, g) in enumerate(maps):
        for j in range(ncol):
            ax = axes[i][j]
            if j >= g.shape[0]:
                ax.axis("off")
                continue
            im = ax.imshow(g[j], extent=extent, cmap="RdBu_r" if g[j].min() < 0 < g[j].max() else "viridis")
            ax.set_title(f"{name} gate {j}", fontsize=7)
            ax.tick_params(labelsize=5)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=5)
    fig.suptitle(f"CoordGate gates over the frame {H} x {W} at origin {tuple(origin)} of the lens field "
                 "(axes: lens-field pixels)", fontsize=8)
    fig.subplots_adjust(hspace=0.45, wspace=0.35)
    return save_atomic_figure(fig, path)
