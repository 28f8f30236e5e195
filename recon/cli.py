"""The ``recon`` command line. Today: ``recon env`` reports the torch build and devices training would use."""

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


def main(argv: list[str] | None = None) -> int:
    from . import __version__

    p = argparse.ArgumentParser(prog="recon", description="Train and evaluate spatially-varying deblurring networks.")
    p.add_argument("--version", action="version", version=f"recon {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sp = sub.add_parser("env", help="torch version and available devices")
    sp.set_defaults(func=cmd_env)
    args = p.parse_args(argv)
    if not getattr(args, "func", None):
        p.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
