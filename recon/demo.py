"""``make demo``, second half: train CGUNet(3) and UNet(3) on the psfsim demo's dataset for a few minutes, then
evaluate both on its test split next to the Wiener and spatially-varying Wiener baselines.

The first half (``python -m psfsim.demo``) writes ``demo_out/data/dataset.zarr``; this step writes
``demo_out/recon/{cgunet3,unet3}/`` (``recon fit`` folders: training curves, checkpoints, before/after figures)
and ``demo_out/recon/compare/`` (one table and a PSNR-vs-parameters figure). A few CPU minutes are far from a
converged training (the paper trains for hundreds of epochs on a GPU): the figures show the pipeline and where
a short run stands, and re-running ``make demo`` continues the same runs for more epochs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

MODELS = {"cgunet3": "cgunet", "unet3": "unet"}


def main(argv: list[str] | None = None) -> int:
    from psfsim.errors import PsfsimError

    from .evaluate import compare
    from .fit import FitConfig, fit

    ap = argparse.ArgumentParser(prog="recon-demo", description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="demo_out/data/dataset.zarr", help="the psfsim demo's store")
    ap.add_argument("--lens", default="microscope", help="the store's lens (default microscope)")
    ap.add_argument("--out", default="demo_out/recon", help="output folder (default demo_out/recon)")
    ap.add_argument("--epochs", type=int, default=30, help="epochs per model (default 30: about a minute each on 2 cores)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        evals = []
        for i, (run, model) in enumerate(MODELS.items(), 1):
            print(f"\n[{i}/{len(MODELS) + 1}] {model}, depth 3, residual, {args.epochs} epochs on {args.data}")
            cfg = FitConfig(lens=args.lens, out=str(out / run), data=args.data, model=model,
                            epochs=args.epochs, crop=64, batch=8)  # model_args: the fit default (depth 3, residual)
            res = fit(cfg, progress=False, log=lambda s: print("  " + s.replace("\n", "\n  ")))
            evals.append(res.evaluation.out)
        print(f"\n[{len(MODELS) + 1}/{len(MODELS) + 1}] comparison")
        cmp = compare(evals, out / "compare", overwrite=True)
        for r in cmp.rows:
            print(f"  {r['model']:8s} {r['params']:>9,d} parameters  PSNR {r['psnr_db']:6.2f} dB  "
                  f"({r['gain_vs_wiener_sv_db']:+.2f} dB against SV-Wiener)")
        for k, p in cmp.files.items():
            print(f"  {k:18s} {p}")
    except PsfsimError as e:
        print(f"recon-demo: error: {e}", file=sys.stderr)
        return 2
    print(f"\nrecon demo done in {time.perf_counter() - t0:.1f} s; figures in {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
