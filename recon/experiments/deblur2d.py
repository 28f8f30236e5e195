"""``recon experiment deblur2d``: CoordGate paper (arXiv 2401.04680) Sec. IV.B, Fig. 4b, Fig. 5 and its SSIM
table: deblurring a microscope whose blur grows toward the edge of the field (in focus on the axis).

Data: one psfsim store (``OUT/data.zarr``) of the ``microscope`` preset (field curvature W220: defocus grows
as h^2) on microscopy content, scikit-image's ``cell`` and psfsim's procedural cells (the paper's BBBC / FMD
sets are not available offline), Poisson-Gaussian noise; every model trains on it and is scored on its test
split (whole samples, each with its own field window).

Units (each resumable; a finished one has a record in ``OUT/units/``):

- ``data``: the store (psfsim's writer resumes bit-exactly).
- ``baselines``: blurred, global Wiener and SV-Wiener (stored) and SV Richardson-Lucy
  (:mod:`.deblur2d_baselines`), scored on the test split.
- one unit per model of :data:`MODELS`: :func:`recon.train` into ``OUT/runs/NAME`` (it resumes from its
  ``last.pt``), then :func:`recon.evaluate` of ``best.pt`` into ``OUT/runs/NAME/eval`` and the model's output
  on the example samples (``OUT/runs/NAME/examples.npz``).

Outputs: ``results.md`` / ``.csv`` (the PSNR and SSIM table), ``radial.md`` / ``.csv``, ``claims.md``,
``fig4b_psnr_vs_params.png``, ``curves.png``, ``radial_psnr.png``, ``fig5_examples.png``.

Scales (:data:`SCALES`): ``cpu`` (the default, documented in docs/results/deblur2d.md) and ``paper`` (20000
samples of 256 x 256, 600 epochs, learning rate halved after 20 epochs without improvement; for a GPU).
``--quick`` shrinks either to a few samples and one epoch (tests), keeping the scale's training rules.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ..errors import ReconError
from .common import Claim, ExperimentDir, ExperimentResult, claims_markdown, write_table
from .deblur2d_baselines import RL_ITERS

__all__ = ["MODELS", "SCALES", "QUICK", "settings_for", "train_config", "run", "add_arguments", "decide_claims",
           "MARGIN_DB"]

#: unit -> (label, registry name, model arguments). The paper's models; ``residual`` is added by the scale.
MODELS = {
    "unet3": ("UNet(3)", "unet", {"depth": 3}),
    "unet4": ("UNet(4)", "unet", {"depth": 4}),
    "unet5": ("UNet(5)", "unet", {"depth": 5}),
    "unet6": ("UNet(6)", "unet", {"depth": 6}),
    "cgunet3": ("CGUNet(3)", "cgunet", {"depth": 3}),
    "cgunet6": ("CGUNet(6)", "cgunet", {"depth": 6}),
    "coordconv_unet6": ("CoordConvUNet(6)", "coordconv_unet", {"depth": 6}),
    "multiwienernet6": ("MultiWienerNet(UNet(6))", "multiwienernet", {"depth": 6}),
    "multiwienernet3": ("MultiWienerNet(UNet(3))", "multiwienernet", {"depth": 3}),
    "pafu_unet3": ("PAFUUNet(3)", "pafu_unet", {"depth": 3}),
}
#: The order the units train in: cheapest first (measured step times), so that a run cut short has the
#: depth-3 comparisons (plain, CoordGate, PAFU, MultiWiener at ~0.5 M parameters) before the 31 M-parameter models.
RUN_ORDER = ("unet3", "cgunet3", "pafu_unet3", "multiwienernet3", "unet4", "unet5", "unet6", "multiwienernet6",
             "coordconv_unet6", "cgunet6")
#: Models with a ``residual`` option (predict a correction of the blurred input); MultiWienerNet has none.
RESIDUAL_CAPABLE = ("unet", "cgunet", "coordconv_unet", "pafu_unet")
BASELINE_LABELS = {"blurred": "blurred input", "wiener": "Wiener (axis PSF)", "wiener_sv": "SV Wiener",
                   "rl": "SV Richardson-Lucy"}

#: A difference of PSNR smaller than this (dB) decides nothing: "beats" needs more, "no better" less.
MARGIN_DB = 0.1

SCALES = {
    # 2 CPU cores: ~17 min of training for the ten models on idle cores (measured step times: UNet(3) 60 ms,
    # UNet(6) 350 ms, CGUNet(6) 460 ms, all ten 2.1 s per batch of 8 x 64 x 64; 480 steps each). Residual U-Nets: at ~700 steps a U-Net that must rebuild the
    # image from zero is still far below the blurred input (see docs/results/deblur2d.md).
    "cpu": {"n": 480, "size": 128, "crop": 64, "batch": 8, "epochs": 10, "lr": 1e-3, "lr_factor": 0.5,
            "patience": 10, "residual": True, "base_channels": 16},
    # the paper's: 20000 samples of 256 x 256, 600 epochs, lr halved after 20 stalled epochs, plain U-Nets
    "paper": {"n": 20000, "size": 256, "crop": 256, "batch": 8, "epochs": 600, "lr": 1e-3, "lr_factor": 0.5,
              "patience": 20, "residual": False, "base_channels": 16},
}
#: ``--quick``: overrides of the scale's sizes (the training rules stay the scale's); U-Nets of 4 base channels
#: (UNet(6): 0.5 M parameters instead of 31 M) so that the ten models train and save in seconds.
QUICK = {"n": 30, "size": 64, "crop": 64, "batch": 4, "epochs": 1, "base_channels": 4}
#: The data, for every scale: microscope preset, microscopy content, the demo's restoration noise.
DATA = {"lens": "microscope", "source": "skimage:cell,cells", "photons": 10000.0, "read_noise": 2.0}


def settings_for(scale: str = "cpu", *, quick: bool = False, seed: int = 0, models=None) -> dict:
    """The settings of a run (recorded in ``OUT/experiment.json``; a re-run must give the same).

    Parameters
    ----------
    scale : {"cpu", "paper"}
    quick : bool
        Shrink the sizes to :data:`QUICK`.
    seed : int
        Seeds the store (origins, crops, noise, splits) and every model's training (weights, crops, order).
    models : sequence of str, optional
        Units of :data:`MODELS` to run (default all, in :data:`MODELS`' order).
    """
    if scale not in SCALES:
        raise ReconError(f"--scale {scale!r}: expected one of {', '.join(SCALES)}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ReconError(f"--seed {seed!r}: expected a whole number >= 0")
    names = list(MODELS) if models is None else list(models)
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names or len(set(names)) != len(names):
        raise ReconError(f"--models {','.join(names)!r}: expected distinct names of {', '.join(MODELS)}")
    s = dict(SCALES[scale])
    if quick:
        s.update(QUICK)
    return {"scale": scale, "quick": bool(quick), "seed": int(seed), **DATA, **s,
            "models": [m for m in MODELS if m in names], "rl_iters": list(RL_ITERS)}


def model_args(unit: str, settings: dict) -> dict:
    """Registry arguments of ``unit`` under ``settings`` (``residual`` where the model has the option)."""
    _, name, args = MODELS[unit]
    args = dict(args, base_channels=int(settings["base_channels"]))
    if name in RESIDUAL_CAPABLE:
        args["residual"] = bool(settings["residual"])
    return args


def train_config(unit: str, settings: dict, data, out, *, device: str = "auto"):
    """The :class:`recon.TrainConfig` of ``unit`` (resuming from ``out/last.pt`` when there is one)."""
    from ..config import TrainConfig

    out = Path(out)
    resume = (out / "last.pt").is_file()
    return TrainConfig(data=os.path.abspath(data), model=MODELS[unit][1], model_args=model_args(unit, settings),
                       epochs=int(settings["epochs"]), batch=int(settings["batch"]), crop=int(settings["crop"]),
                       lr=float(settings["lr"]), lr_factor=float(settings["lr_factor"]),
                       patience=int(settings["patience"]), seed=int(settings["seed"]), device=device,
                       out=os.fspath(out), resume=resume, overwrite=out.exists() and not resume)


# ----------------------------------------------------------------------------------------------------------
# the claims
# ----------------------------------------------------------------------------------------------------------
def decide_claims(rows: dict, margin: float = MARGIN_DB) -> list[Claim]:
    """The paper's four claims from the test scores.

    Parameters
    ----------
    rows : dict unit -> {"psnr_db", "ssim", "params"}
        Model units that finished (missing ones make their claims undecided).
    margin : float
        dB: "A beats B" holds when ``psnr(A) - psnr(B) > margin``; "A is no better than B" when the
        difference is ``<= margin`` (one seed: a smaller difference is not evidence either way).
    """
    def p(u):
        return rows[u]["psnr_db"]

    def have(*us):
        return all(u in rows for u in us)

    def d(a, b):
        return f"{rows[a]['psnr_db']:.2f} vs {rows[b]['psnr_db']:.2f} dB ({p(a) - p(b):+.2f}); SSIM " \
               f"{rows[a]['ssim']:.4f} vs {rows[b]['ssim']:.4f}"

    out = []
    c = "CGUNet(3) beats UNet(6) with ~60x fewer parameters"
    if have("cgunet3", "unet6"):
        ratio = rows["unet6"]["params"] / rows["cgunet3"]["params"]
        out.append(Claim(c, p("cgunet3") - p("unet6") > margin,
                         f"CGUNet(3) vs UNet(6): {d('cgunet3', 'unet6')}; {rows['cgunet3']['params']:,d} vs "
                         f"{rows['unet6']['params']:,d} parameters ({ratio:.0f}x fewer)"))
    else:
        out.append(Claim(c, None, "CGUNet(3) or UNet(6) not finished in this run"))
    c = "CoordConvUNet(6) is no better than UNet(6)"
    if have("coordconv_unet6", "unet6"):
        out.append(Claim(c, p("coordconv_unet6") - p("unet6") <= margin,
                         f"CoordConvUNet(6) vs UNet(6): {d('coordconv_unet6', 'unet6')}"))
    else:
        out.append(Claim(c, None, "CoordConvUNet(6) or UNet(6) not finished in this run"))
    c = "MultiWienerNet (on UNet(6)) beats UNet(6) but not CGUNet(3)"
    if have("multiwienernet6", "unet6", "cgunet3"):
        a = p("multiwienernet6") - p("unet6") > margin
        b = p("multiwienernet6") - p("cgunet3") <= margin
        ev = (f"vs UNet(6): {d('multiwienernet6', 'unet6')} ({'beats' if a else 'does not beat'}); vs CGUNet(3): "
              f"{d('multiwienernet6', 'cgunet3')} ({'does not beat' if b else 'beats'})")
        if have("multiwienernet3", "unet3"):
            ev += f"; MultiWienerNet(UNet(3)) vs UNet(3): {d('multiwienernet3', 'unet3')}"
        out.append(Claim(c, a and b, ev))
    else:
        out.append(Claim(c, None, "MultiWienerNet(UNet(6)), UNet(6) or CGUNet(3) not finished in this run"))
    c = "CGUNet(6) beats CGUNet(3)"
    if have("cgunet6", "cgunet3"):
        out.append(Claim(c, p("cgunet6") - p("cgunet3") > margin, f"CGUNet(6) vs CGUNet(3): {d('cgunet6', 'cgunet3')}"))
    else:
        out.append(Claim(c, None, "CGUNet(6) or CGUNet(3) not finished in this run"))
    return out


# ----------------------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--scale", choices=tuple(SCALES), default="cpu",
                        help="cpu: 480 samples of 128 x 128, 10 epochs (~20 min on 2 idle cores); paper: 20000 of "
                             "256 x 256, 600 epochs (a GPU) (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of every model (default: 0)")
    parser.add_argument("--models", default=None,
                        help=f"comma-separated subset of {','.join(MODELS)} (default: all)")


def _log(msg: str) -> None:
    print(f"[deblur2d] {msg}", file=sys.stderr, flush=True)


def _example_indices(reader) -> list[int]:
    """Two test samples for Fig. 5: the one whose centre is nearest the optical axis, and the farthest."""
    import numpy as np

    test = reader.splits["test"]
    h, w = reader.size
    fc = [reader.field_coords(int(i))[:, h // 2, w // 2] for i in test]
    r = np.hypot(*np.array(fc).T)
    return [int(test[int(np.argmin(r))]), int(test[int(np.argmax(r))])]


def _data_unit(exp: ExperimentDir, s: dict, data: Path, progress: bool) -> dict:
    import psfsim
    from psfsim.fft import default_workers

    lens = psfsim.load_lens(s["lens"])
    spec = psfsim.SimulationSpec(lens=lens.to_dict(), source=s["source"], n=int(s["n"]),
                                 size=(int(s["size"]), int(s["size"])), seed=int(s["seed"]), photons=s["photons"],
                                 read_noise=float(s["read_noise"]))
    t = time.perf_counter()
    res = psfsim.simulate(spec, data, workers=default_workers(), progress=progress,
                          command=f"recon experiment deblur2d --out {exp.path}")
    if not res["complete"]:
        raise ReconError(f"{data}: the store is incomplete; run the same command again to finish it")
    reader = psfsim.DatasetReader(data)
    return {"store": os.path.abspath(data), "seconds": time.perf_counter() - t, "samples": len(reader),
            "size": list(reader.size), "splits": {k: int(len(v)) for k, v in reader.splits.items()},
            "seed": int(s["seed"]), "examples": _example_indices(reader)}


def _baselines_unit(reader, examples: list[int], s: dict, out_npz: Path) -> dict:
    import numpy as np
    from psfsim.store import atomic_file

    from .. import metrics
    from .deblur2d_baselines import score_baselines

    t = time.perf_counter()
    edges = metrics.radial_edges(8, reader.lens.field.max_radius)
    rec, imgs = score_baselines(reader, edges, iters=s["rl_iters"], keep=examples)
    with atomic_file(out_npz) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{f"{k}_{i}": v for i, d in imgs.items() for k, v in d.items()})
    rec.update(radial_edges=[float(e) for e in edges], seconds=time.perf_counter() - t)
    return rec


def _model_unit(unit: str, s: dict, data: Path, run_dir: Path, examples: list[int], device: str) -> dict:
    import numpy as np
    import torch
    from psfsim.store import atomic_file

    from ..checkpoint import load_checkpoint
    from ..evaluate import evaluate, resolve_device
    from ..train import train

    cfg = train_config(unit, s, data, run_dir, device=device)
    _log(f"{unit}: train {cfg.model} {cfg.model_args} for {cfg.epochs} epochs -> {run_dir}"
         + (" (resuming)" if cfg.resume else ""))
    tres = train(cfg, progress=False, log=_log)
    ev = evaluate(data, tres.best_checkpoint, run_dir / "eval", device=device, overwrite=True)
    dev = resolve_device(device)
    model, _ = load_checkpoint(tres.best_checkpoint, device=dev)
    import psfsim

    reader = psfsim.DatasetReader(data)
    b = reader.read(examples, arrays=("blurred",), coords=True)
    with torch.no_grad():
        pred = model(torch.from_numpy(b.blurred[:, None]).to(dev), torch.from_numpy(b.field_coords).to(dev))
    pred = pred.float().cpu().numpy()[:, 0]
    with atomic_file(run_dir / "examples.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{f"model_{i}": pred[j] for j, i in enumerate(examples)})
    hist = [{k: float(r[k]) for k in ("epoch", "train_loss", "val_loss", "val_psnr", "lr", "seconds")}
            for r in tres.history]
    return {"unit": unit, "label": MODELS[unit][0], "model": cfg.model, "model_args": dict(cfg.model_args),
            "params": int(ev.params), "seed": int(s["seed"]), "epochs": int(tres.epochs),
            "best_epoch": int(tres.best_epoch), "best_val_psnr": float(tres.best_val_psnr),
            "train_seconds": float(sum(r["seconds"] for r in hist)),
            "psnr_db": ev.scores["model"].psnr_db, "ssim": ev.scores["model"].ssim,
            "gain_vs_wiener_sv_db": ev.gain_db("wiener_sv"), "radial_psnr": list(ev.radial_psnr["model"]),
            "n_test": int(ev.n_samples), "history": hist, "device": str(dev),
            "torch_threads": int(torch.get_num_threads())}


def run(out, *, quick: bool = False, overwrite: bool = False, progress: bool = True, device: str = "auto",
        scale: str = "cpu", seed: int = 0, models=None) -> ExperimentResult:
    """Run (or resume) the experiment into ``out``; see the module docstring.

    Parameters
    ----------
    out : path
        The experiment folder.
    quick : bool
        The tiny version (tests).
    overwrite : bool
        Start again in a folder holding a run of other settings.
    progress : bool
        Progress bars (simulation).
    device : {"auto", "cpu", "cuda", "cuda:N"}
        Not a setting: a run may continue on another device.
    scale : {"cpu", "paper"}
    seed : int
    models : str or sequence of str, optional
        A subset of :data:`MODELS` (comma-separated string from the command line).

    Returns
    -------
    ExperimentResult
    """
    import psfsim

    from ..evaluate import resolve_device

    t0 = time.perf_counter()
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    s = settings_for(scale, quick=quick, seed=seed, models=models)
    resolve_device(device)  # refuse a bad device before any work
    exp = ExperimentDir(out, "deblur2d", s, overwrite=overwrite)
    data = exp.path / "data.zarr"
    units = ["data", "baselines", *sorted(s["models"], key=RUN_ORDER.index)]
    reused = [u for u in units if exp.done(u)]
    computed = []

    if not exp.done("data"):
        _log(f"simulate {s['n']} samples of {s['size']} x {s['size']} ({s['source']}, {s['lens']}) -> {data}")
        exp.save("data", _data_unit(exp, s, data, progress))
        computed.append("data")
    drec = exp.load("data")
    examples = drec["examples"]
    reader = psfsim.DatasetReader(data)

    if not exp.done("baselines"):
        _log("baselines: Wiener, SV Wiener, SV Richardson-Lucy (iterations chosen on the validation split)")
        exp.save("baselines", _baselines_unit(reader, examples, s, exp.file("baselines_examples.npz")))
        computed.append("baselines")
    base = exp.load("baselines")

    for unit in sorted(s["models"], key=RUN_ORDER.index):
        if exp.done(unit):
            continue
        run_dir = exp.path / "runs" / unit
        run_dir.parent.mkdir(exist_ok=True)
        exp.save(unit, _model_unit(unit, s, data, run_dir, examples, device))
        computed.append(unit)
        r = exp.load(unit)
        _log(f"{unit}: test PSNR {r['psnr_db']:.2f} dB, SSIM {r['ssim']:.4f} ({r['params']:,d} parameters)")

    return _report(exp, s, drec, base, computed, reused, t0)


def _report(exp: ExperimentDir, s: dict, drec: dict, base: dict, computed: list, reused: list,
            t0: float) -> ExperimentResult:
    from .deblur2d_figures import curves_figure, examples_figure, psnr_params_figure, radial_figure

    recs = {u: exp.load(u) for u in s["models"] if exp.done(u)}
    rows = []
    for u, r in recs.items():
        rows.append({"method": r["label"], "unit": u, "params": r["params"], "epochs": r["epochs"],
                     "best_epoch": r["best_epoch"], "train_min": r["train_seconds"] / 60,
                     "val_psnr_db": r["best_val_psnr"], "psnr_db": r["psnr_db"], "ssim": r["ssim"],
                     "psnr_minus_sv_wiener_db": r["psnr_db"] - base["scores"]["wiener_sv"]["psnr_db"]})
    for k, lab in BASELINE_LABELS.items():
        sc = base["scores"][k]
        rows.append({"method": lab + (f" ({base['rl_iters']} it.)" if k == "rl" else ""), "unit": k, "params": "-",
                     "psnr_db": sc["psnr_db"], "ssim": sc["ssim"],
                     "psnr_minus_sv_wiener_db": sc["psnr_db"] - base["scores"]["wiener_sv"]["psnr_db"]})
    cols = ["method", "unit", "params", "epochs", "best_epoch", "train_min", "val_psnr_db", "psnr_db", "ssim",
            "psnr_minus_sv_wiener_db"]
    notes = (f"Scale `{s['scale']}`{' (quick)' if s['quick'] else ''}: {s['n']} samples of {s['size']} x {s['size']} "
             f"({drec['splits']}), crops {s['crop']}, batch {s['batch']}, {s['epochs']} epochs, Adam lr {s['lr']} "
             f"(x{s['lr_factor']} after {s['patience']} stalled epochs), residual U-Nets: {s['residual']}, seed "
             f"{s['seed']}. psnr_db / ssim: test split, whole samples, mean over samples, no clipping; val_psnr_db: "
             f"best epoch's validation PSNR (centre crops of {s['crop']}).")
    md, _ = write_table(exp, "results", rows, cols, title="deblur2d: test PSNR and SSIM", notes=notes)
    edges = base["radial_edges"]
    rad_rows = []
    for i in range(len(edges) - 1):
        row = {"r_lo": edges[i], "r_hi": edges[i + 1], "pixels": base["radial_pixels"][i]}
        row.update({r["label"]: r["radial_psnr"][i] for r in recs.values()})
        row.update({BASELINE_LABELS[k]: base["radial_psnr"][k][i] for k in BASELINE_LABELS})
        rad_rows.append(row)
    rad_cols = ["r_lo", "r_hi", "pixels", *(r["label"] for r in recs.values()), *BASELINE_LABELS.values()]
    write_table(exp, "radial", rad_rows, rad_cols, title="deblur2d: test PSNR (dB) per field-radius bin")
    claims = decide_claims({u: {"psnr_db": r["psnr_db"], "ssim": r["ssim"], "params": r["params"]}
                            for u, r in recs.items()})
    exp.write_text("claims.md", "# deblur2d: the paper's claims\n\n" + claims_markdown(claims)
                   + f"\nDecision margin: {MARGIN_DB} dB of test PSNR (one seed).\n")
    files = {"results": md, "claims": exp.file("claims.md")}
    files["fig4b"] = psnr_params_figure(recs, base, exp.file("fig4b_psnr_vs_params.png"))
    if recs:
        files["curves"] = curves_figure(recs, exp.file("curves.png"))
        files["radial"] = radial_figure(recs, base, exp.file("radial_psnr.png"))
    files["fig5"] = examples_figure(exp.path, recs, base, drec["examples"], exp.file("fig5_examples.png"))
    return ExperimentResult("deblur2d", exp.path, rows, claims, files=files, computed=computed, reused=reused,
                            seconds=time.perf_counter() - t0)
