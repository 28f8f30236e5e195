"""Fast operator accuracy: relative L2 error against the exact operator as the rank K grows, per preset.

Run: ``python benchmarks/bench_rank.py [--size 48]``. For each preset, a window of ``size x size`` at the
frame's top-left corner (the strongest aberrations) is blurred by the exact operator (every pixel its own
PSF) and by the low-rank operator at several ranks and at the automatic choice; prints the error table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import psfsim  # noqa: E402
from psfsim.operators import ExactOperator, lowrank_basis  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=48)
    args = ap.parse_args()
    img = np.random.default_rng(0).random((args.size, args.size))
    for name in psfsim.preset_names():
        lens = psfsim.load_lens(name)
        t = time.perf_counter()
        ref = ExactOperator(lens, shape=img.shape, origin=(0, 0))(img)
        t_exact = time.perf_counter() - t
        basis = lowrank_basis(lens)
        ks = sorted({1, 2, 3, 5, 8, 12, 16, 20, 25, basis.rank})
        row = []
        for K in ks:
            if K > len(basis.singular_values):
                continue
            op = basis.with_rank(K).operator(shape=img.shape, origin=(0, 0), dtype=np.float64)
            err = np.linalg.norm(op(img) - ref) / np.linalg.norm(ref)
            row.append(f"K={K}{'*' if K == basis.rank else ''}: {100 * err:.3f} %")
        print(f"{name:10s} grid {len(basis.rows)}x{len(basis.cols)}, auto K={basis.rank} (exact build {t_exact:.1f} s)")
        print("    " + "  ".join(row))


if __name__ == "__main__":
    main()
