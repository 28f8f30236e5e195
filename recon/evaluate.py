"""Evaluation of a checkpoint on a store's test split (``recon evaluate``) and a table of several (``recon compare``).

:func:`evaluate` scores the model on **whole test samples** (no crops), each with its own field coordinates,
next to the store's ``blurred``, ``wiener`` and ``wiener_sv`` on the same samples, with the conventions of
:mod:`recon.metrics`: PSNR ``10 log10(1 / MSE)`` on data in [0, 1], **no clipping** of any image (the store's
baselines are scored as stored, as :func:`psfsim.report.baseline_scores` does, and the model on the same
terms), averaged over samples; SSIM from skimage (``data_range=1``), averaged over samples; PSNR per
field-radius bin from squared errors pooled within the bin.

It writes into ``out``, each file atomically (temporary file + rename):

=====================  ===================================================================================
``results.md``         the table, the radial table and the conventions
``results.csv``        ``method, psnr_db, ssim, n_samples`` (model, blurred, wiener, wiener_sv)
``radial.csv``         ``r_lo, r_hi, pixels`` and one PSNR column per method
``results.json``       everything above and the model's identity (read by :func:`compare`)
``before_after.png``   blurred, Wiener, SV-Wiener, model, truth: a crop near the field centre and one near a corner
``radial_psnr.png``    PSNR against field radius
=====================  ===================================================================================
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .checkpoint import CheckpointInfo, check_store_matches, load_checkpoint
from .errors import ReconError

__all__ = ["Score", "EvalResult", "CompareResult", "evaluate", "evaluate_model", "compare", "resolve_device",
           "METHODS"]

#: Rows of the results, in order: the model, then the store's images.
METHODS = ("model", "blurred", "wiener", "wiener_sv")
BASELINES = ("blurred", "wiener", "wiener_sv")
FILES = ("results.md", "results.csv", "radial.csv", "results.json", "before_after.png", "radial_psnr.png")


@dataclass(frozen=True)
class Score:
    """Mean over the test samples of the per-sample PSNR (dB) and SSIM."""

    psnr_db: float
    ssim: float


@dataclass(frozen=True)
class EvalResult:
    """What :func:`evaluate` measured and wrote.

    Attributes
    ----------
    out : Path
        The folder written.
    checkpoint, data : str
        The checkpoint and store evaluated.
    model : str
        Model name (``model_config["name"]``); ``model_config`` rebuilds it.
    params : int
        Parameters of the model.
    n_samples : int
        Test samples scored (whole samples).
    scores : dict name -> Score
        ``model``, ``blurred``, ``wiener``, ``wiener_sv``.
    radial_edges : tuple of float
        Field-radius bin edges (``hypot(x, y)``; 1 = the frame's corners).
    radial_psnr : dict name -> tuple of float
        PSNR per bin (pooled squared errors), NaN for an empty bin.
    radial_pixels : tuple of int
        Pixels per bin (over every test sample).
    files : dict name -> Path
    device : str
    seconds : float
    """

    out: Path
    checkpoint: str
    data: str
    model: str
    model_config: dict
    params: int
    n_samples: int
    scores: dict
    radial_edges: tuple
    radial_psnr: dict
    radial_pixels: tuple
    files: dict = field(default_factory=dict)
    device: str = "cpu"
    seconds: float = 0.0
    split: str = "test"

    def gain_db(self, baseline: str = "wiener_sv") -> float:
        """Model PSNR minus ``baseline``'s (dB)."""
        return self.scores["model"].psnr_db - self.scores[baseline].psnr_db

    def summary(self) -> str:
        """One line: model PSNR / SSIM against the baselines."""
        s = self.scores
        return (f"{self.model} ({self.params:,d} parameters) on {self.n_samples} test samples: PSNR "
                f"{s['model'].psnr_db:.2f} dB, SSIM {s['model'].ssim:.4f}; blurred {s['blurred'].psnr_db:.2f} dB, "
                f"Wiener {s['wiener'].psnr_db:.2f} dB, SV-Wiener {s['wiener_sv'].psnr_db:.2f} dB "
                f"({self.gain_db():+.2f} dB against SV-Wiener)")

    def to_json(self) -> dict:
        d = asdict(self)
        d["out"] = str(self.out)
        d["files"] = {k: str(v) for k, v in self.files.items()}
        return _finite(d)


def _finite(v):
    """JSON-safe: non-finite floats as None (inf PSNR of a perfect image, NaN of an empty bin)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` without a GPU is refused."""
    d = str(device)
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(d)
    except (RuntimeError, ValueError):
        raise ReconError(f"--device {d!r}: expected auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ReconError(f"--device {d}: CUDA is not available on this machine (torch {torch.__version__}); use cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ReconError(f"--device {d!r}: expected auto, cpu or cuda")
    return dev


def _check_out(out, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReconError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ReconError(f"--out {out}: exists and is not empty (use --overwrite to replace its results)")
    if not out.parent.is_dir():
        raise ReconError(f"--out {out}: folder {out.parent} does not exist")
    return out


def _crop_at(shape, pix, s) -> tuple[slice, slice]:
    """An ``s x s`` window inside ``shape`` holding pixel ``pix``, as central as the borders allow."""
    h, w = shape
    r0 = int(np.clip(pix[0] - s // 2, 0, h - s))
    c0 = int(np.clip(pix[1] - s // 2, 0, w - s))
    return slice(r0, r0 + s), slice(c0, c0 + s)


def evaluate(data, checkpoint, out, *, device: str = "auto", batch: int = 4, overwrite: bool = False,
             bins: int = 8, progress: bool = False) -> EvalResult:
    """Score checkpoint ``checkpoint`` on the test split of store ``data`` and write the results into ``out``.

    Parameters
    ----------
    data : path
        A complete psfsim store whose lens is the checkpoint's (else :class:`ReconError`).
    checkpoint : path
        A recon checkpoint (:func:`recon.load_checkpoint`).
    out : path
        Folder to write (created; an existing non-empty one only with ``overwrite``).
    device : {"auto", "cpu", "cuda"}
    batch : int
        Whole test samples per forward pass.
    bins : int
        Field-radius bins over ``[0, r_max]`` (``r_max``: the frame's corners).
    progress : bool
        A tqdm bar over the test batches.

    Returns
    -------
    EvalResult
    """
    out = _check_out(out, overwrite)
    dev = resolve_device(device)
    model, info = load_checkpoint(checkpoint, device=dev)
    return evaluate_model(model, info, data, out, device=dev, batch=batch, overwrite=overwrite, bins=bins,
                          progress=progress, checkpoint=str(checkpoint))


def evaluate_model(model: torch.nn.Module, info: CheckpointInfo, data, out, *, device="cpu", batch: int = 4,
                   overwrite: bool = False, bins: int = 8, progress: bool = False,
                   checkpoint: str | None = None) -> EvalResult:
    """:func:`evaluate` of a model already in memory (``info`` gives its lens and config); same outputs."""
    from .data import StoreDataset, loader

    t0 = time.perf_counter()
    out = _check_out(out, overwrite)
    dev = torch.device(device)
    if int(bins) != bins or bins < 1:
        raise ReconError(f"--bins {bins!r}: expected an integer >= 1")
    cin = int(info.model_config.get("in_channels", 1))
    if not 1 <= cin <= 3:
        raise ReconError(f"checkpoint {info.path}: model has {cin} input channels; recon evaluate feeds blurred "
                         "(1), blurred + wiener (2) or blurred + wiener + wiener_sv (3)")
    # every store image rides along as an input channel: the model gets the first cin of them
    ds = StoreDataset(data, split="test", crop=None, arrays_in=("blurred", "wiener", "wiener_sv"))
    check_store_matches(info, ds)
    edges = metrics.radial_edges(int(bins), ds.lens.field.max_radius)
    nb = len(edges) - 1
    per = {m: {"psnr": [], "ssim": []} for m in METHODS}
    sse = {m: np.zeros(nb) for m in METHODS}
    count = np.zeros(nb, np.int64)
    pick = {"centre": (np.inf, None), "corner": (-np.inf, None)}  # (radius, images) of the sample chosen for each
    model = model.to(dev).eval()
    it = loader(ds, int(batch), shuffle=False, drop_last=False)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="evaluate", unit="batch", leave=False)
    with torch.no_grad():
        for b in it:
            b = b.to(dev)
            pred = model(b.x[:, :cin], b.coords)
            if pred.shape != b.y.shape:
                raise ReconError(f"model output of shape {tuple(pred.shape)}: expected {tuple(b.y.shape)}")
            pred = pred.float().cpu().numpy()[:, 0]
            x = b.x.cpu().numpy()
            y = b.y.cpu().numpy()[:, 0]
            coords = b.coords.cpu().numpy()
            for j in range(len(y)):
                imgs = {"model": pred[j], "blurred": x[j, 0], "wiener": x[j, 1], "wiener_sv": x[j, 2]}
                r = np.hypot(coords[j, 0], coords[j, 1])
                for m, im in imgs.items():
                    per[m]["psnr"].append(metrics.psnr(im, y[j]))
                    per[m]["ssim"].append(metrics.ssim(im, y[j]))
                    s, c = metrics.radial_sums(im, y[j], r, edges)
                    sse[m] += s
                count += c
                for lab, better in (("centre", np.less), ("corner", np.greater)):
                    k = int(np.argmin(r) if lab == "centre" else np.argmax(r))
                    rk = float(r.flat[k])
                    if pick[lab][1] is None or better(rk, pick[lab][0]):
                        pick[lab] = (rk, {"pixel": np.unravel_index(k, r.shape), "sharp": y[j], **imgs,
                                          "index": int(b.index[j])})
    n = len(per["model"]["psnr"])
    scores = {m: Score(psnr_db=float(np.mean(per[m]["psnr"])), ssim=float(np.mean(per[m]["ssim"]))) for m in METHODS}
    radial = {m: tuple(float(v) for v in np.atleast_1d(metrics.psnr_from_sums(sse[m], count))) for m in METHODS}
    cfg = dict(info.model_config)
    res = EvalResult(out=out, checkpoint=str(checkpoint if checkpoint is not None else info.path),
                     data=str(os.path.abspath(ds.reader.path)), model=str(cfg.get("name", type(model).__name__)),
                     model_config=cfg, params=int(sum(p.numel() for p in model.parameters())), n_samples=n,
                     scores=scores, radial_edges=tuple(float(e) for e in edges), radial_psnr=radial,
                     radial_pixels=tuple(int(c) for c in count), files={f: out / f for f in FILES}, device=str(dev),
                     seconds=time.perf_counter() - t0)
    out.mkdir(exist_ok=True)
    _write(res, pick)
    return res


# ----------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------
def _fmt(v: float, d: int = 2) -> str:
    return "inf" if v == float("inf") else ("-" if not math.isfinite(v) else f"{v:.{d}f}")


def _csv(rows: list[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _write(res: EvalResult, pick: dict) -> None:
    from psfsim.report import safe_text
    from psfsim.store import atomic_outputs

    from .figures import LABELS, before_after, radial_plot

    s = res.scores
    e = res.radial_edges
    results_csv = _csv([["method", "psnr_db", "ssim", "n_samples"]]
                       + [[m, repr(s[m].psnr_db), repr(s[m].ssim), res.n_samples] for m in METHODS])
    radial_csv = _csv([["r_lo", "r_hi", "pixels", *(f"psnr_{m}" for m in METHODS)]]
                      + [[repr(e[i]), repr(e[i + 1]), res.radial_pixels[i], *(repr(res.radial_psnr[m][i]) for m in METHODS)]
                         for i in range(len(e) - 1)])
    md = [f"# Evaluation: {safe_text(res.model)}", "",
          f"- checkpoint: `{safe_text(res.checkpoint)}`",
          f"- data: `{safe_text(res.data)}`, split `{res.split}`: {res.n_samples} whole samples, each with its own "
          "field coordinates",
          f"- model: `{safe_text(json.dumps(res.model_config, sort_keys=True))}`, {res.params:,d} parameters",
          f"- device: {res.device}, {res.seconds:.1f} s", "",
          "| method | PSNR (dB) | SSIM | PSNR - SV-Wiener (dB) |", "|---|---:|---:|---:|"]
    for m in METHODS:
        md.append(f"| {LABELS[m]} | {_fmt(s[m].psnr_db)} | {_fmt(s[m].ssim, 4)} | "
                  f"{_fmt(s[m].psnr_db - s['wiener_sv'].psnr_db)} |")
    md += ["", "## PSNR against field radius", "",
           "| radius | pixels | " + " | ".join(LABELS[m] for m in METHODS) + " |",
           "|---|---:|" + "---:|" * len(METHODS)]
    for i in range(len(e) - 1):
        md.append(f"| {e[i]:.3f}-{e[i + 1]:.3f} | {res.radial_pixels[i]} | "
                  + " | ".join(_fmt(res.radial_psnr[m][i]) for m in METHODS) + " |")
    md += ["", "Conventions: PSNR = 10 log10(1 / MSE) on data in [0, 1] (the store's normalisation), no clipping of "
           "any image, averaged over samples; SSIM: skimage structural_similarity, data_range 1, averaged over "
           "samples; radial PSNR: squared errors pooled within bins of hypot(x, y) of each pixel's field "
           "coordinates (1 = the frame's corners), '-' for an empty bin.", "",
           "![before / after](before_after.png)", "", "![PSNR against field radius](radial_psnr.png)", ""]
    f = res.files
    rows, sc = {}, {}
    for lab, (rad, imgs) in pick.items():
        if imgs is None:
            continue
        h, w = imgs["sharp"].shape
        sl = _crop_at((h, w), imgs["pixel"], min(h, w, 96))
        key = f"{lab} (sample {imgs['index']}, r {rad:.2f})"
        rows[key] = {m: imgs[m][sl] for m in ("blurred", "wiener", "wiener_sv", "model", "sharp")}
        sc[key] = {m: f"{metrics.psnr(imgs[m][sl], imgs['sharp'][sl]):.2f} dB"
                   for m in ("blurred", "wiener", "wiener_sv", "model")}
    before_after(rows, f["before_after.png"], title=f"{res.model}: test crops near the field centre and a corner",
                 scores=sc)
    radial_plot(e, {m: res.radial_psnr[m] for m in METHODS}, f["radial_psnr.png"],
                title=f"{res.model}: PSNR against field radius ({res.n_samples} test samples)")
    with atomic_outputs(f["results.csv"], f["radial.csv"], f["results.md"], f["results.json"]) as (a, b, c, d):
        Path(a).write_text(results_csv)
        Path(b).write_text(radial_csv)
        Path(c).write_text("\n".join(md))
        Path(d).write_text(json.dumps(res.to_json(), indent=1, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------------------------------------
# compare
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompareResult:
    """Rows of :func:`compare` (one per run, dicts of the ``results.csv`` columns) and the files written."""

    rows: list
    files: dict


def _load_results(run) -> dict:
    run = Path(run)
    for p in (run / "results.json", run / "eval" / "results.json"):
        if p.is_file():
            try:
                d = json.loads(p.read_text())
                d["scores"] = {m: Score(psnr_db=_num(v["psnr_db"]), ssim=_num(v["ssim"])) for m, v in d["scores"].items()}
                for m in METHODS:
                    d["scores"][m]
                int(d["params"]), str(d["model"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ReconError(f"{p}: not a recon evaluate results.json ({type(e).__name__}: {str(e)[:100]})") from None
            d["_path"] = str(p)
            return d
    raise ReconError(f"{run}: no results.json (run recon evaluate --out {run} first)")


def compare(runs, out, *, overwrite: bool = False) -> CompareResult:
    """One table (``compare.md``, ``compare.csv``) of several evaluated runs (folders written by :func:`evaluate`,
    or run folders with an ``eval/`` inside) and ``psnr_vs_params.png``: model PSNR against parameter count
    (log x), the baselines of the first run as horizontal lines."""
    from psfsim.report import safe_text
    from psfsim.store import atomic_outputs

    from .figures import psnr_vs_params

    runs = list(runs)
    if not runs:
        raise ReconError("compare: no runs given")
    res = [_load_results(r) for r in runs]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReconError(f"--out {out}: exists and is not a folder")
    names = ("compare.md", "compare.csv", "psnr_vs_params.png")
    if not overwrite and any((out / n).exists() for n in names):
        raise ReconError(f"--out {out}: already holds a comparison (use --overwrite to replace it)")
    if not out.parent.is_dir():
        raise ReconError(f"--out {out}: folder {out.parent} does not exist")
    out.mkdir(exist_ok=True)
    rows = []
    for run, d in zip(runs, res):
        s = d["scores"]
        rows.append({"run": str(run), "model": d["model"], "params": int(d["params"]), "n_samples": d.get("n_samples"),
                     "psnr_db": s["model"].psnr_db, "ssim": s["model"].ssim,
                     "gain_vs_wiener_sv_db": s["model"].psnr_db - s["wiener_sv"].psnr_db,
                     **{f"{m}_psnr_db": s[m].psnr_db for m in BASELINES}, "data": d.get("data", "")})
    data = {r["data"] for r in rows}
    base = {m: res[0]["scores"][m].psnr_db for m in BASELINES}
    cols = list(rows[0])
    md = ["# Comparison", "", "| " + " | ".join(cols[:-1]) + " |", "|---|---|" + "---:|" * (len(cols) - 3)]
    for r in rows:
        md.append("| " + " | ".join(safe_text(r[c]) if isinstance(r[c], str) else
                                    (f"{r[c]:,d}" if isinstance(r[c], int) else _fmt(float(r[c]), 4 if c == "ssim" else 2))
                                    for c in cols[:-1]) + " |")
    md += ["", "Data: " + ", ".join(f"`{safe_text(x)}`" for x in sorted(data))]
    if len(data) > 1:
        md += ["", "**The runs were evaluated on different stores**: their PSNRs are not comparable; the figure's "
               "baselines are the first run's."]
    md += ["", "![PSNR against parameters](psnr_vs_params.png)", ""]
    psnr_vs_params([{"label": Path(r["run"]).name, "model": r["model"], "params": r["params"], "psnr_db": r["psnr_db"]}
                    for r in rows], base, out / "psnr_vs_params.png", title="test PSNR against parameters")
    with atomic_outputs(out / "compare.csv", out / "compare.md") as (a, b):
        Path(a).write_text(_csv([cols] + [[repr(r[c]) if isinstance(r[c], float) else r[c] for c in cols] for r in rows]))
        Path(b).write_text("\n".join(md))
    return CompareResult(rows=rows, files={n: out / n for n in names})
