"""``recon experiment conv1d``: the CoordGate paper's 1-D spatially-varying convolution (Howard, Norreys & Döpp,
arXiv 2401.04680, Sec. IV.A, Eq. 5 and Fig. 3), as one resumable command.

The problem
-----------
``N`` random signals ``m`` of length 30 with samples drawn from U(0, 1) are blurred by a fixed, spatially-varying
matrix ``H``: ``n = H m``, ``n[x] = sum_x' H[x, x'] m[x']``. Each source sample ``x'`` spreads into a Gaussian
(Eq. 5) centred at ``x' + delta(x')`` with standard deviation ``sigma(x')``::

    H[x, x'] = exp(-(x - x' - delta(x'))^2 / (2 sigma(x')^2)) / (sqrt(2 pi) sigma(x'))

    first half,  x' <  15:   delta = 1 - x'/15   (1 -> 1/15),   sigma = 0.5
    second half, x' >= 15:   delta = 0,                          sigma = 0.5 + 1.5 (x' - 15)/14   (0.5 -> 2)

**Our reading of Eq. 5** (documented choice): as printed, the paper's ``sigma`` for ``x' >= 15`` decreases and
reaches zero at ``x' = 18``, which cannot be a width. We implement the evident intent stated in its text, H as
"a superposition of (1, 0.5), (0, 0.5) and (0, 2)" in (offset, width): the offset falls linearly from 1 to 0 over
the first half at width 0.5, and the width grows linearly from 0.5 to 2 over the second half at offset 0. Each
column is a unit-area Gaussian density sampled at the integers (a PSF conserving energy; columns near the ends
lose the part falling outside the 30 samples), so targets stay in about [0, 1] like the inputs and
``PSNR = 10 log10(1 / MSE)`` (the paper's definition) is on the usual scale.

The models (``recon.models.cnn1d``)
-----------------------------------
``CNN(L, k, c)``: ``L`` convolutions of kernel ``k`` and ``c`` channels, ReLU between them, the last one to 1
channel. ``cCNN(L, k, c)``: the same with the coordinate channel concatenated before every convolution
(CoordConv). ``CG(1, k, 3, p)``: **one** gated convolution, 3 channels of kernel ``k`` multiplied per position by
the gates of an MLP of ``p`` 1 x 1 layers (3 hidden units, ReLU) of the coordinate, mixed to the output by a
1 x 1 convolution (Eq. 3). The control is the same CG whose gate MLP sees, instead of the coordinates, a U(-1, 1)
noise vector of the signal's length drawn once per unit from its seed (``NoiseGateCNN1d``): the paper's test that
CG works because the gates know *where* they are. The list is the issue's: CNN(1, k, 1), CNN(3, 7, 4),
CNN(4, 7, 4), CNN(4, 7, 20), CNN(8, 7, 4), their cCNN twins, CG(1, k, 3, p) and the control, plus one
reference that is not in the paper: ``free gates (1, k, 3)`` (``FreeGateLC1d``), CG(1, k, 3, p) with its gates a
free parameter per position, the ceiling of any one-layer 3-channel CoordGate on this H (left out of the
verdicts; it tells whether CG falls short for its gate MLP or for its 3 channels). The one-layer
models use ``k = 15`` by default (``--kernel``): one layer must reach H's widest column (offset up to 1 and three
widths of 2 on each side: 7 samples), as the stacked k = 7 models do (receptive fields 19 to 49).
The paper's full text was not available offline while this was written (only its abstract): the details not in
issue 12 (``k`` of the one-layer models, ``p = 2``, the gate's hidden width ``c = 3``, the ReLU in the gate MLP,
the unit-area columns) are our choices, stated here and recorded in ``experiment.json``.

Training and scoring
--------------------
The signals (seeded by ``data_seed``) are split 80 / 10 / 10 % into training, validation and test sets, the same
for every model. Adam (``lr``), MSE loss, mini-batches shuffled per (seed, epoch); after every epoch the
validation MSE decides: the learning rate is halved after ``lr_patience`` epochs without a relative improvement of
``1e-3``, training stops after ``patience`` such epochs (``stopped = "plateau"``) or at ``max_epochs``
(``stopped = "max_epochs"``), and the weights of the best validation epoch are kept. Each model is trained with
``seeds`` seeds (initial weights, shuffling, the control's noise); the table reports the mean and the spread (half
the range) over seeds. Scores on the test set: PSNR of the pooled MSE and ``|H_learned - H|_F / |H|_F``, where
``H_learned[:, x'] = f(e_x') - f(0)`` is the model's response to a unit impulse at ``x'`` less its response to a
zero signal (for an affine model exactly its linear part; for the ReLU CNNs the same probe as the paper's figure).

Inference time is measured for every model in one pass after training (one unit, ``timing``): each model's
forward pass on the 1000-signal test batch (no gradients, eval mode, so CoordGate reuses its cached gates, as the
paper's "once trained, one saves the gating map"), models interleaved round by round, the median of the rounds.
The figures are relative: they come from one process on one machine at one time (on CPU: one thread, see below).

CPU threads: every unit runs single-threaded (``torch.set_num_threads(1)`` in the worker, restored after): the
tensors are tiny (30 samples by a few channels), intra-op threads only add synchronisation, and on a shared
machine two spinning OpenMP threads per process slowed training steps by 10-50x in our measurements. Parallelism
is across units instead: ``--workers`` processes (default: 2 on CPU, 1 on CUDA).

Claims (``CLAIMS``) are decided by fixed margins set before any run: ``FAR_DB`` (3 dB) for "far better" and for
"does not converge" (the control ends at least that far below CG), ``NOTHING_DB`` (1 dB) for "brings nothing" /
"does not help" (a gain under 1 dB).

Outputs in ``--out``: ``experiment.json`` (settings), ``units/*.json`` (one record per model x seed, and the
timing), ``table.md`` / ``table.csv``, ``claims.md``, ``fig3.png``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ReconError
from .common import Claim, ExperimentDir, ExperimentResult, claims_markdown, mean_spread, write_table

__all__ = ["run", "add_arguments", "blur_matrix", "offsets_widths", "make_data", "model_specs", "impulse_response",
           "judge", "DEFAULTS", "QUICK", "FAR_DB", "NOTHING_DB"]

LENGTH = 30
#: margins of the verdicts (dB), fixed before any run
FAR_DB = 3.0
NOTHING_DB = 1.0

DEFAULTS = dict(n_signals=10000, data_seed=0, seeds=3, kernel=15, gate_layers=2, batch=250, lr=1e-2,
                max_epochs=60, lr_patience=4, patience=10, timing_rounds=15)
QUICK = dict(n_signals=1000, data_seed=0, seeds=1, kernel=15, gate_layers=2, batch=250, lr=1e-2,
             max_epochs=5, lr_patience=4, patience=10, timing_rounds=3)


# ----------------------------------------------------------------------------------------------------------
# the data (pure numpy)
# ----------------------------------------------------------------------------------------------------------
def offsets_widths(length: int = LENGTH) -> tuple[np.ndarray, np.ndarray]:
    """Offset ``delta(x')`` and width ``sigma(x')`` (samples) of each source sample's Gaussian (Eq. 5 as read
    in the module docstring): first half ``delta = 1 - x'/h`` and ``sigma = 0.5``; second half ``delta = 0`` and
    ``sigma = 0.5 + 1.5 (x' - h)/(length - 1 - h)``, ``h = length // 2``.

    Returns two ``(length,)`` float64 arrays.
    """
    if isinstance(length, bool) or int(length) != length or length < 4:
        raise ReconError(f"length = {length!r}: expected a whole number of samples >= 4")
    n = int(length)
    h = n // 2
    xp = np.arange(n, dtype=np.float64)
    delta = np.where(xp < h, 1.0 - xp / h, 0.0)
    sigma = np.where(xp < h, 0.5, 0.5 + 1.5 * (xp - h) / (n - 1 - h))
    return delta, sigma


def blur_matrix(length: int = LENGTH) -> np.ndarray:
    """The spatially-varying blur ``H (length, length)`` float64 of Eq. 5: column ``x'`` is the unit-area Gaussian
    density of mean ``x' + delta(x')`` and standard deviation ``sigma(x')`` sampled at ``x = 0 .. length - 1``;
    ``n = H @ m``."""
    delta, sigma = offsets_widths(length)
    x = np.arange(int(length), dtype=np.float64)[:, None]
    mu = np.arange(int(length), dtype=np.float64)[None, :] + delta[None, :]
    s = sigma[None, :]
    return np.exp(-((x - mu) ** 2) / (2.0 * s * s)) / (math.sqrt(2.0 * math.pi) * s)


def make_data(n_signals: int, seed: int, length: int = LENGTH) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``n_signals`` signals ``m ~ U(0, 1)^length`` (``numpy.random.default_rng(seed)``) and their targets
    ``n = H m``, split 80 / 10 / 10 % into ``train``, ``val`` and ``test``: name -> ``(m, n)``, each
    ``(count, length)`` float32."""
    if isinstance(n_signals, bool) or int(n_signals) != n_signals or n_signals < 30:
        raise ReconError(f"n_signals = {n_signals!r}: expected a whole number >= 30 (10 % of it is the test set)")
    rng = np.random.default_rng(int(seed))
    m = rng.random((int(n_signals), int(length)))
    n = m @ blur_matrix(length).T
    a, b = int(0.8 * n_signals), int(0.9 * n_signals)
    cut = {"train": slice(0, a), "val": slice(a, b), "test": slice(b, int(n_signals))}
    return {k: (m[s].astype(np.float32), n[s].astype(np.float32)) for k, s in cut.items()}


# ----------------------------------------------------------------------------------------------------------
# the models
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """One model of the comparison: ``key`` (unit names), ``label`` (the paper's notation), ``family`` (cnn, ccnn,
    cg, control), the class name in :mod:`recon.models.cnn1d` and its arguments."""

    key: str
    label: str
    family: str
    cls: str
    args: dict = field(default_factory=dict)

    def build(self, seed: int):
        import torch

        from ..models import cnn1d

        torch.manual_seed(int(seed))
        args = dict(self.args)
        if self.family == "control":
            args["noise_seed"] = int(seed)
        return getattr(cnn1d, self.cls)(**args)


def model_specs(kernel: int = 15, gate_layers: int = 2) -> list[ModelSpec]:
    """The issue's list: CNN(1, k, 1), CNN(3, 7, 4), CNN(4, 7, 4), CNN(4, 7, 20), CNN(8, 7, 4), their cCNN twins,
    CG(1, k, 3, p), the random-input control (``k = kernel``, ``p = gate_layers``) and the free-gate reference."""
    k, p = int(kernel), int(gate_layers)
    shapes = [(1, k, 1), (3, 7, 4), (4, 7, 4), (4, 7, 20), (8, 7, 4)]
    out = []
    for fam, cls, name in (("cnn", "CNN1d", "CNN"), ("ccnn", "CoordConvCNN1d", "cCNN")):
        for L, kk, c in shapes:
            out.append(ModelSpec(f"{fam}_{L}_{kk}_{c}", f"{name}({L},{kk},{c})", fam, cls, {"L": L, "k": kk, "c": c}))
    out.append(ModelSpec(f"cg_1_{k}_3_{p}", f"CG(1,{k},3,{p})", "cg", "CoordGateCNN1d",
                         {"L": 1, "k": k, "c": 3, "p": p}))
    out.append(ModelSpec(f"cg_noise_1_{k}_3_{p}", f"CG(1,{k},3,{p}) random input", "control", "NoiseGateCNN1d",
                         {"L": 1, "k": k, "c": 3, "p": p, "length": LENGTH}))
    out.append(ModelSpec(f"lc_free_{k}_3", f"free gates (1,{k},3)", "reference", "FreeGateLC1d",
                         {"k": k, "c": 3, "length": LENGTH}))
    return out



def impulse_response(model, length: int = LENGTH, *, device="cpu") -> np.ndarray:
    """``H_learned (length, length)`` float64: column ``j`` is ``f(e_j) - f(0)``, the model's response to a unit
    impulse at sample ``j`` less its response to a zero signal."""
    import torch

    from ..coords import coords_1d

    p = next(model.parameters())
    x = torch.zeros(length + 1, 1, length, dtype=p.dtype, device=device)
    x[torch.arange(length), 0, torch.arange(length)] = 1.0
    was = model.training
    model.eval()
    with torch.no_grad():
        y = model(x, coords_1d(length, length + 1, device=device, dtype=p.dtype))[:, 0, :]
    model.train(was)
    return (y[:length] - y[length:]).T.double().cpu().numpy()


# ----------------------------------------------------------------------------------------------------------
# one unit: train a model with one seed
# ----------------------------------------------------------------------------------------------------------
def _threads(device) -> int | None:
    import torch

    if device.type != "cpu":
        return None
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    return old


def train_unit(spec: ModelSpec, seed: int, data: dict, settings: dict, device: str = "cpu") -> dict:
    """Train ``spec`` with ``seed`` on ``data`` (:func:`make_data`) as the module docstring says; returns the unit
    record (JSON-serialisable)."""
    import torch

    from ..coords import coords_1d

    dev = torch.device(device)
    old_threads = _threads(dev)
    try:
        t0 = time.perf_counter()
        model = spec.build(seed).to(dev)
        params = sum(p.numel() for p in model.parameters())
        tens = {k: (torch.from_numpy(m)[:, None].to(dev), torch.from_numpy(n)[:, None].to(dev)) for k, (m, n) in data.items()}
        L = tens["train"][0].shape[-1]
        coords = coords_1d(L, 1, device=dev)
        opt = torch.optim.Adam(model.parameters(), lr=settings["lr"])
        lr = float(settings["lr"])
        ntr = tens["train"][0].shape[0]
        bs = int(settings["batch"])

        def mse(split):
            m, n = tens[split]
            model.eval()
            with torch.no_grad():
                return float(torch.mean((model(m, coords.expand(m.shape[0], -1, -1)) - n) ** 2))

        best, best_state, best_epoch, stall = math.inf, None, 0, 0
        history = []
        stopped = "max_epochs"
        for epoch in range(1, int(settings["max_epochs"]) + 1):
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch)
            perm = torch.randperm(ntr, generator=g).to(dev)
            model.train()
            tot = 0.0
            for i in range(0, ntr, bs):
                idx = perm[i : i + bs]
                m, n = tens["train"][0][idx], tens["train"][1][idx]
                loss = torch.mean((model(m, coords.expand(len(idx), -1, -1)) - n) ** 2)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot += loss.item() * len(idx)
            v = mse("val")
            if not math.isfinite(v):
                raise ReconError(f"{spec.label} seed {seed}: the validation loss became {v} at epoch {epoch} "
                                 f"(lr {lr:g}); lower --lr")
            history.append([round(tot / ntr, 9), round(v, 9)])
            if v < best * (1.0 - 1e-3):
                best, best_epoch, stall = v, epoch, 0
                best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
            else:
                stall += 1
                if stall >= int(settings["patience"]):
                    stopped = "plateau"
                    break
                if stall % int(settings["lr_patience"]) == 0:
                    lr /= 2.0
                    for gr in opt.param_groups:
                        gr["lr"] = lr
        model.load_state_dict(best_state)
        test_mse = mse("test")
        Hl = impulse_response(model, L, device=dev)
        H = blur_matrix(L)
        from ..metrics import psnr_from_mse

        return {
            "model": spec.key, "label": spec.label, "family": spec.family, "seed": int(seed),
            "args": {**spec.args, **({"noise_seed": int(seed)} if spec.family == "control" else {})},
            "params": int(params), "test_mse": test_mse, "psnr_db": psnr_from_mse(test_mse),
            "best_val_mse": best, "epochs": epoch, "best_epoch": best_epoch, "stopped": stopped,
            "final_lr": lr, "train_seconds": time.perf_counter() - t0,
            "h_rel_err": float(np.linalg.norm(Hl - H) / np.linalg.norm(H)),
            "learned_h": np.round(Hl, 6).tolist(), "history_train_val_mse": history,
            "device": str(dev), "torch_threads": torch.get_num_threads(),
        }
    finally:
        if old_threads is not None:
            torch.set_num_threads(old_threads)


def time_inference(specs: list[ModelSpec], data: dict, rounds: int, device: str = "cpu") -> dict:
    """Median wall time (ms) of one forward pass over the test batch for every model (fresh weights: the time
    depends on the architecture, not the values), interleaved round by round."""
    import torch

    from ..coords import coords_1d

    dev = torch.device(device)
    old_threads = _threads(dev)
    try:
        m = torch.from_numpy(data["test"][0])[:, None].to(dev)
        c = coords_1d(m.shape[-1], m.shape[0], device=dev)
        models = {s.key: s.build(0).to(dev).eval() for s in specs}
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        times: dict[str, list[float]] = {k: [] for k in models}
        with torch.no_grad():
            for mod in models.values():  # warm-up (and CoordGate's gate cache)
                for _ in range(3):
                    mod(m, c)
            for _ in range(int(rounds)):
                for k, mod in models.items():
                    sync()
                    t = time.perf_counter()
                    mod(m, c)
                    sync()
                    times[k].append(time.perf_counter() - t)
        return {"infer_ms": {k: 1e3 * float(np.median(v)) for k, v in times.items()}, "batch": int(m.shape[0]),
                "rounds": int(rounds), "device": str(dev), "torch_threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    finally:
        if old_threads is not None:
            torch.set_num_threads(old_threads)


# ----------------------------------------------------------------------------------------------------------
# worker processes
# ----------------------------------------------------------------------------------------------------------
_DATA: dict | None = None


def _init_worker() -> None:
    import signal

    from psfsim.integrity import die_with_parent

    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C (and kills us by dying)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover
        pass


def _work(spec: ModelSpec, seed: int, settings: dict) -> dict:
    return train_unit(spec, seed, _DATA, settings, "cpu")


# ----------------------------------------------------------------------------------------------------------
# the verdicts
# ----------------------------------------------------------------------------------------------------------
def _fmt_db(mean: float, spread: float) -> str:
    return f"{mean:.2f} ± {spread:.2f} dB"


def judge(rows: list[dict]) -> list[Claim]:
    """The paper's four findings decided on the table ``rows`` (``key``, ``label``, ``family``, ``psnr_db``,
    ``psnr_spread``) with the margins :data:`FAR_DB` and :data:`NOTHING_DB`."""
    by = {r["key"]: r for r in rows}
    cg = next((r for r in rows if r["family"] == "cg"), None)
    ctrl = next((r for r in rows if r["family"] == "control"), None)
    cnns = [r for r in rows if r["family"] in ("cnn", "ccnn")]
    ref = next((r for r in rows if r["family"] == "reference"), None)
    claims = []
    if cg and cnns:
        best = max(cnns, key=lambda r: r["psnr_db"])
        margin = cg["psnr_db"] - best["psnr_db"]
        claims.append(Claim(
            f"{cg['label']}, one gated conv layer, learns H far better (>= {FAR_DB:g} dB) than every CNN and cCNN",
            margin >= FAR_DB,
            f"{cg['label']} {_fmt_db(cg['psnr_db'], cg['psnr_spread'])}; best CNN/cCNN {best['label']} "
            f"{_fmt_db(best['psnr_db'], best['psnr_spread'])}; margin {margin:+.2f} dB; impulse-response error "
            f"{cg['h_rel_err']:.3f} vs {best['h_rel_err']:.3f} (lowest of any CNN/cCNN: "
            f"{min(r['h_rel_err'] for r in cnns):.3f}, {min(cnns, key=lambda r: r['h_rel_err'])['label']})"
            + (f"; the free-gate ceiling of a 3-channel gated layer {_fmt_db(ref['psnr_db'], ref['psnr_spread'])}"
               if ref else "")))
    pairs = [(r, by.get("c" + r["key"])) for r in rows if r["family"] == "cnn" and by.get("c" + r["key"])]
    if pairs:
        gains = [(c["psnr_db"] - r["psnr_db"], r, c) for r, c in pairs]
        g, r, c = max(gains, key=lambda t: t[0])
        claims.append(Claim(
            f"cCNN brings nothing over CNN (no twin gains >= {NOTHING_DB:g} dB)", g < NOTHING_DB,
            "cCNN - CNN: " + ", ".join(f"{cc['label'][1:]} {gg:+.2f}" for gg, rr, cc in gains) + " dB"))
    a, b = by.get("cnn_4_7_4"), by.get("cnn_4_7_20")
    if a and b:
        g = b["psnr_db"] - a["psnr_db"]
        claims.append(Claim(
            f"more channels do not help a CNN (CNN(4,7,20) gains < {NOTHING_DB:g} dB over CNN(4,7,4))", g < NOTHING_DB,
            f"CNN(4,7,4) {_fmt_db(a['psnr_db'], a['psnr_spread'])}, CNN(4,7,20) "
            f"{_fmt_db(b['psnr_db'], b['psnr_spread'])}: {g:+.2f} dB"))
    if cg and ctrl:
        gap = cg["psnr_db"] - ctrl["psnr_db"]
        one = by.get(f"cnn_1_{cg['key'].split('_')[2]}_1")
        extra = (f"; the same conv without gates, {one['label']}, {_fmt_db(one['psnr_db'], one['psnr_spread'])}"
                 if one else "")
        claims.append(Claim(
            f"the random-input control does not converge (ends >= {FAR_DB:g} dB below {cg['label']})", gap >= FAR_DB,
            f"control {_fmt_db(ctrl['psnr_db'], ctrl['psnr_spread'])} (stopped: {ctrl['stopped']}), "
            f"{cg['label']} {_fmt_db(cg['psnr_db'], cg['psnr_spread'])}: gap {gap:.2f} dB{extra}"))
    return claims


# ----------------------------------------------------------------------------------------------------------
# the figure
# ----------------------------------------------------------------------------------------------------------
FAMILY_STYLE = {"cnn": ("C0", "CNN"), "ccnn": ("C1", "cCNN"), "cg": ("C3", "CoordGate"), "control": ("0.45", "CG, random input"),
                "reference": ("C2", "free gates (CG's ceiling)")}


def figure(rows: list[dict], learned: dict[str, np.ndarray], H: np.ndarray, path, *, title: str = "") -> Path:
    """Fig. 3: test PSNR against inference time (marker area proportional to parameters, bars: seed spread), and
    each model's learned H (first seed) beside the true H, on one colour scale."""
    from psfsim.figures import _plt, save_atomic_figure

    plt = _plt()
    n = len(rows) + 1
    ncol = 7
    nrow = math.ceil(n / ncol)
    fig = plt.figure(figsize=(13.0, 4.6 + 1.95 * nrow))
    gs = fig.add_gridspec(1 + nrow, ncol, height_ratios=[4.2] + [1.9] * nrow, hspace=0.45, wspace=0.15)
    ax = fig.add_subplot(gs[0, 1:6])
    pmax = max(r["params"] for r in rows)
    for r in rows:
        col, _ = FAMILY_STYLE[r["family"]]
        ax.errorbar(r["infer_ms"], r["psnr_db"], yerr=r["psnr_spread"], fmt="none", ecolor=col, lw=1, capsize=2)
        ax.scatter(r["infer_ms"], r["psnr_db"], s=25 + 500 * r["params"] / pmax, color=col, alpha=0.65,
                   edgecolors="k", linewidths=0.5)
        ax.annotate(r["label"], (r["infer_ms"], r["psnr_db"]), fontsize=7, xytext=(5, 3), textcoords="offset points")
    for fam, (col, lab) in FAMILY_STYLE.items():
        ax.scatter([], [], color=col, label=lab, s=40)
    ax.set_xscale("log")
    ax.set_xlabel(f"inference time, ms per batch of {rows[0].get('infer_batch', '')} signals (log)")
    ax.set_ylabel("test PSNR (dB)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, title=f"marker area ∝ parameters (max {pmax:,d})", title_fontsize=7, loc="best")
    ax.set_title(title, fontsize=9)
    vmax = float(np.abs(H).max())
    panels = [("true H", H)] + [(r["label"], learned[r["key"]]) for r in rows]
    im = None
    for i, (lab, M) in enumerate(panels):
        a = fig.add_subplot(gs[1 + i // ncol, i % ncol])
        im = a.imshow(M, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
        a.set_xticks([])
        a.set_yticks([])
        a.set_title(lab, fontsize=7)
        if i == 0:
            a.set_ylabel("x (output)", fontsize=7)
            a.set_xlabel("x' (impulse)", fontsize=7)
    fig.colorbar(im, ax=fig.axes[-len(panels):], shrink=0.8, pad=0.01)
    return save_atomic_figure(fig, path)


# ----------------------------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"seeds per model (default {DEFAULTS['seeds']}; --quick {QUICK['seeds']})")
    parser.add_argument("--kernel", type=int, default=None,
                        help=f"kernel k of the one-layer models CNN(1,k,1), cCNN(1,k,1), CG(1,k,3,p) (default {DEFAULTS['kernel']})")
    parser.add_argument("--workers", type=int, default=None,
                        help="training processes, one unit each (default: 2 on CPU, 1 on CUDA)")


def _positive(name, v, lo=1, hi=None):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or (hi is not None and v > hi):
        raise ReconError(f"--{name} {v!r}: expected a whole number in {lo}..{hi if hi is not None else ''}".rstrip("."))
    return int(v)


def run(out, *, quick: bool = False, overwrite: bool = False, progress: bool = True, device: str = "auto",
        seeds: int | None = None, kernel: int | None = None, workers: int | None = None) -> ExperimentResult:
    """Run (or resume) the experiment into ``out``; see the module docstring. Returns :class:`ExperimentResult`."""
    from ..evaluate import resolve_device

    t_start = time.perf_counter()
    dev = resolve_device(device)
    settings = dict(QUICK if quick else DEFAULTS)
    settings["quick"] = bool(quick)
    if seeds is not None:
        settings["seeds"] = _positive("seeds", seeds, 1, 20)
    if kernel is not None:
        k = _positive("kernel", kernel, 1, 29)
        if k % 2 == 0:
            raise ReconError(f"--kernel {k}: expected an odd kernel size (same padding)")
        settings["kernel"] = k
    nw = (2 if dev.type == "cpu" else 1) if workers is None else _positive("workers", workers, 1, 64)
    if dev.type != "cpu":
        nw = 1
    settings["length"] = LENGTH
    settings["eq5"] = "offset 1 -> 0 at width 0.5 (x' < 15), offset 0 at width 0.5 -> 2 (x' >= 15); unit-area columns"
    exp = ExperimentDir(out, "conv1d", settings, overwrite=overwrite)
    data = make_data(settings["n_signals"], settings["data_seed"])
    specs = model_specs(settings["kernel"], settings["gate_layers"])
    todo = [(s, seed) for s in specs for seed in range(settings["seeds"]) if not exp.done(f"{s.key}/seed{seed}")]
    reused = [f"{s.key}/seed{seed}" for s in specs for seed in range(settings["seeds"]) if exp.done(f"{s.key}/seed{seed}")]
    computed = []

    def log(msg):
        if progress:
            print(msg, file=sys.stderr, flush=True)

    def save(spec, seed, rec):
        exp.save(f"{spec.key}/seed{seed}", rec)
        computed.append(f"{spec.key}/seed{seed}")
        log(f"conv1d [{len(computed)}/{len(todo)}] {spec.label} seed {seed}: {rec['psnr_db']:.2f} dB, "
            f"{rec['epochs']} epochs ({rec['stopped']}), {rec['train_seconds']:.1f} s")

    if nw == 1 or len(todo) <= 1:
        for spec, seed in todo:
            save(spec, seed, train_unit(spec, seed, data, settings, str(dev)))
    else:
        global _DATA
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        _DATA = data  # inherited by the forked workers
        # slowest first, so the last units to finish are short ones
        todo.sort(key=lambda t: -sum(v for k, v in t[0].args.items() if k in ("L", "c")))
        ex = ProcessPoolExecutor(min(nw, len(todo)), mp_context=mp.get_context("fork"), initializer=_init_worker)
        try:
            futs = {ex.submit(_work, spec, seed, settings): (spec, seed) for spec, seed in todo}
            for f in as_completed(futs):
                spec, seed = futs[f]
                save(spec, seed, f.result())
        except BrokenProcessPool:
            ex.shutdown(wait=True, cancel_futures=True)
            raise ReconError(f"{exp.path}: a worker process died (killed?); the finished units are kept: run the "
                             "same command again to resume") from None
        except BaseException:
            ex.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            _DATA = None
        ex.shutdown(wait=True)
    if not exp.done("timing"):
        exp.save("timing", time_inference(specs, data, settings["timing_rounds"], str(dev)))
        computed.append("timing")
        log("conv1d: inference times measured")
    else:
        reused.append("timing")
    res = _report(exp, specs, settings, computed, reused, time.perf_counter() - t_start)
    return res


def _report(exp: ExperimentDir, specs, settings, computed, reused, seconds) -> ExperimentResult:
    recs = exp.records()
    timing = recs["timing"]
    rows, learned = [], {}
    for s in specs:
        rs = [recs[f"{s.key}/seed{i}"] for i in range(settings["seeds"])]
        pm, ps = mean_spread(r["psnr_db"] for r in rs)
        em, _ = mean_spread(r["h_rel_err"] for r in rs)
        rows.append({
            "key": s.key, "label": s.label, "family": s.family, "params": rs[0]["params"], "psnr_db": pm,
            "psnr_spread": ps, "psnr_max": max(r["psnr_db"] for r in rs), "h_rel_err": em,
            "collapsed": sum(float(np.abs(np.asarray(r["learned_h"])).max()) < 1e-6 for r in rs),
            "epochs": mean_spread(r["epochs"] for r in rs)[0],
            "stopped": "/".join(sorted({r["stopped"] for r in rs})),
            "train_s": mean_spread(r["train_seconds"] for r in rs)[0],
            "infer_ms": timing["infer_ms"][s.key], "infer_batch": timing["batch"], "seeds": len(rs)})
        learned[s.key] = np.asarray(rs[0]["learned_h"])
    cols = ["label", "params", "psnr_db", "psnr_spread", "psnr_max", "h_rel_err", "collapsed", "infer_ms", "epochs",
            "stopped", "train_s", "seeds"]
    note = (f"PSNR = 10 log10(1/MSE) on the {int(0.1 * settings['n_signals'])} test signals, mean and spread (half "
            f"the range) over {settings['seeds']} seed(s); h_rel_err = |H_learned - H|_F / |H|_F (mean over "
            f"seeds; the figure shows the first seed's); psnr_max: the best seed; collapsed: seeds whose network "
            f"ended constant (zero impulse response: dead ReLUs, the PSNR of predicting the mean); infer_ms: median forward time of the {timing['batch']}-signal "
            f"test batch on {timing['device']} ({timing['torch_threads']} thread(s)), all models in one pass; "
            f"epochs: mean epochs trained; stopped: plateau (the stopping rule) or max_epochs.")
    md, csv = write_table(exp, "table", rows, cols, title="CoordGate Sec. IV.A: learning a 1-D spatially-varying blur",
                          notes=note)
    claims = judge(rows)
    cm = exp.write_text("claims.md", "# conv1d: the paper's findings\n\n" + claims_markdown(claims))
    fig = figure(rows, learned, blur_matrix(LENGTH), exp.file("fig3.png"),
                 title=f"conv1d: {settings['n_signals']} signals, {settings['seeds']} seed(s)"
                       f"{' (quick)' if settings['quick'] else ''}")
    return ExperimentResult("conv1d", exp.path, rows, claims,
                            files={"table": md, "csv": csv, "claims": cm, "figure": fig},
                            computed=computed, reused=reused, seconds=seconds)
