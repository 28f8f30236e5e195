"""PSF accuracy and speed: Airy zero, Marechal agreement, and the PSF evaluation method / FFT backend choice.

Run: ``python benchmarks/bench_psf.py``. Prints

* the first dark ring of an aberration-free PSF against 0.61 lambda/NA;
* Strehl ratio against Marechal exp(-(2 pi sigma)^2) for a few Zernike terms;
* the energy outside the PSF box on the presets' axes against the analytic (annular) Airy integral, at 64,
  128, 256 and 512 pupil samples: the plain in-box sum (the estimate before the extrapolation) and the
  Richardson-extrapolated one that ``Lens.energy_outside`` now returns (``psfsim.psf_metrics``);
* the load-time cost of the PSF-box check (9 field points) with each estimate;
* time per PSF for a batch of 64 field points of each preset, by the matrix Fourier transform (default)
  and by zero-padded FFT with scipy.fft and with pyFFTW (plans cached), as ratios to the MFT in the same run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import psfsim.psf  # noqa: E402
from psfsim import lens_from_dict, load_lens  # noqa: E402
from psfsim.lens import probe_points  # noqa: E402
from psfsim.psf import PSFEngine  # noqa: E402
from psfsim.psf_metrics import _in_box, energy_outside  # noqa: E402

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


def _airy_outside(lens, sub: int = 8) -> float:
    """1 - the polychromatic annular Airy pattern integrated over the box (midpoint rule, one quadrant)."""
    from scipy.special import j1

    o, k = lens.optics, lens.psf_sampling.size_px
    n = k * sub
    pos = (np.arange(n) + 0.5) / n * (k / 2) * o.pixel_pitch_um
    r = np.hypot(pos[:, None], pos[None, :])
    e = o.obscuration
    inside = 0.0
    for lam, w in zip(o.wavelength_nm, o.spectral_weights):
        v = 2 * np.pi * o.na * r / (lam * 1e-3)
        amp = 2 * j1(v) / v - (e * 2 * j1(e * v) / v if e > 0 else 0.0)
        inside += w * 4 * (amp**2).sum() * (pos[1] - pos[0]) ** 2 * np.pi * (o.na / (lam * 1e-3)) ** 2 / (1 - e**2)
    return 1.0 - inside


def energy_outside_convergence():
    print("Energy outside the box on axis (aberration-free there): plain in-box sum / extrapolated, vs analytic")
    zero = np.zeros(1)
    for name in ("telescope", "microscope"):
        base = load_lens(name)
        ref = _airy_outside(base)
        row = []
        for m in (64, 128, 256, 512):
            d = base.to_dict()
            d["psf"]["pupil_samples"] = m
            eng = PSFEngine(lens_from_dict(d, check_psf_box=False))
            row.append(f"{m}: {1 - float(_in_box(eng, zero, zero)[0]):.4f} / {float(energy_outside(eng, zero, zero)[0]):.4f}")
        print(f"  {name:10s} analytic {ref:.5f}   " + "   ".join(row))


def box_check_cost(nrep: int = 3):
    print("Load-time cost of the PSF-box check (9 field points, engines built from scratch), best of", nrep)
    for name in ("microscope", "relay", "telescope"):
        d = load_lens(name).to_dict()
        res = {}
        for label in ("no check", "plain (before)", "extrapolated (now)"):
            ts = []
            for _ in range(nrep):
                psfsim.psf._engines.clear()
                t = time.perf_counter()
                lens = lens_from_dict(d, check_psf_box=False)
                pts = probe_points(lens.field)
                if label == "plain (before)":
                    _in_box(lens._engine, pts[:, 0], pts[:, 1])
                elif label == "extrapolated (now)":
                    lens._engine.energy_outside(pts[:, 0], pts[:, 1])
                ts.append(time.perf_counter() - t)
            res[label] = min(ts)
        print(f"  {name:10s} " + "  ".join(f"{k} {v:.3f}s" for k, v in res.items()))


def metrics_one_pass(nrep: int = 3):
    print("Strehl + FWHM + energy outside at 64 field points: one pass vs three calls (telescope), best of", nrep)
    lens = load_lens("telescope")
    x, y = np.random.default_rng(1).uniform(-0.7, 0.7, (2, 64))
    lens.psf_metrics(x[:2], y[:2])
    for label, f in (("one pass", lambda: lens.psf_metrics(x, y)),
                     ("three calls", lambda: (lens.strehl(x, y), lens.fwhm_px(x, y), lens.energy_outside(x, y)))):
        ts = []
        for _ in range(nrep):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        print(f"  {label:12s} {min(ts):.3f}s")


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
    energy_outside_convergence()
    box_check_cost()
    metrics_one_pass()
    timing()
