"""FFT backend choice: pyFFTW (cached FFTW_MEASURE plans) vs scipy.fft at the sizes psfsim uses.

Run: ``python benchmarks/bench_fft.py``. Prints the time of a real 2-D forward + inverse round trip (float32)
for each size and backend, and the ratio pyfftw / scipy measured in the same run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from psfsim.fft import get_backend  # noqa: E402

SIZES = [(288, 288), (16, 288, 288), (544, 544), (2080, 2080)]  # training tiles (+batch), 512 frames, 2048 frames


def round_trip(be, a, nrep):
    s = a.shape[-2:]
    be.irfft2(be.rfft2(a), s=s)  # plan
    ts = []
    for _ in range(nrep):
        t = time.perf_counter()
        be.irfft2(be.rfft2(a), s=s)
        ts.append(time.perf_counter() - t)
    return min(ts)


def main():
    print("real FFT round trip (rfft2 + irfft2), float32, best of N")
    print(f"{'shape':>16s} {'scipy':>10s} {'pyfftw':>10s}  pyfftw/scipy")
    for shape in SIZES:
        a = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        nrep = 5 if a.size > 2e6 else 20
        t_s = round_trip(get_backend("scipy"), a, nrep)
        t_f = round_trip(get_backend("pyfftw"), a, nrep)
        print(f"{str(shape):>16s} {1e3 * t_s:9.2f}ms {1e3 * t_f:9.2f}ms  x{t_f / t_s:.2f}")


if __name__ == "__main__":
    main()
