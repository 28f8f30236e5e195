"""The ``recon`` command line: ``recon env`` (torch build and devices), ``recon models`` (the model zoo),
``recon train`` (train a model into a run folder), ``recon evaluate``, ``recon compare`` and ``recon export``."""

from __future__ import annotations

import argparse
import os
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
    from .evaluate import evaluate

    res = evaluate(args.data, args.checkpoint, args.out, device=args.device, batch=args.batch,
                   overwrite=args.overwrite, bins=args.bins, progress=sys.stderr.isatty())
    print(res.summary())
    print(f"wrote {res.out}/ (results.md, results.csv, radial.csv, results.json, before_after.png, radial_psnr.png)")
    return 0


def cmd_compare(args) -> int:
    from .evaluate import compare

    res = compare(args.runs, args.out, overwrite=args.overwrite)
    for r in res.rows:
        print(f"{r['run']}: {r['model']} ({r['params']:,d} parameters) {r['psnr_db']:.2f} dB, SSIM {r['ssim']:.4f}, "
              f"{r['gain_vs_wiener_sv_db']:+.2f} dB against SV-Wiener")
    print(f"wrote {args.out}/ (compare.md, compare.csv, psnr_vs_params.png)")
    return 0


def cmd_export(args) -> int:
    from .export import export

    res = export(args.checkpoint, args.to, size=args.size, tolerance=args.tolerance, overwrite=args.overwrite)
    print(res.summary())
    return 0  # export() raises when the check fails: a returned result passed it


def cmd_fit(args) -> int:
    """``recon fit``: simulate (or reuse a store), train, evaluate (errors: one line in :func:`main`)."""
    from .config import parse_model_arg
    from .fit import FitConfig, fit

    args.resume_hint = f"run the same recon fit again to continue ({args.out})"
    margs = dict(parse_model_arg(t) for t in (args.model_arg or ()))
    kw = {k: getattr(args, k) for k in ("data", "source", "n", "size", "photons", "model", "epochs", "batch",
                                        "crop", "lr", "seed", "workers", "device") if getattr(args, k) is not None}
    if margs:  # over the fit's own default model arguments
        kw["model_args"] = {**FitConfig.__dataclass_fields__["model_args"].default_factory(), **margs}
    fit(FitConfig(lens=args.lens, out=args.out, **kw), progress=not args.quiet)
    return 0


def _add_fit_parser(sub) -> None:
    sp = sub.add_parser("fit", help="simulate a dataset for a lens, train a model on it, evaluate it against Wiener",
                        description="One command from a lens to a matched deblurrer: RUN/data.zarr (unless --data), "
                                    "RUN/train/ (recon train), RUN/eval/ (recon evaluate). Resumable: re-run it.")
    sp.add_argument("--lens", required=True, help="lens preset or TOML file")
    sp.add_argument("--out", required=True, metavar="RUN/", help="the fit folder")
    sp.add_argument("--data", help="train on this store instead of simulating one (its lens must be --lens)")
    sp.add_argument("--source", help="psfsim source of the simulated store (default cells)")
    sp.add_argument("--n", type=int, help="samples to simulate (default 400)")
    sp.add_argument("--size", type=int, help="side of the simulated samples (default 128)")
    sp.add_argument("--photons", type=float, help="photo-electrons at value 1 (default 2000; 0: noiseless)")
    sp.add_argument("--model", help="a model of `recon models` (default cgunet)")
    sp.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                    help="model argument, over the defaults depth=3, residual=true")
    sp.add_argument("--epochs", type=int, help="training epochs (default 20)")
    sp.add_argument("--batch", type=int, help="batch size (default 8)")
    sp.add_argument("--crop", type=int, help="training crop side (default 64)")
    sp.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    sp.add_argument("--seed", type=int, help="seed of everything (default 0)")
    sp.add_argument("--workers", type=int, help="DataLoader workers (default 0)")
    sp.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto")
    sp.add_argument("--quiet", action="store_true", help="no progress bars")
    sp.set_defaults(func=cmd_fit)


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


def cmd_train(args) -> int:
    """``recon train`` (errors, bad options, data, a refused resume, OOM, NaN: one line in :func:`main`)."""
    from .config import resolve_config
    from .train import train

    args.resume_hint = f"continue with: recon train --out {args.out} --resume"
    opts = {k: getattr(args, k) for k in ("data", "lens", "source", "model", "epochs", "batch", "crop", "lr",
                                          "patience", "loss", "device", "amp", "seed", "workers", "with_baselines")}
    cfg = resolve_config(opts, config_file=args.config, model_args=args.model_arg or (), out=args.out,
                         resume=args.resume, overwrite=args.overwrite)
    res = train(cfg, progress=not args.quiet)
    print(f"{res.out}: {res.epochs} epochs, best validation loss {res.best_val_loss:.4g} "
          f"(PSNR {res.best_val_psnr:.2f} dB) at epoch {res.best_epoch}: {res.best_checkpoint}")
    return 0


def _add_train_parser(sub) -> None:
    from .config import DEVICES, LOSSES

    sp = sub.add_parser("train", help="train a model on a psfsim store (or on the fly) into a run folder",
                        description="Train a deblurring model; RUN/ gets config.toml, last.pt, best.pt, metrics.csv "
                                    "and curves.png. Options not given come from --config (or, with --resume, from "
                                    "RUN/config.toml), else the defaults of recon.TrainConfig.")

    sp.add_argument("--data", metavar="DATA.zarr", help="a psfsim dataset store")
    sp.add_argument("--lens", help="on-the-fly data: a lens (preset or TOML file), with --source")
    sp.add_argument("--source", metavar="SPEC", help="on-the-fly data: a psfsim source spec")
    sp.add_argument("--model", metavar="NAME", help="a model of `recon models` (default cgunet)")
    sp.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="a model argument (repeatable), e.g. depth=3")
    sp.add_argument("--config", metavar="FILE.toml", help="options from a TOML file (e.g. RUN/config.toml)")
    sp.add_argument("--epochs", type=int, help="epochs in total (default 100)")
    sp.add_argument("--batch", type=int, help="batch size (default 8)")
    sp.add_argument("--crop", type=int, help="crop side, a multiple of 2^depth (default 128)")
    sp.add_argument("--lr", type=float, help="Adam's learning rate (default 1e-3)")
    sp.add_argument("--patience", type=int, help="epochs without improvement before the lr is halved (default 10)")
    sp.add_argument("--loss", choices=LOSSES, help="training loss (default mse)")
    sp.add_argument("--device", choices=DEVICES, help="default auto: CUDA, then CPU")
    sp.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                    help="mixed precision on CUDA (bf16, else fp16 with a grad scaler)")
    sp.add_argument("--seed", type=int, help="seed of everything (default 0)")
    sp.add_argument("--workers", type=int, help="DataLoader workers (default 0)")
    sp.add_argument("--with-baselines", action=argparse.BooleanOptionalAction, default=None,
                    help="the Wiener baselines as extra input channels")
    sp.add_argument("--out", required=True, metavar="RUN/", help="the run folder")
    sp.add_argument("--resume", action="store_true", help="continue the run in RUN/ from last.pt")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing run in RUN/")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_train)


class _Parser(argparse.ArgumentParser):
    """Argument errors of every command as one line ``recon: error: COMMAND: ...``, exit 2."""

    def error(self, message):
        from psfsim.report import safe_text

        cmd = self.prog.split()[-1] if " " in self.prog else ""
        print(f"recon: error: {cmd + ': ' if cmd else ''}{safe_text(message, limit=4000)}", file=sys.stderr)
        sys.exit(2)


# -- the papers' experiments (recon experiment NAME) -----------------------------------------------------------
def _add_experiment_parsers(sub) -> None:
    import importlib.util

    from .experiments import EXPERIMENTS

    sp = sub.add_parser("experiment", help="reproduce one of the papers' experiments (table, figure, verdicts)",
                        description="Each experiment is resumable: re-run it with the same arguments and it "
                                    "continues with the models not yet finished.")
    esub = sp.add_subparsers(dest="experiment", metavar="NAME", parser_class=_Parser)
    for name, text in EXPERIMENTS.items():
        if importlib.util.find_spec(f"recon.experiments.{name}") is None:  # pragma: no cover
            continue
        ep = esub.add_parser(name, help=text, description=text)
        ep.add_argument("--out", default=f"experiments/{name}", help="output folder (default: %(default)s)")
        ep.add_argument("--quick", action="store_true", help="a small version for tests (under a minute or two)")
        ep.add_argument("--overwrite", action="store_true", help="start again in a folder of another run")
        ep.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: %(default)s)")
        from .experiments import experiment_module

        mod = experiment_module(name)
        if hasattr(mod, "add_arguments"):
            mod.add_arguments(ep)
        ep.set_defaults(func=cmd_experiment, resume_hint="run the same command again to resume")
    sp.set_defaults(func=lambda args: (sp.print_help(), 2)[1])


def cmd_experiment(args) -> int:
    import sys as _sys

    from .experiments import experiment_module

    mod = experiment_module(args.experiment)
    opts = {k: v for k, v in vars(args).items()
            if k not in ("func", "command", "experiment", "out", "quick", "overwrite", "resume_hint")}
    res = mod.run(args.out, quick=args.quick, overwrite=args.overwrite, progress=_sys.stderr.isatty(), **opts)
    print(res.summary() if hasattr(res, "summary") else res)
    return 0


def main(argv: list[str] | None = None) -> int:
    from . import __version__

    p = _Parser(prog="recon", description="Train and evaluate spatially-varying deblurring networks.")
    p.add_argument("--version", action="version", version=f"recon {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sp = sub.add_parser("env", help="torch version and available devices")
    sp.set_defaults(func=cmd_env)
    sp = sub.add_parser("models", help="every model with its parameter count and receptive field (default settings)")
    sp.set_defaults(func=cmd_models)
    _add_fit_parser(sub)
    _add_train_parser(sub)
    _add_eval_parsers(sub)
    _add_experiment_parsers(sub)
    args = p.parse_args(argv)
    if not getattr(args, "func", None):
        p.print_help()
        return 2
    from psfsim.errors import PsfsimError

    try:  # every command's user errors: one line, exit 2 (ReconError is a PsfsimError)
        return int(args.func(args) or 0)
    except BrokenPipeError:  # the reader went away (`recon models | head`): not a user error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (PsfsimError, OSError) as e:
        return _user_error(e)
    except KeyboardInterrupt:
        hint = getattr(args, "resume_hint", "")
        print(f"recon: interrupted{'; ' + hint if hint else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
