"""The ``pipelines`` command line. Today: ``pipelines env`` reports the Dask stack the pipelines run on."""

from __future__ import annotations

import argparse
import sys


def cmd_env(args) -> int:
    import dask
    import zarr

    try:
        import distributed

        dist = distributed.__version__
    except ImportError:  # pragma: no cover
        dist = "not installed"
    print(f"dask {dask.__version__}, distributed {dist}, zarr {zarr.__version__}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from . import __version__

    p = argparse.ArgumentParser(prog="pipelines", description="Tiled deblurring of huge frames with Dask.")
    p.add_argument("--version", action="version", version=f"pipelines {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sp = sub.add_parser("env", help="versions of the Dask stack")
    sp.set_defaults(func=cmd_env)
    args = p.parse_args(argv)
    if not getattr(args, "func", None):
        p.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
