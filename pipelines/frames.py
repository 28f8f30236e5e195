"""Frame sources: huge frames read lazily, region by region, from Zarr / OME-Zarr / BigTIFF / FITS / npy.

A :class:`Frame` holds a path and its options only; each process (a Dask worker, a thread of the threaded
scheduler) opens the file itself on its first read, so a frame pickles small and never carries an open file
(``open_frame`` reads the header only). What each format reads through:

========== ====================================================================================================
``npy``    ``np.load(mmap_mode="r")``: a memory map per read (header read first, :mod:`psfsim.io`)
``tiff``   tifffile: a memory map when the pixels are stored uncompressed and contiguously, else its zarr view
           (``series.aszarr()``: only the strips / tiles of the region are decoded); BigTIFF included
``fits``   astropy, opened inside every read and closed after it; ``hdu.section`` decodes only the region
           (memory-mapped when the HDU is not scaled; BSCALE / BZERO applied, BLANK pixels read as NaN)
``zarr``   a Zarr (v3 or v2) array, or a named array of a group (``array=``)
``ome-zarr`` an OME-Zarr (NGFF 0.4 / 0.5) image group: level 0 of its first multiscale
========== ====================================================================================================

A frame is ``(H, W)``, or a stack ``(N, H, W)`` (a relay-imaging sequence, a cube, channels) read frame by
frame; leading axes of length 1 beyond three (an OME-Zarr ``(t, c, z, y, x)`` image with ``t = c = z = 1``)
are dropped. Reads return float32 whatever the stored dtype (the pipelines compute in float32;
:func:`psfsim.checks.result_dtype` decides what is accepted: real numeric types, never complex), native-endian.
Refused at :func:`open_frame` with a :class:`~pipelines.errors.PipelineError` naming the path and what was
expected: a missing or unreadable file, a dtype that is not real numeric, fewer than 2 or more than 3 axes,
an empty frame, an RGB(A) TIFF.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import PipelineError

__all__ = ["FrameInfo", "Frame", "open_frame", "header_digest", "FRAME_KINDS", "FITS_SUFFIXES", "TIFF_SUFFIXES"]

FRAME_KINDS = ("zarr", "ome-zarr", "tiff", "fits", "npy")
FITS_SUFFIXES = (".fits", ".fit", ".fts")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")
#: Rows of a band read at once by :meth:`Frame.nan_report` (bounded memory: ``_BAND_PIXELS`` float32).
_BAND_PIXELS = 1 << 24
#: Positions listed by :meth:`Frame.nan_report`.
NAN_POSITIONS = 10


@dataclass(frozen=True)
class FrameInfo:
    """What a frame's header says (nothing decoded).

    Attributes
    ----------
    path : str
        Absolute path of the file or Zarr folder.
    kind : str
        One of :data:`FRAME_KINDS`.
    shape : tuple of int
        ``(H, W)``, or ``(N, H, W)`` for a stack (after dropping leading axes of length 1 beyond three).
    dtype : str
        The stored dtype's name (``"uint16"``, ``"float32"``, ...; FITS: the BITPIX type, or the float type that
        BSCALE / BZERO scale it to). Reads are float32 whatever it is.
    header : tuple of (str, value, str) or None
        FITS: the chosen HDU's header cards ``(keyword, value, comment)`` in order, values JSON-able (bool, int,
        float, str, or None for an undefined value); ``None`` for other formats.
    hdu : int or None
        FITS: the index of the HDU read.
    array : str or None
        Zarr: the array's path inside the group (OME-Zarr: the level-0 dataset path).
    """

    path: str
    kind: str
    shape: tuple
    dtype: str
    header: tuple | None = None
    hdu: int | None = None
    array: str | None = None


def header_digest(header) -> str | None:
    """SHA-256 (hex) of a header's cards (:attr:`FrameInfo.header`), as JSON with sorted keys; ``None`` without one."""
    if header is None:
        return None
    return hashlib.sha256(json.dumps(header, sort_keys=True, default=str).encode()).hexdigest()


def _bad(path, why: str) -> PipelineError:
    return PipelineError(f"--input {path}: {why}")


def _check_dtype(path, dtype) -> np.dtype:
    from psfsim.checks import result_dtype
    from psfsim.errors import PsfsimError

    dt = np.dtype(dtype)
    try:
        result_dtype(dt)
    except PsfsimError:
        raise _bad(path, f"pixels of dtype {dt} are not real numbers; expected a real numeric image "
                         "(integers or floats)") from None
    return dt


def _squeeze_shape(shape: tuple) -> tuple[tuple, int]:
    """``(shape, dropped)``: leading axes of length 1 dropped while there are more than three."""
    shape = tuple(int(s) for s in shape)
    k = 0
    while len(shape) - k > 3 and shape[k] == 1:
        k += 1
    return shape[k:], k


def _check_shape(path, shape: tuple) -> None:
    if len(shape) not in (2, 3):
        raise _bad(path, f"shape {tuple(shape)} has {len(shape)} axes; expected a 2-D frame (H, W) or a stack "
                         "(N, H, W)")
    if 0 in shape:
        raise _bad(path, f"shape {tuple(shape)} is empty; expected at least one pixel")


def _json_value(v):
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v) if math.isfinite(float(v)) else str(v)
    if type(v).__name__ == "Undefined":  # astropy's undefined card value
        return None
    return str(v)


def _header_cards(header) -> tuple:
    return tuple((str(c.keyword), _json_value(c.value), str(c.comment)) for c in header.cards)


# -- header-first probing per format ---------------------------------------------------------------------------
def _kind_of(p: Path) -> str:
    suf = p.suffix.lower()
    if p.is_dir():
        if (p / "zarr.json").is_file() or (p / ".zarray").is_file() or (p / ".zgroup").is_file():
            return "zarr"  # refined to "ome-zarr" by _probe_zarr
        raise _bad(p, "is a folder but not a Zarr store (no zarr.json, .zarray or .zgroup); expected a Zarr "
                      "array, an OME-Zarr image, a TIFF, FITS or .npy file")
    if not p.exists():
        raise _bad(p, "no such file or folder")
    if suf == ".npy":
        return "npy"
    if suf in TIFF_SUFFIXES:
        return "tiff"
    if suf in FITS_SUFFIXES:
        return "fits"
    raise _bad(p, f"unknown frame type {suf or '(no suffix)'!r}; expected a Zarr / OME-Zarr folder, "
                  f"{', '.join(TIFF_SUFFIXES + FITS_SUFFIXES)} or .npy")


def _probe_npy(p: Path):
    from psfsim.errors import PsfsimError
    from psfsim.io import npy_header

    try:
        h = npy_header(p)
    except PsfsimError as e:
        raise PipelineError(f"--input {e}") from None
    return tuple(h.shape), h.dtype, {}


def _tiff_layout(series) -> str:
    return "memmap" if series.dataoffset is not None else "zarr"


def _probe_tiff(p: Path):
    import tifffile

    with tifffile.TiffFile(p) as tf:
        if not tf.series:
            raise _bad(p, "the TIFF file holds no image")
        s = tf.series[0]
        if "S" in s.axes:
            raise _bad(p, f"TIFF of axes {s.axes!r} {tuple(s.shape)} has colour samples; expected a greyscale frame "
                          "or stack (convert to luminance first)")
        return tuple(s.shape), np.dtype(s.dtype), {"layout": _tiff_layout(s)}


def _fits_choose(hdul, p: Path, hdu) -> int:
    from psfsim.errors import PsfsimError
    from psfsim.io import fits_hdu_index, is_image_hdu

    if hdu is None:
        for i, h in enumerate(hdul):
            if is_image_hdu(h) and h.header.get("NAXIS", 0) in (2, 3):
                return i
        desc = ", ".join(f"{i} {h.name or '?'} ({h.header.get('NAXIS', 0)}-D)" for i, h in enumerate(hdul))
        raise _bad(p, f"no 2-D or 3-D image HDU (HDUs: {desc}); choose one with --hdu")
    try:
        return fits_hdu_index(hdul, p, hdu)
    except PsfsimError as e:
        raise PipelineError(str(e)) from None


def _probe_fits(p: Path, hdu):
    from psfsim.io import fits_open, fits_shape_dtype

    with fits_open(p) as hdul:
        i = _fits_choose(hdul, p, hdu)
        h = hdul[i]
        header = h.header
        if h.__class__.__name__ == "CompImageHDU":
            shape = tuple(h.shape)
            from psfsim.io import FITS_BITPIX

            dtype = np.dtype(FITS_BITPIX.get(int(header["BITPIX"]), np.float64))
            scaled = "BSCALE" in header or "BZERO" in header
        else:
            shape, dtype = fits_shape_dtype(header)
            scaled = float(header.get("BSCALE", 1)) != 1 or float(header.get("BZERO", 0)) != 0
        # astropy memory-maps an HDU only without BSCALE / BZERO / BLANK; with them it reads sections by seeks
        # and applies the scaling (BLANK pixels become NaN), as its full read does
        memmap = not (scaled or "BLANK" in header)
        return tuple(shape), np.dtype(dtype).newbyteorder("="), {
            "hdu": i, "header": _header_cards(header), "memmap": memmap}


def _ome_level0(group) -> str | None:
    """The level-0 dataset path of an OME-Zarr image group (NGFF 0.5 ``ome`` or 0.4 ``multiscales``), or None."""
    attrs = dict(group.attrs)
    ms = attrs.get("ome", {}).get("multiscales") if isinstance(attrs.get("ome"), dict) else None
    if ms is None:
        ms = attrs.get("multiscales")
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], dict):
        return None
    ds = ms[0].get("datasets")
    if not isinstance(ds, list) or not ds or not isinstance(ds[0], dict) or not isinstance(ds[0].get("path"), str):
        return None
    return ds[0]["path"]


def _probe_zarr(p: Path, array: str | None):
    import zarr

    try:
        node = zarr.open(str(p), mode="r")
    except Exception as e:  # noqa: BLE001 - any reader failure is the user's store, in one line
        raise _bad(p, f"cannot open the Zarr store ({type(e).__name__}: {e})") from None
    kind = "zarr"
    if isinstance(node, zarr.Group):
        name = array
        if name is None:
            name = _ome_level0(node)
            if name is None:
                arrays = sorted(k for k, _ in node.arrays())
                raise _bad(p, "is a Zarr group without OME-Zarr multiscales; choose an array with --array "
                              f"(arrays: {', '.join(arrays[:20]) or 'none'})")
            kind = "ome-zarr"
        try:
            node = node[name]
        except KeyError:
            raise _bad(p, f"--array {name!r}: no such array in the group") from None
        if not isinstance(node, zarr.Array):
            raise _bad(p, f"--array {name!r}: is a group, not an array")
    elif array is not None:
        raise _bad(p, f"--array {array!r}: the store is a single array, not a group")
    else:
        name = None
    return tuple(node.shape), np.dtype(node.dtype), {"array": name, "kind": kind}


# -- the frame ------------------------------------------------------------------------------------------------
class Frame:
    """A frame (or stack of frames) on disk, read lazily region by region; see the module docstring.

    Create with :func:`open_frame`. Picklable: holds the path and options; each process (and, for TIFF, each
    thread) opens the file on its first read and checks that it has not changed since :func:`open_frame`
    (size and modification time).

    Attributes
    ----------
    info : FrameInfo
    n_frames : int
        Frames in the stack (1 for a 2-D frame).
    frame_shape : (int, int)
        ``(H, W)`` of each frame.
    """

    def __init__(self, info: FrameInfo, *, options: dict, stamp: tuple, squeeze: int = 0):
        self.info = info
        self._options = dict(options)
        self._stamp = stamp
        self._squeeze = int(squeeze)
        self._local = threading.local()
        self._shared = None
        self._lock = threading.Lock()

    # pickling: the path and options only
    def __getstate__(self):
        return {"info": self.info, "options": self._options, "stamp": self._stamp, "squeeze": self._squeeze}

    def __setstate__(self, state):
        self.__init__(state["info"], options=state["options"], stamp=state["stamp"], squeeze=state["squeeze"])

    def __repr__(self) -> str:
        return f"Frame({self.info.path!r}, kind={self.info.kind!r}, shape={self.info.shape}, dtype={self.info.dtype})"

    @property
    def n_frames(self) -> int:
        return int(self.info.shape[0]) if len(self.info.shape) == 3 else 1

    @property
    def frame_shape(self) -> tuple[int, int]:
        return int(self.info.shape[-2]), int(self.info.shape[-1])

    @property
    def is_stack(self) -> bool:
        return len(self.info.shape) == 3

    # -- opening, once per process (per thread for TIFF) ------------------------------------------------------
    def _check_unchanged(self) -> None:
        now = _stamp(Path(self.info.path), self.info.kind)
        if now != self._stamp:
            raise PipelineError(f"--input {self.info.path}: the file changed since it was opened (size or "
                                "modification time); start the run again")

    def _source(self):
        """The opened array-like of this process (npy, zarr, memory-mapped TIFF) or this thread (TIFF's zarr view)."""
        kind = self.info.kind
        if kind == "tiff" and self._options.get("layout") == "zarr":
            src = getattr(self._local, "src", None)
            if src is None:
                src = self._open()
                self._local.src = src
            return src
        if kind == "npy" or (kind == "tiff" and self._options.get("layout") == "memmap"):
            # a memory map per read, unmapped when the read returns: a map kept open leaves every page a task
            # touched counted in this process's resident memory, which then grows with the frame (measured:
            # peak RSS of a Wiener run 16384^2 / 2048^2 = 4.3 with one shared map, file pages only)
            return self._open()
        if self._shared is None:
            with self._lock:
                if self._shared is None:
                    self._shared = self._open()
        return self._shared

    def _open(self):
        p = self.info.path
        self._check_unchanged()
        try:
            if self.info.kind == "npy":
                return np.load(p, mmap_mode="r", allow_pickle=False)
            if self.info.kind == "tiff":
                import tifffile

                if self._options.get("layout") == "memmap":
                    return tifffile.memmap(p, mode="r")
                import zarr

                tf = tifffile.TiffFile(p)
                self._local.tiff = tf  # kept open with the view (closed when the thread's state goes)
                return zarr.open(tf.series[0].aszarr(), mode="r")
            if self.info.kind in ("zarr", "ome-zarr"):
                import zarr

                node = zarr.open(p, mode="r")
                name = self.info.array
                return node[name] if name is not None else node
        except PipelineError:
            raise
        except Exception as e:  # noqa: BLE001
            raise _bad(p, f"cannot open it ({type(e).__name__}: {e})") from None
        raise AssertionError(self.info.kind)  # pragma: no cover - FITS is opened inside each read

    # -- reading ---------------------------------------------------------------------------------------------
    def _window(self, index: int, rows: slice, cols: slice) -> tuple[int, slice, slice]:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= int(index) < self.n_frames:
            raise PipelineError(f"{self.info.path}: frame index {index!r} out of range; expected 0 <= index < "
                                f"{self.n_frames}")
        H, W = self.frame_shape
        out = []
        for s, n, what in ((rows, H, "rows"), (cols, W, "cols")):
            if not isinstance(s, slice):
                raise PipelineError(f"{self.info.path}: {what} = {s!r}; expected a slice")
            a, b, step = s.indices(n)
            if step != 1:
                raise PipelineError(f"{self.info.path}: {what} = {s!r}; expected a slice of step 1")
            out.append(slice(a, max(a, b)))
        return int(index), out[0], out[1]

    def read(self, index: int, rows: slice, cols: slice) -> np.ndarray:
        """Read a region of frame ``index``.

        Parameters
        ----------
        index : int
            Frame of the stack (0 for a 2-D frame).
        rows, cols : slice
            The region, in frame pixels (step 1; Python slice semantics, so it is clipped to the frame).

        Returns
        -------
        ndarray, shape (h, w), float32
            Native-endian, a fresh array (never a view of a memory map). FITS: BSCALE / BZERO applied and
            BLANK pixels NaN (as astropy reads them).
        """
        n, rows, cols = self._window(index, rows, cols)
        if self.info.kind == "fits":
            a = self._read_fits(n, rows, cols)
        else:
            src = self._source()
            lead = (0,) * self._squeeze
            key = lead + ((n, rows, cols) if self.is_stack else (rows, cols))
            try:
                a = src[key]
            except Exception as e:  # noqa: BLE001 - a damaged chunk, a truncated file...
                raise _bad(self.info.path, f"cannot read frame {n} rows {rows.start}:{rows.stop} cols "
                                           f"{cols.start}:{cols.stop} ({type(e).__name__}: {e})") from None
        return np.array(a, dtype=np.float32, order="C")

    def _read_fits(self, n: int, rows: slice, cols: slice) -> np.ndarray:
        from astropy.io import fits

        p = self.info.path
        self._check_unchanged()
        try:
            # opened and closed inside the read: nothing open is ever pickled or shared between threads
            with fits.open(p, memmap=self._options.get("memmap", True), lazy_load_hdus=True) as hdul:
                key = (0,) * self._squeeze + ((n, rows, cols) if self.is_stack else (rows, cols))
                return np.array(hdul[self.info.hdu].section[key])
        except Exception as e:  # noqa: BLE001
            raise _bad(p, f"cannot read HDU {self.info.hdu} rows {rows.start}:{rows.stop} cols "
                          f"{cols.start}:{cols.stop} ({type(e).__name__}: {e})") from None

    def to_dask(self, index: int = 0, chunks=(1024, 1024)):
        """Frame ``index`` as a lazy Dask array ``(H, W)`` float32, each block read by :meth:`read`.

        The graph holds this (picklable) frame, never an open file: process-based workers open it themselves.
        """
        import dask.array as da

        self._window(index, slice(None), slice(None))
        return da.from_array(_FrameView(self, int(index)), chunks=chunks, asarray=False, fancy=False, lock=False,
                             name=f"frame-{hashlib.sha256(repr((self.info, self._stamp, index)).encode()).hexdigest()[:16]}",
                             meta=np.empty((0, 0), np.float32))

    def nan_report(self, index: int = 0) -> tuple[int, list[tuple[int, int]]]:
        """Count the non-finite pixels (NaN, inf) of frame ``index`` and list where the first ones are.

        Read in bands of rows (memory bounded by ``_BAND_PIXELS`` float32 pixels, whatever the frame size).

        Returns
        -------
        (int, list of (int, int))
            The count, and the ``(row, col)`` of the first :data:`NAN_POSITIONS` of them in row-major order.
        """
        H, W = self.frame_shape
        band = max(1, _BAND_PIXELS // max(W, 1))
        count, where = 0, []
        for r0 in range(0, H, band):
            a = self.read(index, slice(r0, min(H, r0 + band)), slice(0, W))
            bad = ~np.isfinite(a)
            k = int(np.count_nonzero(bad))
            if k:
                count += k
                if len(where) < NAN_POSITIONS:
                    rr, cc = np.nonzero(bad)
                    where.extend((int(r) + r0, int(c)) for r, c in zip(rr[:NAN_POSITIONS], cc[:NAN_POSITIONS]))
                    where = where[:NAN_POSITIONS]
        return count, where

    def identity(self) -> dict:
        """What identifies this input in a run record: absolute path, kind, size and modification time (summed /
        latest over the files of a Zarr folder), shape, stored dtype, FITS HDU or Zarr array, the header's cards
        (``None`` unless FITS: an export to FITS carries them) and their digest (:func:`header_digest`)."""
        size, mtime = self._stamp
        return {"path": self.info.path, "kind": self.info.kind, "size": size, "mtime": mtime,
                "shape": list(self.info.shape), "dtype": self.info.dtype, "hdu": self.info.hdu,
                "array": self.info.array, "header_sha256": header_digest(self.info.header),
                "header": [list(c) for c in self.info.header] if self.info.header is not None else None}


class _FrameView:
    """A 2-D array-like over one frame for :func:`dask.array.from_array` (basic slicing only)."""

    def __init__(self, frame: Frame, index: int):
        self.frame = frame
        self.index = index
        self.shape = frame.frame_shape
        self.dtype = np.dtype(np.float32)
        self.ndim = 2

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (2 - len(key))
        return self.frame.read(self.index, key[0], key[1])


def _stamp(p: Path, kind: str) -> tuple[int, float]:
    """``(size, mtime)`` of a file, or the total size and latest mtime of a Zarr folder's files."""
    try:
        if kind in ("zarr", "ome-zarr"):
            size, mtime = 0, 0.0
            for root, _dirs, files in os.walk(p):
                for f in files:
                    st = os.stat(os.path.join(root, f))
                    size += st.st_size
                    mtime = max(mtime, st.st_mtime)
            return size, mtime
        st = p.stat()
        return int(st.st_size), float(st.st_mtime)
    except OSError as e:
        raise _bad(p, f"cannot read it ({e.strerror or e})") from None


def open_frame(path, *, hdu: int | str | None = None, array: str | None = None) -> Frame:
    """Open a frame lazily: read its header (shape, dtype, FITS header), check it, decode nothing.

    Parameters
    ----------
    path : path
        A Zarr folder (an array, an OME-Zarr image group, or a group with ``array``), a (Big)TIFF, FITS or
        ``.npy`` file.
    hdu : int or str, optional
        FITS only: the HDU (index or EXTNAME); default the first image HDU with 2 or 3 axes.
    array : str, optional
        Zarr groups only: the array to read (default: level 0 of an OME-Zarr image's first multiscale).

    Returns
    -------
    Frame

    Raises
    ------
    PipelineError
        Naming the path and what was expected: missing, of an unknown type, unreadable, not 2-D or 3-D, empty,
        complex or non-numeric, an RGB(A) TIFF, an ``hdu`` / ``array`` that does not apply or does not exist.
    """
    p = Path(os.path.abspath(path))
    kind = _kind_of(p)
    if hdu is not None and kind != "fits":
        raise _bad(p, f"--hdu {hdu}: applies to FITS files only")
    if array is not None and kind != "zarr":
        raise _bad(p, f"--array {array}: applies to Zarr stores only")
    try:
        if kind == "npy":
            shape, dtype, opts = _probe_npy(p)
        elif kind == "tiff":
            shape, dtype, opts = _probe_tiff(p)
        elif kind == "fits":
            shape, dtype, opts = _probe_fits(p, hdu)
        else:
            shape, dtype, opts = _probe_zarr(p, array)
            kind = opts.pop("kind")
    except PipelineError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure is the user's file, in one line
        raise _bad(p, f"cannot read its header ({type(e).__name__}: {e})") from None
    dtype = _check_dtype(p, dtype)
    full_shape = shape
    shape, squeeze = _squeeze_shape(shape)
    if len(full_shape) > 3 and len(shape) > 3:
        raise _bad(p, f"shape {tuple(full_shape)} has {len(full_shape)} axes; expected a 2-D frame (H, W) or a "
                      "stack (N, H, W) (leading axes of length 1 are dropped)")
    _check_shape(p, shape)
    header = opts.pop("header", None)
    info = FrameInfo(path=str(p), kind=kind, shape=tuple(int(s) for s in shape), dtype=np.dtype(dtype).name,
                     header=header, hdu=opts.pop("hdu", None), array=opts.pop("array", None))
    return Frame(info, options=opts, stamp=_stamp(p, kind), squeeze=squeeze)
