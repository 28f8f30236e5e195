"""Shim of ``torchvision.transforms.functional``: imported by deepinv.utils.plotting / training.trainer (as a
module), deepinv.transform.rotate (rotate) and deepinv.datasets.utils (crop)."""

from .._stub import function

crop = function("transforms.functional.crop")
rotate = function("transforms.functional.rotate")
