"""Shim of ``torchvision.transforms``: imported by deepinv.utils.plotting / mixins (CenterCrop, Resize),
deepinv.transform.rotate (InterpolationMode), deepinv.datasets.fastmri / satellite (Compose, CenterCrop,
ToTensor)."""

from .._stub import klass
from . import functional  # noqa: F401

CenterCrop = klass("transforms.CenterCrop")
Compose = klass("transforms.Compose")
InterpolationMode = klass("transforms.InterpolationMode")
Resize = klass("transforms.Resize")
ToTensor = klass("transforms.ToTensor")
