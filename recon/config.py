"""Training configuration: one typed, frozen :class:`TrainConfig` with every option of ``recon train`` and its
default, saved as ``RUN/config.toml`` and read back by ``recon train --config`` (a run is reproducible from its
folder alone).

>>> cfg = TrainConfig(data="DATA.zarr", model="cgunet", model_args={"depth": 3}, out="RUN")
>>> save_config(cfg, "RUN/config.toml"); load_config("RUN/config.toml") == cfg.replace(out="")
True

``out``, ``resume`` and ``overwrite`` say where and how to run, not what to train: they are never written to
the TOML file (a run folder can be moved) and never compared on ``--resume``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import tomllib
from dataclasses import dataclass, field, fields

from .errors import ReconError

__all__ = ["TrainConfig", "load_config", "save_config", "config_from_dict", "config_to_toml", "config_diff",
           "parse_model_arg", "resolve_config", "LOSSES", "DEVICES", "RUNTIME_KEYS", "RESUMABLE_KEYS"]

LOSSES = ("mse", "l1", "l1_ssim")
DEVICES = ("auto", "cpu", "cuda")
#: Where and how to run, not what: never saved to config.toml, never compared on --resume.
RUNTIME_KEYS = ("out", "resume", "overwrite")
#: May differ on --resume (more epochs continue the run; workers do not change the data; a run may continue
#: on another device, bit-identical to an uninterrupted run only on the same one).
RESUMABLE_KEYS = ("epochs", "workers", "device")


@dataclass(frozen=True)
class TrainConfig:
    """Every option of ``recon train``, with its default.

    Attributes
    ----------
    data : str or None
        A psfsim store (``DATA.zarr``); or give ``lens`` and ``source`` (on-the-fly data).
    lens, source : str or None
        On-the-fly data: a lens (preset name or TOML file) and a psfsim source spec.
    model : str
        A name of :func:`recon.model_names`.
    model_args : dict
        Keyword arguments of :func:`recon.build_model` (``depth``, ``base_channels``, ...); ``in_channels`` is
        filled in from the data when the model takes it.
    epochs, batch, crop : int
        Epochs to train (in total, a resumed run included), batch size, square crop side (a multiple of
        ``2^depth`` of the model).
    lr : float
        Adam's learning rate, halved (``lr_factor``) when the validation loss has not improved for
        ``patience`` epochs (``ReduceLROnPlateau``).
    loss : {"mse", "l1", "l1_ssim"}
        ``l1_ssim`` is L1 + (1 - SSIM) (Gaussian window 11, sigma 1.5; crop >= 11).
    decorrelation_weight : float
        Weight of PAFU's decorrelation regulariser (models with ``decorrelation_loss()``; 0: off).
    device : {"auto", "cpu", "cuda"}
        ``auto``: CUDA when available, else CPU.
    amp : bool
        Mixed precision on CUDA (bf16 where supported, else fp16 with a gradient scaler); refused on CPU.
    seed : int
        Seeds the weights, the crops and the order of the data (everything).
    workers : int
        DataLoader workers (store data).
    with_baselines : bool
        Store data: the Wiener baselines as extra input channels.
    channels_last : bool
        Model and batches in channels_last memory layout (measured 1.7-1.9x faster U-Net forwards on CPU,
        benchmarks/bench_models.py); the numbers differ from the contiguous layout only by rounding.
    photons, read_noise : float
        On-the-fly data: Poisson-Gaussian noise (``photons`` 0: no shot noise; both 0: noiseless).
    steps_per_epoch, val_samples : int
        On-the-fly data: training steps per epoch, size of the fixed validation set.
    out : str
        The run folder.
    resume, overwrite : bool
        Continue the run in ``out`` from ``last.pt``; replace an existing run in ``out``.
    """

    data: str | None = None
    lens: str | None = None
    source: str | None = None
    model: str = "cgunet"
    model_args: dict = field(default_factory=dict)
    epochs: int = 100
    batch: int = 8
    crop: int = 128
    lr: float = 1e-3
    lr_factor: float = 0.5
    patience: int = 10
    loss: str = "mse"
    decorrelation_weight: float = 1e-3
    device: str = "auto"
    amp: bool = False
    seed: int = 0
    workers: int = 0
    with_baselines: bool = False
    channels_last: bool = True
    photons: float = 0.0
    read_noise: float = 0.0
    steps_per_epoch: int = 100
    val_samples: int = 64
    out: str = ""
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            object.__setattr__(self, f.name, _check_type(f.name, v, f.type))
        object.__setattr__(self, "model_args", dict(self.model_args))
        for k, v in self.model_args.items():
            _check_toml_value(f"model_args.{k}", v)
        c = self
        for name, lo in (("epochs", 1), ("batch", 1), ("crop", 1), ("patience", 0), ("seed", 0), ("workers", 0),
                         ("steps_per_epoch", 1), ("val_samples", 1)):
            if getattr(c, name) < lo:
                raise ReconError(f"{name} = {getattr(c, name)!r}: expected an integer >= {lo}")
        if not (math.isfinite(c.lr) and c.lr > 0):
            raise ReconError(f"lr = {c.lr!r}: expected a number > 0")
        if not (0 < c.lr_factor < 1):
            raise ReconError(f"lr_factor = {c.lr_factor!r}: expected a number in (0, 1)")
        for name in ("decorrelation_weight", "photons", "read_noise"):
            v = getattr(c, name)
            if not (math.isfinite(v) and v >= 0):
                raise ReconError(f"{name} = {v!r}: expected a number >= 0")
        if c.loss not in LOSSES:
            raise ReconError(f"loss = {c.loss!r}: unknown; expected one of {', '.join(LOSSES)}")
        if c.device not in DEVICES:
            raise ReconError(f"device = {c.device!r}: unknown; expected one of {', '.join(DEVICES)}")
        if c.loss == "l1_ssim" and c.crop < 11:
            raise ReconError(f"crop = {c.crop}: loss l1_ssim needs a crop of at least 11 (the SSIM window)")
        if c.data is not None and (c.lens is not None or c.source is not None):
            raise ReconError("data and lens/source both given: train on a store (data) or on the fly (lens, source)")

    def replace(self, **changes) -> "TrainConfig":
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ReconError(f"option {unknown[0]!r}: unknown; expected one of {', '.join(f.name for f in fields(self))}")
        return dataclasses.replace(self, **changes)

    def check_data(self) -> None:
        """Refuse a config that names no data (neither a store nor lens + source)."""
        if self.data is None and (self.lens is None or self.source is None):
            raise ReconError("no data: give a store (--data DATA.zarr) or on-the-fly data (--lens LENS --source SPEC)")

    def to_dict(self, *, runtime: bool = True) -> dict:
        """Plain dict (``model_args`` copied); without the :data:`RUNTIME_KEYS` when ``runtime`` is False."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if runtime or f.name not in RUNTIME_KEYS}
        d["model_args"] = dict(self.model_args)
        return d


_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "dict": dict}


def _check_type(name: str, v, annotation: str):
    ann = str(annotation).replace(" ", "")
    optional = ann.endswith("|None")
    base = _TYPES[ann.removesuffix("|None")]
    if v is None:
        if optional:
            return None
        raise ReconError(f"{name} = None: expected {_kind(base)}")
    if base is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if base is str and isinstance(v, os.PathLike):
        v = os.fspath(v)
    if not isinstance(v, base) or (base is int and isinstance(v, bool)):
        raise ReconError(f"{name} = {v!r}: expected {_kind(base)}, not {type(v).__name__}")
    return v


def _kind(t) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a table"}[t]


def _check_toml_value(where: str, v) -> None:
    if isinstance(v, float) and not math.isfinite(v):
        raise ReconError(f"{where} = {v!r}: expected a finite number")
    if isinstance(v, (bool, int, float, str)):
        return
    if isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            _check_toml_value(f"{where}[{i}]", x)
        return
    raise ReconError(f"{where} = {v!r}: expected a string, number, boolean or list of them")


# ----------------------------------------------------------------------------------------------------------
# TOML
# ----------------------------------------------------------------------------------------------------------
def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):  # a TOML basic string: JSON's escapes, plus DEL
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ReconError(f"value {v!r}: cannot be written to TOML")


def _toml_key(k: str) -> str:
    return k if k and all(c.isascii() and (c.isalnum() or c in "-_") for c in k) else _toml_value(k)


def config_to_toml(cfg: TrainConfig) -> str:
    """The TOML text of ``cfg`` (no :data:`RUNTIME_KEYS`; None values left out: they are the defaults)."""
    d = cfg.to_dict(runtime=False)
    margs = d.pop("model_args")
    lines = ["# recon train configuration (recon train --config this file --out RUN/)"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in d.items() if v is not None]
    lines += ["", "[model_args]"] + [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in sorted(margs.items())]
    return "\n".join(lines) + "\n"


def save_config(cfg: TrainConfig, path) -> pathlib.Path:
    """Write ``cfg`` as TOML to ``path`` atomically."""
    from psfsim.store import atomic_file

    path = pathlib.Path(path)
    with atomic_file(path) as tmp:
        pathlib.Path(tmp).write_text(config_to_toml(cfg), encoding="utf-8")
    return path


def config_from_dict(d: dict, *, where: str = "config", base: TrainConfig | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from a table (missing keys: ``base``'s values, or the defaults); unknown keys and
    bad values are refused, named with ``where``."""
    if not isinstance(d, dict):
        raise ReconError(f"{where}: expected a table of options")
    names = [f.name for f in fields(TrainConfig) if f.name not in RUNTIME_KEYS]
    unknown = sorted(k for k in d if k not in names)
    if unknown:
        raise ReconError(f"{where}: unknown option {unknown[0]!r}; expected some of {', '.join(names)}")
    try:
        return (base or TrainConfig()).replace(**d)
    except ReconError as e:
        raise ReconError(f"{where}: {e}") from None


def load_config(path, *, base: TrainConfig | None = None) -> TrainConfig:
    """Read a TOML file written by :func:`save_config` (or by hand); options it lacks keep ``base``'s values."""
    p = pathlib.Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReconError(f"--config {p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReconError(f"--config {p}: cannot be read ({e})") from None
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ReconError(f"--config {p}: not valid TOML ({e})") from None
    return config_from_dict(d, where=f"--config {p}", base=base)


def _model_default(model: str, key: str):
    """A model argument's default (so an explicit ``--model-arg depth=3`` equals the default 3), or ``<unset>``."""
    import inspect

    from .models.registry import MODELS

    spec = MODELS.get(model)
    if spec is None:
        return "<unset>"
    p = inspect.signature(spec.cls().__init__).parameters.get(key)
    return "<unset>" if p is None or p.default is inspect.Parameter.empty else p.default


def config_diff(a: TrainConfig, b: TrainConfig, *, ignore=RUNTIME_KEYS + RESUMABLE_KEYS) -> list[str]:
    """Options whose values differ, as ``"name: a_value != b_value"`` (nothing when they agree).

    A store's path is not compared (a moved or differently spelled store is the same data; the trainer compares
    the data's identity, spec hash and lens fingerprint, instead); an on-the-fly lens path is compared resolved.
    """
    out = []
    for f in fields(TrainConfig):
        if f.name in ignore or f.name == "data":
            continue
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if f.name == "model_args":
            for k in sorted(set(va) | set(vb)):
                x, y = va.get(k, _model_default(a.model, k)), vb.get(k, _model_default(b.model, k))
                if _norm(x) != _norm(y):
                    out.append(f"model_args.{k}: {x!r} != {y!r}")
        elif va != vb:
            out.append(f"{f.name}: {va!r} != {vb!r}")
    return out


def _norm(v):
    return [_norm(x) for x in v] if isinstance(v, (list, tuple)) else v


def parse_model_arg(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` (``--model-arg``): VALUE read as a TOML value (``3``, ``0.5``, ``true``, ``[3, 3]``),
    else taken as a string."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or not key.replace("_", "a").isalnum():
        raise ReconError(f"--model-arg {text!r}: expected KEY=VALUE (e.g. depth=3)")
    try:
        v = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        v = value.strip()
    if isinstance(v, dict):
        raise ReconError(f"--model-arg {text!r}: a table is not a model argument")
    return key, v


def resolve_config(options: dict, *, config_file=None, model_args=(), out, resume: bool = False,
                   overwrite: bool = False) -> TrainConfig:
    """The configuration of a ``recon train`` command line: defaults, then ``config_file`` (or, on ``resume``
    without one, ``out/config.toml``), then ``options`` (those not None) and ``model_args`` (``KEY=VALUE``
    strings, merged into the base's)."""
    base = TrainConfig()
    run_config = pathlib.Path(out) / "config.toml"
    if config_file is not None:
        base = load_config(config_file)
    elif resume and run_config.is_file():
        base = load_config(run_config)
    given = {k: v for k, v in options.items() if v is not None}
    if "data" in given:
        given.setdefault("lens", None)
        given.setdefault("source", None)
    elif "lens" in given or "source" in given:
        given["data"] = None
    margs = dict(base.model_args)
    if "model" in given and given["model"] != base.model:
        margs = {}
    margs.update(parse_model_arg(t) for t in model_args)
    given["model_args"] = margs
    for k in ("data", "lens"):  # absolute, so RUN/config.toml works from any folder
        v = given.get(k)
        if isinstance(v, str) and (k == "data" or os.path.exists(v)):
            given[k] = os.path.abspath(v)
    return base.replace(**given, out=os.fspath(out), resume=bool(resume), overwrite=bool(overwrite))
