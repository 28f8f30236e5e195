"""Human-readable reports: a lens's summary, its PSF grid files, a dataset's summary and baseline scores.

Used by ``psfsim info``, ``psfsim grid`` and ``make demo``. IO at the edge: the numbers come from the lens and
the dataset reader; this module only formats and writes them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import PsfsimError

__all__ = ["lens_summary", "field_table_lines", "write_grid", "dataset_summary", "baseline_scores", "BaselineScore", "safe_text"]


def safe_text(s, limit: int = 200) -> str:
    """``s`` as text safe to print: every non-printable character (terminal escape codes, other control
    characters, line breaks, bidirectional overrides) written as its Python escape (``\\x1b``), and the result
    cut to ``limit`` characters (``...`` marks a cut). For anything read from a file before it reaches a screen.
    """
    text = str(s)
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[: limit + 1])
    return out if len(out) <= limit else out[: max(0, limit - 3)] + "..."


def lens_summary(lens) -> str:
    """Human-readable summary of a lens (``psfsim info LENS``): optics, sampling, Strehl and FWHM over the field."""
    from .field_table import EDGE_TOLERANCE_PX

    o, f, s = lens.optics, lens.field, lens.psf_sampling
    H, W = f.shape_px
    corners = f.corners_field
    far = corners[np.argmax(np.hypot(corners[:, 0], corners[:, 1]))]
    table = lens.field_table
    centre, centre_name, row = (0.0, 0.0), "centre", f.axis_px[0]
    if table is not None and table.extrapolate == "none" and table.hull_distance(*f.axis_px)[0][0] > EDGE_TOLERANCE_PX:
        # an off-axis frame whose table does not reach the axis: the frame's centre instead
        row = (H - 1) / 2
        centre, centre_name = tuple(float(v) for v in f.pixel_to_field(row, (W - 1) / 2)), "frame centre"
    edge_x = float(f.pixel_to_field(row, W - 1)[0])
    edge_y = float(f.pixel_to_field(row, W - 1)[1])
    pts = np.array([centre, [edge_x, edge_y], far])
    # the axis (and the axis row's edge) may lie off the detector for an off-axis frame: evaluated anyway
    m = lens.psf_metrics(pts[:, 0], pts[:, 1], allow_outside=True)
    strehl, fwhm = m.strehl, m.fwhm_px
    wl = ", ".join(f"{w:g}" for w in o.wavelength_nm)
    wt = ", ".join(f"{w:.3g}" for w in o.spectral_weights)
    margin = o.nyquist_pitch_um / o.pixel_pitch_um
    lines = [
        f"lens            {lens.name}",
        f"wavelengths     {wl} nm (weights {wt}; aberrations in waves at {o.reference_wavelength_nm:.1f} nm)",
        f"NA              {o.na:g} (immersion index {o.immersion_index:g}), obscuration {o.obscuration:g}",
        f"pixel pitch     {o.pixel_pitch_um:g} um; Nyquist lambda_min/(4 NA) = {o.nyquist_pitch_um:.4g} um "
        f"(margin x{margin:.2f}, {'sampled' if margin >= 1 - 1e-9 else 'UNDERSAMPLED'})",
        f"diffraction     Airy first zero 0.61 lambda/NA = {o.airy_zero_px:.2f} px",
        f"field           {H} x {W} px, axis at (row {f.axis_px[0]:g}, col {f.axis_px[1]:g}), half-diagonal {f.half_diagonal_px:.1f} px",
        f"PSF box         {s.size_px} px, oversample {s.oversample}, pupil samples {lens._engine.M}",
        f"Strehl / FWHM   {centre_name} {strehl[0]:.3f} / {fwhm[0]:.2f} px; edge (x={edge_x:+.2f}) {strehl[1]:.3f} / {fwhm[1]:.2f} px; "
        f"corner ({far[0]:+.2f}, {far[1]:+.2f}) {strehl[2]:.3f} / {fwhm[2]:.2f} px",
    ]
    if table is not None:
        lines += field_table_lines(lens)
    return "\n".join(lines)


def field_table_lines(lens) -> list[str]:
    """``psfsim info`` lines of a lens's field table: its source and points, extent (pixels and field
    coordinates), terms, wavelength and interpolation."""
    from .field_table import EDGE_TOLERANCE_PX

    t, f = lens.field_table, lens.field
    (r0, c0), (r1, c1) = t.points_px.min(0), t.points_px.max(0)
    x0, y0 = f.pixel_to_field(r0, c0)
    x1, y1 = f.pixel_to_field(r1, c1)
    terms = ", ".join(f"Z{j}" for j in t.nolls) or "none"
    scale = t.wavelength_nm / lens.optics.reference_wavelength_nm
    grid = ""
    if t.interpolation == "bilinear":
        grid = f" ({len(np.unique(t.points_px[:, 0]))} x {len(np.unique(t.points_px[:, 1]))} grid)"
    return [
        f"field table     {t.n_points} points{grid} from {safe_text(t.source)}; {t.extent_text()} "
        f"(x {float(x0):+.3f}..{float(x1):+.3f}, y {float(y0):+.3f}..{float(y1):+.3f})",
        f"table terms     {terms} RMS waves at {t.wavelength_nm:g} nm (x{scale:.4g} at the reference wavelength); "
        f"piston/tilt {'kept' if t.keep_tilt else 'dropped'}",
        f"interpolation   {t.interpolation}; outside the table's hull: "
        + ("nearest point of the hull" if t.extrapolate == "nearest" else f"refused ({EDGE_TOLERANCE_PX:.2f} px of tolerance)"),
    ]


GRID_FILES = {"grid": "psf_grid.npz", "montage": "psf_montage.png", "strehl": "strehl_map.png", "fwhm": "fwhm_map.png"}


def check_grid_out(out: Path, *, overwrite: bool = True, parent_must_exist: bool = True) -> Path:
    """Check a grid output folder: its parent exists, it is a folder if it exists, and (without ``overwrite``)
    it holds none of the grid files yet."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PsfsimError(f"--out {out}: exists and is not a folder")
    if parent_must_exist and not out.parent.is_dir():
        raise PsfsimError(f"--out {out}: folder {out.parent} does not exist")
    if not overwrite and out.is_dir():
        taken = [n for n in GRID_FILES.values() if (out / n).exists() or (out / n).is_symlink()]
        if taken:
            raise PsfsimError(f"--out {out}: holds {', '.join(taken)} already (use --overwrite to replace them)")
    return out


def write_grid(lens, out: Path, ny: int, nx: int, *, log: bool = True, overwrite: bool = True,
               table_points: bool = True) -> dict:
    """PSF grid over the field, written into the folder ``out`` (created with its parents if missing; the
    command line requires the parent to exist).

    Files: ``psf_grid.npz`` (``psfs`` (ny, nx, k, k) float64, ``x``, ``y`` field coordinates and ``rows``,
    ``cols`` pixel positions (ny, nx), ``strehl``, ``fwhm_px`` (ny, nx)); PNGs ``psf_montage.png``,
    ``strehl_map.png``, ``fwhm_map.png``. The four land together or not at all (:func:`psfsim.store.atomic_outputs`);
    without ``overwrite`` a folder already holding any of them is refused. ``table_points``: mark a field
    table's points on the Strehl map (lenses with a ``[field_table]``). Returns ``{"grid", "montage",
    "strehl", "fwhm"}`` -> paths.
    """
    from .figures import field_map, psf_montage
    from .store import atomic_outputs

    out = check_grid_out(Path(out), overwrite=overwrite, parent_must_exist=False)
    grid = lens.psf_grid(ny, nx)
    x, y = grid.x.ravel(), grid.y.ravel()
    strehl = lens.strehl(x, y).reshape(ny, nx)
    fwhm = lens.fwhm_px(x, y).reshape(ny, nx)
    created = [d for d in (out, *out.parents) if not d.exists()]  # deepest first
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / n for k, n in GRID_FILES.items()}
    try:
        with atomic_outputs(*paths.values()) as (t_npz, t_montage, t_strehl, t_fwhm):
            with open(t_npz, "wb") as f:
                np.savez(f, psfs=grid.psfs, x=grid.x, y=grid.y, rows=grid.rows, cols=grid.cols, strehl=strehl,
                         fwhm_px=fwhm)
            psf_montage(grid, t_montage, log=log, title=lens.name)
            pts = lens.field_table.points_px if (table_points and lens.field_table is not None) else None
            field_map(strehl, grid, t_strehl, label="Strehl ratio", title=f"{lens.name}: Strehl ratio", points=pts)
            field_map(fwhm, grid, t_fwhm, label="FWHM (px)", title=f"{lens.name}: equivalent-area FWHM", cmap="magma")
    except BaseException:
        for d in created:  # the folders this call made, if they stayed empty
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise
    return paths


@dataclass(frozen=True)
class BaselineScore:
    """Mean scores of one stored image against ``sharp`` (data range 1, the store's normalisation)."""

    psnr_db: float
    ssim: float


def baseline_scores(reader, indices) -> dict[str, BaselineScore]:
    """Mean PSNR / SSIM of ``blurred``, ``wiener``, ``wiener_sv`` against ``sharp`` on ``indices``.

    Parameters
    ----------
    reader : DatasetReader or path
    indices : sequence of int
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from .dataset import DatasetReader

    if not isinstance(reader, DatasetReader):
        reader = DatasetReader(reader)
    names = ("blurred", "wiener", "wiener_sv")
    b = reader.read(np.asarray(sorted(int(i) for i in indices), np.int64), arrays=("sharp",) + names)
    res = {}
    for k in names:
        arr = getattr(b, k)
        p = np.mean([peak_signal_noise_ratio(s, x, data_range=1.0) for s, x in zip(b.sharp, arr)])
        s = np.mean([structural_similarity(s, x, data_range=1.0) for s, x in zip(b.sharp, arr)])
        res[k] = BaselineScore(psnr_db=float(p), ssim=float(s))
    return res


def dataset_summary(path: str | os.PathLike, *, max_eval: int = 200) -> str:
    """Text summary of a dataset (``psfsim info DATA.zarr``): lens, sizes, splits, noise, completeness, baselines.

    The store is checked against its schema first; an incomplete one is refused (:class:`~psfsim.PsfsimError`
    with the command that finishes it, rebuilt from its spec).
    """
    from .dataset import DatasetReader

    r = DatasetReader(path)  # validated against the schema: every attribute used below has its type
    a, spec = r.attrs, r.spec
    h, w = r.size
    splits = r.splits
    nm = r.normalisation
    lines = [  # text that comes from the file is escaped (safe_text): a store must not drive the terminal
        f"dataset         {safe_text(path, 1000)}",
        f"complete        yes ({a['n_blocks']} blocks of {a['block']} samples)",
        f"lens            {safe_text(a['lens_name'])}",
        f"samples         {len(r)} x {h} x {w} float32, origins {spec.origins}, source {safe_text(repr(spec.source))}",
        "splits          " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()),
        f"noise           photons {spec.photons}, read noise {spec.read_noise}, seed {spec.seed}",
        f"normalisation   {safe_text(nm.kind)} (margin {nm.margin_px} px), sharp in [{nm.vmin:g}, {nm.vmax:g}]",
        f"operator        rank {a['operator']['rank']}, grid {a['operator']['grid'][0]}x{a['operator']['grid'][1]}",
        f"created         {safe_text(a['created'], 40)} by psfsim {safe_text(a['psfsim_version'], 40)}",
    ]
    env = a.get("environment")
    if isinstance(env, dict):
        lines.append("environment     " + ", ".join(f"{safe_text(k, 20)} {safe_text(v, 40)}" for k, v in env.items()))
    src = a.get("sources")
    if isinstance(src, list) and src:
        lines.append(f"source files    {len(src)} pinned (name, size, SHA-256; a resume refuses changed files)")
    lines.append("integrity       CRC32C per chunk, SHA-256 per block (check them: psfsim verify)")
    test = splits.get("test", np.array([], np.int64))
    which = "test split" if test.size else "all samples (empty test split)"
    idx = (test if test.size else np.arange(len(r)))[:max_eval]
    for k, sc in baseline_scores(r, idx).items():
        lines.append(f"{k:15s} PSNR {sc.psnr_db:6.2f} dB  SSIM {sc.ssim:.3f}  ({which}, {len(idx)} samples)")
    return "\n".join(lines)
