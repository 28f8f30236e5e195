"""``recon fit``: from a lens to a matched deblurrer in one command: simulate, train, evaluate, and say where
the model stands against Wiener.

RUN/ holds ``fit.toml`` (the fit's arguments), ``data.zarr`` (the psfsim store, unless ``--data`` names one),
``train/`` (the ``recon train`` run folder) and ``eval/`` (the ``recon evaluate`` results). Resumable as a
whole: re-run after a kill with the same arguments and each step continues where it was (the store resumes
bit-exactly, training resumes from ``train/last.pt``, the evaluation reruns if it did not finish). Re-running
with other arguments is refused naming the difference.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import RESUMABLE_KEYS
from .errors import ReconError

__all__ = ["FitConfig", "FitResult", "fit"]


@dataclass(frozen=True)
class FitConfig:
    """The arguments of a fit (``recon fit``); training options not here keep :class:`recon.TrainConfig`'s defaults.

    Attributes
    ----------
    lens : str
        A preset name or lens TOML path.
    out : str
        The run folder.
    data : str, optional
        An existing psfsim store to train on (its lens must be ``lens``); default: simulate ``RUN/data.zarr``.
    source : str
        psfsim source spec of the simulated store.
    n, size : int
        Samples of the simulated store and their side (pixels).
    photons, read_noise : float
        Noise of the simulated store (``photons`` 0: none).
    model : str
        A registry name; ``model_args`` its keyword arguments (default ``{"depth": 3, "residual": True}``:
        U-Nets predicting a correction of the blurred input train in minutes, not hours).
    epochs, batch, crop, seed, workers : int
    lr : float
    """

    lens: str
    out: str
    data: str | None = None
    source: str = "cells"
    n: int = 400
    size: int = 128
    photons: float = 2000.0
    read_noise: float = 2.0
    model: str = "cgunet"
    model_args: dict = field(default_factory=lambda: {"depth": 3, "residual": True})
    epochs: int = 20
    batch: int = 8
    crop: int = 64
    lr: float = 1e-3
    seed: int = 0
    workers: int = 0
    device: str = "auto"

    def to_toml(self) -> str:
        """The fit's arguments as TOML (the run folder is not one of them), with recon.config's TOML writer."""
        from .config import _toml_key, _toml_value

        d = {k: v for k, v in asdict(self).items() if k != "out" and v is not None}
        margs = d.pop("model_args")
        lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in d.items()]
        lines += ["[model_args]"] + [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in sorted(margs.items())]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class FitResult:
    """What a fit produced: the store, the training run, the evaluation (:class:`recon.EvalResult`)."""

    out: Path
    data: Path
    train: object
    evaluation: object

    def summary(self) -> str:
        ev = self.evaluation
        s = ev.scores
        lines = [f"{self.out}: {ev.model_config['name']} ({ev.params:,d} parameters), {self.train.epochs} epochs, "
                 f"test split of {ev.n_samples} samples"]
        for k in ("blurred", "wiener", "wiener_sv", "model"):
            lines.append(f"  {k:10s} PSNR {s[k].psnr_db:6.2f} dB  SSIM {s[k].ssim:.3f}")
        g = ev.gain_db("wiener_sv")
        lines.append(f"  the model is {abs(g):.2f} dB {'above' if g >= 0 else 'BELOW'} spatially-varying Wiener "
                     f"({ev.gain_db('wiener'):+.2f} dB against global Wiener)")
        return "\n".join(lines)


def _check_same(cfg: FitConfig, path: Path) -> None:
    """Refuse a re-run into a fit folder made with other arguments (naming the first difference)."""
    if not path.is_file():
        return
    try:
        old = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ReconError(f"{path}: unreadable fit record ({e}); use another --out") from None
    new = tomllib.loads(cfg.to_toml())
    for k in sorted(set(old) | set(new)):
        if k in RESUMABLE_KEYS:  # the same rule as recon train --resume
            continue
        if old.get(k) != new.get(k):
            raise ReconError(f"{path.parent}: a fit with other arguments ({k}: was {old.get(k)!r}, now {new.get(k)!r}); "
                             "use another --out, or the same arguments to continue it")


def fit(cfg: FitConfig, *, progress: bool = True, log=print) -> FitResult:
    """Simulate (or reuse) a store, train ``cfg.model`` on it, evaluate it against the Wiener baselines."""
    import psfsim
    from psfsim.store import atomic_file

    from .config import TrainConfig
    from .evaluate import evaluate
    from .train import train

    say = log or (lambda *a, **k: None)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ReconError(f"--out {out}: exists and is not a folder")
    if not out.parent.is_dir():
        raise ReconError(f"--out {out}: folder {out.parent} does not exist")
    lens = psfsim.load_lens(cfg.lens)
    record = out / "fit.toml"
    _check_same(cfg, record)
    out.mkdir(exist_ok=True)
    with atomic_file(record) as tmp:
        Path(tmp).write_text(cfg.to_toml())

    # 1. data
    if cfg.data is None:
        data = out / "data.zarr"
        say(f"[1/3] simulate {cfg.n} samples of {cfg.size} x {cfg.size} ({cfg.source}) with {lens.name} -> {data}")
        spec = psfsim.SimulationSpec(lens=lens.to_dict(), source=cfg.source, n=int(cfg.n), size=(cfg.size, cfg.size),
                                     seed=int(cfg.seed), photons=cfg.photons or None,
                                     read_noise=float(cfg.read_noise) if cfg.photons else 0.0)
        from psfsim.fft import default_workers

        res = psfsim.simulate(spec, data, workers=default_workers(), progress=progress,
                              command=f"recon fit --lens {cfg.lens} --out {out}")
        if not res["complete"]:
            raise ReconError(f"{data}: the store is incomplete; run the same recon fit again to finish it")
    else:
        data = Path(cfg.data)
        stored = psfsim.DatasetReader(data).lens
        if stored.fingerprint != lens.fingerprint:
            raise ReconError(f"--data {data}: a store of lens {stored.name!r}, not of --lens {lens.name!r} "
                             f"({cfg.lens}); give the store's own lens")
        say(f"[1/3] data: {data}")

    # 2. training (resumes from train/last.pt when a previous fit was interrupted)
    run = out / "train"
    resume = (run / "last.pt").is_file()
    tcfg = TrainConfig(data=os.fspath(data), model=cfg.model, model_args=dict(cfg.model_args), epochs=int(cfg.epochs),
                       batch=int(cfg.batch), crop=int(cfg.crop), lr=float(cfg.lr), seed=int(cfg.seed),
                       workers=int(cfg.workers), device=cfg.device, out=os.fspath(run), resume=resume,
                       overwrite=run.exists() and not resume)
    say(f"[2/3] train {cfg.model} {cfg.model_args} for {cfg.epochs} epochs -> {run}{' (resuming)' if resume else ''}")
    tres = train(tcfg, progress=progress, log=say)

    # 3. evaluation (always redone: it is cheap next to training, and a killed one leaves no stale result)
    say(f"[3/3] evaluate {tres.best_checkpoint} on the test split -> {out / 'eval'}")
    ev = evaluate(data, tres.best_checkpoint, out / "eval", device=cfg.device, overwrite=True, progress=progress)
    result = FitResult(out=out, data=data, train=tres, evaluation=ev)
    say(result.summary())
    return result

