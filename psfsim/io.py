"""Files in and out: images (npy, TIFF, PNG, FITS) read with clear errors, written atomically.

Reading looks at the file's header first (shape and dtype, without decoding the pixels) and refuses an image
larger than the memory budget (:data:`MAX_IMAGE_BYTES`, or ``$PSFSIM_MAX_IMAGE_BYTES``) or than the lens field
before decoding anything. Dtypes, one rule: float32 and float64 files keep their dtype, any other numeric file
(integers, bool, float16) gives float32; arrays come back native-endian (FITS stores big-endian).

Writing goes through :mod:`psfsim.store` (exclusive temporaries renamed into place; an image and its JSON
record land together). A non-finite array is never written. PNG holds 16-bit integers: the data are rescaled
to 0..65535 and the record keeps ``png_offset`` and ``png_scale`` so that ``value = offset + scale * png``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import PsfsimError

__all__ = ["IMAGE_SUFFIXES", "MAX_IMAGE_BYTES", "ImageHeader", "LoadedImage", "image_header", "load_image",
           "read_image", "write_array", "write_array_to", "write_image", "sidecar_path", "luminance",
           "max_image_bytes", "npy_header", "FITS_BITPIX", "is_image_hdu", "fits_hdu_index", "fits_shape_dtype",
           "fits_open"]

IMAGE_SUFFIXES = (".npy", ".tif", ".tiff", ".png", ".fits", ".fit", ".fts")
FITS_SUFFIXES = (".fits", ".fit", ".fts")

#: Largest decoded image (file dtype plus working copy) psfsim reads, in bytes; ``$PSFSIM_MAX_IMAGE_BYTES``
#: overrides it. 2 GiB: a 16384 x 16384 float32 frame with its float32 working copy.
MAX_IMAGE_BYTES = 2 * 1024**3

#: Rec. 709 luma weights (what scikit-image's ``rgb2gray`` uses).
_LUMA = np.array([0.2125, 0.7154, 0.0721])

#: FITS keywords that describe the stored array, not the data: never copied from an input header.
_FITS_STRUCTURAL = {"SIMPLE", "XTENSION", "BITPIX", "EXTEND", "PCOUNT", "GCOUNT", "BSCALE", "BZERO", "BLANK",
                    "CHECKSUM", "DATASUM", "EXTNAME", "EXTVER", "EXTLEVEL", "INHERIT", "END"}


def luminance(img: np.ndarray) -> np.ndarray:
    """Grey image of an RGB(A) ``(H, W, 3|4)`` image (Rec. 709 luma, alpha ignored); 2-D images unchanged."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        return img[..., :3].astype(np.float64) @ _LUMA
    return img


def max_image_bytes() -> int:
    """The memory budget of one image read: ``$PSFSIM_MAX_IMAGE_BYTES`` or :data:`MAX_IMAGE_BYTES`."""
    env = os.environ.get("PSFSIM_MAX_IMAGE_BYTES")
    if env is None:
        return MAX_IMAGE_BYTES
    try:
        v = int(float(env))
        if v <= 0:
            raise ValueError
        return v
    except ValueError:
        raise PsfsimError(f"PSFSIM_MAX_IMAGE_BYTES={env!r}: expected a positive number of bytes") from None


def work_dtype(file_dtype) -> np.dtype:
    """The dtype psfsim reads a file dtype as: :func:`psfsim.checks.result_dtype`, the one rule (float32 /
    float64 kept, any other numeric type float32); byte order aside (big-endian FITS reads native)."""
    from .checks import result_dtype

    return result_dtype(np.dtype(file_dtype).newbyteorder("="))


# --------------------------------------------------------------------------------------------------
# headers: shape and dtype without decoding
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says: the stored ``shape`` and ``dtype``, and for FITS the chosen HDU."""

    path: Path
    shape: tuple
    dtype: np.dtype
    hdu: int | None = None
    hdu_name: str | None = None

    @property
    def image_shape(self) -> tuple:
        """The 2-D shape psfsim will read (an RGB(A) PNG becomes one luminance plane)."""
        if self.path.suffix.lower() == ".png" and len(self.shape) == 3 and self.shape[-1] in (3, 4):
            return tuple(self.shape[:2])
        return tuple(self.shape)

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the decoded pixels plus their working copy."""
        n = int(np.prod(self.shape, dtype=np.float64))
        n2 = int(np.prod(self.image_shape, dtype=np.float64))
        return n * self.dtype.itemsize + n2 * work_dtype(self.dtype).itemsize


def npy_header(p: Path) -> ImageHeader:
    """Shape and dtype of a ``.npy`` file from its header alone (format 1.0 or 2.0), no data read."""
    fmt = np.lib.format
    with open(p, "rb") as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(f)
        else:
            raise PsfsimError(f"{p}: .npy format version {version} is not supported (expected 1.0 or 2.0)")
    return ImageHeader(p, tuple(shape), np.dtype(dtype))


def _tiff_header(p: Path) -> ImageHeader:
    import tifffile

    with tifffile.TiffFile(p) as tf:
        if not tf.series:
            raise PsfsimError(f"{p}: TIFF file holds no image")
        s = tf.series[0]
        return ImageHeader(p, tuple(s.shape), np.dtype(s.dtype))


def _png_header(p: Path) -> ImageHeader:
    import imageio.v3 as iio

    props = iio.improps(p)
    return ImageHeader(p, tuple(props.shape), np.dtype(props.dtype))


#: FITS ``BITPIX`` -> the stored numpy dtype (before BSCALE / BZERO scaling).
FITS_BITPIX = {8: np.uint8, 16: np.int16, 32: np.int32, 64: np.int64, -32: np.float32, -64: np.float64}


def is_image_hdu(h) -> bool:
    """True for a primary, image or compressed-image HDU (astropy)."""
    from astropy.io import fits

    return isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))


def fits_hdu_index(hdul, p: Path, hdu: str | int | None) -> int:
    """Index of the HDU ``hdu`` (a name or an index), or of the first 2-D image HDU."""
    def describe():
        return ", ".join(f"{i} {h.name or '?'} ({h.header.get('NAXIS', 0)}-D)" for i, h in enumerate(hdul))

    if hdu is None:
        for i, h in enumerate(hdul):
            if is_image_hdu(h) and h.header.get("NAXIS", 0) == 2:
                return i
        raise PsfsimError(f"{p}: no 2-D image HDU (HDUs: {describe()}); choose one with --hdu")
    text = str(hdu).strip()
    if text.lstrip("-").isdigit():
        i = int(text)
        if not 0 <= i < len(hdul):
            raise PsfsimError(f"--hdu {hdu}: {p} has HDUs 0..{len(hdul) - 1} ({describe()})")
    else:
        names = [h.name.upper() for h in hdul]
        if text.upper() not in names:
            raise PsfsimError(f"--hdu {hdu}: no HDU of that name in {p} (HDUs: {describe()})")
        i = names.index(text.upper())
    if not is_image_hdu(hdul[i]) or hdul[i].header.get("NAXIS", 0) == 0:
        raise PsfsimError(f"--hdu {hdu}: HDU {i} of {p} holds no image (HDUs: {describe()})")
    return i


def fits_shape_dtype(header) -> tuple[tuple, np.dtype]:
    """``(shape, dtype)`` of an image HDU from its header: numpy axis order, and the dtype astropy returns (a
    float type when BSCALE / BZERO scale the stored integers, other than the unsigned-integer convention)."""
    naxis = int(header.get("NAXIS", 0))
    shape = tuple(int(header[f"NAXIS{k}"]) for k in range(naxis, 0, -1))
    bitpix = int(header["BITPIX"])
    dtype = np.dtype(FITS_BITPIX.get(bitpix, np.float64))
    if float(header.get("BSCALE", 1)) != 1 or float(header.get("BZERO", 0)) not in (0.0, 2.0 ** (abs(bitpix) - 1)):
        dtype = np.dtype(np.float32 if abs(bitpix) <= 16 else np.float64)  # what astropy scales to
    return shape, dtype


def fits_open(p: Path):
    """``astropy.io.fits.open`` memory-mapped with lazily loaded HDUs (use as a context manager)."""
    from astropy.io import fits

    return fits.open(p, memmap=True, lazy_load_hdus=True)


def _fits_header(p: Path, hdu) -> ImageHeader:
    with fits_open(p) as hdul:
        i = fits_hdu_index(hdul, p, hdu)
        h = hdul[i]
        header = h.header
        if h.__class__.__name__ == "CompImageHDU":
            shape, dtype = tuple(h.shape), np.dtype(FITS_BITPIX.get(int(header["BITPIX"]), np.float64))
        else:
            shape, dtype = fits_shape_dtype(header)
        return ImageHeader(p, shape, dtype, hdu=i, hdu_name=h.name or None)


def _checked_path(path) -> Path:
    p = Path(path)
    suf = p.suffix.lower()
    if not p.is_file():
        raise PsfsimError(f"{p}: {'is a folder, not an image' if p.is_dir() else 'no such file'}")
    if suf not in IMAGE_SUFFIXES:
        raise PsfsimError(f"{p}: unknown image type {suf!r} (expected one of {', '.join(IMAGE_SUFFIXES)})")
    return p


def image_header(path: str | os.PathLike, *, hdu: str | int | None = None) -> ImageHeader:
    """Shape and dtype of an image file from its header alone (no pixels decoded).

    ``hdu`` (FITS only): an HDU name (``"SCI"``) or index; default the first 2-D image HDU.
    """
    p = _checked_path(path)
    suf = p.suffix.lower()
    if hdu is not None and suf not in FITS_SUFFIXES:
        raise PsfsimError(f"--hdu {hdu}: {p} is not a FITS file")
    try:
        if suf == ".npy":
            return npy_header(p)
        if suf in (".tif", ".tiff"):
            return _tiff_header(p)
        if suf == ".png":
            return _png_header(p)
        return _fits_header(p, hdu)
    except PsfsimError:
        raise
    except Exception as e:  # any reader failure is the user's file, reported in one line
        raise PsfsimError(f"{p}: cannot read image header ({type(e).__name__}: {e})") from None


def _size(n: int) -> str:
    for unit, k in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= k:
            return f"{n / k:.3g} {unit}"
    return f"{n} bytes"


def check_header(h: ImageHeader, *, allow_nd: bool = False, field_shape=None, max_bytes: int | None = None) -> None:
    """Refuse, before decoding, what cannot be read: a non-numeric dtype, a non-2-D shape, more bytes than the
    budget, an image larger than the lens field ``field_shape``."""
    p = h.path
    if h.dtype.kind not in "fiub":
        raise PsfsimError(f"{p}: image dtype {h.dtype} is not numeric")
    shape = h.image_shape
    if not allow_nd and len(shape) != 2:
        raise PsfsimError(f"{p}: expected a 2-D image, got shape {tuple(h.shape)}")
    if 0 in shape:
        raise PsfsimError(f"{p}: image of shape {tuple(shape)} is empty")
    budget = max_image_bytes() if max_bytes is None else int(max_bytes)
    if h.decoded_bytes > budget:
        raise PsfsimError(f"{p}: image of shape {tuple(h.shape)} {h.dtype} needs {_size(h.decoded_bytes)} to read, "
                          f"more than the budget of {_size(budget)} (PSFSIM_MAX_IMAGE_BYTES)")
    if field_shape is not None and len(shape) >= 2:
        H, W = (int(v) for v in field_shape)
        if shape[-2] > H or shape[-1] > W:
            raise PsfsimError(f"{p}: image of {shape[-2]} x {shape[-1]} px is larger than the lens field "
                              f"{H} x {W} px")


# --------------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedImage:
    """An image read by :func:`load_image`: ``data`` (native-endian float32/float64), the file's header, and
    for FITS the chosen HDU's header (an ``astropy.io.fits.Header``, kept for outputs)."""

    data: np.ndarray
    header: ImageHeader
    fits_header: object | None = None


def _decode(h: ImageHeader):
    p, suf = h.path, h.path.suffix.lower()
    if suf == ".npy":
        return np.load(p, allow_pickle=False), None
    if suf in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(p) as tf:
            return tf.series[0].asarray(), None
    if suf == ".png":
        import imageio.v3 as iio

        return luminance(iio.imread(p)), None
    from astropy.io import fits

    # memmap=False: astropy applies BSCALE / BZERO and turns BLANK into NaN only on a read into memory (the
    # header, the shape and the budget were checked before this point)
    with fits.open(p, memmap=False, lazy_load_hdus=True) as hdul:
        hdu = hdul[h.hdu]
        data = hdu.data
        if data is None:
            raise PsfsimError(f"{p}: HDU {h.hdu} holds no image data")
        data = np.array(data)
        blank = hdu.header.get("BLANK")
        if blank is not None and data.dtype.kind in "iu":  # unscaled integers: BLANK pixels become NaN
            bad = data == blank
            if bad.any():
                data = data.astype(np.float32 if data.dtype.itemsize <= 2 else np.float64)
                data[bad] = np.nan
        return data, hdu.header.copy()


def _native(a: np.ndarray) -> np.ndarray:
    """Native byte order and the one dtype rule (float32 / float64 kept, anything else float32)."""
    want = work_dtype(a.dtype)
    return np.ascontiguousarray(a, dtype=want.newbyteorder("="))


def load_image(path: str | os.PathLike, *, allow_nd: bool = False, hdu: str | int | None = None,
               field_shape=None, max_bytes: int | None = None, allow_nonfinite: bool = False) -> LoadedImage:
    """Read an image from ``.npy``, ``.tif/.tiff``, ``.png`` (RGB(A): luminance) or FITS.

    The header is read and checked first (:func:`check_header`: numeric, 2-D unless ``allow_nd``, within the
    memory budget, within ``field_shape``); only then are the pixels decoded.

    Raises
    ------
    PsfsimError
        The file is missing, unreadable, of an unknown type, too large, not 2-D, or holds NaN/inf.
    """
    h = image_header(path, hdu=hdu)
    check_header(h, allow_nd=allow_nd, field_shape=field_shape, max_bytes=max_bytes)
    p = h.path  # allow_nonfinite: NaN / inf pixels pass (the caller applies psfsim's NaN policy)
    try:
        a, fits_header = _decode(h)
    except PsfsimError:
        raise
    except Exception as e:  # any reader failure is the user's file, reported in one line
        raise PsfsimError(f"{p}: cannot read image ({type(e).__name__}: {e})") from None
    a = np.asarray(a)
    if a.dtype.kind not in "fiub":
        raise PsfsimError(f"{p}: image dtype {a.dtype} is not numeric")
    if not allow_nd and a.ndim != 2:
        raise PsfsimError(f"{p}: expected a 2-D image, got shape {a.shape}")
    a = _native(a)
    if not allow_nonfinite and not np.all(np.isfinite(a)):
        raise PsfsimError(f"{p}: image contains NaN or inf ({int(np.sum(~np.isfinite(a)))} pixels)")
    return LoadedImage(a, h, fits_header)


def read_image(path: str | os.PathLike, *, allow_nd: bool = False, hdu: str | int | None = None,
               field_shape=None, max_bytes: int | None = None) -> np.ndarray:
    """The pixels of :func:`load_image`: float32 (float32 and integer files) or float64 (float64 files)."""
    return load_image(path, allow_nd=allow_nd, hdu=hdu, field_shape=field_shape, max_bytes=max_bytes).data


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------
def sidecar_path(out: str | os.PathLike) -> Path:
    """The JSON record beside an output image: ``OUT.json``."""
    out = Path(out)
    return out.with_name(out.name + ".json")


def check_finite(a: np.ndarray, name, mask=None) -> np.ndarray:
    """Refuse to write an array with NaN or inf (``name``: the user's output path), except at ``mask``: the
    input's own non-finite pixels under ``--nan-policy fill`` (they stay NaN in the output, and only they)."""
    a = np.asarray(a)
    if a.dtype.kind not in "fiub":
        raise PsfsimError(f"{name}: cannot write an array of dtype {a.dtype}")
    if a.dtype.kind == "f":
        ok = np.isfinite(a) if mask is None else (np.isfinite(a) | mask)
        bad = int(a.size - np.count_nonzero(ok))
        if bad:
            raise PsfsimError(f"{name}: the result has {bad} NaN or infinite pixel(s) of {a.size}; nothing written")
    return a


def png_encode(a: np.ndarray) -> tuple[np.ndarray, float, float]:
    """16-bit PNG pixels of ``a`` rescaled min-max, with ``offset`` and ``scale``:
    ``value ~= offset + scale * png`` (to within ``scale / 2``)."""
    a = np.asarray(a, np.float64)
    lo, hi = float(a.min()), float(a.max())
    if not hi > lo:
        return np.zeros(a.shape, np.uint16), lo, 0.0
    scale = (hi - lo) / 65535.0
    return np.round((a - lo) / scale).clip(0, 65535).astype(np.uint16), lo, scale


def _ascii(text: str) -> str:
    return text.encode("ascii", "backslashreplace").decode("ascii")


def fits_output_header(source=None, history=()):
    """Header of a FITS output: the input's cards (WCS, BUNIT, exposure, ...) without the keywords that
    describe the stored array, plus ``HISTORY`` cards."""
    from astropy.io import fits

    hdr = fits.Header()
    if source is not None:
        for card in source.cards:
            k = card.keyword
            if k in _FITS_STRUCTURAL or k.startswith("NAXIS") or (k.startswith("Z") and "ZIMAGE" in source):
                continue
            hdr.append(card, useblanks=False, bottom=True)
    for line in history:
        hdr.add_history(_ascii(str(line)))
    return hdr


def write_array_to(tmp: Path, a: np.ndarray, suf: str, *, name=None, fits_header=None, history=(), mask=None) -> dict:
    """Write ``a`` in the format of suffix ``suf`` into the (temporary, already created) path ``tmp``; see
    :func:`write_image`. ``name``: the user's path, for messages. Returns what a record must keep (PNG:
    ``png_offset``, ``png_scale``). ``mask``: pixels allowed to be NaN (see :func:`write_image`)."""
    a = check_finite(a, name or "output", mask)
    suf = suf.lower()
    extra: dict = {}
    with open(tmp, "wb") as f:  # the exclusive temporary itself: no name is opened twice
        if suf == ".npy":
            np.save(f, a)
        elif suf in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(f, a)
        elif suf == ".png":
            import imageio.v3 as iio

            png, offset, scale = png_encode(a)
            iio.imwrite(f, png, extension=".png")
            extra = {"png_offset": offset, "png_scale": scale,
                     "png_rule": "value = png_offset + png_scale * png_value (16-bit, rounded)"}
        elif suf in FITS_SUFFIXES:
            from astropy.io import fits

            fits.PrimaryHDU(a, header=fits_output_header(fits_header, history)).writeto(f)
        else:
            raise PsfsimError(f"{name}: unknown output type {suf!r} (expected one of {', '.join(IMAGE_SUFFIXES)})")
    return extra


def _check_out_suffix(p: Path) -> str:
    suf = p.suffix.lower()
    if suf not in IMAGE_SUFFIXES:
        raise PsfsimError(f"{p}: unknown output type {suf!r} (expected one of {', '.join(IMAGE_SUFFIXES)})")
    return suf


def write_image(out: str | os.PathLike, a: np.ndarray, *, record: dict | None = None, fits_header=None,
                history=(), mask=None) -> dict:
    """Write an image and (when ``record`` is given) its JSON record ``OUT.json``: both land or neither.

    The array is written with its dtype (PNG: 16-bit with ``png_offset``/``png_scale`` in the record, so PNG
    needs a record); FITS outputs carry ``fits_header``'s cards and ``history`` as ``HISTORY`` cards. A NaN or
    infinite pixel is refused (nothing written), except at ``mask`` (the input's own non-finite pixels under the
    ``fill`` NaN policy: NaN there and only there; PNG cannot hold them). Returns the record as written.
    """
    from ._version import __version__
    from .store import atomic_outputs

    p = Path(out)
    suf = _check_out_suffix(p)
    check_finite(a, p, mask)
    if mask is not None and suf == ".png":
        raise PsfsimError(f"{p}: PNG cannot hold the masked (NaN) pixels; write .tif, .npy or .fits")
    if suf == ".png" and record is None:
        raise PsfsimError(f"{p}: PNG holds 16-bit integers and its scale needs a record; write .tif, .npy or .fits")
    paths = [p] if record is None else [p, sidecar_path(p)]
    with atomic_outputs(*paths) as tmps:
        extra = write_array_to(tmps[0], a, suf, name=p, fits_header=fits_header, history=history, mask=mask)
        if record is None:
            return {}
        rec = {"psfsim_version": __version__, **record, **extra}
        text = json.dumps(rec, indent=2, default=float)
        with open(tmps[1], "w") as f:
            f.write(text)
    return rec


def write_array(path: str | os.PathLike, a: np.ndarray, *, like: str | None = None, fits_header=None,
                history=()) -> Path:
    """Write an array to ``.npy``, ``.tif`` or ``.fits``, atomically (no record; PNG needs one, see
    :func:`write_image`). ``like`` is ignored (kept for compatibility)."""
    p = Path(path)
    _check_out_suffix(p)
    if p.is_dir():
        raise PsfsimError(f"{p}: output path is a folder")
    if not p.parent.is_dir():
        raise PsfsimError(f"{p}: folder {p.parent} does not exist")
    write_image(p, a, fits_header=fits_header, history=history)
    return p
