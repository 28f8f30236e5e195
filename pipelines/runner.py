"""Run a route over a frame tile by tile with Dask: one task per output chunk, resumable, on one machine or a
cluster.

Each task reads its chunk's region plus halo straight from the frame (:class:`pipelines.frames.Frame`, opened
lazily in the process that runs the task), runs the route (:mod:`pipelines.routes`) on it at the tile's window
of the LENS field, writes exactly that chunk of the output store (chunk-aligned, so concurrent writers never
share a Zarr chunk) and marks it done (:class:`pipelines.output.OutputStore`). This is simpler and safer than
``dask.array.map_overlap``: block coordinates are the frame's own, a chunk smaller than the halo is fine, and a
finished chunk is never computed again.

Schedulers
----------
* default: Dask's threaded scheduler in this process (nothing to start);
* ``workers=N``: a :class:`distributed.LocalCluster` of ``N`` single-threaded worker processes on 127.0.0.1;
* ``scheduler="tcp://HOST:PORT"``: an existing ``dask.distributed`` cluster (refused with one clear line when
  it does not answer within ``connect_timeout`` seconds).

With ``distributed`` the route reaches each worker once, through a :class:`RoutePlugin` (a ``WorkerPlugin``
keyed by a digest of the route's identity, which holds the checkpoint's SHA-256 for model routes): the worker
loads the model when the plugin is set up, and every task on that worker looks the route up by that key, so
the model is never shipped with a task. Tasks are retried (``retries``) and a task whose worker died is
recomputed by the scheduler, so a killed worker costs only its unfinished chunks.

Frame-wide statistics (``route.prepare``: normalisation) are computed once per frame before any tile runs, and
recorded with the run. A stack ``(N, H, W)`` is processed frame by frame. Non-finite pixels (NaN, inf) are
counted and located first: ``nan_policy="raise"`` refuses the frame naming the count and the first pixels,
``"fill"`` fills them for the computation (psfsim's rule: nearest finite neighbour, within the tile's read
region) and writes NaN at exactly those pixels of the output (masked, never spread); either way the count and
positions go into the run record and the summary.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import PipelineError

__all__ = ["run", "RunResult", "RoutePlugin", "route_key", "input_identity", "peak_rss_mib", "NAN_POLICIES"]

NAN_POLICIES = ("raise", "fill")

#: routes installed in this process, by :func:`route_key` (the threaded scheduler's, or a worker's via its plugin)
_ROUTES: dict[str, object] = {}


# -- small helpers -----------------------------------------------------------------------------------------------
def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (``getrusage``: ``ru_maxrss`` is KiB on Linux)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform.startswith("linux") else r / 2**20


def _jsonable(v):
    return json.loads(json.dumps(v, sort_keys=True, default=str))


def route_key(route) -> str:
    """The key a route is installed under in a process: SHA-256 (16 hex digits) of its identity (which holds
    the checkpoint's SHA-256 or the lens fingerprint and the settings that change the result)."""
    ident = json.dumps(route.identity(), sort_keys=True, default=str)
    return hashlib.sha256(f"{type(route).__module__}.{type(route).__qualname__}:{ident}".encode()).hexdigest()[:16]


def input_identity(frame) -> dict:
    """What identifies the input of a run: :meth:`pipelines.frames.Frame.identity` when the frame has one, else
    (a duck-typed frame source) what identifies the input of a run: its absolute path, size and modification time (of the file, or of
    every file of a Zarr folder), shape, dtype and a digest of its header (FITS cards)."""
    if callable(getattr(frame, "identity", None)):
        return _jsonable(frame.identity())
    info = frame.info
    p = Path(info.path)
    size, mtime = 0, 0.0
    try:
        if p.is_dir():
            for f in p.rglob("*"):
                if f.is_file():
                    st = f.stat()
                    size += st.st_size
                    mtime = max(mtime, st.st_mtime)
        else:
            st = p.stat()
            size, mtime = st.st_size, st.st_mtime
    except OSError as e:
        raise PipelineError(f"--input {p}: cannot read it ({e.strerror or e})") from None
    header = json.dumps(info.header, sort_keys=True, default=str) if info.header is not None else ""
    return {"path": str(p.resolve()), "kind": info.kind, "size": size, "mtime": mtime,
            "shape": list(info.shape), "dtype": str(info.dtype),
            "header_sha256": hashlib.sha256(header.encode()).hexdigest() if header else None}


def _versions() -> dict:
    import dask
    import zarr

    from psfsim import __version__

    v = {"svblur": __version__, "numpy": np.__version__, "dask": dask.__version__, "zarr": zarr.__version__}
    if "torch" in sys.modules:
        v["torch"] = sys.modules["torch"].__version__
    return v


# -- the worker side ---------------------------------------------------------------------------------------------
try:
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPluginBase
except ImportError:  # pragma: no cover - distributed is a dependency
    _WorkerPluginBase = object


class RoutePlugin(_WorkerPluginBase):
    """Installs one route on each worker of a ``dask.distributed`` cluster, once (keyed by :func:`route_key`).

    ``setup`` runs in the worker process when it joins (also for workers started later, e.g. a replacement for
    one that died): it limits the numeric libraries to the worker's threads, calls the route's ``load()`` when
    it has one (a model route loads its checkpoint then, into its per-process cache) and registers the route
    under its key for the tasks. The route object pickles light (a checkpoint path and hash, or a lens
    description), never a loaded module.
    """

    def __init__(self, route, key: str, threads: int = 1):
        self.route = route
        self.key = key
        self.threads = threads
        self.name = f"pipelines-route-{key}"

    def setup(self, worker=None):
        _limit_threads(self.threads)
        _warm(self.route)
        _ROUTES[self.key] = self.route

    def teardown(self, worker=None):
        _ROUTES.pop(self.key, None)


def _warm(route) -> None:
    """Load what a route needs once per process: a model route's checkpoint, on the process's device, into
    :mod:`pipelines.routes.model`'s per-process cache (keyed by the checkpoint's SHA-256)."""
    load = getattr(route, "load", None)
    if callable(load):
        load()
    elif getattr(route, "sha256", None) and getattr(route, "path", None):
        from .routes.model import loaded_model, resolve_device

        loaded_model(route.path, route.sha256, resolve_device(route.device))


def _limit_threads(n: int) -> None:
    """One worker process, ``n`` threads: FFT (psfsim), BLAS and torch held to ``n`` (no oversubscription)."""
    os.environ["PSFSIM_FFT_THREADS"] = str(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # pragma: no cover
        pass
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def _compute_chunks(key: str, frame, store, tiles: list, index: int, origin: tuple[int, int], stats: dict,
                    stack: bool) -> tuple:
    """One task: read each tile's ``read`` region of frame ``index``, run the route on them together (one
    micro-batch), write each tile's output chunk (chunk-aligned) and mark it done.

    Non-finite input pixels are the route's to fill and re-mask (:func:`pipelines.routes.base.fill_block`).
    Returns the chunk indices written, this process's peak RSS (MiB) and its PID, for the summary.
    """
    route = _ROUTES.get(key)
    if route is None:  # pragma: no cover - a plugin not set up: a bug, never silently another route
        raise RuntimeError(f"pipelines: route {key} is not installed in process {os.getpid()}")
    blocks = [frame.read(index, slice(t.read[0], t.read[1]), slice(t.read[2], t.read[3])) for t in tiles]
    outs = route(blocks, [(origin[0] + t.read[0], origin[1] + t.read[2]) for t in tiles], stats)
    done = []
    for t, y in zip(tiles, outs):
        idx = (index, *t.index) if stack else tuple(t.index)
        store.write_chunk(idx, np.ascontiguousarray(y[t.inner], dtype=np.float32))
        done.append(idx)
    return done, peak_rss_mib(), os.getpid()


# -- the result ----------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What a :func:`run` did. ``summary()`` is the text the command line prints."""

    out: Path
    route: str
    input: str
    frame_shape: tuple
    n_frames: int
    chunks: tuple
    tiles_total: int
    tiles_computed: int
    elapsed_s: float
    mpix_per_s: float
    peak_rss_mib: float
    worker_peak_rss_mib: float | None
    scheduler: str
    startup_s: float = 0.0
    nan: list = field(default_factory=list)
    complete: bool = True

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["out"] = str(self.out)
        return _jsonable(d)

    def summary(self) -> str:
        H, W = self.frame_shape
        stack = f"{self.n_frames} frames of " if self.n_frames > 1 else ""
        resumed = self.tiles_total - self.tiles_computed
        mem = f"peak RSS {self.peak_rss_mib:.0f} MiB"
        if self.worker_peak_rss_mib is not None:
            mem += f" (this process), {self.worker_peak_rss_mib:.0f} MiB (largest worker)"
        lines = [f"{self.route}: {self.input} ({stack}{H} x {W} px) -> {self.out}",
                 f"tiles: {self.tiles_total} of {self.chunks[0]} x {self.chunks[1]} px, {self.tiles_computed} computed"
                 + (f", {resumed} already done (resumed)" if resumed else ""),
                 f"time {self.elapsed_s:.2f} s, {self.mpix_per_s:.2f} Mpix/s ({self.scheduler}"
                 + (f", {self.startup_s:.1f} s to start it" if self.startup_s >= 0.05 else "") + f"), {mem}"]
        for n in self.nan:
            if n["count"]:
                where = ", ".join(f"({r}, {c})" for r, c in n["where"])
                more = " ..." if n["count"] > len(n["where"]) else ""
                lines.append(f"frame {n['frame']}: {n['count']} non-finite pixel(s) at {where}{more}: filled for the "
                             "computation, NaN in the output at the same pixels")
        return "\n".join(lines)


# -- the driver ----------------------------------------------------------------------------------------------
def _check_args(tile, origin, workers, scheduler, nan_policy, retries) -> tuple[int, tuple[int, int] | None]:
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 16:
        raise PipelineError(f"--tile {tile!r}: expected an integer >= 16 (pixels)")
    try:  # None (not given): the route checks that the frame is the full lens field
        if origin is not None and (len(origin) != 2 or any(int(v) != v or v < 0 for v in origin)):
            raise ValueError
        origin = None if origin is None else (int(origin[0]), int(origin[1]))
    except (TypeError, ValueError):
        raise PipelineError(f"--origin {origin!r}: expected two integers >= 0 (ROW,COL of the frame in the lens "
                            "field)") from None
    if workers is not None and scheduler is not None:
        raise PipelineError("--workers and --scheduler: give one of them (workers start a local cluster, "
                            "a scheduler address uses an existing one)")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer))
                                or workers < 1):
        raise PipelineError(f"--workers {workers!r}: expected an integer >= 1")
    if nan_policy not in NAN_POLICIES:
        raise PipelineError(f"nan_policy {nan_policy!r}: expected one of {', '.join(NAN_POLICIES)}")
    if retries < 0:
        raise PipelineError(f"retries {retries!r}: expected >= 0")
    return int(tile), origin


def _nan_reports(frame, nan_policy: str) -> list[dict]:
    reps = []
    for n in range(frame.n_frames):
        count, where = frame.nan_report(n)
        count = int(count)
        where = [(int(r), int(c)) for r, c in where]
        if count and nan_policy == "raise":
            shown = ", ".join(f"({r}, {c})" for r, c in where) + (" ..." if count > len(where) else "")
            at = f"frame {n}: " if frame.n_frames > 1 else ""
            raise PipelineError(f"--input {frame.info.path}: {at}{count} NaN or infinite pixel(s), at (row, col) "
                                f"{shown}; refused rather than spread (--nan fill fills them for the computation "
                                "and leaves them NaN in the output)")
        if count:
            import warnings

            shown = ", ".join(f"({r}, {c})" for r, c in where) + (" ..." if count > len(where) else "")
            warnings.warn(f"{frame.info.path}: frame {n}: {count} NaN or infinite pixel(s) at (row, col) {shown}: "
                          "filled for the computation, NaN at the same pixels of the output", stacklevel=3)
        reps.append({"frame": n, "count": count, "where": where})
    return reps


@contextlib.contextmanager
def _client(scheduler, workers, connect_timeout: float, threads: int):
    """A ``distributed.Client``: a LocalCluster of ``workers`` processes, or one connected to ``scheduler``;
    ``None`` for the threaded scheduler."""
    if scheduler is None and workers is None:
        yield None
        return
    import logging

    from distributed import Client, LocalCluster

    if workers is not None:
        with LocalCluster(n_workers=int(workers), processes=True, threads_per_worker=threads, host="127.0.0.1",
                          dashboard_address=None, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            yield client
        return
    addr = str(scheduler)
    if not re.fullmatch(r"(tcp|tls|inproc|ucx)://[^\s/]+(:\d+)?", addr):
        raise PipelineError(f"--scheduler {addr!r}: expected an address like tcp://HOST:PORT (what "
                            "`dask scheduler` prints)")
    try:
        client = Client(addr, timeout=connect_timeout)
    except (OSError, TimeoutError) as e:
        raise PipelineError(f"--scheduler {addr}: no Dask scheduler answered within {connect_timeout:g} s "
                            f"({type(e).__name__}); start one with `dask scheduler`, or leave --scheduler out to "
                            "run here") from None
    try:
        if not client.scheduler_info().get("workers"):
            client.wait_for_workers(1, timeout=connect_timeout)
    except (OSError, TimeoutError):
        client.close()
        raise PipelineError(f"--scheduler {addr}: the scheduler answered but has no workers after "
                            f"{connect_timeout:g} s; start some with `dask worker {addr}`") from None
    try:
        yield client
    finally:
        client.close()


def _make_store(out, *, shape, chunks, record, overwrite):
    from .output import OutputStore

    return OutputStore.create(out, shape=shape, chunks=chunks, dtype="float32", record=record,
                              overwrite=overwrite, resume=True)


def run(route, frame, out, *, tile: int = 1024, origin=None, scheduler: str | None = None,
        workers: int | None = None, overwrite: bool = False, pyramid: bool = False, progress: bool = True,
        nan_policy: str = "fill", retries: int = 3, connect_timeout: float = 10.0, threads: int | None = None,
        group: int | None = None, command: str = "") -> RunResult:
    """Run ``route`` over every tile of ``frame`` (every frame of a stack) into the output store ``out``.

    Parameters
    ----------
    route : pipelines.routes.base.Route
        ``model_route``, ``wiener_route``, ``rl_route`` or ``simulate_route``; its ``halo`` and ``align`` set the
        read regions, its ``identity()`` goes into the run record.
    frame : pipelines.frames.Frame
        ``(H, W)`` or a stack ``(N, H, W)`` (processed frame by frame); read lazily, region by region.
    out : path
        The output Zarr v3 / OME-Zarr store (``OUT.zarr``): created, or resumed when it holds the same run
        (same route identity, input identity, tile, origin, NaN policy); another run's store is refused unless
        ``overwrite``.
    tile : int
        Output chunk side, pixels (>= 16; the frame must be at least one tile on each side).
    origin : (int, int), optional
        Pixel ``(row, col)`` of the frame's top-left corner in the lens field. None (not given): the frame is
        the lens's full field, and a frame of another shape is refused (``(0, 0)`` given explicitly places a
        sub-window at the field's corner).
    scheduler : str, optional
        ``tcp://HOST:PORT`` of an existing ``dask.distributed`` scheduler.
    workers : int, optional
        Start a ``LocalCluster`` of this many worker processes on 127.0.0.1 (``threads`` threads each, default 1).
    overwrite : bool
        Replace a store written by another run.
    pyramid : bool
        Add an NGFF multiscale pyramid when the run completes.
    progress : bool
        A tqdm bar over the chunks, on stderr.
    nan_policy : {"fill", "raise"}
        Non-finite input pixels: filled and masked (NaN at the same output pixels), or refused.
    retries : int
        Times a failing task is retried on the distributed schedulers (a task whose worker died is rescheduled
        by Dask in any case).
    connect_timeout : float
        Seconds to wait for ``scheduler`` (and for its first worker).
    threads : int, optional
        Threads of the threaded scheduler (default: Dask's, the CPU count) or per worker process (default 1).
    group : int, optional
        Output chunks per task, run through the route together as one micro-batch (default: the route's
        ``batch``, 1 for routes without one). Each chunk is still written and marked done on its own.
    command : str
        The command line, kept in the completion summary (provenance only, not compared on resume).

    Returns
    -------
    RunResult

    Raises
    ------
    PipelineError
        Bad arguments, a frame smaller than one tile, non-finite pixels under ``nan_policy="raise"``, a frame
        outside the route's lens field, a scheduler that does not answer, a store of another run. Nothing is
        marked complete unless every chunk was written.
    """
    from .tiling import TileGrid

    tile, origin = _check_args(tile, origin, workers, scheduler, nan_policy, retries)
    H, W = (int(v) for v in frame.frame_shape)
    n_frames = int(frame.n_frames)
    if H < tile or W < tile:
        raise PipelineError(f"--input {frame.info.path}: frame of {H} x {W} px is smaller than one tile "
                            f"({tile} px); use --tile <= {min(H, W)}")
    if callable(getattr(route, "check_frame", None)):  # the cheap refusal first: a frame outside the lens field
        origin, _ = route.check_frame((H, W), origin)  # None: the frame must be the full field; resolved here
    elif origin is None:
        origin = (0, 0)
    grid = TileGrid((H, W), tile=tile, halo=int(route.halo), align=int(getattr(route, "align", 1)))
    group = int(group or getattr(route, "batch", 1) or 1)
    nan = _nan_reports(frame, nan_policy)
    stack = len(frame.info.shape) == 3
    # frame-wide statistics (normalisation...), once per frame before any tile; the lens field checked there
    stats = [_jsonable(route.prepare(frame, n, origin=origin)) for n in range(n_frames)]
    record = {"route": _jsonable(route.identity()), "route_name": route.name, "input": input_identity(frame),
              "tile": tile, "halo": int(route.halo), "align": int(getattr(route, "align", 1)),
              "origin": list(origin), "nan_policy": nan_policy, "nan": _jsonable(nan), "stats": stats,
              "versions": _versions()}
    shape = (n_frames, H, W) if stack else (H, W)
    key = route_key(route)
    sched_name = ("threaded" if scheduler is None and workers is None
                  else f"LocalCluster of {workers} process(es)" if workers is not None else f"scheduler {scheduler}")
    t_start = time.perf_counter()
    with _client(scheduler, workers, connect_timeout, threads or 1) as client:  # a dead scheduler: no store made
        startup = time.perf_counter() - t_start
        store = _make_store(out, shape=shape, chunks=tuple(grid.chunks), record=record, overwrite=overwrite)
        try:
            pending = [tuple(int(v) for v in p) for p in store.pending()]
            by_index = {t.index: t for t in grid.tiles}
            todo: list[tuple[int, object]] = []
            for p in pending:
                n, ij = (p[0], p[1:]) if stack else (0, p)
                todo.append((n, by_index[tuple(ij)]))
            todo.sort(key=lambda t: (t[0], t[1].index))
            total = n_frames * len(grid.tiles)
            worker_rss, elapsed = _execute(client, route, key, frame, store, todo, origin, stats, stack, total,
                                           progress=progress, retries=retries, threads=threads, group=group)
            left = store.pending()
            if left:  # pragma: no cover - every task returned, yet a chunk is not marked: never call it complete
                raise PipelineError(f"{out}: {len(left)} chunk(s) still not written after the run (first {left[0]}); "
                                    "run the same command again to finish it")
            px = sum((t.out[1] - t.out[0]) * (t.out[3] - t.out[2]) for _, t in todo)
            result = RunResult(out=Path(out), route=route.name, input=str(frame.info.path), frame_shape=(H, W),
                               n_frames=n_frames, chunks=tuple(grid.chunks), tiles_total=total,
                               tiles_computed=len(todo), elapsed_s=elapsed,
                               mpix_per_s=px / 1e6 / elapsed if elapsed > 0 and px else 0.0,
                               peak_rss_mib=peak_rss_mib(), worker_peak_rss_mib=worker_rss, scheduler=sched_name,
                               startup_s=startup, nan=nan)
            store.finish(summary={**result.to_dict(), "command": command}, pyramid=pyramid)
            return result
        finally:
            store.close()


def _groups(todo: list, group: int) -> dict[int, list[list]]:
    """The pending tiles of each frame in runs of ``group`` consecutive (row-major) tiles: one task each."""
    by_frame: dict[int, list] = {}
    for n, t in todo:
        by_frame.setdefault(n, []).append(t)
    return {n: [ts[i:i + group] for i in range(0, len(ts), group)] for n, ts in sorted(by_frame.items())}


def _execute(client, route, key, frame, store, todo, origin, stats, stack, total, *, progress, retries,
             threads, group) -> tuple[float | None, float]:
    """Run the pending chunks ``todo`` [(frame index, Tile)], frame by frame, on ``client`` (``None``: the
    threaded scheduler). Returns the largest worker peak RSS (MiB) on a distributed cluster (``None`` on the
    threaded scheduler) and the seconds the chunks took."""
    from tqdm.auto import tqdm

    tasks_of = _groups(todo, group)
    with tqdm(total=total, initial=total - len(todo), desc="tiles", unit="tile", disable=not progress,
              file=sys.stderr) as bar:
        if client is None:
            import dask

            _ROUTES[key] = route
            t0 = time.perf_counter()
            callback = _BarCallback(bar)
            for n, groups in tasks_of.items():
                tasks = [dask.delayed(_compute_chunks, pure=False)(key, frame, store, ts, n, origin, stats[n], stack)
                         for ts in groups]
                with callback:
                    dask.compute(*tasks, scheduler="threads", num_workers=threads)
            return None, time.perf_counter() - t0
        from distributed import as_completed

        client.register_plugin(RoutePlugin(route, key, threads or 1), name=f"pipelines-route-{key}")
        t0 = time.perf_counter()
        peak = 0.0
        for n, groups in tasks_of.items():
            futs = [client.submit(_compute_chunks, key, frame, store, ts, n, origin, stats[n], stack,
                                  retries=retries, pure=False,
                                  key=f"pipelines-chunks-{key}-{n}-{ts[0].index[0]}-{ts[0].index[1]}")
                    for ts in groups]
            try:
                for f in as_completed(futs):
                    done, rss, _pid = f.result()
                    peak = max(peak, rss)
                    bar.update(len(done))
            except BaseException:
                client.cancel(futs)
                raise
        return peak, time.perf_counter() - t0


class _BarCallback:
    """A Dask local-scheduler callback advancing a tqdm bar once per finished chunk task."""

    def __new__(cls, bar):
        from dask.callbacks import Callback

        class _CB(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):
                if isinstance(result, tuple) and len(result) == 3 and isinstance(result[0], list):
                    bar.update(len(result[0]))

        return _CB()
