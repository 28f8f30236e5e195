"""Does the data path keep up with the model? Loader samples/s against model training samples/s, same run.

Run: ``python benchmarks/bench_train.py [--data DATA.zarr] [--n 96] [--size 160] [--crop 128] [--batch 8]
[--epochs 2] [--device auto]``. Without ``--data`` a store of ``--n`` samples of ``--size`` (``cells`` on the
``microscope`` preset) is simulated once into ``--cache-dir``. Nothing is asserted; prints:

1. loader samples/s of :func:`recon.data.loader` over the train split (random ``--crop`` crops with their
   coordinates, batches of ``--batch``) for workers 0, 2 and 4 (4 only with >= 4 CPU cores), from the store
   and with ``cache=True`` (the split in memory); first epoch included (worker start-up counts);
2. the model's training samples/s: CGUNet(3) forward + backward + Adam step on ``--batch`` x 1 x crop x crop
   (best of ``--repeats`` after a warm-up), on ``--device``;
3. the ratio loader / model for each loader (> 1: the loader keeps up).
The on-the-fly generator (``OnTheFlyDataset``) is measured too (samples/s of ``batch(step)`` on the device).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import psfsim  # noqa: E402
import recon  # noqa: E402
from recon.data import OnTheFlyDataset, StoreDataset, loader  # noqa: E402


def store(args) -> Path:
    if args.data:
        return Path(args.data)
    path = Path(args.cache_dir) / f"bench_train_microscope_cells_n{args.n}_s{args.size}.zarr"
    if not path.exists():
        lens = psfsim.load_lens("microscope", check_psf_box=False)
        spec = psfsim.SimulationSpec(lens=lens.to_dict(), source="cells", n=args.n, size=(args.size, args.size),
                                     seed=0, photons=1000.0, read_noise=2.0, split=(0.8, 0.1, 0.1))
        t = time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)
        psfsim.simulate(spec, path, workers=min(2, os.cpu_count() or 1), progress=False)
        print(f"(simulated {path} in {time.perf_counter() - t:.0f} s)")
    return path


def loader_rate(path, args, workers: int, cache: bool, device) -> float:
    ds = StoreDataset(path, "train", crop=args.crop, seed=0, multiple_of=8, cache=cache)
    dl = loader(ds, args.batch, workers, device)
    n = 0
    t = time.perf_counter()
    for e in range(args.epochs):
        ds.set_epoch(e)
        for b in dl:
            b = b.to(device, non_blocking=True)
            n += len(b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def model_rate(args, device) -> float:
    lens = psfsim.load_lens("microscope", check_psf_box=False)
    torch.manual_seed(0)
    model = recon.build_model("cgunet", depth=3).to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.rand(args.batch, 1, args.crop, args.crop, device=device)
    y = torch.rand_like(x)
    c = recon.batch_coords(lens, [(0, 0)] * args.batch, (args.crop, args.crop), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x, c), y)
        loss.backward()
        opt.step()

    step()
    best = float("inf")
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return args.batch / best


def otf_rate(args, device) -> float:
    lens = psfsim.load_lens("microscope", check_psf_box=False)
    otf = OnTheFlyDataset(lens, "cells", crop=args.crop, batch=args.batch, noise=psfsim.NoiseModel(1000.0, 2.0),
                          device=device)
    otf.batch(0)
    t = time.perf_counter()
    for s in range(1, 4):
        otf.batch(s)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 3 * args.batch / (time.perf_counter() - t)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data")
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache-dir", default="/tmp/psfsim-bench")
    args = ap.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    cores = os.cpu_count() or 1
    path = store(args)
    r = psfsim.DatasetReader(path)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cores} CPU cores, device {device}; store "
          f"{path.name}: {len(r.splits['train'])} train samples of {r.size[0]}x{r.size[1]}, crop {args.crop}, "
          f"batch {args.batch}, {args.epochs} epochs")
    m = model_rate(args, device)
    print(f"\nmodel  CGUNet(3) forward+backward+Adam, batch {args.batch} x 1 x {args.crop}^2: {m:8.1f} samples/s")
    print(f"\n{'loader':26s} {'samples/s':>10s} {'loader/model':>13s}")
    for workers in [w for w in (0, 2, 4) if w <= max(2, cores) and (w < 4 or cores >= 4)]:
        for cache in (False, True):
            v = loader_rate(path, args, workers, cache, device)
            print(f"{f'workers {workers}' + (', cache' if cache else ''):26s} {v:10.1f} {v / m:13.2f}")
    v = otf_rate(args, device)
    print(f"{'on-the-fly (cells, blur)':26s} {v:10.1f} {v / m:13.2f}")


if __name__ == "__main__":
    main()
