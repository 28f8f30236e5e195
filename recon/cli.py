"""The ``recon`` command line: ``recon env`` (torch build and devices), ``recon models`` (the model zoo),
``recon evaluate``, ``recon compare`` and ``recon export``."""

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


# -- evaluation and export (recon evaluate, recon compare, recon export) -------------------------------------
def _user_error(e) -> int:
    """One line ``recon: error: ...`` on stderr (escaped: messages may quote file contents), exit status 2."""
    from psfsim.report import safe_text

    if isinstance(e, OSError):
        e = f"{e.filename}: {e.strerror or e}" if e.filename else (e.strerror or str(e))
    print(f"recon: error: {safe_text(e, limit=4000)}", file=sys.stderr)
    return 2


def cmd_evaluate(args) -> int:
    from psfsim.errors import PsfsimError

    from .evaluate import evaluate

    try:
        res = evaluate(args.data, args.checkpoint, args.out, device=args.device, batch=args.batch,
                       overwrite=args.overwrite, bins=args.bins, progress=sys.stderr.isatty())
    except (PsfsimError, OSError) as e:
        return _user_error(e)
    print(res.summary())
    print(f"wrote {res.out}/ (results.md, results.csv, radial.csv, results.json, before_after.png, radial_psnr.png)")
    return 0


def cmd_compare(args) -> int:
    from psfsim.errors import PsfsimError

    from .evaluate import compare

    try:
        res = compare(args.runs, args.out, overwrite=args.overwrite)
    except (PsfsimError, OSError) as e:
        return _user_error(e)
    for r in res.rows:
        print(f"{r['run']}: {r['model']} ({r['params']:,d} parameters) {r['psnr_db']:.2f} dB, SSIM {r['ssim']:.4f}, "
              f"{r['gain_vs_wiener_sv_db']:+.2f} dB against SV-Wiener")
    print(f"wrote {args.out}/ (compare.md, compare.csv, psnr_vs_params.png)")
    return 0


def cmd_export(args) -> int:
    from psfsim.errors import PsfsimError

    from .export import export

    try:
        res = export(args.checkpoint, args.to, size=args.size, tolerance=args.tolerance, overwrite=args.overwrite)
    except (PsfsimError, OSError) as e:
        return _user_error(e)
    print(res.summary())
    return 0 if res.ok else 1


def _add_eval_parsers(sub) -> None:
    sp = sub.add_parser("evaluate", help="score a checkpoint on a store's test split against the Wiener baselines")
    sp.add_argument("--data", required=True, help="the psfsim store (DATA.zarr); its lens must be the checkpoint's")
    sp.add_argument("--checkpoint", required=True, help="a recon checkpoint (best.pt)")
    sp.add_argument("--out", required=True, help="folder for results.md, results.csv, figures")
    sp.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda (default auto)")
    sp.add_argument("--batch", type=int, default=4, help="whole test samples per forward pass (default 4)")
    sp.add_argument("--bins", type=int, default=8, help="field-radius bins of the radial PSNR (default 8)")
    sp.add_argument("--overwrite", action="store_true", help="replace the results in an existing --out")
    sp.set_defaults(func=cmd_evaluate)
    sp = sub.add_parser("compare", help="one table and a PSNR-vs-parameters figure of several evaluated runs")
    sp.add_argument("runs", nargs="+", metavar="DIR", help="folders written by recon evaluate")
    sp.add_argument("--out", required=True, help="folder for compare.md, compare.csv, psnr_vs_params.png")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing comparison in --out")
    sp.set_defaults(func=cmd_compare)
    sp = sub.add_parser("export", help="export a checkpoint to ONNX (checked with onnxruntime) or torch.export .pt2")
    sp.add_argument("checkpoint", help="a recon checkpoint")
    sp.add_argument("--to", required=True, help="model.onnx or model.pt2 (the suffix picks the format)")
    sp.add_argument("--size", default=None, help="H,W of the example input (multiples of 2^depth; default 64,64)")
    sp.add_argument("--tolerance", type=float, default=None,
                    help="largest max abs difference to the torch model accepted (default 1e-4)")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing --to file")
    sp.set_defaults(func=cmd_export)


def main(argv: list[str] | None = None) -> int:
    from . import __version__

    p = argparse.ArgumentParser(prog="recon", description="Train and evaluate spatially-varying deblurring networks.")
    p.add_argument("--version", action="version", version=f"recon {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sp = sub.add_parser("env", help="torch version and available devices")
    sp.set_defaults(func=cmd_env)
    sp = sub.add_parser("models", help="every model with its parameter count and receptive field (default settings)")
    sp.set_defaults(func=cmd_models)
    _add_eval_parsers(sub)
    args = p.parse_args(argv)
    if not getattr(args, "func", None):
        p.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
