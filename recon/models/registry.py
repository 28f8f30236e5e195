"""Every model by name, rebuilt from a plain config dict (what checkpoints store).

>>> model = recon.build_model("cgunet", depth=4)
>>> model.model_config
{'name': 'cgunet', 'depth': 4}
>>> recon.build_model(**model.model_config)   # the same architecture

``recon models`` prints each with its parameter count and receptive field at default settings.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field

import torch.nn as nn

from ..errors import ReconError

__all__ = ["ModelSpec", "MODELS", "build_model", "model_names", "model_table"]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: where its class lives, fixed arguments, and what it is."""

    target: str  # "module:Class" under recon.models
    fixed: dict = field(default_factory=dict)
    dims: int = 2
    description: str = ""

    def cls(self):
        mod, name = self.target.split(":")
        return getattr(importlib.import_module(f"recon.models.{mod}"), name)


MODELS: dict[str, ModelSpec] = {
    "cnn1d": ModelSpec("cnn1d:CNN1d", dims=1, description="CNN(L, k, c): plain 1-D convolutions"),
    "ccnn1d": ModelSpec("cnn1d:CoordConvCNN1d", dims=1, description="cCNN(L, k, c): CoordConv, coordinates before every conv"),
    "cg1d": ModelSpec("cnn1d:CoordGateCNN1d", dims=1, description="CG(L, k, c, p): CoordGate layers"),
    "unet": ModelSpec("unet:UNet", {"variant": "plain"}, description="UNet(d), double 3x3 convs, channels doubling"),
    "cgunet": ModelSpec("unet:UNet", {"variant": "coordgate"}, description="CG-UNet(d): CoordGate at every level"),
    "coordconv_unet": ModelSpec("unet:UNet", {"variant": "coordconv"}, description="CoordConv-UNet(d)"),
    "pafu_unet": ModelSpec("pafu_unet:PAFUUNet", description="PAFU-UNet(d): per-pixel kernel selection at the input conv"),
    "multiwienernet": ModelSpec("multiwienernet:MultiWienerNet", description="MultiWienerNet: K learnable Wiener filters + UNet(d)"),
    "fcnn": ModelSpec("fcnn:FCNN", {"residual": False}, description="FCNN(L, k, c): plain 2-D convolutions, no pooling"),
    "res_fcnn": ModelSpec("fcnn:FCNN", {"residual": True}, description="residual FCNN(L, k, c): input + FCNN"),
    "cg_fcnn": ModelSpec("fcnn:CoordGateFCNN", description="CG-FCNN(L, k, c, p): CoordGate layers, no pooling"),
    "pafu_net": ModelSpec("fcnn:PAFUNet", description="PAFU-net: one PAFU layer (n k x k kernels chosen per pixel)"),
}


def model_names() -> list[str]:
    return sorted(MODELS)


def build_model(name: str, **config) -> nn.Module:
    """Build model ``name`` from its config (keyword arguments of its class); ``model.model_config`` records
    ``{"name": name, **config}`` so ``build_model(**model.model_config)`` rebuilds the same architecture."""
    spec = MODELS.get(name)
    if spec is None:
        raise ReconError(f"model {name!r}: unknown; expected one of {', '.join(model_names())}")
    cls = spec.cls()
    clash = set(config) & set(spec.fixed)
    if clash:
        raise ReconError(f"model {name!r}: {', '.join(sorted(clash))} is fixed by the model's name")
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(k for k in config if k not in params)
    if unknown:
        allowed = ", ".join(k for k in params if k != "self" and k not in spec.fixed)
        raise ReconError(f"model {name!r}: unknown argument {unknown[0]!r} (allowed: {allowed})")
    model = cls(**spec.fixed, **config)
    # a model may normalise its config (e.g. MultiWienerNet: a lens path becomes the lens's description)
    model.model_config = {"name": name, **config, **getattr(model, "config_updates", {})}
    return model


def model_table() -> list[dict]:
    """One row per model at default settings: name, parameters, receptive field, halo, description."""
    rows = []
    for name in model_names():
        m = build_model(name)
        rows.append({"name": name, "dims": MODELS[name].dims, "params": sum(p.numel() for p in m.parameters()),
                     "receptive_field": getattr(m, "receptive_field", None), "halo": getattr(m, "halo", None),
                     "description": MODELS[name].description})
    return rows
