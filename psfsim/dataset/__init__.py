"""Training datasets in Zarr v3: sharp / blurred / Wiener baselines, resumable and self-describing.

One module per job:

* :mod:`.spec` — :class:`SimulationSpec`, its validation, window origins and splits (pure);
* :mod:`.sample` — :func:`make_sample`: one sample in memory (pure numerics);
* :mod:`.writer` — :func:`simulate`: store creation, parallel blocks, bit-exact resume;
* :mod:`.schema` — :func:`validate_store`: the one check of a store against its schema, before any use;
* :mod:`.reader` — :func:`open_dataset` (the Zarr group) and :class:`DatasetReader` (typed, picklable);
* :mod:`.verify` — :func:`verify_dataset`: block digests, pinned source files and environment;
* :mod:`.export` — :func:`export_hdf5`.

The store's schema (every array and attribute) is documented in ``docs/dataset.md``.
"""

from .export import export_hdf5
from .reader import DatasetBatch, DatasetReader, DatasetSample, Normalisation, open_dataset
from .sample import SampleContext, SimulatedSample, make_sample
from .schema import ValidatedStore, validate_store
from .spec import (ARRAYS, FORMAT, MAX_SAMPLE_PIXELS, MAX_SAMPLES, SPLIT_NAMES, SimulationSpec, check_spec_values,
                   sample_origins, simulate_command, split_codes, split_indices, validate_spec)
from .verify import VerifyResult, verify_dataset
from .writer import simulate
from ..report import baseline_scores, dataset_summary  # the text summary lives with the other reports


__all__ = ["SimulationSpec", "simulate", "open_dataset", "dataset_summary", "export_hdf5", "sample_origins",
           "make_sample", "DatasetReader", "DatasetSample", "DatasetBatch", "Normalisation", "SampleContext",
           "SimulatedSample", "validate_spec", "split_codes", "split_indices", "ARRAYS", "FORMAT", "SPLIT_NAMES",
           "validate_store", "ValidatedStore", "check_spec_values", "simulate_command", "MAX_SAMPLES", "MAX_SAMPLE_PIXELS",
           "verify_dataset", "VerifyResult"]
