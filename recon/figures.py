"""Evaluation figures (matplotlib, Agg backend), each written atomically (:func:`psfsim.figures.save_atomic_figure`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["before_after", "radial_plot", "psnr_vs_params"]

#: Colours of the methods, the same in every figure.
COLOURS = {"model": "C3", "blurred": "0.5", "wiener": "C0", "wiener_sv": "C2"}
LABELS = {"model": "model", "blurred": "blurred", "wiener": "Wiener", "wiener_sv": "SV-Wiener", "sharp": "truth"}


def before_after(rows: dict, path, *, title: str = "", scores: dict | None = None) -> Path:
    """A grid of crops: one row per label (e.g. ``"centre"``, ``"corner"``), one column per image.

    Parameters
    ----------
    rows : dict label -> dict name -> (h, w) array
        The same names in every row, in column order (e.g. blurred, wiener, wiener_sv, model, sharp); each row
        is shown with one grey range: the 0.5 and 99.5 percentiles of its ``sharp`` and ``blurred`` crops.
    scores : dict label -> dict name -> str, optional
        Text under each panel (e.g. ``"24.1 dB"``).
    """
    from psfsim.figures import _plt, save_atomic_figure

    plt = _plt()
    labels = list(rows)
    names = list(rows[labels[0]])
    fig, axes = plt.subplots(len(labels), len(names), figsize=(2.2 * len(names), 2.4 * len(labels) + 0.6), squeeze=False)
    for i, lab in enumerate(labels):
        imgs = rows[lab]
        ref = np.concatenate([np.ravel(imgs[n]) for n in ("sharp", "blurred") if n in imgs] or [np.ravel(imgs[names[0]])])
        lo, hi = np.percentile(ref, [0.5, 99.5])
        hi = hi if hi > lo else lo + 1e-6
        for j, n in enumerate(names):
            ax = axes[i, j]
            ax.imshow(imgs[n], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            s = (scores or {}).get(lab, {}).get(n)
            if i == 0:
                ax.set_title(LABELS.get(n, n), fontsize=9)
            if s:
                ax.set_xlabel(s, fontsize=8)
            if j == 0:
                ax.set_ylabel(lab, fontsize=9)
    fig.suptitle(title, fontsize=9)
    return save_atomic_figure(fig, path)


def radial_plot(edges, psnr: dict, path, *, title: str = "") -> Path:
    """PSNR per field-radius bin, one line per method (``psnr``: name -> (n_bins,) dB)."""
    from psfsim.figures import _plt, save_atomic_figure

    plt = _plt()
    edges = np.asarray(edges, np.float64)
    mid = 0.5 * (edges[:-1] + edges[1:])
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for n, v in psnr.items():
        ax.plot(mid, np.asarray(v, np.float64), "o-", color=COLOURS.get(n), label=LABELS.get(n, n), ms=4)
    ax.set_xlabel("field radius hypot(x, y) (1 = frame corner)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_xlim(0, edges[-1])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return save_atomic_figure(fig, path)


def psnr_vs_params(runs: list[dict], baselines: dict, path, *, title: str = "") -> Path:
    """Model PSNR against parameter count (log x axis, as the CoordGate paper's Fig. 4b).

    ``runs``: dicts with ``label``, ``model``, ``params``, ``psnr_db``; ``baselines``: name -> dB, drawn as
    horizontal lines.
    """
    from psfsim.figures import _plt, save_atomic_figure

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    models = sorted({r["model"] for r in runs})
    for k, m in enumerate(models):
        rs = sorted((r for r in runs if r["model"] == m), key=lambda r: r["params"])
        ax.plot([r["params"] for r in rs], [r["psnr_db"] for r in rs], "o-", color=f"C{(k + 3) % 10}", label=m)
        for r in rs:
            ax.annotate(r["label"], (r["params"], r["psnr_db"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    for n, v in baselines.items():
        ax.axhline(v, color=COLOURS.get(n, "k"), ls="--", lw=1, label=LABELS.get(n, n))
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("test PSNR (dB)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return save_atomic_figure(fig, path)
