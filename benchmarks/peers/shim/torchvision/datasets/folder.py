"""Shim of ``torchvision.datasets.folder``: imported by deepinv.datasets.base (IMG_EXTENSIONS, torchvision's own
tuple of image file suffixes: a constant, so the real value)."""

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
