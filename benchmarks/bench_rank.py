"""Fast operator accuracy and the automatic rank: relative L2 error against the exact operator as K grows.

Run: ``python benchmarks/bench_rank.py [--size 48] [--presets microscope,relay]``. For each preset, a window of
``size x size`` at the frame's top-left corner (the strongest aberrations) is blurred by the exact operator
(every pixel its own PSF) and by the low-rank operator at several ranks, for a random image and for point
sources (one every 12 pixels: the hardest input). Printed beside it: the rank rule's own table (the operator's
error on the corner and centre probe lattices, :meth:`psfsim.operators.LowRankBasis.point_errors`), the rank it
picks for 1 %, and the rank the former rule (every grid node's PSF to 0.5 %) would have picked.
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


def former_rank(basis, tol: float) -> int:
    """The rank the former rule chose: the smallest reconstructing every grid node's PSF to ``tol / 2``."""
    U, s, Vt = basis._full["U"], basis._full["s"], basis._full["Vt"]
    A = (U * s) @ Vt
    for K in range(1, len(s) + 1):
        B = (U[:, :K] * s[:K]) @ Vt[:K]
        if (np.linalg.norm(B - A, axis=1) / np.linalg.norm(A, axis=1)).max() <= tol / 2:
            return K
    return len(s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--presets", default=None)
    args = ap.parse_args()
    shape = (args.size, args.size)
    rnd = np.random.default_rng(0).random(shape)
    pts = np.zeros(shape)
    pts[4::12, 4::12] = 1.0
    for name in args.presets.split(",") if args.presets else psfsim.preset_names():
        lens = psfsim.load_lens(name)
        t = time.perf_counter()
        exact = ExactOperator(lens, shape=shape, origin=(0, 0))
        refs = {"random": exact(rnd), "points": exact(pts)}
        t_exact = time.perf_counter() - t
        basis = lowrank_basis(lens)
        table = basis.point_errors()
        old = former_rank(basis, basis.built_with["tol"])
        print(f"{name}: grid {len(basis.rows)}x{len(basis.cols)}, automatic K = {basis.rank} (operator error on the "
              f"probe points {100 * basis.point_error:.3f} %); the former node rule: K = {old} "
              f"(exact operator built in {t_exact:.1f} s)")
        for K in sorted({1, 2, 3, 5, 8, 12, 15, 19, 20, 25, basis.rank, old}):
            if K > len(basis.singular_values):
                continue
            op = basis.with_rank(K).operator(shape=shape, origin=(0, 0), dtype=np.float64)
            errs = {lab: np.linalg.norm(op(img) - refs[lab]) / np.linalg.norm(refs[lab])
                    for lab, img in (("random", rnd), ("points", pts))}
            mark = (" <- automatic" if K == basis.rank else "") + (" <- former rule" if K == old else "")
            print(f"    K={K:3d}: probe table {100 * table[K - 1]:7.3f} %   vs exact, corner window: random "
                  f"{100 * errs['random']:7.3f} %, points {100 * errs['points']:7.3f} %{mark}")


if __name__ == "__main__":
    main()
