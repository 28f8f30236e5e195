"""Checkpoints: one file with everything needed to use a model alone, loaded as data, never as code.

A checkpoint is a ``torch.save`` of a dict of plain types only (dict, list, tuple, str, int, float, bool,
None, tensors), so that ``torch.load(path, weights_only=True)`` (the only way recon loads one) reads it:

=====================  ===================================================================================
``format``             ``"recon-checkpoint/1"`` (:data:`FORMAT`); another value is refused
``version``            the package version that wrote it
``model_config``       ``model.model_config``: ``recon.build_model(**model_config)`` rebuilds the architecture
``state_dict``         the weights
``lens``               the lens description (``Lens.to_dict()``, the TOML as a table): coordinates of any
                       window can be recomputed (``psfsim.field_coords(info.lens, origin=..., shape=...)``)
``normalisation``      the data's normalisation (``kind``, ``margin_px``, ``vmin``, ``vmax``), to apply the same
                       to a raw frame; optionally ``input_peak``: the typical peak of the model's (normalised)
                       input in training, the median over training inputs of their maximum (the blurred image's
                       peak when the sharp source region's maximum is 1): a frame's robust maximum maps to it.
                       Checkpoints written before it was recorded load with a warning and ``input_peak = 1``
``dataset``            the training data's identity (store: path, creation time, spec SHA-256, ...)
``train_args``         the resolved training arguments
``metrics``            metrics at save time
``extra``              anything else of plain types (the trainer's optimiser / scheduler / RNG states)
=====================  ===================================================================================
"""

from __future__ import annotations

import os
import pathlib
import pickle
import zipfile
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

import numpy as np
import torch

from .errors import ReconError

__all__ = ["FORMAT", "CheckpointInfo", "save_checkpoint", "load_checkpoint", "read_checkpoint", "check_store_matches"]

#: Format written by this version; :func:`load_checkpoint` refuses any other.
FORMAT = "recon-checkpoint/1"
KEYS = ("format", "version", "model_config", "state_dict", "lens", "normalisation", "dataset", "train_args", "metrics",
        "extra")


def _plain(v, where: str):
    """``v`` as plain types ``torch.load(weights_only=True)`` reads (tuples kept, numpy -> Python / tensors,
    paths -> str); anything else is refused, naming where it is."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, torch.Tensor):
        return v.detach().cpu()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(v))
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if is_dataclass(v) and not isinstance(v, type):
        return _plain(asdict(v), where)
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise ReconError(f"checkpoint {where}: key {k!r} of type {type(k).__name__}; expected str or int")
            out[k] = _plain(x, f"{where}[{k!r}]")
        return out
    if isinstance(v, (list, tuple)):
        items = [_plain(x, f"{where}[{i}]") for i, x in enumerate(v)]
        return items if isinstance(v, list) else tuple(items)
    raise ReconError(f"checkpoint {where}: value of type {type(v).__name__}; a checkpoint holds only plain data "
                     "(dict, list, tuple, str, int, float, bool, None, tensors)")


def _checked_peak(v, what: str) -> float:
    """``v`` as a finite float > 0 (the typical input peak), or a ReconError ``what = v: expected ...``."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not (np.isfinite(v) and v > 0):
        raise ReconError(f"{what} = {v!r}: expected a finite number > 0")
    return float(v)


def save_checkpoint(path, model: torch.nn.Module, *, lens, normalisation, dataset_identity: dict, train_args: dict,
                    metrics: dict, extra: dict | None = None, input_peak: float | None = None) -> pathlib.Path:
    """Write ``model`` and its provenance to ``path`` atomically (temporary file + rename).

    Parameters
    ----------
    path : path
    model : nn.Module
        Built by :func:`recon.build_model` (it carries ``model.model_config``).
    lens : psfsim.Lens or dict
        The lens the model was trained for (or its description).
    normalisation : psfsim.dataset.reader.Normalisation or dict
    dataset_identity, train_args, metrics, extra : dict of plain values
    input_peak : float, optional
        Typical peak of the model's normalised input in training (> 0, dimensionless; recorded by the trainer),
        stored as ``normalisation["input_peak"]``. Not given: not recorded (loads with a warning, as 1).
    """
    from psfsim import __version__
    from psfsim.store import atomic_file

    config = getattr(model, "model_config", None)
    if not isinstance(config, dict) or "name" not in config:
        raise ReconError(f"model {type(model).__name__}: no model_config; build it with recon.build_model(name, ...)")
    lens_d = lens.to_dict() if hasattr(lens, "to_dict") else lens
    norm = asdict(normalisation) if is_dataclass(normalisation) else normalisation
    if input_peak is not None:
        norm = {**dict(norm), "input_peak": _checked_peak(input_peak, "input_peak")}
    ckpt = {"format": FORMAT, "version": __version__, "model_config": _plain(dict(config), "model_config"),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "lens": _plain(lens_d, "lens"), "normalisation": _plain(norm, "normalisation"),
            "dataset": _plain(dataset_identity, "dataset_identity"), "train_args": _plain(train_args, "train_args"),
            "metrics": _plain(metrics, "metrics"), "extra": _plain(extra or {}, "extra")}
    for k in ("lens", "normalisation", "dataset", "train_args", "metrics"):
        if not isinstance(ckpt[k], dict):
            raise ReconError(f"checkpoint {k}: {type(ckpt[k]).__name__}; expected a dict")
    path = pathlib.Path(path)
    if not path.parent.is_dir():
        raise ReconError(f"checkpoint {path}: folder {path.parent} does not exist")
    with atomic_file(path) as tmp:
        torch.save(ckpt, tmp)
    return path


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint says about its model (everything but the weights).

    Attributes
    ----------
    path : str
    model_config : dict
        ``recon.build_model(**model_config)``.
    lens : psfsim.Lens
        Rebuilt from the stored description (``check_psf_box=False``).
    normalisation : psfsim.dataset.reader.Normalisation
    dataset : dict
        Identity of the training data (:func:`recon.data.dataset_identity` or the on-the-fly description).
    train_args, metrics, extra : dict
    version : str
        Package version that wrote it.
    format : str
    input_peak : float
        Typical peak of the model's normalised input in training (``normalisation["input_peak"]``); 1 with a
        warning for a checkpoint that does not record it.
    """

    path: str
    model_config: dict
    lens: Any
    normalisation: Any
    dataset: dict
    train_args: dict
    metrics: dict
    version: str
    format: str = FORMAT
    extra: dict = field(default_factory=dict, repr=False)
    input_peak: float = 1.0


def read_checkpoint(path) -> dict:
    """The raw checkpoint dict, loaded with ``weights_only=True`` and checked (format, keys); no model built."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise ReconError(f"checkpoint {p}: no such file")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any global that is not plain data: the object was never constructed
        import re

        from psfsim.report import safe_text

        found = re.search(r"GLOBAL (\S+)", str(e))
        what = (f"found {safe_text(found.group(1)[:120])}, not an allowed plain type" if found
                else safe_text(str(e).strip().splitlines()[0][:200]))
        raise ReconError(f"checkpoint {p}: refused, it holds pickled objects or code, not plain data (loaded with "
                         f"weights_only=True: {what}); a checkpoint is data, never code") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ReconError(f"checkpoint {p}: truncated or not a recon checkpoint ({msg})") from None
    if not isinstance(ckpt, dict):
        raise ReconError(f"checkpoint {p}: holds a {type(ckpt).__name__}, not a recon checkpoint")
    fmt = ckpt.get("format")
    if fmt != FORMAT:
        raise ReconError(f"checkpoint {p}: format {fmt!r} (version {ckpt.get('version', '?')!r}) is not {FORMAT!r}, "
                         "the format this version reads; retrain, or load it with the version that wrote it")
    missing = [k for k in KEYS if k not in ckpt]
    if missing:
        raise ReconError(f"checkpoint {p}: missing key {missing[0]!r} (a {FORMAT} checkpoint has {', '.join(KEYS)})")
    for k in ("model_config", "state_dict", "lens", "normalisation", "dataset", "train_args", "metrics", "extra"):
        if not isinstance(ckpt[k], dict):
            raise ReconError(f"checkpoint {p}: {k} is a {type(ckpt[k]).__name__}, expected a dict")
    return ckpt


def _info(p, ckpt: dict) -> CheckpointInfo:
    import warnings

    import psfsim
    from psfsim.dataset.reader import Normalisation

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", psfsim.NyquistWarning)
            lens = psfsim.lens_from_dict(ckpt["lens"], check_psf_box=False, where="checkpoint lens")
    except psfsim.PsfsimError as e:
        raise ReconError(f"checkpoint {p}: its lens description is invalid: {e}") from None
    n = ckpt["normalisation"]
    try:
        norm = Normalisation(kind=str(n["kind"]), margin_px=int(n["margin_px"]), vmin=float(n["vmin"]), vmax=float(n["vmax"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ReconError(f"checkpoint {p}: normalisation {n!r} lacks {e} (expected kind, margin_px, vmin, vmax)") from None
    peak = n.get("input_peak")
    if peak is None:
        warnings.warn(f"checkpoint {p}: no input_peak recorded (written before recon recorded the typical peak of "
                      "the model's input in training): taken as 1, so a frame's robust maximum maps to 1, which may "
                      "not be the scale the model was trained at; retrain to record it", UserWarning, stacklevel=3)
        peak = 1.0
    peak = _checked_peak(peak, f"checkpoint {p}: normalisation input_peak")
    return CheckpointInfo(path=str(p), model_config=dict(ckpt["model_config"]), lens=lens, normalisation=norm,
                          dataset=dict(ckpt["dataset"]), train_args=dict(ckpt["train_args"]),
                          metrics=dict(ckpt["metrics"]), version=str(ckpt["version"]), format=str(ckpt["format"]),
                          extra=dict(ckpt["extra"]), input_peak=peak)


def load_checkpoint(path, *, device="cpu") -> tuple[torch.nn.Module, CheckpointInfo]:
    """The model (in eval mode, on ``device``) and :class:`CheckpointInfo` of a checkpoint.

    The one entry point pipelines use. Loads with ``torch.load(weights_only=True)`` only: a file holding
    pickled objects or code is refused (never executed), as are a truncated file, a missing key, another
    format, or an unknown model.
    """
    from .models import build_model

    ckpt = read_checkpoint(path)
    info = _info(path, ckpt)
    cfg = dict(ckpt["model_config"])
    name = cfg.pop("name", None)
    if not isinstance(name, str):
        raise ReconError(f"checkpoint {path}: model_config has no model name ({ckpt['model_config']!r})")
    from psfsim.errors import PsfsimError

    try:
        model = build_model(name, **cfg)
    except PsfsimError as e:  # ReconError included, and a lens that no longer loads
        raise ReconError(f"checkpoint {path}: {e}") from None
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise ReconError(f"checkpoint {path}: weights do not fit model {name!r} "
                         f"({str(e).strip().splitlines()[0][:300]})") from None
    return model.to(device).eval(), info


def check_store_matches(info: CheckpointInfo, data) -> None:
    """Refuse data (a :class:`psfsim.DatasetReader`, a :class:`recon.data.StoreDataset`, anything with a
    ``.lens``, or a Lens) whose lens differs from the checkpoint's (by :attr:`psfsim.Lens.fingerprint`)."""
    lens = getattr(data, "lens", data)
    fp = getattr(lens, "fingerprint", None)
    if fp != info.lens.fingerprint:
        where = getattr(data, "path", None) or getattr(getattr(data, "reader", None), "path", None) or "the data"
        raise ReconError(f"{where}: lens {getattr(lens, 'name', '?')!r} (fingerprint {str(fp)[:12]}) differs from the "
                         f"lens of checkpoint {info.path}: {info.lens.name!r} (fingerprint {info.lens.fingerprint[:12]})")
