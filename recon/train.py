"""Training: :func:`train` runs a :class:`~recon.config.TrainConfig` into a run folder (``recon train``).

A run folder ``RUN/`` holds

=================  ===============================================================================================
``config.toml``    the resolved configuration (``recon train --config RUN/config.toml`` repeats the run)
``last.pt``        the checkpoint at the end of the last finished epoch, with everything a resume needs
                   (``extra``: optimiser, scheduler, grad scaler, RNG states of torch / numpy / python, epoch,
                   best validation loss, the metrics so far)
``best.pt``        the checkpoint of the epoch with the lowest validation loss
``metrics.csv``    ``epoch, train_loss, val_loss, val_psnr, lr, seconds`` (one row per epoch)
``curves.png``     the losses and the validation PSNR against the epoch
=================  ===============================================================================================

Every file is written atomically (temporary file + rename): a run killed at any point, SIGKILL included,
leaves the files of its last finished epoch, and ``resume=True`` continues from ``last.pt``. The data of an
epoch derive from ``(seed, epoch)`` alone (:mod:`recon.data`), so on CPU a resumed run ends with weights
bit-identical to an uninterrupted one. On CUDA the same holds only as far as the kernels are deterministic
(cuDNN's convolution algorithms and atomics-based backward passes are not, unless
``torch.use_deterministic_algorithms(True)`` and ``CUBLAS_WORKSPACE_CONFIG`` are set): a resumed GPU run
continues the same optimisation from the same state, but is bit-identical only when the uninterrupted run is.

Adam, with the learning rate multiplied by ``lr_factor`` (0.5) when the validation loss has not improved for
``patience`` epochs (``ReduceLROnPlateau``); loss MSE, L1 or L1 + (1 - SSIM), plus ``decorrelation_weight``
times PAFU's decorrelation loss for models that have one; MultiWienerNet's ``constrain_()`` after every step.

Mixed precision (``amp``) is CUDA only: bf16 autocast where the GPU supports it, else fp16 with a gradient
scaler. On CPU ``amp`` is refused (bf16 autocast on CPU is slower than float32 on most CPUs and would change
the numerics of the CPU reference runs).

Validation PSNR is the mean over validation crops of ``10 log10(1 / MSE)`` (data in [0, 1]).
"""

from __future__ import annotations

import csv
import io
import math
import pathlib
import random
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import losses as _losses
from .config import TrainConfig, config_diff, load_config, save_config
from .errors import ReconError

__all__ = ["train", "TrainResult", "TrainingDiverged", "resolve_device", "RUN_FILES", "METRICS_COLUMNS"]

RUN_FILES = ("config.toml", "last.pt", "best.pt", "metrics.csv", "curves.png")
METRICS_COLUMNS = ("epoch", "train_loss", "val_loss", "val_psnr", "lr", "seconds")


class TrainingDiverged(ReconError):
    """The loss became NaN or infinite: training stopped, the last good checkpoint kept."""


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did.

    Attributes
    ----------
    out : Path
        The run folder.
    config : TrainConfig
    epochs : int
        Epochs finished in total (a resumed run's earlier ones included).
    resumed_from : int
        Epochs already finished when this call started (0: a fresh run).
    best_epoch : int
        Epoch (1-based) of the lowest validation loss, saved in ``best.pt``.
    best_val_loss, best_val_psnr : float
    history : tuple of dict
        The rows of ``metrics.csv``.
    last_checkpoint, best_checkpoint : Path
    seconds : float
        Wall time of this call.
    """

    out: pathlib.Path
    config: TrainConfig
    epochs: int
    resumed_from: int
    best_epoch: int
    best_val_loss: float
    best_val_psnr: float
    history: tuple
    last_checkpoint: pathlib.Path
    best_checkpoint: pathlib.Path
    seconds: float


# ----------------------------------------------------------------------------------------------------------
# set-up
# ----------------------------------------------------------------------------------------------------------
from .evaluate import resolve_device  # noqa: E402  (one rule for train and evaluate: auto, cpu, cuda, cuda:N)


def _amp_dtype(cfg: TrainConfig, device: torch.device):
    if not cfg.amp:
        return None
    if device.type != "cuda":
        raise ReconError("--amp: mixed precision is for CUDA only (bf16 autocast on CPU is slower than float32 on "
                         "most CPUs); drop --amp to train on the CPU in float32")
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _data_lens(cfg: TrainConfig):
    """The lens of the training data (the store's, or the on-the-fly lens)."""
    import psfsim

    if cfg.data is not None:
        return psfsim.DatasetReader(cfg.data).lens
    return psfsim.load_lens(cfg.lens)


def _build_model(cfg: TrainConfig, in_channels: int):
    import inspect

    from .models import build_model
    from .models.registry import MODELS, model_names

    spec = MODELS.get(cfg.model)
    if spec is None:
        raise ReconError(f"--model {cfg.model!r}: unknown; expected one of {', '.join(model_names())}")
    if spec.dims != 2:
        raise ReconError(f"--model {cfg.model!r}: a {spec.dims}-D model; recon train trains 2-D image models")
    args = dict(cfg.model_args)
    params = inspect.signature(spec.cls().__init__).parameters
    if "in_channels" in params and "in_channels" not in args and "in_channels" not in spec.fixed:
        args["in_channels"] = in_channels
    elif "in_channels" not in params and in_channels != 1:
        raise ReconError(f"--model {cfg.model!r} takes one input channel: train it without with_baselines")
    elif args.get("in_channels", in_channels) != in_channels:
        raise ReconError(f"model_args.in_channels = {args['in_channels']!r}: the data give {in_channels} channel(s)")
    if "lens" in params and args.get("lens") is None:
        args["lens"] = _data_lens(cfg).to_dict()  # e.g. MultiWienerNet: PSFs from the data's lens, not stand-ins
    try:
        model = build_model(cfg.model, **args)
    except TypeError as e:
        raise ReconError(f"--model {cfg.model!r}: {e}") from None
    return model


class _StoreData:
    def __init__(self, cfg: TrainConfig, multiple_of: int, device: torch.device):
        from .data import StoreDataset, loader

        self.train = StoreDataset(cfg.data, "train", crop=cfg.crop, with_baselines=cfg.with_baselines, seed=cfg.seed,
                                  multiple_of=multiple_of)
        self.val = StoreDataset(cfg.data, "val", crop=cfg.crop, with_baselines=cfg.with_baselines, seed=cfg.seed,
                                multiple_of=multiple_of)
        self.train_loader = loader(self.train, cfg.batch, cfg.workers, device)
        self.val_loader = loader(self.val, cfg.batch, cfg.workers, device)
        self.lens, self.normalisation, self.identity = self.train.lens, self.train.normalisation, self.train.identity

    def epoch(self, e: int):
        self.train.set_epoch(e)
        return iter(self.train_loader), len(self.train_loader)

    def validation(self):
        return iter(self.val_loader)


class _OnTheFlyData:
    def __init__(self, cfg: TrainConfig, multiple_of: int, device: torch.device):
        import psfsim

        from .data import OnTheFlyDataset

        try:
            noise = psfsim.NoiseModel(photons=cfg.photons or None, read_noise=cfg.read_noise)
        except psfsim.PsfsimError as e:
            raise ReconError(str(e)) from None
        self.ds = OnTheFlyDataset(cfg.lens, cfg.source, crop=cfg.crop, batch=cfg.batch, noise=noise, seed=cfg.seed,
                                  device=device, steps_per_epoch=cfg.steps_per_epoch, val_samples=cfg.val_samples,
                                  multiple_of=multiple_of)
        self.lens, self.normalisation, self.identity = self.ds.lens, self.ds.normalisation, self.ds.identity

    def epoch(self, e: int):
        return self.ds.epoch(e), self.ds.steps_per_epoch

    def validation(self):
        return iter(self.ds.validation())


def _check_folder(cfg: TrainConfig, out: pathlib.Path) -> bool:
    """Check the run folder (nothing written); True when there is a run to resume."""
    if out.exists() and not out.is_dir():
        raise ReconError(f"--out {out}: exists and is not a folder")
    has_run = (out / "config.toml").is_file()
    if cfg.resume and has_run:
        old = load_config(out / "config.toml")
        diff = config_diff(cfg, old)
        if diff:
            raise ReconError(f"--resume {out}: the run there was made with other arguments ({'; '.join(diff[:6])}; "
                             "now != the run's); re-run with its arguments (--config "
                             f"{out / 'config.toml'}) or choose another --out")
        return True
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        what = "a training run" if has_run else "not empty"
        hint = (" (use --resume to continue it, or --overwrite to replace it)" if has_run
                else " (use --overwrite to train into it anyway)")
        raise ReconError(f"--out {out}: exists, {what}{hint}")
    return False


def _make_folder(out: pathlib.Path, resuming: bool) -> None:
    if not resuming and out.exists():  # --overwrite (checked): the files of the old run go
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReconError(f"--out {out}: cannot be created ({e.strerror or e})") from None


# ----------------------------------------------------------------------------------------------------------
# RNG states (plain data, for checkpoints)
# ----------------------------------------------------------------------------------------------------------
def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    st = {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
          "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = list(torch.cuda.get_rng_state_all())
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    name, keys, pos, has_gauss, cached = st["numpy"]
    np.random.set_state((name, np.asarray(keys, np.uint32), pos, has_gauss, cached))
    v, internal, g = st["python"]
    random.setstate((v, tuple(internal), g))
    if "cuda" in st and torch.cuda.is_available():
        states = st["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


# ----------------------------------------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------------------------------------
def _write_metrics(path: pathlib.Path, history: list[dict]) -> None:
    from psfsim.store import atomic_file

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(METRICS_COLUMNS)
    for r in history:
        w.writerow([r["epoch"]] + [repr(float(r[k])) for k in METRICS_COLUMNS[1:]])
    with atomic_file(path) as tmp:
        pathlib.Path(tmp).write_text(buf.getvalue(), encoding="utf-8")


def _write_curves(path: pathlib.Path, history: list[dict], title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from psfsim.store import atomic_file

    ep = [r["epoch"] for r in history]
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    a, b = fig.subplots(1, 2)
    a.plot(ep, [r["train_loss"] for r in history], "o-", ms=3, label="train")
    a.plot(ep, [r["val_loss"] for r in history], "o-", ms=3, label="validation")
    if all(r["train_loss"] > 0 and r["val_loss"] > 0 for r in history):
        a.set_yscale("log")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(ep, [r["val_psnr"] for r in history], "o-", ms=3, color="C2")
    b.set_xlabel("epoch")
    b.set_ylabel("validation PSNR (dB)")
    fig.suptitle(title, fontsize=9)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


# ----------------------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------------------
def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e))


def _oom_error(batch, where: str, device) -> ReconError:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    B, C, h, w = batch.x.shape
    hint = f"try --batch {B // 2}" if B > 1 else "try a smaller --crop or a smaller model"
    return ReconError(f"out of memory on {device} with a batch of {B} x {C} x {h} x {w} ({where}); {hint}")


def train(config: TrainConfig, *, progress: bool = True, log=print) -> TrainResult:
    """Train ``config.model`` on ``config``'s data into the run folder ``config.out``.

    Parameters
    ----------
    config : TrainConfig
    progress : bool
        A tqdm bar per epoch.
    log : callable or None
        Receives the one-line summary of each epoch (and notes); None: silent.

    Returns
    -------
    TrainResult

    Raises
    ------
    ReconError
        Bad configuration or data, an existing run folder (without ``resume`` / ``overwrite``), ``resume``
        with other arguments, out of memory (with a smaller batch suggested).
    TrainingDiverged
        A NaN or infinite loss (the last good checkpoint is kept).
    """
    from tqdm.auto import tqdm

    from .checkpoint import read_checkpoint, save_checkpoint

    t_call = time.perf_counter()
    say = log or (lambda *a, **k: None)
    cfg = config
    if not isinstance(cfg, TrainConfig):
        raise ReconError(f"config: a {type(cfg).__name__}; expected a recon.TrainConfig")
    cfg.check_data()
    if not cfg.out:
        raise ReconError("no run folder: give --out RUN/")
    out = pathlib.Path(cfg.out)
    device = resolve_device(cfg.device)
    amp_dtype = _amp_dtype(cfg, device)
    resuming = _check_folder(cfg, out)

    _seed_all(cfg.seed)
    in_channels = 3 if (cfg.data is not None and cfg.with_baselines) else 1
    model = _build_model(cfg, in_channels)
    multiple_of = 2 ** int(getattr(model, "depth", 0))
    data = (_StoreData if cfg.data is not None else _OnTheFlyData)(cfg, multiple_of, device)
    model = model.to(device)
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    _make_folder(out, resuming)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.lr_factor, patience=cfg.patience)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    loss_fn = _losses.make_loss(cfg.loss)
    reg = getattr(model, "decorrelation_loss", None) if cfg.decorrelation_weight > 0 else None
    constrain = getattr(model, "constrain_", None)

    start, history, best_val, best_epoch, step = 0, [], math.inf, 0, 0
    last_pt, best_pt = out / "last.pt", out / "best.pt"
    if resuming and last_pt.is_file():
        ckpt = read_checkpoint(last_pt)
        ident = ckpt["dataset"]
        diff = [k for k in sorted(set(ident) | set(data.identity)) if k != "path" and ident.get(k) != data.identity.get(k)]
        if diff:
            raise ReconError(f"--resume {out}: the data differ from the run's ({', '.join(diff)}: "
                             f"{data.identity.get(diff[0])!r} != {ident.get(diff[0])!r})")
        x = ckpt["extra"]
        try:
            model.load_state_dict(ckpt["state_dict"])
            opt.load_state_dict(x["optimizer"])
            sched.load_state_dict(x["scheduler"])
            if x.get("scaler"):
                scaler.load_state_dict(x["scaler"])
            start, history = int(x["epoch"]), [dict(r) for r in x["history"]]
            best_val, best_epoch, step = float(x["best_val_loss"]), int(x["best_epoch"]), int(x["step"])
            _set_rng_state(x["rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise ReconError(f"--resume {last_pt}: not a resumable checkpoint of this run ({e})") from None
        say(f"resuming {out} after epoch {start} (best {best_val:.4g} at epoch {best_epoch})")
    elif resuming:
        say(f"{out}: no last.pt yet, starting from epoch 1")
    save_config(cfg, out / "config.toml")  # on resume: the same but for epochs / workers, which may grow
    if start >= cfg.epochs:
        say(f"{out}: already trained for {start} epochs (epochs = {cfg.epochs}); nothing to do")

    train_args = cfg.to_dict(runtime=False)
    for e in range(start, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        batches, n_steps = data.epoch(e)
        bar = tqdm(batches, total=n_steps, desc=f"epoch {e + 1}/{cfg.epochs}", disable=not progress, leave=False,
                   unit="batch", dynamic_ncols=True)
        tot, n_seen, peaks = 0.0, 0, []
        for i, batch in enumerate(bar):
            batch = batch.to(device, non_blocking=True)
            batch.x = batch.x.contiguous(memory_format=layout)
            peaks.append(batch.x[:, 0].detach().amax(dim=(-2, -1)).float())  # each input's peak (blurred channel)
            try:
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    pred = model(batch.x, batch.coords)
                loss = loss_fn(pred.float(), batch.y)
                if reg is not None:
                    loss = loss + cfg.decorrelation_weight * reg()
                lv = float(loss.detach())
                if not math.isfinite(lv):
                    kept = f"{last_pt} (epoch {start if not history else history[-1]['epoch']}) kept" \
                        if last_pt.is_file() else "no checkpoint written yet"
                    raise TrainingDiverged(f"loss is {lv} at epoch {e + 1}, step {i + 1} (global step {step + 1}): "
                                           f"training stopped, {kept}; try a lower --lr (now "
                                           f"{opt.param_groups[0]['lr']:.3g})")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            except (torch.OutOfMemoryError, RuntimeError) as err:
                if _is_oom(err):
                    raise _oom_error(batch, f"epoch {e + 1}, step {i + 1}, training", device) from None
                raise
            if constrain is not None:
                constrain()
            step += 1
            tot += lv * len(batch)
            n_seen += len(batch)
            bar.set_postfix(loss=f"{lv:.4g}", refresh=False)
        bar.close()
        if n_seen == 0:
            raise ReconError(f"epoch {e + 1}: no training batch (batch {cfg.batch} larger than the training split?)")
        train_loss = tot / n_seen
        # the typical peak of the model's input in training (sharp source region max = 1): pipelines maps a
        # frame's robust maximum to it, so a frame reaches the model at the training inputs' scale
        input_peak = float(torch.cat(peaks).median().cpu())
        t_train = time.perf_counter() - t0

        model.eval()
        vtot, vpsnr, vn = 0.0, 0.0, 0
        with torch.no_grad():
            for batch in data.validation():
                batch = batch.to(device, non_blocking=True)
                batch.x = batch.x.contiguous(memory_format=layout)
                try:
                    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                        pred = model(batch.x, batch.coords)
                except (torch.OutOfMemoryError, RuntimeError) as err:
                    if _is_oom(err):
                        raise _oom_error(batch, f"epoch {e + 1}, validation", device) from None
                    raise
                pred = pred.float()
                vtot += float(loss_fn(pred, batch.y)) * len(batch)
                vpsnr += float(_losses.psnr(pred, batch.y).sum())
                vn += len(batch)
        val_loss, val_psnr = vtot / max(vn, 1), vpsnr / max(vn, 1)
        if not math.isfinite(val_loss):
            raise TrainingDiverged(f"validation loss is {val_loss} at epoch {e + 1}: training stopped, "
                                   f"{last_pt} kept; try a lower --lr")
        lr = opt.param_groups[0]["lr"]
        sched.step(val_loss)
        improved = val_loss < best_val
        if improved:
            best_val, best_epoch = val_loss, e + 1
        row = {"epoch": e + 1, "train_loss": train_loss, "val_loss": val_loss, "val_psnr": val_psnr, "lr": lr,
               "seconds": time.perf_counter() - t0}
        history.append(row)
        ck = {"lens": data.lens, "normalisation": data.normalisation, "dataset_identity": data.identity,
              "train_args": train_args, "input_peak": input_peak if input_peak > 0 else None}
        metrics = {**row, "best_epoch": best_epoch, "best_val_loss": best_val}
        if improved:
            save_checkpoint(best_pt, model, metrics=metrics, **ck)
        extra = {"epoch": e + 1, "step": step, "history": history, "best_val_loss": best_val, "best_epoch": best_epoch,
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                 "rng": _rng_state()}
        save_checkpoint(last_pt, model, metrics=metrics, extra=extra, **ck)
        _write_metrics(out / "metrics.csv", history)
        _write_curves(out / "curves.png", history, f"{cfg.model} {cfg.model_args or ''} - {out.name}")
        say(f"epoch {e + 1}/{cfg.epochs}  train {train_loss:.4g}  val {val_loss:.4g}  PSNR {val_psnr:.2f} dB  "
            f"lr {lr:.3g}  {n_seen / t_train:.1f} samples/s  {row['seconds']:.1f} s" + ("  *best" if improved else ""))

    if not history:
        raise ReconError(f"{out}: no epoch finished")
    b = next(r for r in history if r["epoch"] == best_epoch) if best_epoch else history[-1]
    return TrainResult(out=out, config=cfg, epochs=len(history), resumed_from=start, best_epoch=best_epoch,
                       best_val_loss=best_val, best_val_psnr=float(b["val_psnr"]), history=tuple(history),
                       last_checkpoint=last_pt, best_checkpoint=best_pt, seconds=time.perf_counter() - t_call)
