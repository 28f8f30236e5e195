"""Restorations: Richardson-Lucy per iteration, Wiener and SV Wiener, as ratios to baselines measured in the same rounds.

Run: ``python benchmarks/bench_restore.py [--size 2048] [--iters 5] [--skip-rl] [--old-sv]``. Nothing is
asserted. On the microscope preset, a ``size x size`` window at the frame's corner (scikit-image's ``camera``
tiled, blurred by the fast operator, Poisson-Gaussian noise):

1. SV Richardson-Lucy, time per iteration (``iters`` iterations, no stopping rule, minus the one-off
   ``A^T 1``) against one forward + one adjoint of the same operator (target <= 1.15x, issue 9), and against
   ``skimage.restoration.richardson_lucy`` (invariant, the on-axis PSF) per iteration with the same FFT
   threads (``scipy.fft.set_workers``; target <= 1.5x);
2. global Wiener with our defaults (gradient prior, mirror padding, balance estimated) and with a given balance
   (the filter cached), against ``skimage.restoration.wiener`` (target: ours >= 2x faster with our defaults),
   and the stages of ours (balance estimate, padding, the two transforms);
3. SV Wiener (default layout: patch 256, overlap 64, energy-sized context; the patches' PSFs from the low-rank
   basis and exact) against our global Wiener (target <= 5x) at equal error: PSNR against the sharp image
   (1000 photons) of those and of the
   settings before issue 9 (patch 64, overlap 32, context = PSF size, exact PSFs; run through today's code:
   27.729 dB on 2048^2, the same as the old implementation's 27.729). ``--old-sv`` also times those old
   settings with exact PSFs (~5-60 s: 3969 of them; without it their PSNR uses the basis's PSFs, equal to
   1e-3 dB). The low-rank basis is built before timing (once per lens and process).

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
from _common import test_image  # noqa: E402
from _timing import interleaved  # noqa: E402
import psfsim  # noqa: E402
from psfsim.noise import NoiseModel  # noqa: E402
from psfsim.operators import make_operator  # noqa: E402
from psfsim.restore import reference_psf, richardson_lucy, sv_wiener, wiener  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-rl", action="store_true", help="skip section 1 (Richardson-Lucy)")
    ap.add_argument("--old-sv", action="store_true", help="also time SV Wiener's settings before issue 9 (slow)")
    args = ap.parse_args(argv)
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

    if not args.skip_rl:
        section_rl(op, y, psf, it, workers, args.rounds)
    section_wiener(y, psf, workers, args.rounds)
    section_sv(lens, op, img, workers, args.rounds, args.old_sv)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


def section_rl(op, y, psf, it, workers, rounds):
    import scipy.fft
    import skimage.restoration

    def sk_rl():
        with scipy.fft.set_workers(workers):
            skimage.restoration.richardson_lucy(y, psf, num_iter=it, clip=False)

    t = interleaved({
        "forward + adjoint": lambda: op.adjoint(op(y)),
        "adjoint of ones": lambda: op.adjoint(np.ones_like(y)),
        "RL": lambda: richardson_lucy(y, op, iters=it),
        "skimage RL": sk_rl,
    }, rounds)
    per_it = (t["RL"] - t["adjoint of ones"]) / it
    per_sk = t["skimage RL"] / it
    print("\n== 1. Richardson-Lucy per iteration")
    print(f"ours {1e3 * per_it:.1f} ms = x{per_it / t['forward + adjoint']:.2f} one forward + one adjoint "
          f"({1e3 * t['forward + adjoint']:.1f} ms); target <= 1.15x")
    print(f"skimage invariant RL {1e3 * per_sk:.1f} ms per iteration: ours / skimage = x{per_it / per_sk:.2f}; "
          "target <= 1.5x")


def section_wiener(y, psf, workers, rounds):
    import scipy.fft
    import skimage.restoration

    from psfsim.fft import get_backend
    from psfsim.restore.wiener import _pad, resolve_balance

    def sk_w():
        with scipy.fft.set_workers(workers):
            skimage.restoration.wiener(y, psf, balance=0.01, clip=False)

    fft = get_backend(None, workers)
    n = y.shape[-1]
    k = psf.shape[0]
    shape = (fft.next_fast_len(n + 2 * k, True),) * 2
    big = _pad(y[None], (k, shape[0] - n - k), (k, shape[1] - n - k), "reflect")
    t = interleaved({
        "skimage": sk_w,
        "ours default": lambda: wiener(y, psf, workers=workers),
        "ours balance=0.01": lambda: wiener(y, psf, balance=0.01, workers=workers),
        "ours skimage's model": lambda: wiener(y, psf, balance=0.01, reg="laplacian", boundary="periodic",
                                               workers=workers),
        "  stage: balance estimate": lambda: resolve_balance(y, None, None),
        "  stage: mirror padding": lambda: _pad(y[None], (k, shape[0] - n - k), (k, shape[1] - n - k), "reflect"),
        f"  stage: rfft2 + irfft2 {shape[0]}^2": lambda: fft.irfft2(fft.rfft2(big), s=shape),
    }, 2 * rounds)
    print("\n== 2. global Wiener (skimage.restoration.wiener: laplacian, periodic, balance 0.01, same FFT threads)")
    for label, v in t.items():
        if label.startswith("  stage"):
            print(f"{label:<30s} {1e3 * v:8.1f} ms   ({100 * v / t['ours default']:.0f} % of ours default)")
        else:
            extra = "   target >= 2x" if label == "ours default" else ""
            print(f"{label:<30s} {1e3 * v:8.1f} ms   skimage / this = x{t['skimage'] / v:.2f}{extra}")


def section_sv(lens, op, img, workers, rounds, old):
    from psfsim.operators import lowrank_basis
    from skimage.metrics import peak_signal_noise_ratio as psnr

    n = img.shape[0]
    y = NoiseModel(photons=1000).apply(op(img), np.random.default_rng(0)).astype(np.float32)
    lowrank_basis(lens)  # built once per lens and process, outside the timing
    psf = reference_psf(lens, origin=(0, 0), shape=y.shape, which="axis")
    # the settings before issue 9; their PSFs exact with --old-sv, else the basis's (equal to 1e-3 dB, and
    # 3969 exact PSFs take 5-60 s)
    old_kw = dict(patch=64, overlap=32, context=lens.psf_sampling.size_px, psfs="exact" if old else "basis")
    fns = {"global Wiener (axis PSF)": lambda: wiener(y, psf, workers=workers),
           "SV default layout, basis PSFs": lambda: sv_wiener(y, lens, origin=(0, 0), workers=workers, psfs="basis"),
           "SV default layout, exact PSFs": lambda: sv_wiener(y, lens, origin=(0, 0), workers=workers, psfs="exact")}
    if old:
        fns["SV settings before issue 9"] = lambda: sv_wiener(y, lens, origin=(0, 0), workers=workers, **old_kw)
    t = interleaved(fns, rounds)
    p = {label: fn() for label, fn in fns.items()}
    if not old:
        p["SV settings before issue 9"] = sv_wiener(y, lens, origin=(0, 0), workers=workers, **old_kw)
    print(f"\n== 3. SV Wiener, microscope {n} x {n} at the corner, 1000 photons (target <= 5x global at equal PSNR)")
    g = t["global Wiener (axis PSF)"]
    for label, out in p.items():
        tm = f"{1e3 * t[label]:8.1f} ms = x{t[label] / g:5.2f} global" if label in t else " " * 26 + "(not timed)"
        print(f"{label:<30s} {tm}   PSNR {psnr(img, out, data_range=1):.3f} dB")
    for label in ("SV default layout, basis PSFs", "SV default layout, exact PSFs"):
        d = psnr(img, p[label], data_range=1) - psnr(img, p["SV settings before issue 9"], data_range=1)
        print(f"{label} - settings before issue 9: {d:+.3f} dB (equal error: within 0.05 dB)")


if __name__ == "__main__":
    main()
