"""Benchmark of the tiled pipelines (issue 13): memory flat in frame size, tiled vs whole-frame throughput.

Every figure comes from this run:

1. Peak resident memory per frame size (2048^2, 8192^2, 16384^2 float32 frames, ``.npy`` memory maps written
   to a temporary folder), each run in its own subprocess (``ru_maxrss`` of that process), for a small model
   (an untrained CGUNet(2), 4 base channels: the cost of the pipeline, not of a big network) and for the
   Wiener route. Target of the issue: the largest frame peaks below 2x the smallest. The figure is the peak
   RSS, which counts the pages of the input memory map that the process touched (file-backed, reclaimable) as
   well as its own memory: both are printed (``VmHWM``, and ``RssAnon`` at the end).
2. Throughput of the tiled run against one whole-frame pass of the same model on 2048^2, in one process
   (threaded scheduler, default tile 1024): the ratio ``tiled Mpix/s / whole-frame Mpix/s`` (target >= 0.85).
3. Mpix/s of the Wiener and simulate routes on 8192^2 (the tiled runs of part 1 for Wiener, one more for
   simulate).

``--quick`` uses 512^2 / 1024^2 / 2048^2 and 2048^2 (a minute or two on 2 cores). Run::

    python benchmarks/bench_pipelines.py [--quick] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def big_lens(n: int):
    """The microscope preset with a field of ``n x n`` pixels (so every frame size lies inside it)."""
    import psfsim

    d = psfsim.load_lens("microscope").to_dict()
    d["field"] = dict(d.get("field", {}), shape_px=[n, n])
    d["field"].pop("axis_px", None)
    d["name"] = f"microscope-{n}"
    return psfsim.lens_from_dict(d)


def write_frame(path: Path, n: int, seed: int = 0) -> None:
    """An ``n x n`` float32 frame on disk (a memory map written in strips: never whole in memory): sparse
    point sources on a smooth background, in [0, ~1]."""
    a = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, n))
    rng = np.random.default_rng(seed)
    strip = 1024
    x = np.arange(n, dtype=np.float32)
    for r in range(0, n, strip):
        h = min(strip, n - r)
        yy = np.arange(r, r + h, dtype=np.float32)[:, None]
        s = 0.2 + 0.1 * np.sin(x[None, :] / 37.0) * np.cos(yy / 53.0)
        s = s + (rng.random((h, n), dtype=np.float32) > 0.999) * rng.random((h, n), dtype=np.float32)
        a[r:r + h] = s
    a.flush()
    del a


def write_checkpoint(path: Path, lens) -> None:
    import recon
    from psfsim.dataset.reader import Normalisation

    import torch

    torch.manual_seed(0)
    model = recon.build_model("cgunet", depth=2, base_channels=4)
    recon.save_checkpoint(path, model, lens=lens,
                          normalisation=Normalisation(kind="source_region_max", margin_px=16, vmin=0.0, vmax=1.0),
                          dataset_identity={"bench": "untrained"}, train_args={}, metrics={}, input_peak=1.0)


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


# -- the child: one tiled run, in a fresh process ---------------------------------------------------------------
def child(route_name: str, frame_path: str, out: str, lens_path: str, ckpt: str, tile: int) -> None:
    import psfsim
    from pipelines.frames import open_frame
    from pipelines.routes import model_route, simulate_route, wiener_route
    from pipelines.runner import run

    lens = psfsim.lens_from_dict(json.loads(Path(lens_path).read_text()))
    if route_name == "model":
        route = model_route(ckpt, device="cpu", batch=1)
    elif route_name == "wiener":
        route = wiener_route(lens)
    else:
        route = simulate_route(lens)
    res = run(route, open_frame(frame_path), out, tile=tile, origin=(0, 0), progress=False, qc=False)
    print(json.dumps({"route": route_name, "mpix_s": res.mpix_per_s, "elapsed_s": res.elapsed_s,
                      # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across execve, so a child
                      # started by a parent that had just written a 1 GiB frame reported the parent's size
                      "peak_rss_mib": _status_kib("VmHWM") / 1024, "anon_mib": _status_kib("RssAnon") / 1024}))


def run_child(route_name, frame_path, out, lens_path, ckpt, tile) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [sys.executable, __file__, "--child", route_name, str(frame_path), str(out), str(lens_path), str(ckpt),
           str(tile)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"child {route_name} {frame_path} failed:\n{p.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


# -- part 2: tiled vs whole frame in one process -------------------------------------------------------------------
def tiled_vs_whole(frame_path: Path, ckpt: Path, out: Path, tile: int) -> dict:
    from benchmarks._timing import best_of
    from pipelines.frames import open_frame
    from pipelines.routes import model_route
    from pipelines.runner import run

    route = model_route(ckpt, device="cpu", batch=1)
    frame = open_frame(frame_path)
    stats = route.prepare(frame, 0, origin=(0, 0))
    H, W = frame.frame_shape
    whole = frame.read(0, slice(0, H), slice(0, W))
    t_whole = best_of(lambda: route([whole], [(0, 0)], stats), 2)

    def tiled():
        shutil.rmtree(out, ignore_errors=True)
        run(route, frame, out, tile=tile, origin=(0, 0), progress=False, qc=False)

    t_tiled = best_of(tiled, 2)  # includes reading the frame, the NaN scan, prepare and writing the store
    shutil.rmtree(out, ignore_errors=True)
    mpix = H * W / 1e6
    return {"whole_mpix_s": mpix / t_whole, "tiled_mpix_s": mpix / t_tiled, "ratio": t_whole / t_tiled}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="512^2 / 1024^2 / 2048^2 frames (a minute or two)")
    p.add_argument("--keep", help="folder for the frames (default: a temporary folder, removed)")
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--sizes", help="comma-separated frame sizes (default 2048,8192,16384; --quick 512,1024,2048)")
    p.add_argument("--model-max", type=int, help="largest frame the model route runs on (default: every size)")
    p.add_argument("--rate-size", type=int, help="the frame size of the Mpix/s figures (default 8192; --quick 2048)")
    p.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        r, f, o, lp, ck, tile = args.child
        child(r, f, o, lp, ck, int(tile))
        return 0
    sizes = [512, 1024, 2048] if args.quick else [2048, 8192, 16384]
    if args.sizes:
        sizes = sorted(int(v) for v in args.sizes.split(","))
    rate_size = args.rate_size or (2048 if args.quick else 8192)
    if rate_size not in sizes or 2048 not in sizes:
        p.error(f"--rate-size {rate_size} and 2048 (the tiled-vs-whole frame) must be among the sizes {sizes}")
    model_max = args.model_max or max(sizes)
    tile = min(args.tile, sizes[0])  # one tile at least on the smallest frame
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_pipelines."))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        lens = big_lens(max(sizes))
        lens_path = tmp / "lens.json"
        lens_path.write_text(json.dumps(lens.to_dict()))
        ckpt = tmp / "cgunet2.pt"
        write_checkpoint(ckpt, lens)
        print(f"{os.cpu_count()} CPU(s); tile {tile}; lens {lens.name} (PSF {lens.psf_sampling.size_px} px); "
              f"model: untrained CGUNet(2), 4 base channels; frames in {tmp}")
        print("\n1. peak RSS per frame size (one subprocess per run, threaded scheduler)")
        print(f"{'route':8s} {'frame':>12s} {'Mpix/s':>8s} {'time s':>8s} {'peak RSS MiB':>13s} {'RssAnon MiB':>12s}")
        peaks: dict[str, list[float]] = {}
        rates: dict[str, float] = {}
        for n in sizes:
            f = tmp / f"frame{n}.npy"
            t = time.perf_counter()
            write_frame(f, n)
            gen = time.perf_counter() - t
            for r in ("model", "wiener"):
                if r == "model" and n > model_max:
                    continue
                res = run_child(r, f, tmp / f"out_{r}_{n}.zarr", lens_path, ckpt, tile)
                peaks.setdefault(r, []).append(res["peak_rss_mib"])
                if n == rate_size:
                    rates[r] = res["mpix_s"]
                print(f"{r:8s} {f'{n}^2':>12s} {res['mpix_s']:8.2f} {res['elapsed_s']:8.1f} "
                      f"{res['peak_rss_mib']:13.0f} {res['anon_mib']:12.0f}", flush=True)
            if n == rate_size:
                res = run_child("simulate", f, tmp / f"out_sim_{n}.zarr", lens_path, ckpt, tile)
                rates["simulate"] = res["mpix_s"]
            if n != 2048 and f.exists():
                f.unlink()  # disk: only the 2048^2 frame is needed again (part 2)
            print(f"  (frame of {n}^2 written in {gen:.1f} s)", flush=True)
        for r, v in peaks.items():
            print(f"{r}: peak RSS {sizes[len(v) - 1]}^2 / {sizes[0]}^2 = {v[-1] / v[0]:.2f} (target < 2)")
        print(f"\n3. Mpix/s on {rate_size}^2: wiener {rates['wiener']:.2f}, simulate {rates['simulate']:.2f}, "
              f"model {rates['model']:.2f}")
        f = tmp / "frame2048.npy"
        tw = tiled_vs_whole(f, ckpt, tmp / "out_tw.zarr", min(args.tile, 1024))
        print(f"\n2. tiled vs whole frame, same model, {np.load(f, mmap_mode='r').shape[0]}^2, tile "
              f"{min(args.tile, 1024)}: whole {tw['whole_mpix_s']:.2f} Mpix/s, tiled {tw['tiled_mpix_s']:.2f} "
              f"Mpix/s, ratio {tw['ratio']:.2f} (target >= 0.85)")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
