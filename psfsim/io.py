"""Files in and out: images (npy, TIFF, PNG, FITS) read with clear errors, written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import PsfsimError

__all__ = ["IMAGE_SUFFIXES", "read_image", "write_array", "write_array_to", "luminance"]

IMAGE_SUFFIXES = (".npy", ".tif", ".tiff", ".png", ".fits", ".fit", ".fts")


#: Rec. 709 luma weights (what scikit-image's ``rgb2gray`` uses).
_LUMA = np.array([0.2125, 0.7154, 0.0721])


def luminance(img: np.ndarray) -> np.ndarray:
    """Grey image of an RGB(A) ``(H, W, 3|4)`` image (Rec. 709 luma, alpha ignored); 2-D images unchanged."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        return img[..., :3].astype(np.float64) @ _LUMA
    return img


def read_image(path: str | os.PathLike, *, allow_nd: bool = False) -> np.ndarray:
    """Read a 2-D image as float64 from ``.npy``, ``.tif/.tiff``, ``.png`` or ``.fits``.

    Raises
    ------
    PsfsimError
        The file is missing, unreadable, of an unknown type, not 2-D (RGB PNGs are converted to luminance),
        or holds NaN/inf.
    """
    p = Path(path)
    suf = p.suffix.lower()
    if not p.is_file():
        raise PsfsimError(f"{p}: no such file")
    if suf not in IMAGE_SUFFIXES:
        raise PsfsimError(f"{p}: unknown image type {suf!r} (expected one of {', '.join(IMAGE_SUFFIXES)})")
    try:
        if suf == ".npy":
            a = np.load(p, allow_pickle=False)
        elif suf in (".tif", ".tiff"):
            import tifffile

            a = tifffile.imread(p)
        elif suf == ".png":
            import imageio.v3 as iio

            a = iio.imread(p)
            a = luminance(a)
        else:
            from astropy.io import fits

            with fits.open(p, memmap=False) as hdul:
                a = next((h.data for h in hdul if h.data is not None), None)
            if a is None:
                raise PsfsimError(f"{p}: FITS file has no image data")
            a = np.asarray(a)
    except PsfsimError:
        raise
    except Exception as e:  # any reader failure is the user's file, reported in one line
        raise PsfsimError(f"{p}: cannot read image ({type(e).__name__}: {e})") from None
    a = np.asarray(a)
    if a.dtype.kind not in "fiub":
        raise PsfsimError(f"{p}: image dtype {a.dtype} is not numeric")
    if not allow_nd and a.ndim != 2:
        raise PsfsimError(f"{p}: expected a 2-D image, got shape {a.shape}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise PsfsimError(f"{p}: image contains NaN or inf ({int(np.sum(~np.isfinite(a)))} pixels)")
    return a


def write_array(path: str | os.PathLike, a: np.ndarray, *, like: str | None = None) -> Path:
    """Write an array to ``.npy``, ``.tif``, ``.png`` (8/16-bit, scaled) or ``.fits``, atomically.

    The data go to a temporary name in the same folder first and are renamed into place, so an interrupted
    write never leaves a file that looks complete.
    """
    p = Path(path)
    suf = p.suffix.lower()
    if suf not in IMAGE_SUFFIXES:
        raise PsfsimError(f"{p}: unknown output type {suf!r} (expected one of {', '.join(IMAGE_SUFFIXES)})")
    if p.is_dir():
        raise PsfsimError(f"{p}: output path is a directory")
    if not p.parent.exists():
        raise PsfsimError(f"{p}: folder {p.parent} does not exist")
    from .store import atomic_file

    with atomic_file(p) as tmp:
        write_array_to(tmp, a, suf)
    return p


def write_array_to(tmp: Path, a: np.ndarray, suf: str) -> None:
    """Write ``a`` in the format of suffix ``suf`` to the (temporary) path ``tmp``; see :func:`write_array`."""
    if suf == ".npy":
        with open(tmp, "wb") as f:
            np.save(f, a)
    elif suf in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(tmp, np.asarray(a))
    elif suf == ".png":
        import imageio.v3 as iio

        a = np.asarray(a, float)
        lo, hi = float(a.min()), float(a.max())
        scaled = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo)
        iio.imwrite(tmp, np.round(scaled * 65535).astype(np.uint16), extension=".png")
    else:
        from astropy.io import fits

        fits.PrimaryHDU(np.asarray(a)).writeto(tmp, overwrite=True)
