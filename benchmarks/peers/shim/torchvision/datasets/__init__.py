"""Shim of ``torchvision.datasets`` (a package for its two submodules)."""

from . import folder, utils  # noqa: F401
