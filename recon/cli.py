"""The ``recon`` command line: ``recon env`` (torch build and devices), ``recon models`` (the model zoo)."""

from __future__ import annotations

import argparse
import sys


def cmd_env(args) -> int:
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"cuda:{i} {torch.cuda.get_device_name(i)}")
    else:
        print("CUDA: not available (CPU only)")
    return 0


def cmd_models(args) -> int:
    from .models import model_table

    rows = model_table()
    print(f"{'model':16s} {'dims':>4s} {'parameters':>11s} {'receptive field':>16s} {'halo':>6s}  description")
    for r in rows:
        rf = "global" if r["receptive_field"] is None else f"{r['receptive_field']} px"
        halo = "-" if r["halo"] is None else str(r["halo"])
        print(f"{r['name']:16s} {r['dims']:>4d} {r['params']:>11,d} {rf:>16s} {halo:>6s}  {r['description']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from . import __version__

    p = argparse.ArgumentParser(prog="recon", description="Train and evaluate spatially-varying deblurring networks.")
    p.add_argument("--version", action="version", version=f"recon {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sp = sub.add_parser("env", help="torch version and available devices")
    sp.set_defaults(func=cmd_env)
    sp = sub.add_parser("models", help="every model with its parameter count and receptive field (default settings)")
    sp.set_defaults(func=cmd_models)
    args = p.parse_args(argv)
    if not getattr(args, "func", None):
        p.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
