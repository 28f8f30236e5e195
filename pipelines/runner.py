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
recorded with the run. A stack ``(N, H, W)`` is processed window by window (every frame at one tile window, then the next: CoordGate gates are reused). Non-finite pixels (NaN, inf) are
counted and located first: ``nan_policy="raise"`` refuses the frame naming the count and the first pixels,
``"fill"`` fills them for the computation (psfsim's rule: nearest finite neighbour, within the tile's read
region) and writes NaN at exactly those pixels of the output (masked, never spread); either way the count and
positions go into the run record and the summary.

Quality control (``qc=True``, the default for the ``deblur``, ``wiener`` and ``rl`` routes): once the result is
complete, a second pass maps the re-blur residual ``|A(x_hat) - y|`` (:mod:`pipelines.qc`) chunk by chunk: each
task reads its chunk of the result plus a halo of the PSF's half-width ``k // 2`` back from the store, blurs it
with psfsim's fast operator of that window of the lens field (the route's lens, or ``qc_lens``: the lens the
frame was really taken with), subtracts the same region of the input and writes the chunk's residual and its
partial sums. In the output store (a Zarr v3 group inside the OME-Zarr image: NGFF metadata untouched)::

    qc/residual   float32, the result's shape and chunks, NaN fill
    qc/stats      float64, chunk grid x 6 (:data:`pipelines.qc.CHUNK_STATS`): each chunk's partial sums
    qc/done       uint8, one flag per chunk (set last, as for the result)

and ``attrs["pipelines"]["qc"]``: ``record`` (lens, fingerprint, origin, border), ``status`` (``running`` /
``complete``), ``summary`` (rms, rms / noise sigma, mean abs, max, worst tiles; per frame for a stack),
``figures``. The pass is resumable the same way (only chunks without a flag are computed) and idempotent: a
complete QC is read back, never recomputed. Figures go beside the store, in ``OUT.qc/`` (a Zarr store holds only
Zarr nodes): ``residual.png`` (``residual_t{n}.png`` per frame of a stack), a downsampled map in units of the noise
sigma with the worst tiles outlined, and for a CoordGate checkpoint ``gates.png`` (:func:`pipelines.qc.gate_figure`).
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

__all__ = ["run", "RunResult", "RoutePlugin", "route_key", "peak_rss_mib", "NAN_POLICIES",
           "qc_dir_for", "QC_FORMAT", "QC_ROUTES"]

NAN_POLICIES = ("raise", "fill")
#: ``attrs["pipelines"]["qc"]["record"]["format"]`` of the QC written here.
QC_FORMAT = "pipelines-qc/1"
#: Routes whose result is an estimate of the sharp frame: the ones the re-blur residual checks.
QC_ROUTES = ("deblur", "wiener", "rl")

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
    """Load a model route's checkpoint once per process, on the process's device, into
    :mod:`pipelines.routes.model`'s per-process cache (keyed by the checkpoint's SHA-256); other routes need
    nothing."""
    if getattr(route, "sha256", None) and getattr(route, "path", None):
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
    Returns the chunk indices written.
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
    return done


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
    qc: dict | None = None

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
        if self.qc:
            lines += _qc_lines(self.qc)
        return "\n".join(lines)


def _qc_lines(qc: dict) -> list[str]:
    """The QC part of the summary text."""
    rec, frames = qc["record"], qc["summary"]["frames"]
    how = (f"computed in {qc['elapsed_s']:.1f} s" if qc.get("chunks_computed")
           else "read back from the store (already complete)")
    out = [f"qc: re-blur residual |A(x_hat) - y| with lens {rec['lens']!r} ({how}; a border of {rec['border_px']} px "
           "left out of the numbers)"]
    for k, s in enumerate(frames):
        at = f"  frame {k}: " if len(frames) > 1 else "  "
        worst = ", ".join(f"{tuple(t['chunk'])} {t['rms_over_noise']:.2f}" for t in s["worst_tiles"][:3])
        out.append(f"{at}rms {s['rms']:.4g} = {s['rms_over_noise']:.2f} x noise sigma {s['noise_sigma']:.4g}, "
                   f"mean |r| {s['mean_abs']:.4g}, max {s['max']:.4g}; worst tiles (rms / sigma): {worst}")
    out.append(f"  map: {qc['map']}; figures: {', '.join(qc['figures']) or 'none'}")
    return out


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
        group: int | None = None, command: str = "", qc: bool = True, qc_lens=None) -> RunResult:
    """Run ``route`` over every tile of ``frame`` (every frame of a stack) into the output store ``out``.

    Parameters
    ----------
    route : pipelines.routes.base.Route
        ``model_route``, ``wiener_route``, ``rl_route`` or ``simulate_route``; its ``halo`` and ``align`` set the
        read regions, its ``identity()`` goes into the run record.
    frame : pipelines.frames.Frame
        ``(H, W)`` or a stack ``(N, H, W)`` (every frame of it, window by window); read lazily, region by region.
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
    qc : bool
        After a ``deblur`` / ``wiener`` / ``rl`` run, map the re-blur residual and write its summary and figures
        (the module docstring); ignored for ``simulate``. Not part of the run's record: a run without QC is
        given one by running it again with ``qc=True``.
    qc_lens : psfsim.Lens or lens name/path, optional
        The lens of the QC operator (default the route's: the checkpoint's or the classical route's lens). A
        QC of another lens replaces an existing one only with ``overwrite``.

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
    qc_lens = _qc_lens(route, qc, qc_lens, (H, W), origin)
    stats = [_jsonable(route.prepare(frame, n, origin=origin)) for n in range(n_frames)]
    record = {"route": _jsonable(route.identity()), "route_name": route.name, "input": _jsonable(frame.identity()),
              "tile": tile, "halo": int(route.halo), "align": int(getattr(route, "align", 1)),
              "origin": list(origin), "group": group, "nan_policy": nan_policy, "nan": _jsonable(nan), "stats": stats,
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
            if qc_lens is not None:  # refuse a QC of another lens or a figure folder of another run before any work
                qc_rec, qc_dir = _qc_record(qc_lens, origin), qc_dir_for(out)
                _qc_check(store, qc_rec, qc_dir, overwrite)
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
            if qc_lens is not None:
                result.qc = _qc_pass(client, route, qc_lens, qc_rec, qc_dir, frame, store, origin, stack,
                                     overwrite=overwrite, progress=progress, retries=retries, threads=threads)
            return result
        finally:
            store.close()


def _groups(todo: list, group: int) -> list[tuple[list[int], list]]:
    """The tasks ``[(frame indices, tiles)]``: each frame's pending tiles in runs of ``group`` consecutive
    (row-major) tiles, and the frames of a stack that share a run in ONE task (run window by window, every frame
    at that window): a CoordGate model's per-window gate cache then serves the whole stack."""
    by_frame: dict[int, list] = {}
    for n, t in todo:
        by_frame.setdefault(n, []).append(t)
    tasks: dict[tuple, tuple[list[int], list]] = {}
    for n in sorted(by_frame):
        ts = by_frame[n]
        for i in range(0, len(ts), group):
            run_ = ts[i:i + group]
            tasks.setdefault(tuple(t.index for t in run_), ([], run_))[0].append(n)
    return sorted(tasks.values(), key=lambda r: (r[1][0].index, r[0]))


def _compute_window(key: str, frame, store, tiles: list, indices: list[int], origin, stats: list, stack: bool):
    """One task: the run of ``tiles`` in every frame of ``indices`` (:func:`_compute_chunks` frame after frame)."""
    done = []
    for n in indices:
        done += _compute_chunks(key, frame, store, tiles, n, origin, stats[n], stack)
    return done, peak_rss_mib(), os.getpid()


def _execute(client, route, key, frame, store, todo, origin, stats, stack, total, *, progress, retries,
             threads, group) -> tuple[float | None, float]:
    """Run the pending chunks ``todo`` [(frame index, Tile)], window by window, on ``client`` (``None``: the
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
            tasks = [dask.delayed(_compute_window, pure=False)(key, frame, store, ts, ns, origin, stats, stack)
                     for ns, ts in tasks_of]
            with callback:
                dask.compute(*tasks, scheduler="threads", num_workers=threads)
            return None, time.perf_counter() - t0
        from distributed import as_completed

        client.register_plugin(RoutePlugin(route, key, threads or 1), name=f"pipelines-route-{key}")
        t0 = time.perf_counter()
        peak = 0.0
        futs = [client.submit(_compute_window, key, frame, store, ts, ns, origin, stats, stack,
                              retries=retries, pure=False, priority=-i,
                              key=f"pipelines-chunks-{key}-{ns[0]}-{ts[0].index[0]}-{ts[0].index[1]}")
                for i, (ns, ts) in enumerate(tasks_of)]
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


# -- quality control: the re-blur residual, a second pass over the complete result ----------------------------------
def qc_dir_for(out) -> Path:
    """The folder of a store's QC figures: ``OUT.qc`` beside ``OUT.zarr`` (``OUT.qc`` beside a store without
    the ``.zarr`` suffix too)."""
    p = Path(os.path.abspath(out))
    return p.with_suffix(".qc") if p.suffix.lower() == ".zarr" else p.with_name(p.name + ".qc")


def _qc_lens(route, qc: bool, qc_lens, frame_shape, origin):
    """The QC operator's lens, or ``None`` when there is no QC (off, a simulate route, a route without a lens);
    a frame outside its field is refused here, before any store exists."""
    if not qc or getattr(route, "name", None) not in QC_ROUTES:
        return None
    from psfsim.checks import as_lens
    from psfsim.errors import PsfsimError

    from .routes.base import check_frame_window

    lens = qc_lens if qc_lens is not None else getattr(route, "lens", None)
    if lens is None:
        return None
    try:
        lens = as_lens(lens) if not isinstance(lens, (str, os.PathLike)) else _load_lens(lens)
    except PsfsimError as e:
        raise PipelineError(f"--qc-lens: {e}") from None
    check_frame_window(lens, frame_shape, origin, what="frame (QC lens)")
    return lens


def _load_lens(name):
    from psfsim import load_lens

    return load_lens(name)


def _qc_record(lens, origin) -> dict:
    b = int(lens.psf_sampling.size_px) // 2
    return {"format": QC_FORMAT, "lens": lens.name, "lens_fingerprint": lens.fingerprint,
            "origin": [int(origin[0]), int(origin[1])], "halo_px": b, "border_px": b, "operator": "psfsim fast"}


def _qc_check(store, rec: dict, qc_dir: Path, overwrite: bool) -> None:
    """Refuse (nothing changed) a store whose QC was made differently, or a figure folder this store's QC did not
    write, unless ``overwrite``."""
    from .output import _open_group, record_difference

    old = _open_group(store.path).attrs.get("pipelines", {}).get("qc")
    if isinstance(old, dict) and not overwrite:
        why = record_difference(old.get("record"), rec, "qc")
        if why:
            raise PipelineError(f"--out {store.path}: its QC was made differently ({why}); nothing was changed (use "
                                "--overwrite to replace the QC, the result is kept; or --no-qc)")
    ours = isinstance(old, dict) and old.get("figures_dir") == str(qc_dir)
    if qc_dir.exists() and not overwrite and not ours and (not qc_dir.is_dir() or any(qc_dir.iterdir())):
        raise PipelineError(f"{qc_dir}: exists and was not written by the QC of {store.path}; nothing was changed "
                            "(move it, use --overwrite, or --no-qc)")


def _set_qc_meta(path, qc: dict | None) -> None:
    from .output import _open_group

    g = _open_group(path, mode="r+")
    meta = dict(g.attrs["pipelines"])
    if qc is None:
        meta.pop("qc", None)
    else:
        meta["qc"] = _jsonable(qc)
    g.attrs["pipelines"] = meta


def _qc_arrays(store, rec: dict, qc_dir: Path) -> dict:
    """The QC arrays of a complete store, created (an older QC of another record dropped) unless this record's
    are there; returns ``attrs["pipelines"]["qc"]``."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    from .output import _open_group, record_difference
    from .qc import CHUNK_STATS

    g = _open_group(store.path, mode="r+")
    old = g.attrs["pipelines"].get("qc")
    if (isinstance(old, dict) and old.get("status") in ("running", "complete")
            and record_difference(old.get("record"), rec, "qc") is None and "qc" in g):
        return old
    meta = {"record": rec, "status": "creating", "figures_dir": str(qc_dir)}
    _set_qc_meta(store.path, meta)
    import shutil

    shutil.rmtree(store.path / "qc", ignore_errors=True)
    g = _open_group(store.path, mode="r+")
    names = tuple(a["name"] for a in store.axes)
    q = g.create_group("qc")
    q.create_array("residual", shape=store.shape, chunks=store.chunks, dtype="float32", fill_value=np.float32(np.nan),
                   compressors=[ZstdCodec(level=0), Crc32cCodec()], dimension_names=names)
    q.create_array("stats", shape=store.grid + (len(CHUNK_STATS),), chunks=(1,) * len(store.grid) + (len(CHUNK_STATS),),
                   dtype="float64", fill_value=0.0, dimension_names=names + ("stat",))
    q.create_array("done", shape=store.grid, chunks=(1,) * len(store.grid), dtype="uint8", fill_value=0,
                   dimension_names=names)
    meta["status"] = "running"
    _set_qc_meta(store.path, meta)
    return meta


def _chunk_box(idx, shape, chunks) -> tuple[tuple[int, int], tuple[int, int]]:
    i, j = idx[-2:]
    (H, W), (th, tw) = shape[-2:], chunks[-2:]
    return (i * th, min(H, (i + 1) * th)), (j * tw, min(W, (j + 1) * tw))


def _qc_chunks(lens, frame, path: str, run_id: str, shape, chunks, indices: list, origin, border: int,
               stack: bool) -> tuple:
    """One QC task: for each chunk, the result's chunk plus a halo of ``k // 2`` read back from the store, blurred
    by psfsim's fast operator of that window, minus the input's same region; the chunk's residual, its partial
    sums (over the chunk less the frame's ``border``), then its flag. Returns as :func:`_compute_window`: chunks, peak RSS (MiB), PID."""
    import zarr

    from .qc import chunk_stats, residual_block
    from .output import current_run_id

    g = zarr.open_group(str(path), mode="r+", zarr_format=3, use_consolidated=False)
    est, res, st, done = g["0"], g["qc/residual"], g["qc/stats"], g["qc/done"]
    H, W = shape[-2:]
    m = int(lens.psf_sampling.size_px) // 2
    out = []
    for idx in indices:
        idx = tuple(int(v) for v in idx)
        n = idx[0] if stack else 0
        lead = (n,) if stack else ()
        (r0, r1), (c0, c1) = _chunk_box(idx, shape, chunks)
        wr0, wr1, wc0, wc1 = max(0, r0 - m), min(H, r1 + m), max(0, c0 - m), min(W, c1 + m)
        x = np.asarray(est[lead + (slice(wr0, wr1), slice(wc0, wc1))], np.float32)
        y = np.asarray(frame.read(n, slice(wr0, wr1), slice(wc0, wc1)), np.float32)
        r = residual_block(lens, x, y, origin=(origin[0] + wr0, origin[1] + wc0), workers=1)
        sr0, sr1, sc0, sc1 = max(r0, border), min(r1, H - border), max(c0, border), min(c1, W - border)
        inner = (slice(sr0 - wr0, max(sr0, sr1) - wr0), slice(sc0 - wc0, max(sc0, sc1) - wc0))
        vec = chunk_stats(r[inner], y[inner])
        if current_run_id(path) != run_id:
            raise PipelineError(f"{path}: the store was taken over by another run during its QC; this run stops")
        core = r[r0 - wr0:r1 - wr0, c0 - wc0:c1 - wc0]
        res[lead + (slice(r0, r1), slice(c0, c1))] = core  # an integer frame index: a 2-D selection
        st[idx] = vec
        done[idx] = 1  # last: residual and sums are on disk
        out.append(idx)
    return out, peak_rss_mib(), os.getpid()


def _run_tasks(client, fn, arglists: list, *, total: int, initial: int, desc: str, progress: bool, retries: int,
               threads, key: str) -> None:
    """Run ``fn(*args)`` for each of ``arglists`` on ``client`` (``None``: the threaded scheduler), with a bar."""
    from tqdm.auto import tqdm

    with tqdm(total=total, initial=initial, desc=desc, unit="tile", disable=not progress, file=sys.stderr) as bar:
        if client is None:
            import dask

            with _BarCallback(bar):
                dask.compute(*[dask.delayed(fn, pure=False)(*a) for a in arglists], scheduler="threads",
                             num_workers=threads)
            return
        from distributed import as_completed

        futs = [client.submit(fn, *a, retries=retries, pure=False, key=f"{key}-{k}") for k, a in enumerate(arglists)]
        try:
            for f in as_completed(futs):
                bar.update(len(f.result()[0]))
        except BaseException:
            client.cancel(futs)
            raise


def _qc_pass(client, route, lens, rec: dict, qc_dir: Path, frame, store, origin, stack: bool, *, overwrite: bool,
             progress: bool, retries: int, threads) -> dict:
    """The QC of a complete store (module docstring): pending chunks computed, summary merged from the chunks'
    partial sums, figures drawn; ``attrs["pipelines"]["qc"]`` written last. Returns it (plus ``chunks_computed``)."""
    from .output import _open_group
    from .qc import gate_figure, has_coordgate, merge_chunk_stats, overview, residual_figure

    t0 = time.perf_counter()
    meta = _qc_arrays(store, rec, qc_dir)
    g = _open_group(store.path)
    flags = np.asarray(g["qc/done"][...])
    todo = [tuple(int(v) for v in i) for i in np.argwhere(flags != 1)]
    total = int(flags.size)
    H, W = store.shape[-2:]
    border = rec["border_px"] if H > 2 * rec["border_px"] and W > 2 * rec["border_px"] else 0
    if todo:
        args = [(lens, frame, str(store.path), store.run_id, store.shape, store.chunks, [idx], origin, border, stack)
                for idx in todo]
        _run_tasks(client, _qc_chunks, args, total=total, initial=total - len(todo), desc="qc", progress=progress,
                   retries=retries, threads=threads, key=f"pipelines-qc-{store.run_id}")
    g = _open_group(store.path)
    left = int(np.count_nonzero(np.asarray(g["qc/done"][...]) != 1))
    if left:  # pragma: no cover - every task returned, yet a flag is missing
        raise PipelineError(f"{store.path}: {left} QC chunk(s) not written; run the same command again")
    stats = np.asarray(g["qc/stats"][...])
    per_frame = [stats[n] for n in range(stats.shape[0])] if stack else [stats]
    regions = lambda ij: _chunk_box(ij, store.shape, store.chunks)  # noqa: E731
    frames = [merge_chunk_stats(s, regions) for s in per_frame]
    summary = {"frames": frames}
    if stack:
        summary["all"] = merge_chunk_stats(stats.reshape(-1, stats.shape[-1]))
        summary["all"].pop("worst_tiles")
    names = [f"residual_t{n}.png" for n in range(len(frames))] if stack else ["residual.png"]
    gates = None
    if getattr(route, "name", None) == "deblur" and getattr(route, "sha256", None):
        from .routes.model import loaded_model

        model, _ = loaded_model(route.path, route.sha256, "cpu")
        gates = model if has_coordgate(model) else None
    figures = [str(qc_dir / n) for n in names] + ([str(qc_dir / "gates.png")] if gates is not None else [])
    if todo or meta.get("status") != "complete" or not all(Path(f).is_file() for f in figures):
        qc_dir.mkdir(exist_ok=True)
        res = g["qc/residual"]
        for n, (name, s) in enumerate(zip(names, frames)):
            lead = (n,) if stack else ()
            small, f = overview(lambda rows, cols, lead=lead: res[lead + (rows, cols)], (H, W))
            at = f", frame {n}" if stack else ""
            residual_figure(small, f, qc_dir / name, noise_sigma=s["noise_sigma"], frame_shape=(H, W),
                            tile=store.chunks[-1], worst=s["worst_tiles"],
                            title=f"{store.path.name}{at}: re-blur residual with lens {rec['lens']!r}, rms = "
                                  f"{s['rms_over_noise']:.2f} x noise sigma; worst tiles outlined")
        if gates is not None:
            gate_figure(gates, route.lens, (H, W), qc_dir / "gates.png", origin=origin, overwrite=True)
    qc = {"record": rec, "status": "complete", "summary": summary, "figures": figures, "figures_dir": str(qc_dir),
          "map": f"{store.path}/qc/residual",
          "elapsed_s": meta.get("elapsed_s", 0.0) if not todo else time.perf_counter() - t0,
          "completed": meta.get("completed") if not todo and meta.get("completed") else _now()}
    _set_qc_meta(store.path, qc)
    return {**qc, "chunks_computed": len(todo)}


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")
