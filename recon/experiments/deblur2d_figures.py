"""Figures of ``recon experiment deblur2d`` (matplotlib, Agg; each written atomically): Fig. 4b (PSNR against
parameters, log x), training curves, PSNR against field radius, and Fig. 5 (example reconstructions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["psnr_params_figure", "curves_figure", "radial_figure", "examples_figure"]

_FAMILY = {"unet": "C0", "cgunet": "C3", "coordconv_unet": "C1", "multiwienernet": "C4", "pafu_unet": "C2"}
_BASE = {"blurred": ("0.5", "blurred input"), "wiener": ("C0", "Wiener (axis PSF)"),
         "wiener_sv": ("C2", "SV Wiener"), "rl": ("C5", "SV Richardson-Lucy")}


def psnr_params_figure(recs: dict, base: dict, path) -> Path:
    """Test PSNR (filled) and best validation PSNR (open) of each model against its parameter count (log x),
    the classical baselines' test PSNR as horizontal lines (the CoordGate paper's Fig. 4b)."""
    from psfsim.figures import _plt, save_atomic_figure

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    # models far below the blurred input (e.g. a MultiWienerNet that has not learnt yet) would squash the rest:
    # they are drawn at the bottom edge as downward triangles, labelled with their value
    floor = base["scores"]["blurred"]["psnr_db"] - 4.0
    for fam, col in _FAMILY.items():
        rs = sorted((r for r in recs.values() if r["model"] == fam), key=lambda r: r["params"])
        if not rs:
            continue
        x = [r["params"] for r in rs]
        ax.plot(x, [max(r["psnr_db"], floor) for r in rs], "o-", color=col, label=f"{fam} (test)")
        ax.plot(x, [max(r["best_val_psnr"], floor) for r in rs], "o", mfc="none", color=col, ms=5)
        for r in rs:
            low = r["psnr_db"] < floor
            if low:
                ax.plot(r["params"], floor, "v", color=col, ms=8)
            ax.annotate(r["label"] + (f" ({r['psnr_db']:.1f} dB)" if low else ""),
                        (r["params"], max(r["psnr_db"], floor)), fontsize=6, xytext=(3, -9),
                        textcoords="offset points")
    for k, (col, lab) in _BASE.items():
        ax.axhline(base["scores"][k]["psnr_db"], color=col, ls="--", lw=1, label=lab)
    ax.set_xscale("log")
    ax.set_ylim(bottom=floor - 0.5)
    ax.set_xlabel("parameters")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    ax.set_title("PSNR against parameters (filled: test, whole samples; open: best validation, crops)", fontsize=8)
    return save_atomic_figure(fig, path, dpi=100)


def curves_figure(recs: dict, path) -> Path:
    """Training loss and validation PSNR against the epoch, one line per model."""
    from psfsim.figures import _plt, save_atomic_figure

    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for k, r in enumerate(recs.values()):
        ep = [h["epoch"] for h in r["history"]]
        a.plot(ep, [h["train_loss"] for h in r["history"]], "-", color=f"C{k % 10}", label=r["label"])
        b.plot(ep, [h["val_psnr"] for h in r["history"]], "o-", ms=3, color=f"C{k % 10}", label=r["label"])
    a.set_yscale("log")
    a.set_xlabel("epoch")
    a.set_ylabel("training loss (MSE)")
    b.set_xlabel("epoch")
    b.set_ylabel("validation PSNR (dB)")
    b.legend(fontsize=6, ncol=2)
    for ax in (a, b):
        ax.grid(alpha=0.3)
    return save_atomic_figure(fig, path, dpi=90)


def radial_figure(recs: dict, base: dict, path) -> Path:
    """Test PSNR per field-radius bin (1 = the frame's corner), each model and baseline."""
    from psfsim.figures import _plt, save_atomic_figure

    plt = _plt()
    e = np.asarray(base["radial_edges"], np.float64)
    mid = 0.5 * (e[:-1] + e[1:])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for k, r in enumerate(recs.values()):
        ax.plot(mid, np.asarray(r["radial_psnr"], np.float64), "o-", ms=3, color=f"C{k % 10}", label=r["label"])
    for k, (col, lab) in _BASE.items():
        ax.plot(mid, np.asarray(base["radial_psnr"][k], np.float64), "--", color=col, lw=1.2, label=lab)
    ax.set_xlabel("field radius hypot(x, y) (1 = frame corner)")
    ax.set_ylabel("test PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return save_atomic_figure(fig, path, dpi=100)


def examples_figure(out: Path, recs: dict, base: dict, examples: list, path) -> Path:
    """Fig. 5: for the test sample nearest the axis and the one farthest from it, the truth, the blurred input,
    the baselines and each model's output (one grey range per row; PSNR of the sample under each panel)."""
    from psfsim.figures import _plt, save_atomic_figure

    plt = _plt()
    bz = np.load(Path(out) / "baselines_examples.npz")
    cols = [("sharp", "truth")] + [(k, lab) for k, (_, lab) in _BASE.items()]
    models = {u: np.load(Path(out) / "runs" / u / "examples.npz") for u in recs}
    n = len(cols) + len(models)
    ncol = min(n, 8)
    nrow_per = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow_per * len(examples), ncol, figsize=(1.6 * ncol, 1.75 * nrow_per * len(examples)),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for e, i in enumerate(examples):
        truth = bz[f"sharp_{i}"]
        panels = [(bz[f"{k}_{i}"], lab) for k, lab in cols]
        panels += [(models[u][f"model_{i}"], recs[u]["label"]) for u in models]
        lo, hi = np.percentile(np.concatenate([truth.ravel(), bz[f"blurred_{i}"].ravel()]), [0.5, 99.5])
        for j, (img, lab) in enumerate(panels):
            ax = axes[e * nrow_per + j // ncol, j % ncol]
            ax.imshow(img, cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6), interpolation="nearest")
            sub = "" if j == 0 else f"\n{10 * np.log10(1 / np.mean((img.astype(np.float64) - truth) ** 2)):.1f} dB"
            ax.set_title(f"{lab}{sub}", fontsize=6)
        axes[e * nrow_per, 0].text(-0.1, 0.5, "near axis" if e == 0 else "field edge", rotation=90, fontsize=7,
                                   transform=axes[e * nrow_per, 0].transAxes, ha="right", va="center")
    fig.suptitle("test samples nearest and farthest from the optical axis", fontsize=8)
    fig.tight_layout()
    return save_atomic_figure(fig, path, dpi=90)
