"""Restorations: Richardson-Lucy per iteration and Wiener, as ratios to baselines measured in the same rounds.

Run: ``python benchmarks/bench_restore.py [--size 2048] [--iters 5]``. Nothing is asserted. On the microscope
preset, a ``size x size`` window at the frame's corner (scikit-image's ``camera`` tiled, blurred by the fast
operator, Poisson-Gaussian noise):

1. SV Richardson-Lucy, time per iteration (``iters`` iterations, no stopping rule, minus the one-off
   ``A^T 1``) against one forward + one adjoint of the same operator (target <= 1.15x, issue 9), and against
   ``skimage.restoration.richardson_lucy`` (invariant, the on-axis PSF) per iteration with the same FFT
   threads (``scipy.fft.set_workers``; target <= 1.5x);
2. global Wiener with our defaults (gradient prior, mirror padding, balance estimated) and with a given balance
   (the filter cached), against ``skimage.restoration.wiener`` (target: ours >= 2x faster with our defaults).

Best of N rounds, the contenders called in turn within a round (``interleaved`` of bench_operators).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_operators import interleaved, test_image  # noqa: E402
import psfsim  # noqa: E402
from psfsim.noise import NoiseModel  # noqa: E402
from psfsim.operators import make_operator  # noqa: E402
from psfsim.restore import richardson_lucy, wiener  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    import scipy.fft
    import skimage.restoration

    n, it = args.size, args.iters
    lens = psfsim.load_lens("microscope")
    op = make_operator(lens, shape=(n, n))
    workers = op.fft.workers
    img = test_image(n)
    y = NoiseModel(photons=2000).apply(op(img), np.random.default_rng(0)).astype(np.float32)
    psf = lens.psf(0.0, 0.0).astype(np.float32)
    psf /= psf.sum()
    print(f"psfsim {psfsim.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; microscope "
          f"{n} x {n}, K = {op.rank}, {op.n_blocks} blocks, FFT threads {workers}")

    def sk_rl():
        with scipy.fft.set_workers(workers):
            skimage.restoration.richardson_lucy(y, psf, num_iter=it, clip=False)

    t = interleaved({
        "forward + adjoint": lambda: op.adjoint(op(y)),
        "adjoint of ones": lambda: op.adjoint(np.ones_like(y)),
        "RL": lambda: richardson_lucy(y, op, iters=it),
        "skimage RL": sk_rl,
    }, args.rounds)
    per_it = (t["RL"] - t["adjoint of ones"]) / it
    per_sk = t["skimage RL"] / it
    print("\n== 1. Richardson-Lucy per iteration")
    print(f"ours {1e3 * per_it:.1f} ms = x{per_it / t['forward + adjoint']:.2f} one forward + one adjoint "
          f"({1e3 * t['forward + adjoint']:.1f} ms); target <= 1.15x")
    print(f"skimage invariant RL {1e3 * per_sk:.1f} ms per iteration: ours / skimage = x{per_it / per_sk:.2f}; "
          "target <= 1.5x")

    def sk_w():
        with scipy.fft.set_workers(workers):
            skimage.restoration.wiener(y, psf, balance=0.01, clip=False)

    t = interleaved({
        "skimage": sk_w,
        "ours default": lambda: wiener(y, psf, workers=workers),
        "ours balance=0.01": lambda: wiener(y, psf, balance=0.01, workers=workers),
        "ours skimage's model": lambda: wiener(y, psf, balance=0.01, reg="laplacian", boundary="periodic",
                                               workers=workers),
    }, 2 * args.rounds)
    print("\n== 2. global Wiener (skimage.restoration.wiener: laplacian, periodic, balance 0.01, same FFT threads)")
    for label, v in t.items():
        extra = "   target >= 2x" if label == "ours default" else ""
        print(f"{label:<24s} {1e3 * v:8.1f} ms   skimage / this = x{t['skimage'] / v:.2f}{extra}")
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
