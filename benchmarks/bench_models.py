"""recon's model zoo: parameters, forward time, channels_last, and the cost of CoordGate's cached gates.

Run: ``python benchmarks/bench_models.py [--size 1024] [--repeats 3]``. Nothing is asserted; every figure is
printed with its baseline measured in the same run (best of ``--repeats`` after a warm-up call, eval mode,
``torch.inference_mode``). Prints:

1. every model at default settings: parameters, receptive field, forward ms on a ``1 x 1 x size x size``
   input (contiguous and channels_last);
2. CGUNet(3) with cached gates vs UNet(3) (the target: at most 3 % extra), and CGUNet(3) with the cache off
   (what the gates cost when recomputed every call).
CUDA figures are added when a GPU is present.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import best_of  # noqa: E402
import recon  # noqa: E402
from recon.coords import coords_1d, frame_coords  # noqa: E402
from recon.models import MODELS  # noqa: E402


def inputs(name, size, device):
    if MODELS[name].dims == 1:
        return torch.randn(1, 1, size * 16, device=device), coords_1d(size * 16, device=device)
    return torch.randn(1, 1, size, size, device=device), frame_coords((size, size), device=device)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; input 1 x 1 x {args.size} x {args.size} "
          f"(1-D models: 1 x 1 x {16 * args.size})")
    for dev in devices:
        sync = torch.cuda.synchronize if dev == "cuda" else None
        print(f"\n== 1. the zoo at default settings, {dev}")
        print(f"{'model':16s} {'params':>10s} {'RF px':>7s} {'forward ms':>11s} {'channels_last ms':>17s}")
        for name in recon.model_names():
            torch.manual_seed(0)
            m = recon.build_model(name).to(dev).eval()
            x, c = inputs(name, args.size, dev)
            with torch.inference_mode():
                t = best_of(lambda: m(x, c), args.repeats, sync)
                t_cl = float("nan")
                if x.ndim == 4:
                    mcl = m.to(memory_format=torch.channels_last)
                    xcl = x.contiguous(memory_format=torch.channels_last)
                    t_cl = best_of(lambda: mcl(xcl, c), args.repeats, sync)
            rf = getattr(m, "receptive_field", None)
            print(f"{name:16s} {sum(p.numel() for p in m.parameters()):>10,d} {rf if rf else 'global':>7} "
                  f"{1e3 * t:>11.1f} {1e3 * t_cl:>17.1f}")
        print(f"\n== 2. CoordGate's cached gates, CGUNet(3) vs UNet(3), {dev}")
        torch.manual_seed(0)
        unet = recon.build_model("unet", depth=3).to(dev).eval()
        cg = recon.build_model("cgunet", depth=3).to(dev).eval()
        x, c = inputs("unet", args.size, dev)
        with torch.inference_mode():
            t_u = best_of(lambda: unet(x, c), args.repeats, sync)
            t_cached = best_of(lambda: cg(x, c), args.repeats, sync)
            for mod in cg.modules():
                if hasattr(mod, "cache_gates"):
                    mod.cache_gates = False
            t_nocache = best_of(lambda: cg(x, c), args.repeats, sync)
        print(f"UNet(3) {1e3 * t_u:.1f} ms; CGUNet(3) cached gates {1e3 * t_cached:.1f} ms "
              f"(x{t_cached / t_u:.3f}, target <= x1.03: {'met' if t_cached <= 1.03 * t_u else 'MISSED'}); "
              f"gates recomputed {1e3 * t_nocache:.1f} ms (x{t_nocache / t_u:.3f})")


if __name__ == "__main__":
    main()
