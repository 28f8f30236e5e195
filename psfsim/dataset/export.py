"""Export a complete dataset store to HDF5 (h5py), atomically."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .reader import open_validated
from .spec import ARRAYS

__all__ = ["export_hdf5", "STORE_ARRAYS"]

#: Every array of the schema (``docs/dataset.md``): the ones exported (an extra array in a store is not).
STORE_ARRAYS = ARRAYS + ("origin", "split", "psf_grid", "psf_grid_x", "psf_grid_y", "done")
_STEP_BYTES = 64 * 2**20


def export_hdf5(path: str | os.PathLike, to: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a complete dataset's arrays and attributes to the HDF5 file ``to``; return ``to``.

    The store is checked against its schema first (:func:`~psfsim.dataset.schema.validate_store`), and only
    the schema's arrays are copied, at the validated shapes, at most 64 samples or 64 MiB at a time.
    Per-sample arrays keep one sample per chunk (gzip level 1); dimension names go to each dataset's
    ``dimension_names`` attribute (JSON). Nested group attributes (spec, noise, normalisation, ...) are stored as
    JSON strings, flat ones as they are. The file appears complete or not at all: a failure or an interruption
    removes the temporary file.

    Raises
    ------
    PsfsimError
        When ``path`` is not a complete, valid dataset, or ``to`` exists (without ``overwrite``) or its folder
        does not.
    """
    import h5py

    from ..store import atomic_file, check_output

    v = open_validated(path)
    to = check_output(to, overwrite=overwrite, what="--to")
    with atomic_file(to) as tmp:
        with h5py.File(tmp, "w") as f:
            for name in sorted(STORE_ARRAYS):
                _copy_array(f, v.group[name], name, per_sample=name in ARRAYS)
            for k, val in v.attrs.items():
                f.attrs[k] = val if isinstance(val, (str, int, float, bool)) else json.dumps(val)
    return to


def _copy_array(f, arr, name: str, *, per_sample: bool) -> None:
    shape = tuple(arr.shape)  # validated against the spec: bounded
    ds = f.create_dataset(name, shape=shape, dtype=arr.dtype, chunks=(1,) + shape[1:] if per_sample else None,
                          compression="gzip" if per_sample else None, compression_opts=1 if per_sample else None)
    row_bytes = max(1, arr.dtype.itemsize * math.prod(shape[1:]))
    step = max(1, min(64, _STEP_BYTES // row_bytes))
    for i in range(0, shape[0], step):
        ds[i : i + step] = arr[i : i + step]
    dims = arr.metadata.dimension_names
    if dims:
        ds.attrs["dimension_names"] = json.dumps(list(dims))

