"""``make demo``, complete: the three packages in turn, each stage through the commands a user runs, then
``demo_out/report.md``.

1. ``python -m psfsim.demo --out demo_out``: the lens's PSFs over the field (montage, Strehl and FWHM maps),
   classical restorations of a bundled image, a small training store with its Wiener baselines.
2. ``python -m recon.demo --data demo_out/data/dataset.zarr --out demo_out/recon``: brief training of CGUNet(3)
   and UNet(3) on that store (``recon fit``: checkpoints and training curves).
3. The pipelines stage (:func:`pipelines_stage`): a large sharp frame generated from psfsim's procedural cells
   (``psfsim.sources``, seeded; no download) that fills the checkpoints' lens field, blurred tile by tile with
   ``pipelines simulate`` (the training store's Poisson-Gaussian noise, seeded), then restored tile by tile with
   ``pipelines wiener`` (and ``--sv``), and ``pipelines deblur`` with each checkpoint, every restoration with its
   quality control (re-blur residual map and summary, CoordGate gate maps). PSNR against the sharp frame (whole
   frame, and crops at the centre and a corner) and a before/after figure of the crops
   (:func:`recon.figures.before_after`).
4. ``demo_out/report.md``: the commands, the time of each stage, the PSF montage, the training curves, the
   before/after crops, the PSNR table and the QC figures (existing figure code: :mod:`psfsim.figures`,
   :mod:`recon.figures`, :mod:`pipelines.qc`; this module draws nothing itself).

The frame is the lens's full field (``shape_px`` of its ``[field]`` table; 2048 x 2048 for the microscope
preset): a checkpoint knows only its lens's field, and a frame that does not lie inside it is refused. The
pipelines commands run with ``--overwrite``: the demo replaces its own outputs when an earlier stage changed
(re-running ``make demo`` continues training, so the checkpoints change); with the same inputs nothing is
recomputed (the stores resume complete). Leave ``--overwrite`` out on your own data.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "pipelines_stage", "sharp_frame", "psnr", "MODELS", "SEED"]

SEED = 20240101
#: run folder under ``--recon`` -> label in the report (recon.demo's ``MODELS``)
MODELS = {"unet3": "UNet(3)", "cgunet3": "CGUNet(3)"}
#: The training store's noise (psfsim.demo's dataset step): the frame is blurred with the same.
PHOTONS, READ_NOISE = 2000.0, 2.0


class _Stages:
    """Wall and CPU seconds of each stage (CPU: this process and its children, user + system)."""

    def __init__(self):
        self.rows: list[dict] = []

    def run(self, name: str, command: str, fn, *, user: bool = True):
        """Run ``fn()`` as stage ``name``; ``command`` is what a user types for it (``user``) or a description."""
        print(f"\n{'$ ' if user else '# '}{command}", flush=True)
        t0, c0 = time.perf_counter(), _cpu()
        out = fn()
        self.rows.append({"stage": name, "command": command, "wall_s": time.perf_counter() - t0,
                          "cpu_s": _cpu() - c0, "user": user})
        return out


def _cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _rel(path, base: Path) -> str:
    return os.path.relpath(Path(path).resolve(), base.resolve())


def sharp_frame(shape, path: Path, *, seed: int = SEED) -> Path:
    """The demo's sharp frame: psfsim's procedural ``cells`` scene of ``shape`` (seeded), divided by its maximum
    (float32 in [0, 1]), as ``.npy``. Written once: a file of the same parameters and digest is kept (its
    modification time is part of the runs' input identity, so rewriting it would make every run start again).
    """
    import hashlib

    from psfsim.sources import parse_source
    from psfsim.store import atomic_file

    meta = path.with_suffix(".json")
    want = {"source": "cells", "shape": [int(v) for v in shape], "seed": int(seed), "scale": "divided by its max"}
    if path.is_file() and meta.is_file():
        old = json.loads(meta.read_text())
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if {k: old.get(k) for k in want} == want and old.get("sha256") == digest:
            return path
    a = parse_source("cells").sample(tuple(shape), np.random.default_rng(seed))
    a = (a / a.max()).astype(np.float32)
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, a)
    meta.write_text(json.dumps({**want, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}, indent=1))
    return path


def psnr(ref: np.ndarray, img: np.ndarray, data_range: float = 1.0) -> float:
    """``10 log10(range^2 / MSE)`` over the finite pixels of ``img``, dB."""
    d = np.asarray(img, np.float64) - np.asarray(ref, np.float64)
    d = d[np.isfinite(d)]
    return float(10 * np.log10(data_range**2 / np.mean(d * d)))


def _cli(argv: list[str]) -> None:
    from .cli import main as pipelines_main
    from .errors import PipelineError

    rc = pipelines_main(argv)
    if rc != 0:
        raise PipelineError(f"`pipelines {argv[0]}` failed (exit {rc}; its error is above)")


def _command(argv: list[str]) -> str:
    return "pipelines " + " ".join(shlex.quote(a) for a in argv)


def pipelines_stage(out: Path, checkpoints: dict, lens: str, *, tile: int = 512, sv: bool = True,
                    stages: _Stages | None = None, crop: int = 192) -> dict:
    """Simulate, restore (Wiener, SV-Wiener, each checkpoint) and score a frame filling the checkpoints' lens
    field, through the ``pipelines`` commands.

    Parameters
    ----------
    out : Path
        ``demo_out/pipelines``: the sharp frame, the stores, ``OUT.qc/`` figures, ``before_after.png``,
        ``scores.json``.
    checkpoints : dict label -> path
        recon checkpoints of one lens (e.g. ``{"UNet(3)": ..., "CGUNet(3)": ...}``).
    lens : str
        The checkpoints' lens as a preset name or TOML path (checked against their lens: the classical routes
        and the simulation must use the same).
    tile : int
        Output chunk side of every run, pixels.
    sv : bool
        Also run ``pipelines wiener --sv``.
    crop : int
        Side of the centre and corner crops, pixels.

    Returns
    -------
    dict
        ``commands``, ``scores`` (label -> PSNR whole / centre / corner, dB), ``qc`` (label -> summary),
        ``figures`` and ``frame_shape``.
    """
    import zarr

    import psfsim
    from recon import load_checkpoint
    from recon.figures import before_after

    from .errors import PipelineError

    stages = stages or _Stages()
    out.mkdir(parents=True, exist_ok=True)
    the_lens = psfsim.load_lens(lens)
    for label, ck in checkpoints.items():
        _, info = load_checkpoint(ck)
        if info.lens.fingerprint != the_lens.fingerprint:
            raise PipelineError(f"checkpoint {ck} ({label}) was trained for lens {info.lens.name!r}, not {lens!r}: "
                                "give the demo the checkpoints' lens (--lens)")
    H, W = (int(v) for v in the_lens.field.shape_px)
    sharp_path = stages.run(f"sharp frame {H} x {W}", f"pipelines.demo.sharp_frame: psfsim.sources 'cells', seed "
                                                     f"{SEED} -> {out / 'sharp.npy'}",
                            lambda: sharp_frame((H, W), out / "sharp.npy"), user=False)
    common = ["--tile", str(tile), "--overwrite", "--no-progress"]
    blurred = out / "blurred.zarr"
    sim = ["simulate", "--lens", lens, "--input", str(sharp_path), "--out", str(blurred), "--photons", f"{PHOTONS:g}",
           "--read-noise", f"{READ_NOISE:g}", "--seed", str(SEED)] + common
    commands = [_command(sim)]
    stages.run("pipelines simulate", commands[-1], lambda: _cli(sim))
    runs = {"wiener": ["wiener", "--lens", lens]}
    if sv:
        runs["wiener_sv"] = ["wiener", "--lens", lens, "--sv"]
    for label, ck in checkpoints.items():
        runs[label] = ["deblur", "--checkpoint", str(ck)]
    stores = {}
    for label, argv in runs.items():
        name = label.lower().replace("(", "").replace(")", "")
        stores[label] = out / f"{name}.zarr"
        argv = argv + ["--input", str(blurred), "--out", str(stores[label])] + common
        commands.append(_command(argv))
        stages.run(f"pipelines {argv[0]}" + (" --sv" if "--sv" in argv else "") + f" ({label})", commands[-1],
                   lambda argv=argv: _cli(argv))
    # scores and crops (frames that fit: the demo's; a larger frame would be scored chunk by chunk)
    sharp = np.load(sharp_path)
    images = {"blurred": np.asarray(zarr.open_group(str(blurred), mode="r")["0"][...])}
    qc = {}
    for label, p in stores.items():
        g = zarr.open_group(str(p), mode="r")
        images[label] = np.asarray(g["0"][...])
        q = g.attrs["pipelines"].get("qc")
        if q:
            qc[label] = {"summary": q["summary"]["frames"][0], "figures": q["figures"]}
    c = min(crop, H // 2, W // 2)
    m = int(the_lens.psf_sampling.size_px)  # the corner crop stays clear of the frame's zero-boundary border
    crops = {"centre": (slice(H // 2 - c // 2, H // 2 - c // 2 + c), slice(W // 2 - c // 2, W // 2 - c // 2 + c)),
             "corner": (slice(m, m + c), slice(m, m + c))}
    scores = {label: {"whole": psnr(sharp, img), **{k: psnr(sharp[sl], img[sl]) for k, sl in crops.items()}}
              for label, img in images.items()}
    rows = {k: {**{label: img[sl] for label, img in images.items()}, "sharp": sharp[sl]} for k, sl in crops.items()}
    text = {k: {label: f"{scores[label][k]:.1f} dB" for label in images} for k in crops}
    fig = before_after(rows, out / "before_after.png", scores=text,
                       title=f"{the_lens.name}: {H} x {W} frame, crops of {c} px at the centre and a corner "
                             f"(PSNR of the crop)")
    res = {"commands": commands, "scores": scores, "qc": qc, "figures": {"before_after": str(fig)},
           "frame_shape": [H, W], "tile": tile, "lens": the_lens.name, "crops": {k: [s.start for s in v]
                                                                                for k, v in crops.items()}}
    (out / "scores.json").write_text(json.dumps(res, indent=1))
    return res


def write_report(path: Path, stages: _Stages, res: dict, *, psf_montage: Path | None = None,
                 curves: dict | None = None) -> Path:
    """``report.md``: stages (command, wall and CPU time), figures (relative links), the PSNR table, the QC."""
    base = path.parent
    H, W = res["frame_shape"]
    total_wall = sum(r["wall_s"] for r in stages.rows)
    total_cpu = sum(r["cpu_s"] for r in stages.rows)
    L = ["# svblur demo report", "",
         f"Lens `{res['lens']}`; the pipelines frame is its full field, {H} x {W} px, in tiles of {res['tile']} px.",
         f"Host: {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f} at the end (other jobs share it: "
         "CPU seconds are the steadier figure).", "", "## Stages", "",
         "| stage | wall (s) | CPU (s) | command |", "|---|---:|---:|---|"]
    for r in stages.rows:
        L.append(f"| {r['stage']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                 + (f"`{r['command']}`" if r["user"] else r["command"]) + " |")
    L += [f"| **total** | **{total_wall:.1f}** | **{total_cpu:.1f}** | |", ""]
    if psf_montage is not None and Path(psf_montage).is_file():
        L += ["## PSFs over the field", "", f"![PSF montage]({_rel(psf_montage, base)})", ""]
    if curves:
        L += ["## Training curves", ""]
        L += [f"{label}:\n\n![{label} training curves]({_rel(p, base)})\n" for label, p in curves.items()
              if Path(p).is_file()]
    sc = res["scores"]
    L += ["## PSNR against the sharp frame (dB)", "",
          "| image | whole frame | centre crop | corner crop |", "|---|---:|---:|---:|"]
    names = {"blurred": "blurred (simulate)", "wiener": "Wiener (axis PSF)", "wiener_sv": "SV-Wiener"}
    for label, s in sc.items():
        L.append(f"| {names.get(label, label)} | {s['whole']:.2f} | {s['centre']:.2f} | {s['corner']:.2f} |")
    L += ["", f"![before / after]({_rel(res['figures']['before_after'], base)})", "",
          "## Quality control (re-blur residual |A(x_hat) - y| with the lens's operator)", "",
          "| restoration | rms / noise sigma | rms | mean abs | worst tile (rms / sigma) |", "|---|---:|---:|---:|---|"]
    for label, q in res["qc"].items():
        s = q["summary"]
        w = s["worst_tiles"][0] if s["worst_tiles"] else None
        worst = f"{tuple(w['chunk'])}: {w['rms_over_noise']:.2f}" if w else ""
        L.append(f"| {names.get(label, label)} | {s['rms_over_noise']:.2f} | {s['rms']:.4g} | {s['mean_abs']:.4g} "
                 f"| {worst} |")
    L.append("")
    for label, q in res["qc"].items():
        for f in q["figures"]:
            L.append(f"![{label}: {Path(f).name}]({_rel(f, base)})")
    L += ["", "## Commands (run them on your own data)", "", "```bash"]
    L += [r["command"] for r in stages.rows if r["user"]]
    L += ["```", ""]
    path.write_text("\n".join(L))
    return path


def main(argv: list[str] | None = None) -> int:
    from psfsim.errors import PsfsimError

    ap = argparse.ArgumentParser(prog="pipelines-demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    ap.add_argument("--stages", default="psfsim,recon,pipelines",
                    help="comma-separated stages to run (default all: psfsim,recon,pipelines)")
    ap.add_argument("--lens", default="microscope", help="the lens of every stage (default microscope)")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="LABEL=PATH",
                    help="checkpoints of the pipelines stage (default: best.pt of each recon demo run)")
    ap.add_argument("--tile", type=int, default=512, help="tile of the pipelines runs (default 512)")
    ap.add_argument("--no-sv", action="store_true", help="skip pipelines wiener --sv")
    args = ap.parse_args(argv)
    out = Path(args.out)
    stages = _Stages()
    t0 = time.perf_counter()
    try:
        todo = [s.strip() for s in args.stages.split(",") if s.strip()]
        bad = sorted(set(todo) - {"psfsim", "recon", "pipelines"})
        if bad:
            raise PsfsimError(f"--stages {args.stages!r}: unknown {', '.join(bad)}; expected psfsim, recon, pipelines")
        data = out / "data" / "dataset.zarr"
        if "psfsim" in todo:
            from psfsim.demo import main as psfsim_demo

            a = ["--out", str(out), "--lens", args.lens]
            if stages.run("psfsim demo", "python -m psfsim.demo " + shlex.join(a), lambda: psfsim_demo(a)) != 0:
                return 2
        if "recon" in todo:
            from recon.demo import main as recon_demo

            a = ["--data", str(data), "--lens", args.lens, "--out", str(out / "recon")]
            if stages.run("recon demo", "python -m recon.demo " + shlex.join(a), lambda: recon_demo(a)) != 0:
                return 2
        if "pipelines" in todo:
            cks = {}
            for item in args.checkpoint:
                label, sep, p = item.partition("=")
                if not sep or not label or not p:
                    raise PsfsimError(f"--checkpoint {item!r}: expected LABEL=PATH")
                cks[label] = Path(p)
            if not cks:
                cks = {label: out / "recon" / run / "train" / "best.pt" for run, label in MODELS.items()}
            missing = [str(p) for p in cks.values() if not p.is_file()]
            if missing:
                raise PsfsimError(f"checkpoint(s) {', '.join(missing)}: no such file (run the recon stage first)")
            res = pipelines_stage(out / "pipelines", cks, args.lens, tile=args.tile, sv=not args.no_sv,
                                  stages=stages)
            curves = {label: p.parent / "curves.png" for label, p in cks.items()}
            rep = write_report(out / "report.md", stages, res, psf_montage=out / "psf" / "psf_montage.png",
                               curves=curves)
            print(f"\n  {'':22s} {'whole':>7s} {'centre':>7s} {'corner':>7s}   (PSNR, dB)")
            for label, s in res["scores"].items():
                print(f"  {label:22s} {s['whole']:7.2f} {s['centre']:7.2f} {s['corner']:7.2f}")
            print(f"  report   {rep}")
    except PsfsimError as e:
        print(f"pipelines-demo: error: {e}", file=sys.stderr)
        return 2
    print("\n" + "\n".join(f"  {r['stage']:44s} {r['wall_s']:7.1f} s wall {r['cpu_s']:7.1f} s CPU"
                           for r in stages.rows))
    print(f"\ndemo done in {time.perf_counter() - t0:.1f} s; {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
