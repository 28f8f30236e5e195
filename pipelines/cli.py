"""The ``pipelines`` command line: a thin layer over :func:`pipelines.runner.run` and the routes.

::

    pipelines deblur   --checkpoint CKPT --input FRAME --out OUT.zarr [--tile 1024] [--halo auto|N] [--batch B]
                       [--device auto|cpu|cuda] [--origin ROW,COL] [--scheduler ADDRESS | --workers N]
                       [--pyramid] [--overwrite] [--no-qc] [--qc-lens LENS]
    pipelines wiener   --lens LENS --input FRAME --out OUT.zarr [--sv] ...
    pipelines rl       --lens LENS --input FRAME --out OUT.zarr [--iterations K] ...
    pipelines simulate --lens LENS --input SHARP --out BLURRED.zarr [--photons P --read-noise R --seed S] ...
    pipelines export   OUT.zarr --to FILE.fits|.tif [--overwrite]
    pipelines env

A user error (bad frame, bad argument, a store of another run, a scheduler that does not answer: a
:class:`~psfsim.errors.PsfsimError`, which :class:`~pipelines.errors.PipelineError` is, or an ``OSError``)
prints one line ``pipelines: error: ...`` on stderr and exits with status 2; the output store is then never
marked complete. ``deblur``, ``wiener`` and ``rl`` then run the quality control (the re-blur residual map and
summary in the store, figures in ``OUT.qc/``; :mod:`pipelines.runner`) unless ``--no-qc``. Ctrl-C / SIGTERM stop the run (exit 130 / 143); the chunks written so far are kept and the
same command resumes.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings

from psfsim.errors import PsfsimError
from psfsim.cli import join_negative_values

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print the usage too)
        raise PsfsimError(f"{self.prog}: {message}")


def _origin(text: str) -> tuple[int, int]:
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        r, c = (int(p) for p in parts)
        if r < 0 or c < 0:
            raise ValueError
    except ValueError:
        raise PsfsimError(f"--origin {text!r}: expected ROW,COL, two integers >= 0") from None
    return r, c


def _halo(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        v = int(text)
        if v < 0:
            raise ValueError
    except ValueError:
        raise PsfsimError(f"--halo {text!r}: expected auto or an integer >= 0 (pixels)") from None
    return v


def _positive(name: str, v, typ=int):
    if v is not None and not v > 0:
        raise PsfsimError(f"{name} {v}: expected {'an integer' if typ is int else 'a number'} > 0")
    return v


def _frame(args):
    from .frames import open_frame

    return open_frame(args.input, hdu=args.hdu, array=args.array)


def _run(args, make_route) -> int:
    """Open the frame (its header: the cheap refusals first), then build the route (a lens or a checkpoint to
    load), then run."""
    from .runner import run

    frame = _frame(args)
    origin = None if args.origin is None else _origin(args.origin)
    if args.workers is not None and args.workers < 1:
        raise PsfsimError(f"--workers {args.workers}: expected an integer >= 1")
    route = make_route()
    res = run(route, frame, args.out, tile=args.tile, origin=origin, scheduler=args.scheduler,
              workers=args.workers, overwrite=args.overwrite, pyramid=args.pyramid,
              progress=not args.no_progress and sys.stderr.isatty(), nan_policy=args.nan,
              connect_timeout=args.connect_timeout, command=args._command,
              qc=not getattr(args, "no_qc", True), qc_lens=getattr(args, "qc_lens", None))
    print(res.summary())
    return 0


def cmd_deblur(args) -> int:
    from .routes import model_route

    _positive("--batch", args.batch)
    if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
        raise PsfsimError(f"--device {args.device!r}: expected auto, cpu or cuda[:N]")
    halo = _halo(args.halo)
    return _run(args, lambda: model_route(args.checkpoint, device=args.device, batch=args.batch, halo=halo))


def _wiener_options(args) -> dict:
    opts = {}
    if args.balance is not None:
        opts["balance"] = _positive("--balance", args.balance, float)
    if args.psfs is not None:
        if not args.sv:
            raise PsfsimError(f"--psfs {args.psfs}: only the spatially-varying Wiener (--sv) takes patch PSFs")
        opts["psfs"] = args.psfs
    return opts


def cmd_wiener(args) -> int:
    from .routes import wiener_route

    opts = _wiener_options(args)
    return _run(args, lambda: wiener_route(args.lens, sv=args.sv, **opts))


def cmd_rl(args) -> int:
    from .routes import rl_route

    iterations = _positive("--iterations", args.iterations)
    return _run(args, lambda: rl_route(args.lens, iterations=iterations))


def cmd_simulate(args) -> int:
    from .routes import simulate_route

    _positive("--photons", args.photons, float)
    if args.read_noise is not None and not args.read_noise >= 0:
        raise PsfsimError(f"--read-noise {args.read_noise}: expected a number >= 0")
    return _run(args, lambda: simulate_route(args.lens, photons=args.photons, read_noise=args.read_noise,
                                             seed=args.seed))


def cmd_export(args) -> int:
    from .output import export

    path = export(args.store, args.to, overwrite=args.overwrite)
    print(f"{args.store} -> {path}")
    return 0


def cmd_env(args) -> int:
    import os

    import dask
    import zarr

    try:
        import distributed

        dist = distributed.__version__
    except ImportError:  # pragma: no cover
        dist = "not installed"
    print(f"dask {dask.__version__}, distributed {dist}, zarr {zarr.__version__}, {os.cpu_count()} CPU(s)")
    try:
        import torch

        cuda = (f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)" if torch.cuda.is_available()
                else "no GPU")
        print(f"torch {torch.__version__}: {cuda}")
    except ImportError:  # pragma: no cover
        print("torch: not installed (the deblur route needs it)")
    return 0


def _add_qc_arguments(sp) -> None:
    sp.add_argument("--no-qc", action="store_true",
                    help="skip the quality control: the re-blur residual map qc/residual in the store, its summary, "
                         "and the figures in OUT.qc/ (residual.png; gates.png for a CoordGate checkpoint)")
    sp.add_argument("--qc-lens", help="lens preset or TOML of the QC's re-blur operator, when the frame was taken "
                                      "with another lens than the route's (default the route's lens)")


def _add_run_arguments(sp, *, lens: bool) -> None:
    if lens:
        sp.add_argument("--lens", required=True, help="lens preset name or TOML file")
    sp.add_argument("--input", required=True, help="frame: .zarr (array or OME-Zarr), .tif, .fits, .npy; (H, W) "
                                                   "or a stack (N, H, W)")
    sp.add_argument("--out", required=True, help="output store, OUT.zarr (Zarr v3 + OME-Zarr metadata)")
    sp.add_argument("--tile", type=int, default=1024, help="output chunk side, pixels (default %(default)s)")
    sp.add_argument("--origin", default=None,
                    help="ROW,COL of the frame's top-left pixel in the lens field (default: the frame is the "
                         "full field, and a frame of another shape is refused)")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--scheduler", help="address of an existing Dask scheduler, tcp://HOST:PORT")
    g.add_argument("--workers", type=int, help="start a local cluster of N worker processes on 127.0.0.1")
    sp.add_argument("--connect-timeout", type=float, default=10.0,
                    help="seconds to wait for --scheduler (default %(default)s)")
    sp.add_argument("--nan", choices=["fill", "raise"], default="fill",
                    help="non-finite input pixels: fill them for the computation and leave them NaN in the "
                         "output (default), or refuse the frame")
    sp.add_argument("--hdu", help="FITS HDU (index or name; default the first image HDU)")
    sp.add_argument("--array", help="array inside a Zarr group (default: level 0 of an OME-Zarr image)")
    sp.add_argument("--pyramid", action="store_true", help="add a multiscale pyramid when complete")
    sp.add_argument("--overwrite", action="store_true", help="replace a store written by another run")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="pipelines", description="Tiled deblurring of huge frames with Dask.")
    p.add_argument("--version", action="version", version=f"pipelines {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    sp = sub.add_parser("deblur", help="a trained checkpoint (recon) over a frame, tile by tile")
    sp.add_argument("--checkpoint", required=True, help="checkpoint written by recon train / recon fit")
    _add_run_arguments(sp, lens=False)
    sp.add_argument("--halo", default="auto", help="context per side, pixels (default auto: the model's "
                                                   "receptive field)")
    sp.add_argument("--batch", type=int, default=4, help="tiles per model call (default %(default)s)")
    sp.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default %(default)s)")
    _add_qc_arguments(sp)
    sp.set_defaults(func=cmd_deblur)

    sp = sub.add_parser("wiener", help="Wiener restoration with the local PSFs of each tile's window")
    _add_run_arguments(sp, lens=True)
    sp.add_argument("--sv", action="store_true", help="spatially-varying Wiener (patch-wise local PSFs)")
    sp.add_argument("--psfs", choices=("lowrank", "exact"), default=None,
                    help="with --sv: each patch's PSF from the low-rank basis (default: fast, within its 1 %% "
                         "error) or computed exactly as psfsim.sv_wiener does (slower)")
    sp.add_argument("--balance", type=float, help="regularisation balance (default: from the noise)")
    _add_qc_arguments(sp)
    sp.set_defaults(func=cmd_wiener)

    sp = sub.add_parser("rl", help="Richardson-Lucy with the lens's spatially-varying operator")
    _add_run_arguments(sp, lens=True)
    sp.add_argument("--iterations", type=int, default=30, help="iterations (default %(default)s)")
    _add_qc_arguments(sp)
    sp.set_defaults(func=cmd_rl)

    sp = sub.add_parser("simulate", help="blur a sharp frame with the lens (and seeded noise), tile by tile")
    _add_run_arguments(sp, lens=True)
    sp.add_argument("--photons", type=float, help="photo-electrons at value 1.0 (Poisson noise)")
    sp.add_argument("--read-noise", type=float, help="Gaussian read noise, electrons RMS")
    sp.add_argument("--seed", type=int, default=0, help="noise seed (default %(default)s)")
    sp.set_defaults(func=cmd_simulate)

    sp = sub.add_parser("export", help="a complete output store to one FITS or TIFF file")
    sp.add_argument("store", help="OUT.zarr written by deblur / wiener / rl / simulate")
    sp.add_argument("--to", required=True, help="FILE.fits or FILE.tif")
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("env", help="versions of the Dask stack and the devices")
    sp.set_defaults(func=cmd_env)
    return p


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    return f"pipelines: warning: {message}\n"


def _error(e: BaseException) -> int:
    from psfsim.report import safe_text

    if isinstance(e, OSError) and not isinstance(e, PsfsimError):
        where = f"{e.filename}: " if e.filename else ""
        e = f"{where}{e.strerror or e}"
    print(f"pipelines: error: {safe_text(e, limit=4000)}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    from psfsim.integrity import Terminated, terminate_as_exception

    old_format = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        argv = join_negative_values(list(sys.argv[1:] if argv is None else argv))
        try:
            args = build_parser().parse_args(argv)
        except PsfsimError as e:
            return _error(e)
        if not getattr(args, "func", None):
            build_parser().print_help()
            return 2
        args._command = "pipelines " + " ".join(shlex.quote(a) for a in argv)
        try:
            with terminate_as_exception():
                return int(args.func(args) or 0)
        except (PsfsimError, OSError) as e:
            return _error(e)
        except (KeyboardInterrupt, Terminated) as e:
            term = isinstance(e, Terminated)
            out = getattr(args, "out", None)
            kept = f"; the finished chunks of {out} are kept: run the same command again to finish it" if out else ""
            print(f"pipelines: {'terminated (SIGTERM)' if term else 'interrupted'}{kept}", file=sys.stderr)
            return 143 if term else 130
    finally:
        warnings.formatwarning = old_format


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
