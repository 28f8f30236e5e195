"""Shim of ``torchvision.datasets.utils``: imported by deepinv.datasets.kohler (download_and_extract_archive)."""

from .._stub import function

download_and_extract_archive = function("datasets.utils.download_and_extract_archive")
