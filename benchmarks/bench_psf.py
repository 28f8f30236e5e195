"""PSF accuracy and speed: Airy zero, Marechal agreement, and the PSF evaluation method / FFT backend choice.

Run: ``python benchmarks/bench_psf.py``. Prints

* the first dark ring of an aberration-free PSF against 0.61 lambda/NA;
* Strehl ratio against Marechal exp(-(2 pi sigma)^2) for a few Zernike terms;
* time per PSF for a batch of 64 field points of each preset, by the matrix Fourier transform (default)
  and by zero-padded FFT with scipy.fft and with pyFFTW (plans cached), as ratios to the MFT in the same run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from psfsim import lens_from_dict, load_lens  # noqa: E402
from psfsim.psf import PSFEngine  # noqa: E402

BASE = {"name": "b", "optics": {"wavelength_nm": 520.0, "na": 0.4, "pixel_pitch_um": 0.325},
        "field": {"shape_px": [64, 64]}, "psf": {"size_px": 33, "oversample": 4}}


def airy():
    lam, na = 0.52, 0.4
    pitch = lam / na / 40
    d = {**BASE, "optics": {**BASE["optics"], "pixel_pitch_um": pitch},
         "psf": {"size_px": 201, "oversample": 1, "pupil_samples": 128}}
    p = lens_from_dict(d).psf(0, 0)[100, 100:]
    i = 1
    while p[i + 1] < p[i]:
        i += 1
    a, b, c = p[i - 1], p[i], p[i + 1]
    r = (i + 0.5 * (a - c) / (a - 2 * b + c)) * pitch
    exp = 0.6098 * lam / na
    print(f"Airy first zero: measured {r:.5f} um, expected 0.6098 lambda/NA = {exp:.5f} um, error {100 * (r / exp - 1):+.3f} %")


def marechal():
    print("Marechal: Strehl vs exp(-(2 pi sigma)^2)")
    print("  noll  sigma   strehl  marechal  rel.diff")
    for j in (4, 5, 7, 11):
        for s in (0.03, 0.05, 0.07):
            d = {**BASE, "zernike": [{"noll": j, "rms_waves": s}]}
            st = float(lens_from_dict(d).strehl(0.0, 0.0))
            m = np.exp(-((2 * np.pi * s) ** 2))
            print(f"  {j:4d}  {s:.2f}  {st:.4f}  {m:.4f}   {100 * (st / m - 1):+.2f} %")


def timing(nrep: int = 3):
    print("PSF evaluation, 64 field points (seconds per batch; ratio to MFT measured in the same run)")
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-0.7, 0.7, (2, 64))
    for name in ("microscope", "relay", "telescope"):
        lens = load_lens(name)
        res = {}
        for label, kw in (("mft", dict(method="mft")), ("fft-scipy", dict(method="fft", fft_backend="scipy")),
                          ("fft-pyfftw", dict(method="fft", fft_backend="pyfftw"))):
            eng = PSFEngine(lens, **kw)
            eng.psfs(x[:2], y[:2])  # plans, caches
            ts = []
            for _ in range(nrep):
                t = time.perf_counter()
                eng.psfs(x, y)
                ts.append(time.perf_counter() - t)
            res[label] = min(ts)
        base = res["mft"]
        print(f"  {name:10s} " + "  ".join(f"{k} {v:.3f}s (x{v / base:.1f})" for k, v in res.items()))


if __name__ == "__main__":
    airy()
    marechal()
    timing()
