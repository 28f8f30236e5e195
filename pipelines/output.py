"""The output store of a pipelines run: Zarr v3 + OME-Zarr (NGFF 0.5), written chunk by chunk, resumable.

Layout of ``OUT.zarr`` (a Zarr v3 group)::

    zarr.json                 attributes: "ome" (NGFF 0.5 multiscales, axes, coordinateTransformations: written
                              by ome-zarr-py) and "pipelines" (below)
    0/                        the result, (H, W) or (N, H, W), chunks (th, tw) or (1, th, tw), float32, NaN fill,
                              Zstandard + CRC32C (a damaged chunk fails to decode instead of reading as garbage)
    1/, 2/, ...               the optional pyramid (``finish(pyramid=True)``): level k is level k-1 averaged over
                              2 x 2 pixels (NaN-aware; a frame edge of odd size averages the pixels it has)
    completion/done           one uint8 flag per chunk of ``0`` (grid shape), each in its own Zarr chunk, so any
                              process writes its own flags; 1 once the chunk's data and digest are written
    completion/digest         SHA-256 of each chunk as written (:func:`psfsim.integrity.digest_arrays`)

``attrs["pipelines"]``: ``format`` (:data:`FORMAT`), ``record`` (what wrote the store: route, input identity,
checkpoint hash or lens fingerprint, arguments, versions, seed; compared on resume, except its ``provenance``
key), ``status`` (``"running"`` / ``"complete"``), ``run_id`` (the run that holds the store; every chunk write
checks it), ``shape``, ``chunks``, ``dtype``, ``axes``, ``created``, and once complete ``completed``, ``summary``
and ``levels`` (pyramid levels written).

One writer at a time: :meth:`OutputStore.create` takes the store's :class:`psfsim.integrity.WriterLock` until
:meth:`OutputStore.close`. A store is complete only when ``status`` says so *and* every ``done`` flag is 1
(:func:`open_result` and :func:`export` refuse anything else). The model is :mod:`psfsim.dataset.writer`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .errors import PipelineError

__all__ = ["FORMAT", "OutputStore", "open_result", "export", "record_difference", "downsample_mean2",
           "EXPORT_SUFFIXES"]

#: ``attrs["pipelines"]["format"]`` of the stores written here.
FORMAT = "pipelines-output/1"
#: Keys of a record that are provenance only, never compared on resume.
PROVENANCE_KEYS = ("provenance",)
EXPORT_SUFFIXES = (".fits", ".fit", ".fts", ".tif", ".tiff")
_DIGEST_BYTES = 32
_STACK_AXES = {"t": "time", "c": "channel", "z": "space"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _jsonable(v, what: str):
    try:
        return json.loads(json.dumps(v, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise PipelineError(f"{what}: cannot be stored as JSON ({e}); expected numbers, strings, lists and dicts")


def _short(v, n: int = 80) -> str:
    from psfsim.report import safe_text

    return safe_text(json.dumps(v, sort_keys=True, default=str), n)


def record_difference(old, new, prefix: str = "record") -> str | None:
    """The first difference between two run records (key path, stored and new value), or ``None``.
    Top-level :data:`PROVENANCE_KEYS` are ignored."""
    if isinstance(old, dict) and isinstance(new, dict):
        skip = PROVENANCE_KEYS if prefix == "record" else ()
        for k in sorted(set(old) | set(new)):
            if k in skip:
                continue
            if k not in old:
                return f"{prefix}.{k}: not in the store, {_short(new[k])} now"
            if k not in new:
                return f"{prefix}.{k}: {_short(old[k])} in the store, absent now"
            why = record_difference(old[k], new[k], f"{prefix}.{k}")
            if why:
                return why
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            why = record_difference(a, b, f"{prefix}[{i}]")
            if why:
                return why
        return None
    if old != new:
        return f"{prefix}: {_short(old)} in the store, {_short(new)} now"
    return None


def _grid(shape: tuple, chunks: tuple) -> tuple:
    return tuple(-(-s // c) for s, c in zip(shape, chunks))


def _check_geometry(path, shape, chunks, dtype) -> tuple[tuple, tuple, np.dtype]:
    try:
        shape = tuple(int(s) for s in shape)
        chunks = tuple(int(c) for c in chunks)
    except (TypeError, ValueError):
        raise PipelineError(f"{path}: shape {shape!r} / chunks {chunks!r}: expected tuples of integers") from None
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise PipelineError(f"{path}: shape {shape}: expected (H, W) or (N, H, W) of positive sizes")
    if len(shape) == 3 and len(chunks) == 3:
        if chunks[0] != 1:
            raise PipelineError(f"{path}: chunks {chunks}: a stack is chunked frame by frame, expected (1, th, tw)")
        chunks = chunks[1:]
    if len(chunks) != 2 or min(chunks) < 1:
        raise PipelineError(f"{path}: chunks {chunks}: expected (th, tw) of positive sizes")
    chunks = tuple(min(c, s) for c, s in zip(chunks, shape[-2:]))
    if len(shape) == 3:
        chunks = (1,) + chunks
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise PipelineError(f"{path}: dtype {dtype!r}: expected float32 or float64") from None
    if dt not in (np.float32, np.float64):
        raise PipelineError(f"{path}: dtype {dt}: expected float32 or float64")
    return shape, chunks, dt


def _axes(ndim: int, stack_axis: str) -> list[dict]:
    if stack_axis not in _STACK_AXES:
        raise PipelineError(f"stack_axis = {stack_axis!r}: expected one of {', '.join(_STACK_AXES)}")
    sp = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    return sp if ndim == 2 else [{"name": stack_axis, "type": _STACK_AXES[stack_axis]}] + sp


def _level_shapes(shape: tuple, chunks: tuple) -> list[tuple]:
    """Shapes of the pyramid levels 0, 1, ...: each halves (rounding up) the frame axes, until a frame fits in
    one chunk (at least one level below 0 when the frame is 2 px or more on each side)."""
    out = [tuple(shape)]
    th, tw = chunks[-2:]
    while True:
        h, w = out[-1][-2:]
        if min(h, w) < 2 or (len(out) > 1 and h <= th and w <= tw):
            break
        out.append(tuple(shape[:-2]) + (-(-h // 2), -(-w // 2)))
    return out


def downsample_mean2(a: np.ndarray) -> np.ndarray:
    """Average ``a`` ``(..., h, w)`` over 2 x 2 pixel blocks -> ``(..., ceil(h/2), ceil(w/2))``, same dtype.

    Each output pixel is the mean of the finite pixels of its block (an odd edge block has 1 or 2 pixels; a block
    with no finite pixel gives NaN), so masked (NaN) pixels never darken their neighbours.
    """
    a = np.asarray(a)
    h, w = a.shape[-2:]
    pad = [(0, 0)] * (a.ndim - 2) + [(0, h % 2), (0, w % 2)]
    b = np.pad(a.astype(np.float64), pad, constant_values=np.nan)
    b = b.reshape(b.shape[:-2] + (b.shape[-2] // 2, 2, b.shape[-1] // 2, 2))
    ok = np.isfinite(b)
    cnt = ok.sum(axis=(-3, -1))
    s = np.where(ok, b, 0.0).sum(axis=(-3, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan)
    return m.astype(a.dtype)


def _chunk_slices(idx: tuple, shape: tuple, chunks: tuple) -> tuple:
    return tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, shape))


def _open_group(path, mode="r"):
    import zarr

    try:
        return zarr.open_group(str(path), mode=mode, zarr_format=3, use_consolidated=False)
    except Exception as e:  # noqa: BLE001 - not a zarr v3 group, damaged metadata...
        raise PipelineError(f"{path}: not a readable Zarr v3 store ({type(e).__name__}: {e})") from None


def _meta(path) -> dict | None:
    """``attrs["pipelines"]`` of the store at ``path`` when it is a pipelines output, else ``None``."""
    if not (Path(path) / "zarr.json").is_file():
        return None
    try:
        g = _open_group(path)
    except PipelineError:
        return None
    m = g.attrs.get("pipelines")
    if isinstance(m, dict) and isinstance(m.get("format"), str) and m["format"].startswith("pipelines-output/"):
        return m
    return None


def current_run_id(path) -> str | None:
    """The run id the store at ``path`` records now, read from its group metadata file on every call (a zarr
    group handle caches its attributes, so it cannot see another run take the store over); ``None`` when the
    file or the record is missing or unreadable."""
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())["attributes"]["pipelines"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta.get("run_id") if isinstance(meta, dict) else None


class OutputStore:
    """The output of one run, written chunk by chunk (see the module docstring for the layout).

    Create or resume with :meth:`create`; ``pending`` / ``write_chunk`` (from any process: the store pickles as
    its path, geometry and run id, never its lock) / ``finish`` / ``close``. Chunk indices have the array's
    dimensionality: ``(i, j)`` for a 2-D output, ``(n, i, j)`` for a stack (``(0, i, j)`` is also accepted for a
    2-D output).
    """

    def __init__(self, path, *, shape, chunks, dtype, run_id: str, axes: list):
        self.path = Path(path)
        self.shape = tuple(shape)
        self.chunks = tuple(chunks)
        self.dtype = np.dtype(dtype)
        self.run_id = run_id
        self.axes = axes
        self.grid = _grid(self.shape, self.chunks)
        self._lock = None
        self._arrays = None

    def __getstate__(self):
        return {"path": str(self.path), "shape": self.shape, "chunks": self.chunks, "dtype": self.dtype.str,
                "run_id": self.run_id, "axes": self.axes}

    def __setstate__(self, s):
        self.__init__(s["path"], shape=s["shape"], chunks=s["chunks"], dtype=s["dtype"], run_id=s["run_id"],
                      axes=s["axes"])

    def __repr__(self) -> str:
        return f"OutputStore({str(self.path)!r}, shape={self.shape}, chunks={self.chunks})"

    def __enter__(self) -> "OutputStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- creation / resumption ----------------------------------------------------------------------------------
    @classmethod
    def create(cls, path, *, shape, chunks, dtype="float32", record: dict, overwrite: bool = False,
               resume: bool = True, inputs=(), stack_axis: str = "t", verify: bool = True) -> "OutputStore":
        """Create the store of a run, or resume it (see the module docstring for what is written).

        Parameters
        ----------
        path : path
            ``OUT.zarr``: a new path, an empty folder, or a pipelines output (resumed or replaced).
        shape : (H, W) or (N, H, W)
        chunks : (th, tw)
            Output chunk in pixels (per frame for a stack: ``(1, th, tw)`` is accepted too); clipped to the frame.
        dtype : {"float32", "float64"}
        record : dict
            What wrote the store (JSON-able): route, input identity (``record["input"]["path"]`` is refused as the
            output path), checkpoint SHA-256 or lens fingerprint, arguments, versions, seed. Compared with a
            stored one on resume, except its ``provenance`` key.
        overwrite : bool
            Replace a pipelines output of another record (or, with ``resume=False``, of the same one). A folder
            that is not a pipelines output is never replaced.
        resume : bool
            An existing output of the same record is resumed (only missing chunks are pending; a complete one has
            none). ``False``: refused unless ``overwrite`` (then started afresh).
        inputs : sequence of path
            More inputs that must not be the output (:func:`psfsim.store.check_not_input`).
        stack_axis : {"t", "c", "z"}
            NGFF axis of a stack's first dimension: a sequence (time), channels, or a cube (space).
        verify : bool
            On resume, check every chunk marked done against its digest first; failing chunks become pending.

        Raises
        ------
        PipelineError
            Bad geometry, an output that is an input, a folder that is not a pipelines output, a store of another
            record (naming the first difference) without ``overwrite``, another live writer holding the lock.
        """
        from psfsim.errors import PsfsimError
        from psfsim.integrity import WriterLock, clean_stale_temporaries
        from psfsim.store import check_not_input

        p = Path(os.path.abspath(path))
        shape, chunks, dt = _check_geometry(p, shape, chunks, dtype)
        if not isinstance(record, dict):
            raise PipelineError(f"{p}: record {record!r}: expected a dict")
        record = _jsonable(record, f"{p}: record")
        axes = _axes(len(shape), stack_axis)
        ins = list(inputs)
        rin = record.get("input")
        if isinstance(rin, dict) and isinstance(rin.get("path"), str):
            ins.append(rin["path"])
        try:
            check_not_input(p, *ins)
            for i in ins:
                ip = Path(os.path.abspath(i))
                if ip.is_relative_to(p) or Path(os.path.realpath(i)).is_relative_to(os.path.realpath(p)):
                    # an output folder holding the input would be deleted by --overwrite
                    raise PipelineError(f"--out {p}: contains the input {i}; choose another output path")
                if p.is_relative_to(ip) or Path(os.path.realpath(p)).is_relative_to(os.path.realpath(ip)):
                    # an output inside the input's folder (a Zarr store) corrupts the input store
                    raise PipelineError(f"--out {p}: lies inside the input {i}; choose an output path outside it")
            if p.exists() and not p.is_dir():
                raise PipelineError(f"--out {p}: exists and is not a folder")
            if not p.parent.is_dir():
                raise PipelineError(f"--out {p}: folder {p.parent} does not exist")
            lock = WriterLock(p, what="pipelines").acquire()
        except PsfsimError as e:
            raise PipelineError(str(e)) from None
        try:
            clean_stale_temporaries(p)
            store = cls._create_locked(p, shape, chunks, dt, record, axes, lock.run_id, overwrite, resume, verify)
        except BaseException:
            lock.release()
            raise
        store._lock = lock
        return store

    @classmethod
    def _create_locked(cls, p: Path, shape, chunks, dt, record, axes, run_id, overwrite, resume, verify):
        fresh = not p.exists() or not any(p.iterdir())
        resumed = False
        if not fresh:
            meta = _meta(p)
            if meta is None:
                raise PipelineError(f"--out {p}: exists and is not a pipelines output; nothing was changed (choose "
                                    "another path)")
            why = None
            if meta.get("format") != FORMAT:
                why = f"format {_short(meta.get('format'))}, this version writes {FORMAT}"
            else:
                for k, now in (("shape", list(shape)), ("chunks", list(chunks)), ("dtype", dt.name), ("axes", axes)):
                    if meta.get(k) != now:
                        why = f"{k}: {_short(meta.get(k))} in the store, {_short(now)} now"
                        break
                why = why or record_difference(meta.get("record"), record)
            if why:
                if not overwrite:
                    raise PipelineError(f"--out {p}: written by another run ({why}); nothing was changed (use "
                                        "--overwrite to replace it)")
                fresh = True
            elif not resume:
                if not overwrite:
                    raise PipelineError(f"--out {p}: exists (the same run); nothing was changed (resume it, or use "
                                        "--overwrite to start again)")
                fresh = True
            else:
                resumed = True
        if fresh:
            cls._new_store(p, shape, chunks, dt, record, axes)
        store = cls(p, shape=shape, chunks=chunks, dtype=dt, run_id=run_id, axes=axes)
        g = _open_group(p, mode="r+")
        meta = dict(g.attrs["pipelines"])
        meta["run_id"] = run_id
        g.attrs["pipelines"] = meta
        if resumed and meta.get("status") != "complete" and verify:
            store._repair()
        return store

    @staticmethod
    def _new_store(p: Path, shape, chunks, dt, record, axes) -> None:
        """Build the store in a temporary folder beside ``p``, then rename it into place (an old store is removed
        only then): never a half-created store."""
        from psfsim.store import atomic_dir

        with atomic_dir(p, replace=True) as tmp:
            import zarr
            from zarr.codecs import Crc32cCodec, ZstdCodec

            g = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            names = tuple(a["name"] for a in axes)
            g.create_array("0", shape=shape, chunks=chunks, dtype=dt, fill_value=dt.type(np.nan),
                           compressors=[ZstdCodec(level=0), Crc32cCodec()], dimension_names=names)
            grid = _grid(shape, chunks)
            c = g.create_group("completion")
            c.create_array("done", shape=grid, chunks=(1,) * len(grid), dtype="uint8", fill_value=0,
                           dimension_names=names)
            c.create_array("digest", shape=grid + (_DIGEST_BYTES,), chunks=(1,) * len(grid) + (_DIGEST_BYTES,),
                           dtype="uint8", fill_value=0, dimension_names=names + ("byte",))
            _write_ngff(g, axes, 1, p.name)
            g.attrs["pipelines"] = {"format": FORMAT, "record": record, "status": "running", "run_id": None,
                                    "shape": list(shape), "chunks": list(chunks), "dtype": dt.name, "axes": axes,
                                    "created": _now(), "levels": 1}

    # -- per-process access -------------------------------------------------------------------------------------
    def _get_arrays(self):
        if self._arrays is None:
            g = _open_group(self.path, mode="r+")
            self._arrays = (g["0"], g["completion/done"], g["completion/digest"])
        return self._arrays

    def _check_run(self) -> None:
        if current_run_id(self.path) != self.run_id:
            raise PipelineError(f"{self.path}: the store was replaced or taken over by another run while this one "
                                "was writing it; this run stops without writing (run it again)")

    def _norm_index(self, index) -> tuple:
        try:
            idx = tuple(int(i) for i in index)
        except (TypeError, ValueError):
            raise PipelineError(f"{self.path}: chunk index {index!r}: expected a tuple of integers") from None
        if len(idx) == len(self.grid) + 1 and idx[0] == 0 and len(self.grid) == 2:
            idx = idx[1:]
        if len(idx) != len(self.grid) or not all(0 <= i < n for i, n in zip(idx, self.grid)):
            raise PipelineError(f"{self.path}: chunk index {index!r} out of range; expected one of the grid "
                                f"{self.grid}")
        return idx

    def chunk_region(self, index) -> tuple[slice, ...]:
        """The slices of output array ``0`` that chunk ``index`` covers (edge chunks are clipped to the frame)."""
        return _chunk_slices(self._norm_index(index), self.shape, self.chunks)

    def done_flags(self) -> np.ndarray:
        """The completion flags, grid-shaped uint8 (a flag that cannot be read, or is neither 0 nor 1, reads 0)."""
        return _read_done(_open_group(self.path)["completion/done"], self.grid)

    def pending(self) -> list[tuple[int, ...]]:
        """Chunk indices not yet written, in row-major order (``(i, j)``, or ``(n, i, j)`` for a stack)."""
        return [tuple(int(v) for v in i) for i in np.argwhere(self.done_flags() == 0)]

    def write_chunk(self, index: tuple[int, ...], block: np.ndarray) -> None:
        """Write chunk ``index`` (exactly one Zarr chunk: no other writer shares it), then its digest, then its
        done flag: a run killed part-way never marks a chunk it did not write.

        Parameters
        ----------
        index : tuple of int
            ``(i, j)`` or ``(n, i, j)`` (see the class docstring).
        block : ndarray
            The chunk's pixels, shape of :meth:`chunk_region` (``(h, w)`` for a stack's chunk is accepted), cast
            to the store's dtype. NaN is allowed (masked input pixels).
        """
        idx = self._norm_index(index)
        region = _chunk_slices(idx, self.shape, self.chunks)
        want = tuple(s.stop - s.start for s in region)
        a = np.asarray(block)
        if a.shape != want:
            if a.shape == want[1:] and len(want) == 3:
                a = a[None]
            else:
                raise PipelineError(f"{self.path}: chunk {idx}: block of shape {a.shape}; expected {want}")
        if a.dtype.kind not in "fiub":
            raise PipelineError(f"{self.path}: chunk {idx}: block of dtype {a.dtype}; expected real numbers")
        a = np.ascontiguousarray(a, dtype=self.dtype)
        from psfsim.integrity import digest_arrays

        digest = np.frombuffer(bytes.fromhex(digest_arrays([a])), np.uint8)
        data, done, dig = self._get_arrays()
        self._check_run()
        data[region] = a
        dig[idx] = digest
        self._check_run()  # still ours: never mark a chunk in a store another run has taken over
        self._mark_done(done, idx)

    @staticmethod
    def _mark_done(done, idx) -> None:
        done[idx] = 1  # last: the chunk's data and digest are on disk

    def _repair(self) -> int:
        """Before a resume: chunks marked done whose data no longer match their digest (or cannot be read)
        become pending again; returns how many (named on stderr)."""
        from psfsim.integrity import verify_blocks

        g = _open_group(self.path, mode="r+")
        flags = _read_done(g["completion/done"], self.grid)
        done_idx = [tuple(int(v) for v in i) for i in np.argwhere(flags == 1)]
        if not done_idx:
            return 0
        bad = verify_blocks(range(len(done_idx)), lambda k: _stored_digest(g, done_idx[k]),
                            lambda k: _chunk_digest(g["0"], done_idx[k], self.shape, self.chunks))
        for k in sorted(bad):
            g["completion/done"][done_idx[k]] = 0
        if bad:
            first = sorted(bad)[0]
            print(f"pipelines: {self.path}: {len(bad)} written chunk(s) fail verification (first {done_idx[first]}: "
                  f"{bad[first]}); recomputing them", file=sys.stderr)
        return len(bad)

    # -- completion ----------------------------------------------------------------------------------------------
    def finish(self, *, summary: dict, pyramid: bool = False) -> None:
        """Mark the store complete: (optionally) build the pyramid, write the NGFF metadata of every level, then
        ``status = "complete"`` with ``summary`` (JSON-able) and the time, last.

        The pyramid is built chunk by chunk (each chunk of level k reads its 2 x 2 chunks of level k-1), so memory
        stays at a few chunks whatever the frame size; a finish interrupted while building it builds it again.

        Raises
        ------
        PipelineError
            When this object does not hold the store's lock, or a chunk is not written yet (naming the first).
        """
        if self._lock is None:
            raise PipelineError(f"{self.path}: finish() needs the store's lock (the OutputStore from create())")
        self._check_run()
        left = self.pending()
        if left:
            raise PipelineError(f"{self.path}: {len(left)} chunk(s) not written yet (first {left[0]}); the store "
                                "stays incomplete (run the same command again to finish it)")
        summary = _jsonable(summary, f"{self.path}: summary")
        g = _open_group(self.path, mode="r+")
        meta = dict(g.attrs["pipelines"])
        levels = int(meta.get("levels", 1))
        if pyramid:
            want = len(_level_shapes(self.shape, self.chunks))
            if levels != want or meta.get("status") != "complete":
                if levels > 1:  # drop what an earlier finish wrote: rebuilt from level 0
                    meta["levels"] = 1
                    g.attrs["pipelines"] = meta
                    _write_ngff(g, self.axes, 1, self.path.name)
                self._build_pyramid(g)
                levels = want
        _write_ngff(g, self.axes, levels, self.path.name)
        meta.update({"status": "complete", "completed": _now(), "summary": summary, "levels": levels})
        g.attrs["pipelines"] = meta

    def _build_pyramid(self, g) -> None:
        from zarr.codecs import Crc32cCodec, ZstdCodec

        shapes = _level_shapes(self.shape, self.chunks)
        names = tuple(a["name"] for a in self.axes)
        for k in range(1, 64):  # levels left by another geometry or an interrupted finish
            if str(k) in g:
                shutil.rmtree(self.path / str(k))
        g = _open_group(self.path, mode="r+")
        for k in range(1, len(shapes)):
            src = g[str(k - 1)]
            chunks = tuple(min(c, s) for c, s in zip(self.chunks, shapes[k]))
            dst = g.create_array(str(k), shape=shapes[k], chunks=chunks, dtype=self.dtype,
                                 fill_value=self.dtype.type(np.nan), compressors=[ZstdCodec(level=0), Crc32cCodec()],
                                 dimension_names=names)
            for idx in np.ndindex(*_grid(shapes[k], chunks)):
                region = _chunk_slices(idx, shapes[k], chunks)
                read = tuple(region[:-2]) + tuple(slice(2 * s.start, min(2 * s.stop, n))
                                                  for s, n in zip(region[-2:], shapes[k - 1][-2:]))
                dst[region] = downsample_mean2(src[read])

    def close(self) -> None:
        """Release the store's lock (a no-op in a worker's copy, which never holds it)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _write_ngff(g, axes: list, levels: int, name: str) -> None:
    """NGFF 0.5 multiscales metadata (through ome-zarr-py) for levels ``0 .. levels-1``: level k is scaled by
    2^k on the frame axes and translated by (2^k - 1) / 2 pixels (the centre of the 2^k x 2^k pixels averaged)."""
    import warnings

    from ome_zarr.format import FormatV05

    with warnings.catch_warnings():  # its module defines a default argument with a deprecated class (0.18)
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr.writer import write_multiscales_metadata

    nlead = len(axes) - 2
    datasets = []
    for k in range(levels):
        s = float(2**k)
        tr = [{"type": "scale", "scale": [1.0] * nlead + [s, s]}]
        if k:
            tr.append({"type": "translation", "translation": [0.0] * nlead + [(s - 1) / 2] * 2})
        datasets.append({"path": str(k), "coordinateTransformations": tr})
    write_multiscales_metadata(g, datasets, fmt=FormatV05(), axes=axes, name=name)


def _read_done(arr, grid) -> np.ndarray:
    """Grid-shaped uint8 completion flags (unreadable or invalid ones as 0): :func:`psfsim.integrity.read_flags`."""
    from psfsim.integrity import read_flags

    return read_flags(arr, grid)[0]


def _stored_digest(g, idx) -> str | None:
    b = bytes(np.asarray(g["completion/digest"][idx], np.uint8))
    return b.hex() if any(b) else None


def _chunk_digest(arr, idx, shape, chunks) -> str:
    from psfsim.integrity import digest_arrays

    return digest_arrays([np.ascontiguousarray(arr[_chunk_slices(idx, shape, chunks)])])


# -- reading and exporting ------------------------------------------------------------------------------------------
def _complete_meta(path) -> tuple[object, dict]:
    p = Path(path)
    if not p.is_dir():
        raise PipelineError(f"{p}: {'no such store' if not p.exists() else 'is not a folder'}; expected a pipelines "
                            "output (OUT.zarr)")
    meta = _meta(p)
    if meta is None:
        raise PipelineError(f"{p}: not a pipelines output (no attrs['pipelines'] of format {FORMAT})")
    if meta.get("format") != FORMAT:
        raise PipelineError(f"{p}: format {_short(meta.get('format'))}; this version reads {FORMAT}")
    g = _open_group(p)
    try:
        arr = g["0"]
        shape, chunks = tuple(meta["shape"]), tuple(meta["chunks"])
        flags = _read_done(g["completion/done"], _grid(shape, chunks))
    except (KeyError, TypeError, ValueError) as e:
        raise PipelineError(f"{p}: damaged store ({type(e).__name__}: {e})") from None
    missing = int(flags.size - np.count_nonzero(flags))
    if meta.get("status") != "complete" or missing:
        raise PipelineError(f"{p}: incomplete ({missing} of {flags.size} chunk(s) not written, status "
                            f"{_short(meta.get('status'))}); run the same command again to finish it")
    if tuple(arr.shape) != shape:
        raise PipelineError(f"{p}: array 0 has shape {tuple(arr.shape)}, the record says {shape}")
    return g, meta


def open_result(path) -> tuple[object, dict]:
    """Open a complete output: ``(array, meta)``.

    Returns
    -------
    zarr.Array
        Level 0, ``(H, W)`` or ``(N, H, W)``, read-only.
    dict
        ``attrs["pipelines"]``: ``record`` (what wrote it), ``summary``, ``status``, ``levels``, ``chunks``, ...

    Raises
    ------
    PipelineError
        Not a pipelines output, of another format, or incomplete (status not complete, or a chunk not marked
        written: the flags are checked, never the status alone).
    """
    g, meta = _complete_meta(path)
    return g["0"], meta


def _input_header(meta: dict, p: Path):
    """The input's FITS header (astropy) for an export: the record's cards, else the input file's own header when
    its digest matches the record's; ``None`` (with a warning for a FITS input) when neither is available."""
    from astropy.io import fits

    from .frames import header_digest, open_frame

    rec = meta.get("record") if isinstance(meta.get("record"), dict) else {}
    inp = rec.get("input") if isinstance(rec.get("input"), dict) else {}
    cards = inp.get("header")
    if cards is None and inp.get("kind") == "fits" and isinstance(inp.get("path"), str):
        try:
            f = open_frame(inp["path"], hdu=inp.get("hdu"))
            if header_digest(f.info.header) == inp.get("header_sha256"):
                cards = f.info.header
        except PipelineError:
            cards = None
        if cards is None:
            print(f"pipelines: {p}: the input's FITS header is neither in the record nor readable unchanged from "
                  f"{inp['path']}; the export has no WCS", file=sys.stderr)
    if not cards:
        return None
    hdr = fits.Header()
    for card in cards:
        k, v, c = (list(card) + [None, None, ""])[:3]
        with contextlib.suppress(ValueError, TypeError):  # a card astropy cannot rebuild is left out
            hdr.append(fits.Card(k, fits.card.UNDEFINED if v is None else v, c or ""), useblanks=False, bottom=True)
    return hdr


def export(path, to, *, overwrite: bool = False) -> Path:
    """Write a complete output as one FITS or TIFF file (for frames that fit in memory).

    FITS keeps the input's header (WCS, BUNIT, exposure...; ``record["input"]["header"]``, or the input file's
    own header when unchanged) without the keywords that describe the stored array, plus HISTORY cards naming
    the run; TIFF through tifffile (greyscale pages, BigTIFF when larger than 4 GB). A stack is written as a cube
    / multi-page TIFF. Every chunk is checked against its digest while it is read; NaN (masked pixels) is kept, inf refused.

    Parameters
    ----------
    path : path
        A complete pipelines output.
    to : path
        ``.fits`` / ``.fit`` / ``.fts`` / ``.tif`` / ``.tiff``; written atomically.
    overwrite : bool
        Replace an existing ``to``.

    Returns
    -------
    Path
        ``to``.

    Raises
    ------
    PipelineError
        An incomplete or damaged store, an unknown suffix, an existing ``to`` without ``overwrite``, ``to`` the
        store itself, a frame larger than psfsim's read budget (``PSFSIM_MAX_IMAGE_BYTES``).
    """
    from psfsim.errors import PsfsimError
    from psfsim.io import check_finite, max_image_bytes, write_array_to
    from psfsim.store import atomic_file, check_not_input, check_output

    p = Path(path)
    out = Path(to)
    suf = out.suffix.lower()
    if suf not in EXPORT_SUFFIXES:
        raise PipelineError(f"--to {out}: unknown type {suf or '(no suffix)'!r}; expected one of "
                            f"{', '.join(EXPORT_SUFFIXES)}")
    try:
        check_output(out, overwrite=overwrite, what="--to")
        check_not_input(out, p, what="--to")
    except PsfsimError as e:
        raise PipelineError(str(e)) from None
    g, meta = _complete_meta(p)
    arr = g["0"]
    shape, chunks = tuple(meta["shape"]), tuple(meta["chunks"])
    nbytes = int(np.prod(shape)) * arr.dtype.itemsize
    if nbytes > max_image_bytes():
        raise PipelineError(f"{p}: {shape} {arr.dtype} is {nbytes / 2**30:.3g} GiB, more than the read budget "
                            f"({max_image_bytes() / 2**30:.3g} GiB, PSFSIM_MAX_IMAGE_BYTES); read it with "
                            "pipelines.open_result chunk by chunk instead")
    from psfsim.integrity import digest_arrays

    a = np.empty(shape, arr.dtype)
    for idx in np.ndindex(*_grid(shape, chunks)):
        region = _chunk_slices(idx, shape, chunks)
        block = np.ascontiguousarray(arr[region])
        if digest_arrays([block]) != _stored_digest(g, idx):
            raise PipelineError(f"{p}: chunk {idx} differs from its recorded digest (damaged or altered); nothing "
                                "exported (run the same command again to repair it)")
        a[region] = block
    rec = meta.get("record", {})
    history = [f"pipelines {meta.get('summary', {}).get('route', rec.get('route_name', ''))} output, "
               f"exported from {p.name}"]
    inp = rec.get("input") if isinstance(rec.get("input"), dict) else {}
    if isinstance(inp.get("path"), str):
        history.append(f"input: {inp['path']}")
    try:
        with atomic_file(out) as tmp:
            if suf in (".tif", ".tiff"):
                import tifffile

                check_finite(a, out, mask=np.isnan(a))
                # minisblack: a stack of 3 or 4 frames is pages, never colour planes (tifffile's default guess)
                with open(tmp, "wb") as f:  # the exclusive temporary itself, never reopened by name
                    tifffile.imwrite(f, a, photometric="minisblack", bigtiff=nbytes > 2**32 - 2**25,
                                     description=json.dumps({"pipelines": history}))
            else:
                write_array_to(tmp, a, suf, name=out, fits_header=_input_header(meta, p), history=history,
                               mask=np.isnan(a))
    except PsfsimError as e:
        raise PipelineError(str(e)) from None
    return out
