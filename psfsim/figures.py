"""PNG figures: PSF montages over the field, Strehl and FWHM maps (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["psf_montage", "field_map", "save_atomic_figure"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_atomic_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Save a figure to a temporary name, then rename: never a half-written PNG."""
    from .store import atomic_file

    path = Path(path)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    finally:
        _plt().close(fig)
    return path


def psf_montage(grid, path, *, log: bool = True, title: str = "", decades: float = 4.0) -> Path:
    """Montage of a :class:`~psfsim.psf.PSFGrid`: one panel per grid node, placed as in the field.

    Parameters
    ----------
    grid : PSFGrid
        PSFs ``(ny, nx, k, k)``.
    log : bool
        Log stretch over ``decades`` decades below each panel's peak (shows rings and tails).
    """
    plt = _plt()
    ny, nx, k, _ = grid.psfs.shape
    fig, axes = plt.subplots(ny, nx, figsize=(1.6 * nx + 0.6, 1.6 * ny + 0.8), squeeze=False)
    for i in range(ny):
        for j in range(nx):
            p = grid.psfs[i, j]
            img = np.log10(np.maximum(p / p.max(), 10.0**-decades)) if log else p / p.max()
            ax = axes[i, j]
            ax.imshow(img, cmap="inferno", vmin=-decades if log else 0, vmax=0 if log else 1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"({grid.x[i, j]:+.2f}, {grid.y[i, j]:+.2f})", fontsize=7)
    fig.suptitle(title + (f"  [log10, {decades:g} decades]" if log else "  [linear]") + "  panel titles: field (x, y)", fontsize=9)
    return save_atomic_figure(fig, path)


def field_map(values: np.ndarray, grid, path, *, label: str, title: str = "", cmap: str = "viridis",
              points: np.ndarray | None = None) -> Path:
    """Map of a scalar over the frame (e.g. Strehl ratio or FWHM) sampled on ``grid``'s nodes.

    ``values`` has shape ``(ny, nx)``; the axes are detector pixels (column, row) of the full frame.
    ``points`` ``(N, 2)`` ``(row, col)`` pixels, optional: field points marked on the map (a lens's field
    table), those past the frame left out of view.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    cols, rows = grid.cols, grid.rows
    dc = (cols[1] - cols[0]) / 2 if len(cols) > 1 else 0.5
    dr = (rows[1] - rows[0]) / 2 if len(rows) > 1 else 0.5
    im = ax.imshow(values, origin="upper", cmap=cmap, extent=(cols[0] - dc, cols[-1] + dc, rows[-1] + dr, rows[0] - dr), interpolation="bicubic")
    ax.set_xlabel("column (px)")
    ax.set_ylabel("row (px)")
    ax.set_title(title, fontsize=9)
    if points is not None and len(points):
        x0, x1, y1, y0 = im.get_extent()
        pts = np.asarray(points, float)
        ax.scatter(pts[:, 1], pts[:, 0], s=18, marker="o", facecolors="white", edgecolors="black", linewidths=0.8,
                   label=f"field table ({len(pts)} points)", zorder=3)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y1, y0)
        ax.legend(loc="upper right", fontsize=7, framealpha=0.8)
    fig.colorbar(im, ax=ax, label=label)
    return save_atomic_figure(fig, path)


def before_after(images: dict, crops: dict, path, *, title: str = "", scores: dict | None = None) -> Path:
    """Rows of crops (e.g. centre and corner) of several images (sharp, blurred, restorations) side by side.

    Parameters
    ----------
    images : dict name -> (H, W) array
    crops : dict label -> (slice, slice)
    scores : dict name -> str, optional
        Text under each column title (e.g. "PSNR 27.1 dB").
    """
    plt = _plt()
    names = list(images)
    fig, axes = plt.subplots(len(crops), len(names), figsize=(2.3 * len(names), 2.4 * len(crops) + 0.5), squeeze=False)
    ref = images[names[0]]
    for i, (label, sl) in enumerate(crops.items()):
        lo, hi = np.percentile(ref[sl], [0.5, 99.5])
        for j, n in enumerate(names):
            ax = axes[i, j]
            ax.imshow(images[n][sl], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(n + ("\n" + scores[n] if scores and n in scores else ""), fontsize=8)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=9)
    return save_atomic_figure(fig, path)
