"""Writing a dataset store: creation (atomic), parallel blocks of samples, bit-exact resume, completion.

The store's schema is documented in ``docs/dataset.md``; :mod:`psfsim.dataset.reader` reads it.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .._version import __version__
from ..errors import PsfsimError
from ..integrity import (WriterLock, clean_stale_temporaries, die_with_parent, digest_arrays, parent_alive,
                         terminate_as_exception)
from ..report import safe_text
from .sample import SampleContext, make_sample
from .schema import block_range, block_size, open_group, read_done, validate_store
from .spec import ARRAYS, FORMAT, SPLIT_NAMES, SimulationSpec, sample_origins, split_codes, validate_spec
from .verify import (DIGEST_BYTES, absolute_source, describe_spec_difference, environment, environment_difference,
                     source_difference, source_files, verify_dataset)

__all__ = ["simulate", "NORMALISATION_KIND"]

#: ``normalisation.kind`` of the stores written here (see :class:`psfsim.dataset.reader.Normalisation`).
NORMALISATION_KIND = "source_region_max"

_CTX: SampleContext | None = None


def image_compressors() -> list:
    """The image arrays' compressors: Blosc's LZ4 on byte-shuffled float32 (the four bytes of each value grouped:
    the sign-exponent bytes of noisy images compress where a byte stream of whole floats does not), then a CRC32C
    checksum. On the images of a 256 x 256 microscope store (measured with numcodecs, one thread, CPU time per
    sample of four images): 0.8 ms to encode and 0.6 ms to decode at a ratio of 1.38, where zarr's default
    Zstandard (level 0 = 3) took 2.4 and 1.9 ms for a ratio of 1.35 (level 1: 1.9 and 1.1 ms, 1.35). Blosc is
    one of zarr v3's core codecs (any zarr reader decodes it); a store keeps the codecs it was created with."""
    from zarr.codecs import BloscCodec, Crc32cCodec

    return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=4), Crc32cCodec()]


def _init_worker(spec_json: dict, single_thread: bool = True, child: bool = False) -> None:
    """Per-process set-up. Worker processes run single-threaded (FFT and BLAS): parallelism is across
    samples, and BLAS threads inherited through fork would oversubscribe the cores (measured: 2 workers
    went from 33 to 68 samples/s). A worker (``child``) dies with its parent (``PR_SET_PDEATHSIG``) and ignores
    SIGTERM: the main process handles it (finishes the running blocks, drops the queued ones)."""
    global _CTX
    if child:
        import signal

        die_with_parent()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if single_thread:
        from threadpoolctl import threadpool_limits

        os.environ["PSFSIM_FFT_THREADS"] = "1"
        threadpool_limits(1)
    spec = SimulationSpec.from_json(spec_json)
    if _CTX is None or _CTX.spec != spec:  # forked from a parent that built it already: reuse it
        _CTX = SampleContext(spec)


def _check_run(g, run_id: str, path: str) -> None:
    if g.attrs.get("run_id") != run_id:
        raise PsfsimError(f"{path}: the store was replaced or taken over by another run while this one was "
                          "writing it; this run stops without writing (run simulate again)")


def _run_block(path: str, b: int, block: int, run_id: str, parent: int | None = None) -> tuple[int, int, dict]:
    import zarr

    if parent is not None and not parent_alive(parent):  # the main process is gone: write nothing more
        os._exit(1)
    ctx = _CTX
    g = zarr.open_group(path, mode="r+", use_consolidated=False)
    _check_run(g, run_id, path)
    i0, i1 = block_range(b, block, ctx.spec.n)
    origins = g["origin"][i0:i1]
    h, w = ctx.spec.size
    out = {k: np.empty((i1 - i0, h, w), np.float32) for k in ARRAYS}
    stages: dict = {}
    from ..operators._blas import single_blas_thread

    # one BLAS thread for the samples' small products (the operator's coefficient maps: inner dimension the
    # grid's size): with OpenBLAS's own threads they took 10-20x longer on 2 busy cores (measured), and a worker
    # process is single-threaded anyway (this matters for workers=1, which runs in the calling process)
    with single_blas_thread():
        for j, i in enumerate(range(i0, i1)):
            s = make_sample(ctx, i, origins[j], stages)
            for k in ARRAYS:
                out[k][j] = getattr(s, k)
    t = time.perf_counter()
    digest = digest_arrays(out[k] for k in ARRAYS)
    stages["digest"] = time.perf_counter() - t
    t = time.perf_counter()
    for k in ARRAYS:
        a = g[k]
        writer = _shard_writer(a, block)
        if writer is None:
            a[i0:i1] = out[k]
        else:
            writer(Path(path) / k, b, out[k])
    g = zarr.open_group(path, mode="r+", use_consolidated=False)  # re-read: still the store of this run?
    _check_run(g, run_id, path)
    g["digest"][b] = np.frombuffer(bytes.fromhex(digest), np.uint8)
    g["done"][b] = 1  # last: a block is complete only once all its arrays and its digest are written
    stages["write"] = time.perf_counter() - t
    return b, i1 - i0, stages


_MAX_U64 = 2**64 - 1
_BLOSC_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


def _shard_writer(arr, block: int):
    """A writer of one whole shard (block) of image array ``arr`` that bypasses zarr's per-chunk pipeline, or
    ``None`` where ``arr``'s codecs are not the layout :func:`_populate_store` creates (a store created with other
    codecs, by an older version, is written through zarr).

    The shard is the one zarr writes, byte for byte (the zarr v3 sharding codec, index at the end; asserted by
    ``tests/psfsim/test_dataset.py`` against zarr's own write): the chunks in order, each Blosc-compressed
    little-endian float32 followed by its CRC32C, then the index of ``(offset, nbytes)`` uint64 pairs and its
    CRC32C; an all-NaN chunk (the fill value) is left out as zarr leaves it (offset and length ``2**64 - 1``).
    Written to a temporary beside it and renamed, as zarr's local store does. Measured on a block of 50 samples
    of 256 x 256: 1.1 CPU-ms per sample (four images) against 3.1 through ``array[i0:i1] = ...``.

    Returns ``write(array_dir, b, data)``: ``data`` ``(i1 - i0, h, w)`` float32, the samples of block ``b``."""
    from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec

    codecs = arr.metadata.codecs
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    sc = codecs[0]
    inner, index_codecs = sc.codecs, sc.index_codecs

    def little_bytes(c):
        return isinstance(c, BytesCodec) and c.endian is not None and c.endian.value == "little"

    if (sc.index_location.value != "end" or tuple(sc.chunk_shape) != (1, *arr.shape[1:])
            or tuple(arr.shards) != (block, *arr.shape[1:]) or arr.dtype != np.float32
            or len(inner) != 3 or not little_bytes(inner[0]) or not isinstance(inner[1], BloscCodec)
            or not isinstance(inner[2], Crc32cCodec)
            or len(index_codecs) != 2 or not little_bytes(index_codecs[0])
            or not isinstance(index_codecs[1], Crc32cCodec)):
        return None
    import uuid

    import google_crc32c
    import numcodecs.blosc
    from numcodecs import Blosc

    cfg = inner[1].to_dict()["configuration"]
    blosc = Blosc(cname=cfg["cname"], clevel=cfg["clevel"], shuffle=_BLOSC_SHUFFLE[cfg["shuffle"]],
                  blocksize=cfg["blocksize"], typesize=cfg["typesize"])

    def crc(buf) -> bytes:
        return int(google_crc32c.value(buf)).to_bytes(4, "little")

    def write(array_dir: Path, b: int, data: np.ndarray) -> None:
        parts, index, offset = [], np.full((block, 2), _MAX_U64, "<u8"), 0
        threads, numcodecs.blosc.use_threads = numcodecs.blosc.use_threads, False  # one thread, as zarr's pool
        try:
            for j, x in enumerate(np.asarray(data, "<f4")):
                if np.isnan(x).all():  # the fill value: zarr writes no chunk
                    continue
                c = blosc.encode(np.ascontiguousarray(x))
                parts += [c, crc(c)]
                index[j] = offset, len(c) + 4
                offset += len(c) + 4
        finally:
            numcodecs.blosc.use_threads = threads
        path = array_dir / arr.metadata.encode_chunk_key((b, 0, 0))
        if not parts:  # an all-empty shard: zarr deletes it
            path.unlink(missing_ok=True)
            return
        ib = index.tobytes()
        parts += [ib, crc(ib)]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.partial")
        try:
            with open(tmp, "wb") as f:
                f.write(b"".join(parts))
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)

    return write


def _create_store(path: Path, spec: SimulationSpec, lens, source, command: str, extra: dict | None = None) -> None:
    """Create the group and its arrays in a temporary folder, then swap it in for ``path`` (which, if it
    exists, is empty or a psfsim dataset being overwritten): never a half-created store, and the old one is
    only removed once the new one is ready."""
    from ..store import atomic_dir

    with atomic_dir(path, replace=True) as tmp:
        _populate_store(tmp, spec, lens, source, command, extra or {})


def _populate_store(tmp: Path, spec: SimulationSpec, lens, source, command: str, extra: dict) -> None:
    import zarr

    from ..operators import lowrank_basis

    n = spec.n
    h, w = spec.size
    block = block_size(spec)
    g = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    for k in ARRAYS:
        g.create_array(k, shape=(n, h, w), dtype="float32", chunks=(1, h, w), shards=(block, h, w),
                       compressors=image_compressors(),  # a checksum on every chunk
                       dimension_names=("sample", "y", "x"), fill_value=np.float32(np.nan))
    origins = sample_origins(spec, lens.field.shape_px, np.arange(n))
    a = g.create_array("origin", shape=(n, 2), dtype="int32", chunks=(n, 2), fill_value=-1,
                       dimension_names=("sample", "rc"))
    a[:] = origins.astype(np.int32)
    a = g.create_array("split", shape=(n,), dtype="uint8", chunks=(n,), fill_value=255, dimension_names=("sample",))
    a[:] = split_codes(spec)
    basis = lowrank_basis(lens, tol=spec.tol)
    rr, cc = np.meshgrid(basis.rows, basis.cols, indexing="ij")
    gx, gy = lens.field.pixel_to_field(rr, cc)
    g.create_array("psf_grid", data=basis.node_psfs.astype(np.float32), dimension_names=("gy", "gx", "ky", "kx"))
    g.create_array("psf_grid_x", data=gx.astype(np.float32), dimension_names=("gy", "gx"))
    g.create_array("psf_grid_y", data=gy.astype(np.float32), dimension_names=("gy", "gx"))
    nb = -(-n // block)
    g.create_array("done", shape=(nb,), dtype="uint8", chunks=(1,), fill_value=0, dimension_names=("block",))
    g.create_array("digest", shape=(nb, DIGEST_BYTES), dtype="uint8", chunks=(1, DIGEST_BYTES), fill_value=0,
                   dimension_names=("block", "byte"))
    ny, nx = len(basis.rows), len(basis.cols)
    margin = lens.psf_sampling.size_px // 2
    # the arrays written once at creation get their own digests (verify and export check them too)
    from .verify import STATIC_ARRAYS, static_digest

    g.attrs["static_digests"] = {k: static_digest(g, k) for k in STATIC_ARRAYS}
    g.attrs.update({
        "format": FORMAT,
        "spec": spec.to_json(),
        "lens_name": lens.name,
        "source_description": source.describe(),
        "noise": {"photons": spec.photons, "read_noise": spec.read_noise,
                  "model": "(Poisson(photons * x) + N(0, read_noise^2)) / photons, x = blurred sample"},
        "normalisation": {"kind": NORMALISATION_KIND, "margin_px": margin, "range": [0.0, 1.0],
                          "description": "each sample's source region (window + margin_px on every side) divided "
                                         "by its maximum before blur and noise, so sharp lies in range"},
        "split_names": list(SPLIT_NAMES),
        "block": block,
        "n_blocks": nb,
        "operator": {"method": "low-rank product-convolution", "rank": basis.rank, "grid": [ny, nx],
                     "interp_error": basis.interp_error, "rank_error": basis.rank_error},
        "baselines": {"wiener": "global Wiener, on-axis PSF, gradient regulariser, noise-derived balance",
                      "wiener_sv": "spatially-varying Wiener, patch-wise local PSFs"},
        "psfsim_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "complete": False,
        **extra,
    })


def _existing_store(out: Path, spec: SimulationSpec, overwrite: bool, sources: list, env: dict) -> bool:
    """Whether ``out`` (an existing, non-empty folder) must be created afresh; refuse what is not ours, and a
    store of ours that is of another format, written with other arguments, from other source files, with an
    environment that changes results, or broken (naming what is wrong), unless ``overwrite``. A store that is
    resumed passes :func:`validate_store` first."""
    try:
        fmt = open_group(out).attrs.get("format")
    except PsfsimError:
        fmt = None
    if not (isinstance(fmt, str) and fmt.startswith("psfsim-dataset/")):  # never delete a folder that is not ours
        raise PsfsimError(f"--out {out}: exists and is not a psfsim dataset; nothing was changed (choose another path)")
    if fmt != FORMAT:
        if not overwrite:
            raise PsfsimError(f"{out} is an older psfsim dataset ({safe_text(repr(fmt), 80)}, this version writes "
                              f"{FORMAT}); nothing was changed (use --overwrite to regenerate it)")
        return True
    try:
        v = validate_store(out)
    except PsfsimError as e:
        if overwrite:
            return True
        raise PsfsimError(f"{e}; nothing was changed (use --overwrite to replace it)") from None
    why = (describe_spec_difference(v.spec, spec) or source_difference(v.attrs.get("sources"), sources)
           or environment_difference(v.attrs.get("environment"), env))
    if why:
        if not overwrite:
            raise PsfsimError(f"{out} was written with different arguments ({why}); nothing was changed "
                              "(use --overwrite to replace it)")
        return True
    return False


def _repair(g, v, out: Path) -> int:
    """Before a resume: blocks marked done that fail verification (or whose marker is unreadable) are marked
    not done, so that this run recomputes them; returns how many."""
    res = verify_dataset(v)
    if res.static:  # origins / splits / PSF grid are inputs of every block: never resume on damaged ones
        k, why = sorted(res.static.items())[0]
        raise PsfsimError(f"{out}: array {k}: {why}; the store must be regenerated (the same command with "
                          "--overwrite); nothing was changed")
    bad = sorted(res.bad)
    if bad:
        shown = ", ".join(str(b) for b in bad[:20]) + (" ..." if len(bad) > 20 else "")
        print(f"psfsim: {out}: {len(bad)} written block(s) fail verification ({shown}; first: "
              f"{res.bad[bad[0]]}); recomputing them", file=sys.stderr)
        if g.attrs.get("complete"):
            g.attrs["complete"] = False
        for b in bad:
            g["done"][b] = 0
            for k in ARRAYS:  # a damaged shard is removed, not patched (zarr may read it to update it)
                key = g[k].metadata.encode_chunk_key((b, 0, 0))
                (out / k / key).unlink(missing_ok=True)
    return len(bad)


def simulate(spec: SimulationSpec, out: str | os.PathLike, *, workers: int = 1, overwrite: bool = False,
             progress: bool = True, command: str = "", max_blocks: int | None = None) -> dict:
    """Write (or finish) the dataset of ``spec`` at ``out``. Returns timing figures.

    One writer at a time: the run holds ``out``'s :class:`~psfsim.integrity.WriterLock` throughout (a second
    writer is refused naming the first) and every block checks the store's ``run_id`` before writing. A resume
    first verifies the blocks already written (their per-block digests) and recomputes those that fail; it is
    refused when the source files, the FFT backend or the package versions changed. SIGTERM stops it like
    Ctrl-C (:class:`~psfsim.integrity.Terminated`: the running blocks finish, the queued ones are dropped).

    Parameters
    ----------
    spec : SimulationSpec
        A ``source`` naming files or folders is recorded with absolute paths.
    out : path
        The store folder (``DATA.zarr``); created, resumed (same spec), or replaced (``overwrite``).
    workers : int
        Processes (1: in this process).
    overwrite : bool
        Replace an existing store written with different arguments (or an older format).
    progress : bool
        Progress bar on stderr.
    command : str
        The command line, recorded (as provenance only).
    max_blocks : int, optional
        Stop after this many blocks (tests of resumption).

    Returns
    -------
    dict
        ``samples_written``, ``elapsed_s``, ``rate`` (samples/s), ``complete``, ``stage_seconds``, ``repaired``
        (blocks recomputed because they failed verification).
    """
    import dataclasses

    out = Path(out)
    if workers < 1:
        raise PsfsimError(f"--workers {workers}: expected >= 1")
    spec = dataclasses.replace(spec, source=absolute_source(spec.source))
    lens, source = validate_spec(spec)
    if out.exists() and not out.is_dir():
        raise PsfsimError(f"--out {out}: exists and is not a folder")
    if not out.parent.exists():
        raise PsfsimError(f"--out {out}: folder {out.parent} does not exist")
    # in this process (workers == 1) SIGTERM takes effect between blocks: a block's write is never cut half-way
    with WriterLock(out, what="simulate") as lock, terminate_as_exception(deferred=workers == 1) as stop:
        clean_stale_temporaries(out)
        return _simulate_locked(spec, out, lens, source, lock.run_id, stop, workers=workers, overwrite=overwrite,
                                progress=progress, command=command, max_blocks=max_blocks)


def _simulate_locked(spec, out: Path, lens, source, run_id: str, stop, *, workers, overwrite, progress, command,
                     max_blocks) -> dict:
    import zarr

    sources = source_files(spec.source)
    env = environment(workers)
    fresh = not out.exists() or (out.is_dir() and not any(out.iterdir()))
    if not fresh:
        fresh = _existing_store(out, spec, overwrite, sources, env)
    extra = {"run_id": run_id, "sources": sources, "environment": env}
    if fresh:
        _create_store(out, spec, lens, source, command, extra)
    g = zarr.open_group(str(out), mode="r+", use_consolidated=False)
    if _CTX is None or _CTX.spec != spec:  # built here once; forked workers inherit it
        _init_worker(spec.to_json(), single_thread=False)
    _check_operator(g, out)  # before anything in the store changes
    g.attrs["run_id"] = run_id  # blocks check it: a store replaced under this run is never written into
    v = validate_store(out)  # what the resume relies on: block, done's length, the arrays' shapes
    repaired = 0 if fresh else _repair(g, v, out)
    block = v.block
    done = v.blocks_done()
    todo = [int(b) for b in np.nonzero(done == 0)[0]]
    if max_blocks is not None:
        todo = todo[:max_blocks]

    def block_len(b):
        i0, i1 = block_range(b, block, spec.n)
        return i1 - i0

    n_todo = sum(block_len(b) for b in todo)
    n_missing = sum(block_len(int(b)) for b in np.nonzero(done == 0)[0])
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    stats: dict = {}
    with tqdm(total=spec.n, initial=spec.n - n_missing,
              desc="simulate", unit="sample", disable=not progress, file=sys.stderr) as bar:
        if workers == 1:
            for b in todo:
                stop.check()
                _, k, st = _run_block(str(out), b, block, run_id)
                for key, val in st.items():
                    stats[key] = stats.get(key, 0.0) + val
                bar.update(k)
        elif todo:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed
            from concurrent.futures.process import BrokenProcessPool

            ex = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_init_worker,
                                     initargs=(spec.to_json(), True, True))
            try:
                futs = [ex.submit(_run_block, str(out), b, block, run_id, os.getpid()) for b in todo]
                for f in as_completed(futs):
                    _, k, st = f.result()
                    for key, val in st.items():
                        stats[key] = stats.get(key, 0.0) + val
                    bar.update(k)
            except BrokenProcessPool:
                ex.shutdown(wait=True, cancel_futures=True)
                raise PsfsimError(f"{out}: a worker process died (killed?); the finished blocks are kept: run the "
                                  "same command again to resume") from None
            except BaseException:
                # interrupted or failed: drop the queued blocks (finished ones stay; a re-run resumes)
                ex.shutdown(wait=True, cancel_futures=True)
                raise
            ex.shutdown(wait=True)
    elapsed = time.perf_counter() - t0
    stop.check()
    g = zarr.open_group(str(out), mode="r+", use_consolidated=False)
    complete = bool(np.all(read_done(g, g["done"].shape[0])[0] == 1))  # the store was validated before the run
    if complete and not g.attrs.get("complete"):
        g.attrs["complete"] = True
        g.attrs["completed"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        import warnings

        with warnings.catch_warnings():  # consolidated metadata is not (yet) in the v3 spec: zarr warns
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(str(out))  # one read opens the group and every array's metadata
    return {"samples_written": n_todo, "elapsed_s": elapsed, "rate": n_todo / elapsed if elapsed > 0 else float("inf"),
            "complete": complete, "stage_seconds": stats, "repaired": repaired}


def _check_operator(g, out: Path) -> None:
    """The blur operator this run builds is the one the store records (rank, grid): else a resume would mix two."""
    basis = _CTX.basis
    op = g.attrs.get("operator", {})
    now = {"rank": basis.rank, "grid": [len(basis.rows), len(basis.cols)]}
    for k, val in now.items():
        if op.get(k) != val:
            raise PsfsimError(f"{out}: this run's blur operator has {k} {val!r}, the store's {safe_text(repr(op.get(k)), 60)}; "
                              "nothing was changed (the environment changed its computation; use --overwrite)")
