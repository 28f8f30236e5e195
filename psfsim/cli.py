"""The ``psfsim`` command line: a thin layer over the library.

A user error (bad lens file, bad argument, unreadable input: a :class:`~psfsim.errors.PsfsimError`, or an
``OSError`` from the file system) prints one line ``psfsim: error: ...`` to stderr and exits with status 2.
Any other exception is a bug in psfsim and keeps its traceback (it is not dressed up as a user error).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

from .errors import PsfsimError
from .report import lens_summary, write_grid  # noqa: F401  (moved; still importable from here)

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        raise PsfsimError(f"{self.prog}: {message}")


def _pair(text: str, typ=float, name: str = "value") -> tuple:
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        vals = tuple(typ(p) for p in parts)
        if not all(np.isfinite(v) for v in vals):
            raise ValueError
        return vals
    except ValueError:
        raise PsfsimError(f"{name} {text!r}: expected two comma-separated {'integers' if typ is int else 'numbers'}") from None


# --------------------------------------------------------------------------------------------------
def cmd_psf(args) -> int:
    from .io import write_array
    from .lens import load_lens
    from .store import check_output

    out = Path(args.out)
    if out.suffix.lower() not in (".npy", ".tif", ".tiff", ".fits"):
        raise PsfsimError(f"--out {out}: expected a .npy, .tif or .fits file")
    check_output(out, overwrite=args.overwrite)
    x, y = _pair(args.field, float, "--field")
    lens = load_lens(args.lens)
    psf = lens.psf(x, y)
    write_array(out, psf, history=_history(args))
    print(f"PSF at field ({x:+.4f}, {y:+.4f}) of {lens.name}: {psf.shape[0]}x{psf.shape[1]} px, "
          f"Strehl {float(lens.strehl(x, y)):.3f} -> {out}")
    return 0


def _command_line(args) -> str:
    import shlex

    return "psfsim " + " ".join(shlex.quote(a) for a in getattr(args, "_argv", []))


def _history(args) -> tuple[str, ...]:
    """FITS ``HISTORY`` lines of an output: psfsim's version and the command that wrote it."""
    from ._version import __version__

    return (f"psfsim {__version__}: {_command_line(args)}",)


# the reports (lens summary, PSF grid files, dataset summary) live in psfsim.report


def cmd_grid(args) -> int:
    from .lens import load_lens
    from .report import check_grid_out

    ny, nx = _pair(args.n, int, "--n")
    if ny < 1 or nx < 1 or ny * nx > 4096:
        raise PsfsimError(f"--n {args.n}: expected 1 <= NY, NX and NY * NX <= 4096")
    check_grid_out(Path(args.out), overwrite=args.overwrite)
    lens = load_lens(args.lens)
    files = write_grid(lens, Path(args.out), ny, nx, log=not args.linear, overwrite=args.overwrite,
                       table_points=not args.no_table_points)
    for k, p in files.items():
        print(f"{k:8s} {p}")
    return 0


def _toml_string(v: str) -> str:
    import json

    return json.dumps(v)  # a JSON string is a TOML basic string (same escapes)


def table_lens_toml(*, name: str, table_file: str, table_wavelength_nm: float, wavelength_nm, weights, na: float,
                    pixel_pitch_um: float, shape_px, axis_px=None, obscuration: float = 0.0, size_px: int = 33,
                    oversample: int = 4, interpolation: str = "linear", extrapolate: str = "none",
                    keep_tilt: bool = False, convention: str = "born-wolf") -> str:
    """The text of a lens file whose aberrations are a field table (``psfsim lens from-table``)."""
    wl = ", ".join(repr(float(w)) for w in wavelength_nm)
    lines = [f"# written by psfsim lens from-table from {table_file}", f"name = {_toml_string(name)}"]
    if convention != "born-wolf":
        lines.append(f"convention = {_toml_string(convention)}")
    lines += ["", "[optics]", f"wavelength_nm = {'[' + wl + ']' if len(wavelength_nm) > 1 else wl}"]
    if weights is not None:
        lines.append("weights = [" + ", ".join(repr(float(w)) for w in weights) + "]")
    lines += [f"na = {na!r}", f"pixel_pitch_um = {pixel_pitch_um!r}"]
    if obscuration:
        lines.append(f"obscuration = {obscuration!r}")
    lines += ["", "[field]", f"shape_px = [{int(shape_px[0])}, {int(shape_px[1])}]"]
    if axis_px is not None:
        lines.append(f"axis_px = [{float(axis_px[0])!r}, {float(axis_px[1])!r}]")
    lines += ["", "[psf]", f"size_px = {int(size_px)}", f"oversample = {int(oversample)}",
              "", "[field_table]", f"file = {_toml_string(table_file)}          # relative to this file",
              f"wavelength_nm = {float(table_wavelength_nm)!r}   # the wavelength of the table's RMS waves",
              f"interpolation = {_toml_string(interpolation)}",
              f"extrapolate = {_toml_string(extrapolate)}",
              f"keep_tilt = {'true' if keep_tilt else 'false'}"]
    return "\n".join(lines) + "\n"


def cmd_lens_from_table(args) -> int:
    """Write a lens file around a field table, after checking the table and the whole lens (nothing is
    written when either is refused)."""
    import math
    import os

    from .field_table import read_table_csv
    from .lens import lens_from_toml
    from .report import field_table_lines
    from .store import atomic_file, check_output

    table = Path(args.table)
    out = Path(args.out)
    if out.suffix.lower() != ".toml":
        raise PsfsimError(f"--out {out}: expected a .toml lens file")
    check_output(out, overwrite=args.overwrite)
    read_table_csv(table, where=str(table))  # the table's own checks first, naming the file
    shape = _pair(args.shape_px, int, "--shape-px")
    axis = _pair(args.axis_px, float, "--axis-px") if args.axis_px else None
    try:
        wls = [float(v) for v in args.wavelength_nm.split(",")] if args.wavelength_nm else [args.table_wavelength_nm]
        weights = [float(v) for v in args.weights.split(",")] if args.weights else None
    except ValueError:
        raise PsfsimError(f"--wavelength-nm {args.wavelength_nm!r} / --weights {args.weights!r}: expected "
                          "comma-separated numbers") from None
    oversample = args.oversample
    if oversample is None:  # at least 4, and enough for the fine grid to reach Nyquist
        nyq = min(wls) * 1e-3 / (4 * args.na) if args.na > 0 and min(wls) > 0 else args.pixel_pitch_um
        oversample = max(4, math.ceil(args.pixel_pitch_um / nyq - 1e-9)) if nyq > 0 else 4
    rel = os.path.relpath(table.resolve(), out.resolve().parent)
    text = table_lens_toml(
        name=args.name or table.stem, table_file=Path(rel).as_posix(), table_wavelength_nm=args.table_wavelength_nm,
        wavelength_nm=wls, weights=weights, na=args.na, pixel_pitch_um=args.pixel_pitch_um, shape_px=shape,
        axis_px=axis, obscuration=args.obscuration, size_px=args.size_px, oversample=oversample,
        interpolation=args.interpolation, extrapolate=args.extrapolate, keep_tilt=args.keep_tilt,
        convention=args.convention)
    lens = lens_from_toml(text, where=str(out), base_dir=out.resolve().parent)  # every check, the box included
    with atomic_file(out) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    print("\n".join(field_table_lines(lens)))
    print(f"lens {lens.name}: {shape[0]} x {shape[1]} px, NA {lens.optics.na:g}, PSF box {lens.psf_sampling.size_px} px, "
          f"oversample {lens.psf_sampling.oversample} -> {out}")
    return 0


def cmd_info(args) -> int:
    from .lens import load_lens

    target = Path(args.target)
    if target.is_dir():  # a folder can only be a dataset store: a store error, never "lens ... is not a file"
        from .report import dataset_summary

        if getattr(args, "verify", False):
            from .dataset.verify import verify_report

            ok, text = verify_report(target)
            print(text)
            if not ok:
                return 1
        print(dataset_summary(target))
        return 0
    if getattr(args, "verify", False):
        raise PsfsimError(f"--verify: {args.target} is not a dataset folder (only a dataset can be verified)")
    print(lens_summary(load_lens(args.target)))
    return 0


def cmd_verify(args) -> int:
    from .dataset.verify import verify_report

    ok, text = verify_report(args.dataset)
    print(text)
    return 0 if ok else 1


def cmd_simulate(args) -> int:
    from .dataset import SimulationSpec, simulate
    from .lens import load_lens

    _check_noise_args(args)
    if args.workers is not None and args.workers < 1:
        raise PsfsimError(f"--workers {args.workers}: expected >= 1")
    lens = load_lens(args.lens)
    size = _pair(args.size, int, "--size") if args.size else tuple(lens.field.shape_px)
    try:
        split = tuple(float(v) for v in args.split.split(","))
    except ValueError:
        raise PsfsimError(f"--split {args.split!r}: expected three comma-separated fractions") from None
    spec = SimulationSpec(lens=lens.to_dict(), source=args.source, n=args.n, size=size, seed=args.seed,
                          photons=args.photons, read_noise=args.read_noise or 0.0, split=split, origins=args.origins)
    command = _command_line(args)
    from .fft import default_workers
    from .integrity import Terminated

    try:
        res = simulate(spec, args.out, workers=args.workers or default_workers(), overwrite=args.overwrite,
                       progress=True, command=command)
    except (Terminated, KeyboardInterrupt) as e:
        term = isinstance(e, Terminated)
        print(f"psfsim: {'terminated (SIGTERM)' if term else 'interrupted'}: the finished blocks of {args.out} are "
              "kept; run the same command again to finish it", file=sys.stderr)
        return 143 if term else 130
    st = res["stage_seconds"]
    total = sum(st.values())
    share = (" (worker time: " + ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in st.items()) + ")") if total > 0 else ""
    print(f"{res['samples_written']} samples written in {res['elapsed_s']:.1f} s: {res['rate']:.1f} samples/s{share}; "
          f"{'complete' if res['complete'] else 'INCOMPLETE'} -> {args.out}")
    return 0 if res["complete"] else 1


def cmd_export(args) -> int:
    from .dataset import export_hdf5

    to = Path(args.to)
    if to.suffix.lower() not in (".h5", ".hdf5"):
        raise PsfsimError(f"--to {to}: expected a .h5 or .hdf5 file")
    export_hdf5(args.dataset, to, overwrite=args.overwrite)
    print(f"exported {args.dataset} -> {to}")
    return 0


# --------------------------------------------------------------------------------------------------
# blur / wiener / rl: one image in, one out
# --------------------------------------------------------------------------------------------------
def _load_window(args):
    """Lens, image (a :class:`~psfsim.io.LoadedImage`) and its window origin in the field (default: centred).

    The outputs are checked first (type, folder, existing files without ``--overwrite``, the input itself),
    then the lens, then the image's header (memory budget, the lens field), and only then are pixels read.
    """
    from .checks import checked_image
    from .field import centred_origin, check_window
    from .io import load_image
    from .lens import load_lens

    import dataclasses

    out = Path(args.out)
    _check_out(out, args)
    lens = load_lens(args.lens)
    # NaN/inf pass the reader: the NaN policy is applied in one place, checked_image, just below
    loaded = load_image(args.input, hdu=args.hdu, field_shape=tuple(lens.field.shape_px), allow_nonfinite=True)
    # the library's NaN policy and range check, first: under "fill" the NaN/inf pixels are filled from their
    # neighbours for the computation and put back as NaN in the output (args.mask), never spread
    image, args.mask = checked_image(loaded.data, str(args.input), ndims=(2,), work_dtype=loaded.data.dtype,
                                     nan_policy=args.nan_policy)
    loaded = dataclasses.replace(loaded, data=image)
    origin = _pair(args.origin, int, "--origin") if args.origin else centred_origin(lens, image.shape)
    check_window(lens, origin=origin, shape=image.shape)
    return lens, loaded, origin, out


def _check_out(out: Path, args) -> None:
    from .io import IMAGE_SUFFIXES, sidecar_path
    from .store import check_not_input, check_output

    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise PsfsimError(f"--out {out}: unknown image type {out.suffix!r} (expected one of {', '.join(IMAGE_SUFFIXES)})")
    for p in (out, sidecar_path(out)):
        check_not_input(p, args.input)
        check_output(p, overwrite=args.overwrite)


def _write_with_record(out: Path, array, record: dict, loaded, args) -> None:
    """The image and its JSON sidecar ``OUT.json`` (lens, parameters, seed, version): one output, both land
    or neither; a FITS output keeps a FITS input's header, with HISTORY cards."""
    from .io import write_image

    from .checks import remask

    mask = getattr(args, "mask", None)
    record = {**record, "input": str(args.input), "input_hdu": loaded.header.hdu_name or loaded.header.hdu,
              "dtype": str(np.asarray(array).dtype), "command_line": _command_line(args),
              "nan_policy": args.nan_policy, "masked_pixels": 0 if mask is None else int(mask.sum())}
    write_image(out, remask(array, mask), record=record, fits_header=loaded.fits_header, history=_history(args),
                mask=mask)


def _lens_fit(image, lens) -> float:
    """Out-of-band fraction of ``image`` for ``lens`` (:mod:`psfsim.spectrum`); a one-line warning above the
    threshold: restoring with a lens that does not describe the image rings."""
    from .spectrum import OUT_OF_BAND_WARN, cutoff_cycles_per_px, out_of_band_fraction

    frac = out_of_band_fraction(image, lens)
    if frac > OUT_OF_BAND_WARN:
        warnings.warn(f"the lens {lens.name} does not describe this image: {100 * frac:.1f} % of its power above "
                      f"half the cutoff lies beyond the lens's cutoff {cutoff_cycles_per_px(lens):.3f} cycles/px "
                      f"(threshold {100 * OUT_OF_BAND_WARN:.0f} %); the restoration will ring", stacklevel=2)
    return frac


def _check_noise_args(args) -> None:
    if args.seed < 0:
        raise PsfsimError(f"--seed {args.seed}: expected a whole number >= 0")
    if args.read_noise is not None and args.photons is None:
        raise PsfsimError("--read-noise is in electrons: give --photons too (the electrons at the peak value)")


def cmd_blur(args) -> int:
    from .noise import NoiseModel
    from .operators import make_operator

    lens, loaded, origin, out = _load_window(args)
    image = loaded.data
    if args.rank is not None and args.rank < 1:
        raise PsfsimError(f"--rank {args.rank}: expected >= 1")
    _check_noise_args(args)
    noise = NoiseModel(photons=args.photons, read_noise=args.read_noise or 0.0)
    if args.exact and args.local:
        raise PsfsimError("--local chooses tile-local bases of the fast operator: not with --exact")
    op = make_operator(lens, shape=image.shape, origin=origin, method="exact" if args.exact else "fast", rank=args.rank,
                       local=args.local)
    blurred = op(image)
    peak = float(np.max(image)) if np.max(image) > 0 else 1.0
    if not noise.is_noiseless:
        rng = np.random.default_rng(args.seed)
        blurred = (noise.apply(blurred / peak, rng) * peak).astype(blurred.dtype, copy=False)
    rank = getattr(op, "rank", None)
    _write_with_record(out, blurred, {
        "command": "blur", "lens": lens.to_dict(), "origin": list(origin), "method": "exact" if args.exact else "fast",
        "rank": rank, "local_ranks": getattr(op, "local_ranks", None) or None, "noise": noise.to_dict(),
        "noise_scale_peak": peak, "seed": args.seed}, loaded, args)
    how = "exact" if args.exact else f"fast, rank {rank}"
    if args.local:
        how += f", tile-local bases: mean rank {np.mean(op.local_ranks):.1f} over {op.n_blocks} blocks"
    print(f"blurred {image.shape[0]}x{image.shape[1]} at origin {origin} with {lens.name} "
          f"({how}){'' if noise.is_noiseless else f', noise {noise}'} -> {out}")
    return 0


def cmd_wiener(args) -> int:
    from .restore import reference_psf, sv_wiener, wiener

    lens, loaded, origin, out = _load_window(args)
    image = loaded.data
    frac = _lens_fit(image, lens)
    if args.sv:
        res = sv_wiener(image, lens, origin=origin, patch=args.patch, balance=args.balance)
        how = f"spatially-varying, patch {args.patch}"
    else:
        res = wiener(image, reference_psf(lens, origin=origin, shape=image.shape, which=args.psf), balance=args.balance)
        how = f"global, {args.psf} PSF"
    _write_with_record(out, res, {"command": "wiener", "lens": lens.to_dict(), "origin": list(origin), "sv": args.sv,
                                  "psf": args.psf, "patch": args.patch, "balance": args.balance,
                                  "out_of_band_fraction": frac}, loaded, args)
    print(f"Wiener ({how}) of {args.input} -> {out}")
    return 0


def cmd_rl(args) -> int:
    from .operators import make_operator
    from .restore import richardson_lucy

    lens, loaded, origin, out = _load_window(args)
    image = loaded.data
    if args.iters < 1:
        raise PsfsimError(f"--iters {args.iters}: expected >= 1")
    frac = _lens_fit(image, lens)
    op = make_operator(lens, shape=image.shape, origin=origin, local=args.local)
    res = richardson_lucy(image, op, iters=args.iters, tol=args.tol, progress=True)
    _write_with_record(out, res.image, {"command": "rl", "lens": lens.to_dict(), "origin": list(origin), "rank": op.rank,
                                        "local_ranks": op.local_ranks or None,
                                        "iterations": res.iterations, "last_change": res.last_change,
                                        "out_of_band_fraction": frac}, loaded, args)
    print(f"Richardson-Lucy, {res.iterations} iterations (last relative change {res.last_change:.2e}) -> {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    p = _Parser(prog="psfsim", description="Spatially-varying PSFs of a lens: simulate, blur, restore.")
    p.add_argument("--version", action="version", version=f"psfsim {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    lens_help = "lens TOML file or preset name (microscope, relay, telescope)"

    sp = sub.add_parser("psf", help="one PSF at a field point")
    sp.add_argument("--lens", required=True, help=lens_help)
    sp.add_argument("--field", required=True, metavar="X,Y", help="field coordinates (see README)")
    sp.add_argument("--out", required=True, help="output .npy, .tif or .fits")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing output")
    sp.set_defaults(func=cmd_psf)

    sp = sub.add_parser("grid", help="PSF grid over the field + montage, Strehl and FWHM maps")
    sp.add_argument("--lens", required=True, help=lens_help)
    sp.add_argument("--n", default="5,5", metavar="NY,NX", help="grid size (default 5,5)")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--linear", action="store_true", help="linear montage stretch (default: log)")
    sp.add_argument("--overwrite", action="store_true", help="replace the grid files already in the folder")
    sp.add_argument("--no-table-points", action="store_true",
                    help="lens with a [field_table]: do not mark the table's points on the Strehl map")
    sp.set_defaults(func=cmd_grid)

    sp = sub.add_parser("lens", help="lens files: write one from a table of Zernikes at field points")
    lsub = sp.add_subparsers(dest="lens_command", metavar="LENS_COMMAND", parser_class=_Parser)
    sp.set_defaults(func=lambda a, p=sp: (p.print_help(), 2)[1])
    lp = lsub.add_parser("from-table", help="check a Zernike field table (CSV) and write a lens file around it")
    lp.add_argument("table", metavar="TABLE.csv", help="columns row_px, col_px, Z1 .. Zn (Noll, RMS waves); see README")
    lp.add_argument("--table-wavelength-nm", type=float, required=True, help="wavelength of the table's waves (nm)")
    lp.add_argument("--na", type=float, required=True, help="numerical aperture on the detector's side (1 / (2 F#))")
    lp.add_argument("--pixel-pitch-um", type=float, required=True, help="detector pixel pitch (um)")
    lp.add_argument("--shape-px", required=True, metavar="H,W", help="the frame the table's pixels refer to")
    lp.add_argument("--out", required=True, help="output LENS.toml (the table is referenced relative to it)")
    lp.add_argument("--wavelength-nm", metavar="L1,L2,...", help="imaging wavelength(s) in nm (default: the table's)")
    lp.add_argument("--weights", metavar="W1,W2,...", help="spectral weights, one per wavelength")
    lp.add_argument("--axis-px", metavar="ROW,COL", help="optical axis in the frame's pixels (default: the centre)")
    lp.add_argument("--obscuration", type=float, default=0.0, help="central obscuration ratio (default 0)")
    lp.add_argument("--size-px", type=int, default=33, help="PSF box side, odd (default 33)")
    lp.add_argument("--oversample", type=int, help="sub-samples per pixel side (default: 4, or more to reach Nyquist)")
    lp.add_argument("--interpolation", default="linear", help="linear (default), cubic, or bilinear (grid tables)")
    lp.add_argument("--extrapolate", default="none", help="none (default: refuse points outside the table) or nearest")
    lp.add_argument("--keep-tilt", action="store_true", help="keep the table's piston and tilt (Z1-Z3)")
    lp.add_argument("--convention", default="born-wolf", help="sign convention of the table: born-wolf or poppy")
    lp.add_argument("--name", help="lens name (default: the table file's stem)")
    lp.add_argument("--overwrite", action="store_true", help="replace an existing LENS.toml")
    lp.set_defaults(func=cmd_lens_from_table)

    def io_args(sp):
        sp.add_argument("--lens", required=True, help=lens_help)
        sp.add_argument("--input", required=True, help="image (.tif, .png, .npy, .fits)")
        sp.add_argument("--out", required=True, help="output image (.tif, .png, .npy, .fits) + OUT.json record")
        sp.add_argument("--origin", metavar="ROW,COL", help="the image's origin in the lens field (default: centred)")
        sp.add_argument("--hdu", metavar="NAME|N", help="FITS input: the HDU to read (default: the first 2-D image)")
        sp.add_argument("--overwrite", action="store_true", help="replace an existing output and its OUT.json")
        sp.add_argument("--nan-policy", choices=["raise", "fill"], default="raise",
                        help="NaN/inf input pixels: refuse (default), or fill them from their neighbours for the "
                             "computation and leave them NaN in the output (FITS blanks, dead pixels)")

    sp = sub.add_parser("blur", help="blur an image as the lens would (+ Poisson-Gaussian noise)")
    io_args(sp)
    sp.add_argument("--exact", action="store_true", help="exact operator (slow) instead of the fast low-rank one")
    sp.add_argument("--rank", type=int, help="rank of the fast operator (default: automatic for 1 %% error)")
    sp.add_argument("--local", action="store_true",
                    help="tile-local bases: each block of the fast operator its own, fewer eigen-PSFs (faster where "
                         "the PSF varies strongly over the field; same error target)")
    sp.add_argument("--photons", type=float, help="photo-electrons at the image's peak value (Poisson noise)")
    sp.add_argument("--read-noise", type=float, help="Gaussian read noise, electrons RMS")
    sp.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    sp.set_defaults(func=cmd_blur)

    sp = sub.add_parser("wiener", help="Wiener deconvolution (global or spatially-varying)")
    io_args(sp)
    sp.add_argument("--sv", action="store_true", help="spatially-varying (patch-wise local PSFs)")
    sp.add_argument("--patch", type=int, default=64, help="SV patch size in px (default 64)")
    sp.add_argument("--psf", choices=["axis", "centre", "mean"], default="axis", help="PSF of the global filter")
    sp.add_argument("--balance", type=float, help="regularisation (default: from the estimated noise)")
    sp.set_defaults(func=cmd_wiener)

    sp = sub.add_parser("rl", help="spatially-varying Richardson-Lucy deconvolution")
    io_args(sp)
    sp.add_argument("--iters", type=int, default=30, help="iterations (default 30)")
    sp.add_argument("--tol", type=float, help="stop when the relative change falls below this")
    sp.add_argument("--local", action="store_true", help="fast operator with tile-local bases (see `psfsim blur`)")
    sp.set_defaults(func=cmd_rl)

    sp = sub.add_parser("info", help="summary of a lens or of a dataset (DATA.zarr)")
    sp.add_argument("target", help=lens_help + ", or a dataset folder")
    sp.add_argument("--verify", action="store_true", help="dataset: first check every block against its digest")
    sp.set_defaults(func=cmd_info)

    sp = sub.add_parser("verify", help="check every written block of a dataset against its recorded digest")
    sp.add_argument("dataset", help="DATA.zarr folder")
    sp.set_defaults(func=cmd_verify)

    sp = sub.add_parser("simulate", help="write a training dataset (Zarr v3): sharp, blurred, Wiener baselines")
    sp.add_argument("--lens", required=True, help=lens_help)
    sp.add_argument("--source", required=True,
                    help="DIR, FILE, skimage:NAME, cells, stars, beams, or a comma-separated mixture")
    sp.add_argument("--n", type=int, required=True, help="number of samples")
    sp.add_argument("--out", required=True, help="output DATA.zarr folder")
    sp.add_argument("--size", metavar="H,W", help="sample size (default: the whole lens field)")
    sp.add_argument("--origins", choices=["random", "tile"], default="random",
                    help="window origins when --size is smaller than the field (default random)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--photons", type=float, help="photo-electrons at value 1.0 (Poisson noise)")
    sp.add_argument("--read-noise", type=float, help="Gaussian read noise, electrons RMS")
    sp.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions (default 0.8,0.1,0.1)")
    sp.add_argument("--workers", type=int, default=None, help="processes (default: the number of CPU cores)")
    sp.add_argument("--overwrite", action="store_true", help="replace a store written with other arguments")
    sp.set_defaults(func=cmd_simulate)

    sp = sub.add_parser("export", help="export a dataset to HDF5")
    sp.add_argument("dataset", help="DATA.zarr folder")
    sp.add_argument("--to", required=True, help="output .h5 file")
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=cmd_export)
    return p


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    return f"psfsim: warning: {message}\n"


def join_negative_values(argv: list[str]) -> list[str]:
    """``--field -0.5,0.2`` -> ``--field=-0.5,0.2``: argparse would take the value for an option (and then say
    so). Shared by every command line of the project (``pipelines --origin -1,0`` too)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if a.startswith("--") and "=" not in a and len(nxt) > 1 and nxt[0] == "-" and (nxt[1].isdigit() or nxt[1] == "."):
            out.append(f"{a}={nxt}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    old_format = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        parser = build_parser()
        argv = join_negative_values(list(sys.argv[1:] if argv is None else argv))
        args = parser.parse_args(argv)
        args._argv = argv
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except PsfsimError as e:  # messages may quote file contents: escaped, so one line and no terminal codes
        from .report import safe_text

        print(f"psfsim: error: {safe_text(e, limit=4000)}", file=sys.stderr)
        return 2
    except OSError as e:  # a file system refusal (permissions, full disk, ...) is the user's to fix
        from .report import safe_text

        where = f"{e.filename}: " if e.filename else ""
        print(f"psfsim: error: {safe_text(f'{where}{e.strerror or e}', limit=4000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("psfsim: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = old_format


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
