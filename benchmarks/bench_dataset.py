"""Dataset throughput: samples/s writing 256 x 256 samples with the microscope preset, and where time goes.

Run: ``python benchmarks/bench_dataset.py [--n 400] [--workers 2]``. Prints samples/s for 1 and for N
workers, the share of worker time in each stage (source, blur, noise, Wiener, SV Wiener, writing), and
the projected time for the CoordGate paper's 20000-sample dataset. Target: >= 50 samples/s on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import psfsim  # noqa: E402
from psfsim.dataset import SimulationSpec, simulate  # noqa: E402


def run(spec, workers):
    d = Path(tempfile.mkdtemp(prefix="bench_ds_"))
    try:
        return simulate(spec, d / "d.zarr", workers=workers, progress=False)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--source", default="cells")
    args = ap.parse_args()
    lens = psfsim.load_lens("microscope")
    spec = SimulationSpec(lens=lens.to_dict(), source=args.source, n=args.n, size=(256, 256), seed=0,
                          photons=1000.0, read_noise=2.0)
    print(f"microscope preset, {args.n} samples of 256 x 256, source {args.source!r}, Poisson-Gaussian noise")
    for w in sorted({1, args.workers}):
        r = run(spec, w)
        st = r["stage_seconds"]
        tot = sum(st.values())
        shares = ", ".join(f"{k} {100 * v / tot:.0f} %" for k, v in st.items())
        print(f"  workers={w}: {r['rate']:.1f} samples/s ({r['elapsed_s']:.1f} s incl. start-up); {shares}")
        print(f"             20000 samples would take {20000 / r['rate'] / 60:.1f} min")


if __name__ == "__main__":
    main()
