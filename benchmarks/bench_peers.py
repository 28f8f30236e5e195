"""Our fast blur against the real deepinv ``SpaceVaryingBlur``, at equal threads and equal error (issue 9).

Run in the peer venv (``make peers-venv`` creates it; see benchmarks/peers/README.md)::

    PYTHONPATH=. /work/peers-venv/bin/python benchmarks/bench_peers.py [--quick] [--presets relay,telescope]

Nothing is asserted: every figure is printed beside a baseline timed in the same process, in the same rounds
(the callables of one preset are called in turn within each round; best of ``--rounds`` after one warm-up call),
with the load average at start and end. For every preset (microscope: its 2048 x 2048 frame at origin (0, 0);
relay: the whole 1536 x 2048 field; telescope: the whole 2000 x 3000 field; ``--quick``: 512 x 512 windows at
(0, 0)), with ``torch.set_num_threads(N)`` for deepinv and ``workers=N`` for ours (``--threads``, default 2):

1. *same operator*: deepinv's ``SpaceVaryingBlur`` (deepinv 0.5.0, its own code, unmodified) built from our
   eigen-PSFs (``op.basis.eigen_psfs``, as ``filters`` ``(1, 1, K, k, k)``) and our coefficient maps
   (``op.maps()``, as ``multipliers`` ``(1, 1, K, H, W)``), ``padding="constant"`` (zeros), ``use_fft=True`` (its
   fast path for kernels this size) and ``mask_first=True`` (``y = sum_k h_k * (w_k . x)``, our model). That is
   our operator's zero boundary: deepinv pads the input with ``k // 2`` zeros per side, convolves circularly on
   the padded grid and crops the centre, which for odd ``k`` is the linear convolution cropped to the window.
   Checked on the whole window: the max relative difference of the outputs (forward and adjoint) is printed.
2. *equal error*: relative L2 error of each side against our exact operator (every source pixel spread with its
   own PSF) on windows at (0, 0), where the blur is strongest: a lattice of point sources ``k // 2`` apart on the
   ``--crop`` window (the hardest input, the one our rank rule uses; the exact PSFs are computed at the points
   only) and the camera image on the smaller ``--image-crop`` window (``ExactOperator``, one PSF per pixel: a
   telescope PSF costs tens of ms). deepinv is run at the smallest rank ``K'`` (the leading eigen-PSFs and maps
   of the same basis) whose point-source error is at most ours (to 0.1 % of its value: float rounding); its
   time at ``K'`` on the full window is the equal-error figure; both errors of both sides are printed. Target
   (issue 9): ours >= 2x deepinv on every preset, forward and adjoint (the smaller ratio is judged).
3. ``--variant KEY=VALUE[,KEY=VALUE...]`` (repeatable): one more "ours" row per option set passed to
   ``psfsim.operators.make_operator`` (e.g. ``--variant local=True``), paired with deepinv at its own smallest
   rank whose error is at most that variant's (goal for the tile-local variant: >= 4x on relay and telescope).
   An option set that ``make_operator`` rejects is reported and skipped. ``--ours-option KEY=VALUE``
   (repeatable) applies to every "ours" row, the baseline included.
4. ``--with-torch``: our torch module of the window (``psfsim.operators.to_torch``), forward and adjoint, as
   one more row against the same deepinv figures.

deepinv needs torchvision to import; the peer venv has none that works with its CPU torch, so this script puts
``benchmarks/peers/shim`` (a torchvision stand-in for deepinv's import chain only, never shipped) first on
``sys.path``. ``--help`` works anywhere; without deepinv the script says how to create the peer venv (exit 2).
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import rel_err, test_image  # noqa: E402
from _timing import interleaved  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHIM = HERE / "peers" / "shim"

#: preset -> (origin, shape or None for the whole field)
PRESETS = {"microscope": ((0, 0), (2048, 2048)), "relay": ((0, 0), None), "telescope": ((0, 0), None)}
QUICK_SHAPE = (512, 512)
#: relative slack of "deepinv's error <= ours": float32 rounding of two implementations of one operator
ERR_SLACK = 1e-3
ROW = ("{:<10s} {:<44s} {:>4s} {:>4s} | {:>9s} {:>9s} {:>6s} | {:>9s} {:>9s} {:>6s} | {:>15s} {:>15s} | {}")


def parse_options(items, flag: str) -> dict:
    """``["local=True", "tol=0.02,rank=5"]`` -> ``{"local": True, "tol": 0.02, "rank": 5}`` (values as Python
    literals where they parse, strings otherwise); a malformed item is refused naming it."""
    out = {}
    for item in items:
        for part in filter(None, item.split(",")):
            key, sep, value = part.partition("=")
            if not sep or not key.strip().isidentifier():
                raise SystemExit(f"{flag} {item!r}: expected KEY=VALUE[,KEY=VALUE...] with KEY a keyword name")
            try:
                out[key.strip()] = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                out[key.strip()] = value.strip()
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="See the module docstring and benchmarks/peers/README.md.")
    p.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets (default: all three)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_SHAPE[0]} x {QUICK_SHAPE[1]} windows at (0, 0)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads and our workers= (default 2)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds after a warm-up (default 5)")
    p.add_argument("--crop", type=int, default=192,
                   help="side of the window at (0, 0) of the point-lattice error vs exact (default 192)")
    p.add_argument("--image-crop", type=int, default=48,
                   help="side of the window at (0, 0) of the camera-image error vs exact (one exact PSF per "
                        "pixel: ~2 min for the telescope at 48 on a loaded machine; default 48, 0 skips)")
    p.add_argument("--ours-option", action="append", default=[], metavar="KEY=VALUE",
                   help="make_operator option for every 'ours' row (repeatable)")
    p.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                   help="an extra 'ours' row with these make_operator options (repeatable), e.g. local=True")
    p.add_argument("--with-torch", action="store_true", help="also time our torch module of the window")
    a = p.parse_args(argv)
    a.presets = [s.strip() for s in a.presets.split(",") if s.strip()]
    bad = [s for s in a.presets if s not in PRESETS]
    if bad or not a.presets:
        p.error(f"--presets {','.join(bad) or '(empty)'}: expected some of {', '.join(PRESETS)}")
    if a.image_crop < 0:
        p.error(f"--image-crop {a.image_crop}: expected 0 (skip) or a positive integer")
    for name in ("threads", "rounds", "crop"):
        if getattr(a, name) < 1:
            p.error(f"--{name} {getattr(a, name)}: expected a positive integer")
    a.base_options = parse_options(a.ours_option, "--ours-option")
    a.variants = [parse_options([v], "--variant") for v in a.variant]
    return a


def import_deepinv():
    """``(deepinv module, SpaceVaryingBlur)`` through the torchvision shim; exits 2 with the setup recipe if
    deepinv is not installed in this interpreter."""
    sys.path.insert(0, str(SHIM))
    try:
        import deepinv
        from deepinv.physics import SpaceVaryingBlur
    except ModuleNotFoundError as exc:
        print(f"deepinv is not importable here ({exc}); this benchmark runs in the peer venv:\n"
              f"  make peers-venv      # or: bash benchmarks/peers/setup_peers_venv.sh (PEERS_VENV=/work/peers-venv)\n"
              f"  PYTHONPATH=. /work/peers-venv/bin/python benchmarks/bench_peers.py\n"
              f"(interpreter: {sys.executable}; see benchmarks/peers/README.md)", file=sys.stderr)
        raise SystemExit(2)
    import torchvision

    if not getattr(torchvision, "IS_BENCHMARK_SHIM", False):
        print(f"note: a real torchvision was found before the shim ({torchvision.__file__})")
    return deepinv, SpaceVaryingBlur


# ------------------------------------------------------------------------------------------------ helpers


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def point_lattice(shape, k: int):
    """Unit impulses ``max(1, k // 2)`` pixels apart from ``(k // 4, k // 4)``, float32: overlapping PSFs."""
    import numpy as np

    m = np.zeros(shape, np.float32)
    step, first = max(1, k // 2), k // 4
    m[first::step, first::step] = 1
    return m


def max_rel_diff(a, b) -> float:
    """``max |a - b| / max |b|``: the largest difference relative to the output's scale."""
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


class DeepinvBlur:
    """deepinv's ``SpaceVaryingBlur`` (unmodified) as numpy ``forward`` / ``adjoint`` of one ``(H, W)`` float32
    image: ``filters`` ``(1, 1, K, k, k)`` our eigen-PSFs, ``multipliers`` ``(1, 1, K, H, W)`` our maps, zero
    padding, FFT convolutions, multipliers before the convolutions (our model)."""

    def __init__(self, SpaceVaryingBlur, eigen_psfs, maps):
        import numpy as np
        import torch

        self.rank = int(eigen_psfs.shape[0])
        self.phys = SpaceVaryingBlur(
            filters=torch.from_numpy(np.ascontiguousarray(eigen_psfs, np.float32))[None, None],
            multipliers=torch.from_numpy(np.ascontiguousarray(maps, np.float32))[None, None],
            padding="constant", use_fft=True, mask_first=True)

    def forward(self, m):
        import torch

        with torch.no_grad():
            return self.phys.A(torch.from_numpy(m)[None, None])[0, 0].numpy()

    def adjoint(self, y):
        import torch

        with torch.no_grad():
            return self.phys.A_adjoint(torch.from_numpy(y)[None, None])[0, 0].numpy()


def make_ours(lens, *, shape, origin, threads, options):
    """``(operator, None)`` or ``(None, reason)`` when make_operator rejects the options."""
    from psfsim.operators import make_operator

    try:
        return make_operator(lens, shape=shape, origin=origin, workers=threads, **options), None
    except Exception as exc:  # TypeError (unknown keyword) or PsfsimError (bad value)
        return None, f"{type(exc).__name__}: {exc}"


def embedded(op):
    """``x (h, w) -> y (h, w)``: the window operator applied to ``x`` placed at its top-left corner (zero elsewhere),
    cut to that corner. For a window at the frame's origin this is the linear map of an operator built for the
    corner window (zero boundary both ways), but computed by the window's own operator: a tile-local operator is
    judged with the block layout and per-block ranks it really uses on the window."""
    import numpy as np

    def apply(x):
        big = np.zeros(op.shape, np.float32)
        big[: x.shape[0], : x.shape[1]] = x
        return op(big)[: x.shape[0], : x.shape[1]]

    return apply


def label(options) -> str:
    return "ours" + (f"[{','.join(f'{k}={v}' for k, v in options.items())}]" if options else "")


# --------------------------------------------------------------------------------------------- one preset


def exact_sparse(lens, m, *, origin=(0, 0)):
    """Our exact operator's output (``ExactOperator.forward``: every source pixel spread with its own PSF, zero
    boundary) for an input with few non-zero pixels, computing PSFs at those pixels only: the exact reference of
    a point lattice on a window far larger than ``ExactOperator`` could afford (it computes a PSF per pixel)."""
    import numpy as np
    from psfsim.field import field_coords

    H, W = m.shape
    k = lens.psf_sampling.size_px
    c = k // 2
    rr, cc = np.nonzero(m)
    xy = field_coords(lens, origin=origin, shape=m.shape)
    psfs = lens.psfs(xy[0][rr, cc], xy[1][rr, cc]).reshape(len(rr), k, k)
    full = np.zeros((H + k - 1, W + k - 1))
    for r, col, v, p in zip(rr, cc, m[rr, cc], psfs):
        full[r : r + k, col : col + k] += v * p  # source (r, col) lands on rows r - c .. r - c + k - 1
    return full[c : c + H, c : c + W]


class Errors:
    """Relative L2 errors against our exact operator on windows at (0, 0): a point lattice on the ``crop`` x
    ``crop`` window (PSFs at the points only: cheap) and the camera image on the ``img`` x ``img`` window
    (:class:`psfsim.operators.ExactOperator`, one PSF per pixel: slow, hence smaller; 0 skips it)."""

    def __init__(self, lens, crop, img):
        import numpy as np
        from psfsim.operators import ExactOperator

        k = lens.psf_sampling.size_px
        self.pts_shape, self.img_shape = crop, img
        self.pts = point_lattice(crop, k)
        t = time.perf_counter()
        self.pts_ref = exact_sparse(lens, self.pts)
        t_pts = time.perf_counter() - t
        self.img = self.img_ref = None
        if img[0] > 0:
            t = time.perf_counter()
            self.img = test_image(img)
            self.img_ref = ExactOperator(lens, shape=img, origin=(0, 0))(self.img)
        print(f"exact references: {int(np.count_nonzero(self.pts))} points on {crop[0]} x {crop[1]} ({t_pts:.1f} s)"
              + (f", camera on {img[0]} x {img[1]} ({time.perf_counter() - t:.1f} s)" if img[0] > 0 else ""))

    def __call__(self, apply_pts, apply_img) -> tuple[float, float]:
        """``(points, camera)`` errors of the operators on the two windows (camera NaN when skipped)."""
        e_img = float("nan") if self.img is None else rel_err(apply_img(self.img), self.img_ref)
        return rel_err(apply_pts(self.pts), self.pts_ref), e_img


def fmt_err(e) -> str:
    return f"{100 * e[0]:.3f}/{100 * e[1]:.3f}%"


def bench_preset(name, args, SpaceVaryingBlur):
    """Build, check and time ours and deepinv on one preset; print its table and return its rows."""
    import numpy as np
    import psfsim
    from psfsim.operators import lowrank_basis, to_torch

    lens = psfsim.load_lens(name)
    origin, shape = PRESETS[name]
    shape = QUICK_SHAPE if args.quick else (shape or tuple(lens.field.shape_px))
    k = lens.psf_sampling.size_px
    crop = (min(args.crop, shape[0]), min(args.crop, shape[1]))
    img_crop = (min(args.image_crop, shape[0]), min(args.image_crop, shape[1]))
    print(f"\n== {name}: window {shape[0]} x {shape[1]} at {origin}, PSF box {k} px, {args.threads} threads "
          f"(load {load_avg()})")

    # --- ours: the baseline and each variant, on the window and on the two error windows at (0, 0)
    ours = []  # (label, window operator, errors)
    errors = None
    for opts in [dict(args.base_options)] + [{**args.base_options, **v} for v in args.variants]:
        t = time.perf_counter()
        op, why = make_ours(lens, shape=shape, origin=origin, threads=args.threads, options=opts)
        if op is None:
            print(f"{label(opts)}: make_operator rejected these options ({why}); row skipped")
            continue
        if tuple(origin) == (0, 0):  # the error windows are the window's own corner: judge the window's operator
            small = [(embedded(op), None), (embedded(op) if img_crop[0] else None, None)]
        else:
            small = [make_ours(lens, shape=s, origin=(0, 0), threads=args.threads, options=opts) if s[0]
                     else (None, None) for s in (crop, img_crop)]
        if small[0][0] is None or (img_crop[0] and small[1][0] is None):
            print(f"{label(opts)}: make_operator rejected the error windows ({small[0][1] or small[1][1]}); skipped")
            continue
        ranks = getattr(op, "local_ranks", None)
        extra = f" (per block: mean {np.mean(ranks):.1f}, max {max(ranks)}, {len(ranks)} blocks)" if ranks else ""
        print(f"{label(opts)}: K = {getattr(op, 'rank', '?')}{extra}, built in {time.perf_counter() - t:.1f} s")
        if errors is None:
            errors = Errors(lens, crop, img_crop)
        ours.append((label(opts), op, errors(small[0][0], small[1][0])))
    if not ours:
        return []
    base = ours[0][1]

    # --- deepinv's error by rank: the leading K' eigen-PSFs and maps of the same basis (extended past our K)
    G = len(base.basis.singular_values)
    Kmax = min(G, max(getattr(op, "rank", 0) for _, op, _ in ours) + 8)
    full = base.basis if base.rank >= Kmax else lowrank_basis(
        lens, rank=Kmax, **{key: v for key, v in args.base_options.items() if key == "tol"})
    Kmax = full.rank
    maps_pts = full.coefficient_maps(origin=(0, 0), shape=crop)
    maps_img = full.coefficient_maps(origin=(0, 0), shape=img_crop) if img_crop[0] > 0 else None
    dinv_err = {}
    for K in range(1, Kmax + 1):
        dp = DeepinvBlur(SpaceVaryingBlur, full.eigen_psfs[:K], maps_pts[:K])
        di = DeepinvBlur(SpaceVaryingBlur, full.eigen_psfs[:K], maps_img[:K]) if maps_img is not None else None
        dinv_err[K] = errors(dp.forward, di.forward if di else None)
    print("deepinv error vs exact by rank (points/camera): "
          + ", ".join(f"K={K}: {fmt_err(e)}" for K, e in dinv_err.items()))

    def smallest_rank(target):
        """deepinv's smallest rank whose point-source error is at most ``target``'s (to float rounding)."""
        ok = [K for K, e in dinv_err.items() if e[0] <= target[0] * (1 + ERR_SLACK)]
        return min(ok) if ok else None

    # --- the callables timed on the window, and the (ours, deepinv) pairs of the table
    img = test_image(shape)
    y = np.random.default_rng(0).random(shape, dtype=np.float32)
    fns, pairs, dinv_ops = {}, [], {}

    def dinv(K):
        if K not in dinv_ops:
            src = base.basis if K <= base.rank else full
            maps = (base.maps(slice(0, K)) if K <= base.rank
                    else full.coefficient_maps(origin=origin, shape=shape, ks=slice(0, K)))
            dinv_ops[K] = d = DeepinvBlur(SpaceVaryingBlur, src.eigen_psfs[:K], maps)
            fns[f"deepinv K={K} fwd"] = lambda: d.forward(img)
            fns[f"deepinv K={K} adj"] = lambda: d.adjoint(y)
        return K

    for i, (lab, op, err) in enumerate(ours):
        fns[f"{lab} fwd"] = lambda op=op: op(img)
        fns[f"{lab} adj"] = lambda op=op: op.adjoint(y)
        K_eq = smallest_rank(err)
        if i == 0 and K_eq != base.rank:
            pairs.append((lab, getattr(op, "rank", "?"), "same K, same maps", dinv(base.rank), err))
        if K_eq is None:  # ours is more accurate than deepinv at every rank tried: compare with the most accurate
            print(f"{lab}: no deepinv rank up to {Kmax} reaches its point-source error {100 * err[0]:.3f} %: "
                  f"compared with deepinv at K = {Kmax} (still less accurate)")
            pairs.append((lab, getattr(op, "rank", "?"), "lower error (deepinv's max K)", dinv(Kmax), err))
            continue
        same = " = same K, maps" if (i == 0 and K_eq == base.rank) else ""
        pairs.append((lab, getattr(op, "rank", "?"), f"equal error{same}", dinv(K_eq), err))
    if args.with_torch:
        import torch

        tb, ti, ty = to_torch(base), torch.from_numpy(img), torch.from_numpy(y)

        def t_fwd():
            with torch.no_grad():
                return tb(ti)

        def t_adj():
            with torch.no_grad():
                return tb.adjoint(ty)

        fns["ours-torch fwd"], fns["ours-torch adj"] = t_fwd, t_adj
        pairs.append(("ours-torch", base.rank, "same K, same maps", dinv(base.rank), ours[0][2]))

    # --- same operator: deepinv's output against ours on the whole window, forward and adjoint
    d = dinv_ops[dinv(base.rank)]
    print(f"same operator (K = {base.rank}, whole window): max |deepinv - ours| / max |ours| = "
          f"{max_rel_diff(d.forward(img), base(img)):.1e} forward, {max_rel_diff(d.adjoint(y), base.adjoint(y)):.1e} "
          f"adjoint (float32 rounding: ~1e-6)")

    print(f"timing {len(fns)} callables, {args.rounds} interleaved rounds after a warm-up ...", flush=True)
    t = interleaved(fns, args.rounds)
    rows = []
    for lab, K_ours, pairing, K, err in pairs:
        o_f, o_a, d_f, d_a = t[f"{lab} fwd"], t[f"{lab} adj"], t[f"deepinv K={K} fwd"], t[f"deepinv K={K} adj"]
        r = min(d_f / o_f, d_a / o_a)
        goal = 4 if ("local" in lab and name != "microscope") else 2
        verdict = (f">= {goal}x: {'met' if r >= goal else 'MISSED'}"
                   if pairing.startswith(("equal", "lower")) else "")
        rows.append(ROW.format(name, f"{lab} vs deepinv, {pairing}", str(K_ours), str(K), f"{1e3 * o_f:.1f}",
                               f"{1e3 * d_f:.1f}", f"x{d_f / o_f:.2f}", f"{1e3 * o_a:.1f}", f"{1e3 * d_a:.1f}",
                               f"x{d_a / o_a:.2f}", fmt_err(err), fmt_err(dinv_err[K]), verdict))
    print(header())
    print("\n".join(rows))
    return rows


def header() -> str:
    return ROW.format("preset", "pairing", "K", "K'", "ours fwd", "dinv fwd", "ratio", "ours adj", "dinv adj",
                      "ratio", "err ours", "err deepinv", "target (ratio = deepinv / ours)")


def main(argv=None) -> int:
    args = parse_args(argv)
    deepinv_mod, SpaceVaryingBlur = import_deepinv()
    sys.path.insert(0, str(REPO))
    import numpy as np
    import torch

    import psfsim

    torch.set_num_threads(args.threads)
    start = load_avg()
    print(f"bench_peers: deepinv {deepinv_mod.__version__} (torchvision: benchmark shim), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), "
          f"numpy {np.__version__}, psfsim from {Path(psfsim.__file__).parent}")
    print(f"load average at start: {start}; {os.cpu_count()} CPUs; times in ms, best of {args.rounds} interleaved "
          f"rounds; errors vs exact on the {args.crop}^2 crop at (0, 0): point lattice / camera image")
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        print("WARNING: the load is above the core count: torch's OpenMP/MKL threads (deepinv) lose more than our "
              "FFTW threads to oversubscription, which biases the ratios toward ours; rerun on a quieter machine, "
              "compare with --threads 1, or set OMP_WAIT_POLICY=PASSIVE")
    rows = []
    for name in args.presets:
        rows += bench_preset(name, args, SpaceVaryingBlur)
    print("\n== summary (ratio = deepinv time / ours: > 1 means ours is faster)")
    print(header())
    for r in rows:
        print(r)
    print(f"load average at start: {start}; at end: {load_avg()}")
    if max(os.getloadavg()[0], float(start.split()[0])) > (os.cpu_count() or 1):
        print("(load above the core count during the run: see the WARNING at the top)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
