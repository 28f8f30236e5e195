"""Export a complete dataset store to HDF5 (h5py), atomically."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from ..errors import PsfsimError
from .reader import open_validated
from .spec import ARRAYS

__all__ = ["export_hdf5", "STORE_ARRAYS"]

#: Every array of the schema (``docs/dataset.md``): the ones exported (an extra array in a store is not).
STORE_ARRAYS = ARRAYS + ("origin", "split", "psf_grid", "psf_grid_x", "psf_grid_y", "done", "digest")
_STEP_BYTES = 64 * 2**20


def export_hdf5(path: str | os.PathLike, to: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a complete dataset's arrays and attributes to the HDF5 file ``to``; return ``to``.

    The store is checked against its schema first (:func:`~psfsim.dataset.schema.validate_store`), and only
    the schema's arrays are copied, at the validated shapes. The per-sample arrays are copied block by block,
    each block's digest checked against the completion record before it is written (a missing, truncated or
    altered chunk stops the export: run ``psfsim verify``), and NaN (the fill value of unwritten data) is never
    copied. Per-sample arrays keep one sample per chunk (gzip level 1); dimension names go to each dataset's
    ``dimension_names`` attribute (JSON). Nested group attributes (spec, noise, normalisation, ...) are stored as
    JSON strings, flat ones as they are. Free space is checked first. The file appears complete or not at all:
    a failure or an interruption removes the temporary file; the export holds ``to``'s writer lock and removes
    the temporaries of killed exports of ``to``.

    Raises
    ------
    PsfsimError
        When ``path`` is not a complete, valid dataset or fails verification, ``to`` exists (without
        ``overwrite``) or its folder does not, its disk has too little space, or the write fails.
    """
    from ..integrity import WriterLock, clean_stale_temporaries
    from ..store import atomic_file, check_output

    v = open_validated(path)
    to = check_output(to, overwrite=overwrite, what="--to")
    with WriterLock(to, what="export"):
        clean_stale_temporaries(to)
        _check_space(v, to)
        try:
            with atomic_file(to) as tmp:
                _write(v, tmp)
        except PsfsimError:
            raise
        except Exception as e:  # noqa: BLE001 - h5py / the file system: one line, the temporary is gone
            from ..report import safe_text

            raise PsfsimError(f"--to {to}: export failed ({type(e).__name__}: {safe_text(e, 200)}); nothing was "
                              "written") from None
    return to


def _write(v, tmp: Path) -> None:
    import h5py

    with h5py.File(tmp, "w") as f:
        per = {name: _create(f, v.group[name], name, per_sample=True) for name in ARRAYS}
        _copy_blocks(v, per)
        for name in sorted(set(STORE_ARRAYS) - set(ARRAYS)):
            _copy_array(f, v.group[name], name)
        for k, val in v.attrs.items():
            f.attrs[k] = val if isinstance(val, (str, int, float, bool)) else json.dumps(val)


def _check_space(v, to: Path) -> None:
    """Refuse before writing when ``to``'s disk has less free space than the export may need: the stored size of
    the per-sample arrays x 1.5 (gzip level 1 compresses less than the store's zstd), at most their raw size."""
    root = Path(v.path)
    raw = sum(math.prod(v.group[n].shape) * v.group[n].dtype.itemsize for n in STORE_ARRAYS)
    stored = sum(f.stat().st_size for n in STORE_ARRAYS for f in (root / n).rglob("*") if f.is_file())
    need = int(min(raw, 1.5 * stored)) + 2**20
    free = shutil.disk_usage(to.parent).free
    if free < need:
        raise PsfsimError(f"--to {to}: {free / 2**20:.0f} MiB free on its disk, the export needs about "
                          f"{need / 2**20:.0f} MiB; nothing was written")


def _create(f, arr, name: str, *, per_sample: bool):
    shape = tuple(arr.shape)  # validated against the spec: bounded
    ds = f.create_dataset(name, shape=shape, dtype=arr.dtype, chunks=(1,) + shape[1:] if per_sample else None,
                          compression="gzip" if per_sample else None, compression_opts=1 if per_sample else None)
    dims = arr.metadata.dimension_names
    if dims:
        ds.attrs["dimension_names"] = json.dumps(list(dims))
    return ds


def _copy_blocks(v, per: dict) -> None:
    """The per-sample arrays, block by block, each block checked against its recorded digest first."""
    from ..integrity import digest_arrays
    from .schema import block_range
    from .verify import check_no_fill, read_block, recorded_digests, static_bad

    static = static_bad(v.group)
    if static:
        k, why = sorted(static.items())[0]
        raise PsfsimError(f"{v.path}: array {k}: {why}; nothing was exported (run psfsim verify on it)")
    digests = recorded_digests(v.group, v.n_blocks)
    n = v.spec.n
    for b in range(v.n_blocks):
        i0, i1 = block_range(b, v.block, n)
        try:
            data = read_block(v.group, b, v.block, n)
        except Exception as e:  # noqa: BLE001 - a chunk checksum error, a decode error
            raise PsfsimError(f"{v.path}: block {b} (samples {i0}-{i1 - 1}) is unreadable ({type(e).__name__}); "
                              "nothing was exported (run psfsim verify on it)") from None
        if digests[b] is None or digest_arrays(data) != digests[b]:
            raise PsfsimError(f"{v.path}: block {b} (samples {i0}-{i1 - 1}) differs from its recorded digest; "
                              "nothing was exported (run psfsim verify on it)")
        for k, a in zip(ARRAYS, data):
            check_no_fill(a, f"{v.path}: block {b} of {k!r}")
            per[k][i0:i1] = a


def _copy_array(f, arr, name: str) -> None:
    ds = _create(f, arr, name, per_sample=False)
    shape = tuple(arr.shape)
    row_bytes = max(1, arr.dtype.itemsize * math.prod(shape[1:]))
    step = max(1, min(64, _STEP_BYTES // row_bytes))
    for i in range(0, shape[0], step):
        ds[i : i + step] = arr[i : i + step]
