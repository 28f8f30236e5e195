"""A store checked against its schema (``docs/dataset.md``) before anything in it is used.

:func:`validate_store` is the one gate: :func:`~psfsim.dataset.open_dataset`, :class:`DatasetReader`,
``psfsim info``, :func:`export_hdf5` and a resumed :func:`simulate` all go through it. It checks the format,
every required attribute's presence and type (the spec parses and passes its own checks, the lens is valid),
every required array's presence, dtype, shape (against the spec), chunks, shards and dimension names, and the
values that index other things (split codes, window origins), with every size bounded
(:data:`~psfsim.dataset.spec.MAX_SAMPLES`, :data:`~psfsim.dataset.spec.MAX_SAMPLE_PIXELS`) before anything is
allocated. Each refusal is a :class:`~psfsim.PsfsimError` naming the store, the attribute or array, the value
found (escaped: :func:`psfsim.report.safe_text`) and what was expected. Unknown extra attributes are ignored.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ..errors import PsfsimError
from ..report import safe_text
from .spec import ARRAYS, FORMAT, SPLIT_NAMES, SimulationSpec, check_spec_values

__all__ = ["ValidatedStore", "validate_store", "open_group", "block_size", "MAX_METADATA_BYTES", "MAX_PSF_GRID_BYTES",
           "MAX_FREE_CHUNKS", "read_done"]

#: Largest ``zarr.json`` read (the root one holds every array's metadata once consolidated).
MAX_METADATA_BYTES = 16 * 2**20
#: Largest ``psf_grid`` (ny, nx, k, k) float32 accepted.
MAX_PSF_GRID_BYTES = 2**30
#: Most chunks of an array whose chunking the schema leaves to zarr (``psf_grid``, ``psf_grid_x``, ``psf_grid_y``).
MAX_FREE_CHUNKS = 2**16
_SHARD_BYTES = 16 * 2**20


def block_size(spec: SimulationSpec) -> int:
    """Samples per block (= per shard) of a store of ``spec``: at least ~8 blocks (parallel work units, resume
    granularity), at most 64 samples or 16 MiB a shard."""
    h, w = spec.size
    return int(max(1, min(spec.n // 8, _SHARD_BYTES // (4 * h * w), 64)))


@dataclass(frozen=True)
class ValidatedStore:
    """A store that passed :func:`validate_store`: its group and everything read from it, typed.

    Attributes
    ----------
    path : Path
    group : zarr.Group
        Opened read-only.
    attrs : dict
        The group attributes (the required ones checked; unknown extra ones kept as they are).
    spec : SimulationSpec
    lens : Lens
        Built from ``spec.lens`` (without the PSF-box check or Nyquist warning, done when it was written).
    block, n_blocks : int
    complete : bool
        The ``complete`` attribute *and* every block marked written in ``done`` (completeness is derived from
        the bookkeeping, never taken from the flag alone).
    inconsistent : str or None
        Why the bookkeeping disagrees with itself (``complete`` true with blocks not written, a ``done`` marker
        that is unreadable or neither 0 nor 1), or ``None``. Readers refuse such a store; a resume repairs it.
    split_codes : ndarray, shape (N,), uint8
    origins : ndarray, shape (N, 2), int64
    """

    path: Path
    group: object
    attrs: dict
    spec: SimulationSpec
    lens: object
    block: int
    n_blocks: int
    complete: bool
    split_codes: np.ndarray
    origins: np.ndarray
    inconsistent: str | None = None

    def blocks_done(self) -> np.ndarray:
        """The ``done`` array: ``(n_blocks,)`` uint8, 1 for every block written (re-read each call); a marker that
        cannot be read, or holds anything but 0 or 1, counts as not written (0)."""
        return read_done(self.group, self.n_blocks)[0]


def block_range(b: int, block: int, n: int) -> tuple[int, int]:
    """Samples ``[i0, i1)`` of block ``b`` of ``block`` samples in a store of ``n`` (the last one may be short)."""
    return b * block, min((b + 1) * block, n)


def read_done(group, n_blocks: int) -> tuple[np.ndarray, list[int]]:
    """``(done, damaged)``: the ``done`` markers (unreadable or invalid ones as 0) and the blocks whose marker was
    unreadable or not 0 / 1 (:func:`psfsim.integrity.read_flags`)."""
    from ..integrity import read_flags

    done, damaged = read_flags(group["done"], (n_blocks,))
    return done, [int(b) for b in np.flatnonzero(damaged)]


def _show(value) -> str:
    return safe_text(repr(value), 120)


def _bad(path, what: str, found, expected: str) -> PsfsimError:
    return PsfsimError(f"{path}: {what} is {_show(found)}; expected {expected}")


# -- attribute types ---------------------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _attr(path, attrs: dict, key: str, check, expected: str):
    if key not in attrs:
        raise PsfsimError(f"{path}: attribute {key!r} is missing (every psfsim dataset has it)")
    v = attrs[key]
    if not check(v):
        raise _bad(path, f"attribute {key!r}", v, expected)
    return v


def _field(path, d: dict, where: str, key: str, check, expected: str):
    if key not in d:
        raise PsfsimError(f"{path}: attribute {where} has no {key!r}; expected {expected}")
    if not check(d[key]):
        raise _bad(path, f"attribute {where}.{key}", d[key], expected)
    return d[key]


_SPEC_FIELDS = {
    "lens": (lambda v: isinstance(v, dict), "a table (the lens description)"),
    "source": (lambda v: isinstance(v, str) and v != "", "a source spec string"),
    "n": (_is_int, "an integer"),
    "size": (lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(x) for x in v), "[H, W] integers"),
    "seed": (_is_int, "an integer"),
    "photons": (lambda v: v is None or _is_num(v), "a number or null"),
    "read_noise": (_is_num, "a number"),
    "split": (lambda v: isinstance(v, list) and len(v) == 3 and all(_is_num(x) for x in v), "3 fractions"),
    "origins": (lambda v: isinstance(v, str), "'random' or 'tile'"),
    "tol": (_is_num, "a number"),
}


def _spec(path, attrs: dict):
    d = _attr(path, attrs, "spec", lambda v: isinstance(v, dict), "a table (the SimulationSpec as JSON)")
    unknown = sorted(set(d) - {f.name for f in fields(SimulationSpec)})
    if unknown:
        raise _bad(path, "attribute 'spec'", unknown[0], f"only the keys {', '.join(_SPEC_FIELDS)}")
    for key, (check, expected) in _SPEC_FIELDS.items():
        _field(path, d, "'spec'", key, check, expected)
    spec = SimulationSpec.from_json(d)
    lens = _lens(path, spec.lens)
    try:
        check_spec_values(spec, lens)
    except PsfsimError as e:
        raise PsfsimError(f"{path}: attribute 'spec' fails its checks: {safe_text(e, 300)}") from None
    return spec, lens


def _lens(path, d: dict):
    from ..errors import NyquistWarning
    from ..lens import lens_from_dict

    try:
        with warnings.catch_warnings():  # the writer already warned about an undersampled detector
            warnings.simplefilter("ignore", NyquistWarning)
            return lens_from_dict(d, check_psf_box=False, where="spec.lens")
    except PsfsimError as e:
        raise PsfsimError(f"{path}: attribute 'spec': {safe_text(e, 300)}") from None
    except Exception as e:  # noqa: BLE001 - a hostile description must end as a user error, never a traceback
        raise PsfsimError(f"{path}: attribute 'spec'.lens is not a valid lens description ({type(e).__name__})") from None


def _check_attrs(path, attrs: dict, spec: SimulationSpec, lens) -> tuple[int, int]:
    """The attributes besides ``spec``; returns ``(block, n_blocks)``."""
    name = _attr(path, attrs, "lens_name", lambda v: isinstance(v, str), "the lens's name")
    if name != lens.name:
        raise _bad(path, "attribute 'lens_name'", name, f"the name of spec.lens, {safe_text(repr(lens.name))}")
    _attr(path, attrs, "source_description", lambda v: isinstance(v, dict), "a table")
    noise = _attr(path, attrs, "noise", lambda v: isinstance(v, dict), "a table")
    _field(path, noise, "'noise'", "photons", lambda v: v == spec.photons, f"spec.photons ({spec.photons!r})")
    _field(path, noise, "'noise'", "read_noise", lambda v: v == spec.read_noise, f"spec.read_noise ({spec.read_noise!r})")
    _check_normalisation(path, attrs, lens)
    _attr(path, attrs, "split_names", lambda v: v == list(SPLIT_NAMES), repr(list(SPLIT_NAMES)))
    block = _attr(path, attrs, "block", lambda v: v == block_size(spec) and _is_int(v),
                  f"{block_size(spec)} (the block size of n={spec.n} samples of {spec.size[0]}x{spec.size[1]})")
    n_blocks = _attr(path, attrs, "n_blocks", lambda v: _is_int(v) and v == -(-spec.n // block),
                     f"ceil(n / block) = {-(-spec.n // block)}")
    op = _attr(path, attrs, "operator", lambda v: isinstance(v, dict), "a table")
    _field(path, op, "'operator'", "rank", lambda v: _is_int(v) and v >= 1, "an integer >= 1")
    _field(path, op, "'operator'", "grid", lambda v: isinstance(v, list) and len(v) == 2
           and all(_is_int(x) and x >= 1 for x in v), "[ny, nx] integers >= 1")
    for key in ("psfsim_version", "created", "command"):
        _attr(path, attrs, key, lambda v: isinstance(v, str), "a string")
    _attr(path, attrs, "complete", lambda v: isinstance(v, bool), "true or false")
    return block, n_blocks


def _check_normalisation(path, attrs: dict, lens) -> None:
    from .writer import NORMALISATION_KIND

    m = lens.psf_sampling.size_px // 2
    nm = _attr(path, attrs, "normalisation", lambda v: isinstance(v, dict), "a table")
    _field(path, nm, "'normalisation'", "kind", lambda v: v == NORMALISATION_KIND, repr(NORMALISATION_KIND))
    _field(path, nm, "'normalisation'", "margin_px", lambda v: _is_int(v) and v == m, f"{m} (the lens's PSF half-width)")
    _field(path, nm, "'normalisation'", "range", lambda v: isinstance(v, list) and len(v) == 2
           and all(_is_num(x) for x in v) and v[0] < v[1], "[vmin, vmax] numbers, vmin < vmax")


# -- arrays -----------------------------------------------------------------------------------------------
def _expected_arrays(spec: SimulationSpec, lens, attrs: dict, block: int, n_blocks: int) -> dict:
    """name -> (shape, dtype, chunks or None (any), shards or None, dimension names)."""
    n, (h, w) = spec.n, spec.size
    ny, nx = attrs["operator"]["grid"]
    k = lens.psf_sampling.size_px
    exp = {a: ((n, h, w), "float32", (1, h, w), (block, h, w), ("sample", "y", "x")) for a in ARRAYS}
    exp["origin"] = ((n, 2), "int32", (n, 2), None, ("sample", "rc"))
    exp["split"] = ((n,), "uint8", (n,), None, ("sample",))
    exp["psf_grid"] = ((ny, nx, k, k), "float32", None, None, ("gy", "gx", "ky", "kx"))
    exp["psf_grid_x"] = ((ny, nx), "float32", None, None, ("gy", "gx"))
    exp["psf_grid_y"] = ((ny, nx), "float32", None, None, ("gy", "gx"))
    exp["done"] = ((n_blocks,), "uint8", (1,), None, ("block",))
    exp["digest"] = ((n_blocks, 32), "uint8", (1, 32), None, ("block", "byte"))
    return exp


def _check_array(path, group, name: str, expected: tuple) -> None:
    shape, dtype, chunks, shards, dims = expected
    meta = Path(path) / name / "zarr.json"
    if meta.is_file() and meta.stat().st_size > MAX_METADATA_BYTES:
        raise _bad(path, f"array {name!r} metadata size", meta.stat().st_size, f"at most {MAX_METADATA_BYTES} bytes")
    try:
        a = group[name]
        found = (tuple(a.shape), str(a.dtype), tuple(a.chunks), a.shards and tuple(a.shards),
                 tuple(a.metadata.dimension_names or ()))
    except KeyError:
        raise PsfsimError(f"{path}: array {name!r} is missing (every psfsim dataset has it)") from None
    except Exception as e:  # noqa: BLE001 - unreadable metadata of a hostile store: a user error
        raise PsfsimError(f"{path}: array {name!r} has unreadable metadata ({type(e).__name__})") from None
    what = ("shape", "dtype", "chunks", "shards", "dimension names")
    for label, f, e in zip(what, found, (shape, dtype, chunks, shards, dims)):
        if label == "chunks" and e is None:
            _check_free_chunks(path, name, found[0], f)
            continue
        if f != e:
            raise _bad(path, f"array {name!r} {label}", f, f"{e!r} (from the spec and the schema)")


def _check_free_chunks(path, name: str, shape: tuple, chunks: tuple) -> None:
    """Chunks left to zarr's default (the PSF grid): bounded in number, so a copy loop over them ends soon."""
    count = math.prod(-(-s // max(c, 1)) for s, c in zip(shape, chunks))
    if len(chunks) != len(shape) or min(chunks, default=1) < 1 or count > MAX_FREE_CHUNKS:
        raise _bad(path, f"array {name!r} chunks", chunks, f"at most {MAX_FREE_CHUNKS} chunks over its shape {shape}")


def _read(path, group, name: str) -> np.ndarray:
    try:
        return np.asarray(group[name][:])
    except Exception as e:  # noqa: BLE001 - a damaged chunk (decode or checksum error): one line
        raise PsfsimError(f"{path}: array {name!r} is unreadable ({type(e).__name__}: {safe_text(e, 120)}); "
                          "regenerate the store (simulate --overwrite)") from None


def _read_values(path, group, spec: SimulationSpec, lens) -> tuple[np.ndarray, np.ndarray]:
    """``split`` codes and window ``origin``s, checked to index what they index."""
    codes = _read(path, group, "split")
    bad = np.flatnonzero(codes >= len(SPLIT_NAMES))
    if bad.size:
        raise _bad(path, f"array 'split' at sample {int(bad[0])}", int(codes[bad[0]]),
                   f"a code < {len(SPLIT_NAMES)} (an index into split_names)")
    origins = _read(path, group, "origin").astype(np.int64)
    H, W = lens.field.shape_px
    h, w = spec.size
    hi = np.array([H - h, W - w])
    bad = np.flatnonzero(np.any((origins < 0) | (origins > hi), axis=1))
    if bad.size:
        raise _bad(path, f"array 'origin' at sample {int(bad[0])}", tuple(int(v) for v in origins[bad[0]]),
                   f"(row, col) with 0 <= row <= {hi[0]} and 0 <= col <= {hi[1]} (the window inside the lens field)")
    return codes, origins


# -- the gate ---------------------------------------------------------------------------------------------
def open_group(path: str | os.PathLike, *, mode: str = "r"):
    """Open ``path`` as a Zarr group, refusing a missing folder, an oversized or unreadable ``zarr.json``."""
    import zarr

    p = Path(path)
    if not p.is_dir():
        raise PsfsimError(f"{p}: no dataset there")
    meta = p / "zarr.json"
    if not meta.is_file():
        raise PsfsimError(f"{p}: not a psfsim dataset (no zarr.json: not a Zarr v3 group)")
    if meta.stat().st_size > MAX_METADATA_BYTES:
        raise _bad(p, "zarr.json size", meta.stat().st_size, f"at most {MAX_METADATA_BYTES} bytes")
    try:
        return zarr.open_group(str(p), mode=mode)
    except Exception as e:  # noqa: BLE001 - zarr raises many types on malformed metadata
        raise PsfsimError(f"{p}: not a Zarr group ({type(e).__name__}: {safe_text(e, 200)})") from None


def check_format(path, attrs: dict) -> None:
    """Refuse a group that is not a psfsim dataset, or one of another store format."""
    fmt = attrs.get("format")
    if isinstance(fmt, str) and fmt.startswith("psfsim-dataset/") and fmt != FORMAT:
        raise PsfsimError(f"{path}: dataset format {safe_text(repr(fmt), 80)}, this psfsim reads {FORMAT!r}; "
                          "regenerate it by re-running simulate with the same arguments and --overwrite")
    if fmt != FORMAT:
        raise PsfsimError(f"{path}: not a psfsim dataset (attribute 'format' is {_show(fmt)}; expected {FORMAT!r})")


def validate_store(path: str | os.PathLike, group=None) -> ValidatedStore:
    """Check the store at ``path`` (or its already opened ``group``) against the schema; see the module.

    Completeness is not required here (:func:`~psfsim.dataset.open_dataset` refuses incomplete stores).

    Raises
    ------
    PsfsimError
        Naming the store, the attribute or array, the value found and what was expected.
    """
    p = Path(path)
    g = open_group(p) if group is None else group
    attrs = g.attrs.asdict()
    check_format(p, attrs)
    spec, lens = _spec(p, attrs)
    block, n_blocks = _check_attrs(p, attrs, spec, lens)
    grid = attrs["operator"]["grid"]
    k = lens.psf_sampling.size_px
    if grid[0] * grid[1] * k * k * 4 > MAX_PSF_GRID_BYTES:
        raise _bad(p, "attribute 'operator'.grid", grid, f"a PSF grid of at most {MAX_PSF_GRID_BYTES} bytes")
    for name, exp in _expected_arrays(spec, lens, attrs, block, n_blocks).items():
        _check_array(p, g, name, exp)
    codes, origins = _read_values(p, g, spec, lens)
    done, damaged = read_done(g, n_blocks)
    why = None
    if damaged:
        why = (f"the 'done' marker of block(s) {', '.join(map(str, damaged[:10]))} is unreadable or not 0 / 1 "
               "(counted as not written)")
    elif attrs["complete"] and not np.all(done == 1):
        missing = np.flatnonzero(done == 0)
        why = (f"attribute 'complete' is true but {missing.size} of {n_blocks} blocks are not marked written "
               f"(first: {int(missing[0])})")
    complete = bool(attrs["complete"] and np.all(done == 1))
    return ValidatedStore(path=p, group=g, attrs=attrs, spec=spec, lens=lens, block=block, n_blocks=n_blocks,
                          complete=complete, split_codes=codes, origins=origins, inconsistent=why)
