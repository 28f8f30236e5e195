"""Export a complete dataset store to HDF5 (h5py), atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .reader import open_dataset
from .spec import ARRAYS

__all__ = ["export_hdf5"]


def export_hdf5(path: str | os.PathLike, to: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a complete dataset's arrays and attributes to the HDF5 file ``to``; return ``to``.

    Per-sample arrays keep one sample per chunk (gzip level 1); dimension names go to each dataset's
    ``dimension_names`` attribute (JSON). Nested group attributes (spec, noise, normalisation, ...) are stored as
    JSON strings, flat ones as they are. The file appears complete or not at all.

    Raises
    ------
    PsfsimError
        When ``path`` is not a complete dataset, or ``to`` exists (without ``overwrite``) or its folder does not.
    """
    import h5py

    from ..store import atomic_file, check_output

    g = open_dataset(path)
    to = check_output(to, overwrite=overwrite, what="--to")
    with atomic_file(to) as tmp:
        with h5py.File(tmp, "w") as f:
            for name in sorted(g.array_keys()):
                arr = g[name]
                per_sample = name in ARRAYS
                ds = f.create_dataset(name, shape=arr.shape, dtype=arr.dtype,
                                      chunks=(1,) + tuple(arr.shape[1:]) if per_sample else None,
                                      compression="gzip" if per_sample else None, compression_opts=1 if per_sample else None)
                step = 64
                for i in range(0, arr.shape[0], step):
                    ds[i : i + step] = arr[i : i + step]
                dims = arr.metadata.dimension_names
                if dims:
                    ds.attrs["dimension_names"] = json.dumps(list(dims))
            for k, v in g.attrs.items():
                f.attrs[k] = v if isinstance(v, (str, int, float, bool)) else json.dumps(v)
    return to
