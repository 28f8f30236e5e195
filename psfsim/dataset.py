"""Training datasets in Zarr v3: sharp / blurred / Wiener baselines, resumable and self-describing.

Layout of a store written by :func:`simulate` (``psfsim simulate``)::

    DATA.zarr/                     group; attrs: spec (lens TOML, source, noise, seed, sizes, ...), splits,
      sharp      (N, H, W) f4      package version, creation time, normalisation, complete, command
      blurred    (N, H, W) f4      noisy blurred sample (fast operator with the light from around the window)
      wiener     (N, H, W) f4      global Wiener baseline (on-axis PSF)
      wiener_sv  (N, H, W) f4      spatially-varying Wiener baseline
      origin     (N, 2) i4         each sample's pixel origin (row, col) in the lens field
      psf_grid   (ny, nx, k, k) f4 the PSF grid of the fast operator, psf_grid_x / psf_grid_y its field coords
      done       (n_blocks,) u1    1 when a block of samples is fully written (resume bookkeeping)

Arrays are chunked one sample per chunk and sharded by blocks of samples (one shard = one unit of work, so
parallel workers never write the same file); dimensions are named ``sample, y, x`` so xarray opens it.

Each sample's randomness (origin, source crop and augmentation, noise) derives from ``(seed, index)`` alone,
so a killed run started again computes only the missing blocks and the result equals an uninterrupted run's
bit for bit. The group is marked ``complete`` only when every block is written.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ._version import __version__
from .errors import PsfsimError

__all__ = ["SimulationSpec", "simulate", "open_dataset", "dataset_summary", "export_hdf5", "sample_origins", "make_sample"]

ARRAYS = ("sharp", "blurred", "wiener", "wiener_sv")
_SHARD_BYTES = 16 * 2**20


@dataclass(frozen=True)
class SimulationSpec:
    """Everything that determines a dataset's content (compared on resume; ``workers`` is not part of it).

    Attributes
    ----------
    lens : dict
        The lens description as written in its TOML.
    source : str
        Source spec (:func:`psfsim.sources.parse_source`).
    n : int
        Number of samples.
    size : (int, int)
        Sample shape ``(H, W)``; default the lens field.
    seed : int
    photons, read_noise : Poisson-Gaussian noise (:class:`psfsim.noise.NoiseModel`).
    split : (float, float, float)
        Train / val / test fractions.
    origins : {"random", "tile"}
        Random (seeded) window origins, or windows tiling the field evenly (sample ``i`` takes tile
        ``i mod n_tiles``). Irrelevant when ``size`` is the whole field.
    tol : float
        Target error of the fast operator.
    """

    lens: dict
    source: str
    n: int
    size: tuple[int, int]
    seed: int = 0
    photons: float | None = None
    read_noise: float = 0.0
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    origins: str = "random"
    tol: float = 0.01

    def to_json(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        d["split"] = list(self.split)
        return json.loads(json.dumps(d))

    @classmethod
    def from_json(cls, d: dict) -> "SimulationSpec":
        d = dict(d)
        d["size"] = tuple(d["size"])
        d["split"] = tuple(d["split"])
        return cls(**d)


def validate_spec(spec: SimulationSpec):
    """Check a spec against its lens and source; return ``(lens, source)``."""
    from .lens import lens_from_dict
    from .noise import NoiseModel
    from .sources import parse_source

    lens = lens_from_dict(spec.lens, where="lens")
    if int(spec.n) != spec.n or spec.n <= 0:
        raise PsfsimError(f"--n {spec.n}: expected a whole number > 0")
    H, W = lens.field.shape_px
    h, w = spec.size
    if h < 8 or w < 8:
        raise PsfsimError(f"--size {h},{w}: expected at least 8,8")
    if h > H or w > W:
        raise PsfsimError(f"--size {h},{w} is larger than the lens field {H},{W}")
    if int(spec.seed) != spec.seed or spec.seed < 0:
        raise PsfsimError(f"--seed {spec.seed}: expected a whole number >= 0")
    if len(spec.split) != 3 or not all(np.isfinite(s) and s >= 0 for s in spec.split) or abs(sum(spec.split) - 1) > 1e-6:
        raise PsfsimError(f"--split {','.join(str(s) for s in spec.split)}: expected three fractions >= 0 summing to 1")
    if spec.origins not in ("random", "tile"):
        raise PsfsimError(f"--origins {spec.origins!r}: expected 'random' or 'tile'")
    NoiseModel(spec.photons, spec.read_noise)
    source = parse_source(spec.source)
    m = lens.psf_sampling.size_px // 2
    source.check((h + 2 * m, w + 2 * m))
    return lens, source


def sample_origins(spec: SimulationSpec, field_shape, indices) -> np.ndarray:
    """Origins ``(len(indices), 2)`` of samples, from ``(seed, index)`` alone."""
    H, W = field_shape
    h, w = spec.size
    idx = np.asarray(indices)
    if (h, w) == (H, W):
        return np.zeros((len(idx), 2), np.int64)
    if spec.origins == "tile":
        ny, nx = int(np.ceil(H / h)), int(np.ceil(W / w))
        rows = np.round(np.linspace(0, H - h, ny)).astype(np.int64)
        cols = np.round(np.linspace(0, W - w, nx)).astype(np.int64)
        t = idx % (ny * nx)
        return np.stack([rows[t // nx], cols[t % nx]], axis=1)
    out = np.empty((len(idx), 2), np.int64)
    for j, i in enumerate(idx):
        rng = np.random.default_rng(np.random.SeedSequence([spec.seed, int(i), 1]))
        out[j] = (rng.integers(0, H - h + 1), rng.integers(0, W - w + 1))
    return out


def split_indices(spec: SimulationSpec) -> dict[str, list[int]]:
    """Seeded train / val / test partition of ``range(n)``."""
    perm = np.random.default_rng(np.random.SeedSequence([spec.seed, 2**31 - 1])).permutation(spec.n)
    n_train = int(round(spec.split[0] * spec.n))
    n_val = int(round(spec.split[1] * spec.n))
    return {"train": sorted(perm[:n_train].tolist()), "val": sorted(perm[n_train : n_train + n_val].tolist()),
            "test": sorted(perm[n_train + n_val :].tolist())}


class _Context:
    """Per-process state: lens, source, low-rank basis, noise, reference PSF."""

    def __init__(self, spec: SimulationSpec):
        from .noise import NoiseModel
        from .operators import lowrank_basis

        self.spec = spec
        self.lens, self.source = validate_spec(spec)
        self.basis = lowrank_basis(self.lens, tol=spec.tol)
        self.noise = NoiseModel(spec.photons, spec.read_noise)
        self.psf_axis = self.lens.psf(0.0, 0.0)
        self.margin = self.lens.psf_sampling.size_px // 2


def make_sample(ctx: _Context, index: int, origin, timings: dict | None = None) -> dict[str, np.ndarray]:
    """One sample: sharp window, noisy blurred window (light from around it included), Wiener baselines.

    ``timings``, if given, accumulates seconds spent per stage (source, blur, noise, wiener, wiener_sv).
    """
    clock = [time.perf_counter()]

    def lap(stage):
        if timings is not None:
            now = time.perf_counter()
            timings[stage] = timings.get(stage, 0.0) + now - clock[0]
            clock[0] = now

    from .restore import sv_wiener, wiener
    from .sources import MixtureSource

    spec, lens, m = ctx.spec, ctx.lens, ctx.margin
    h, w = spec.size
    H, W = lens.field.shape_px
    ss = np.random.SeedSequence([spec.seed, int(index), 0])
    r_src, r_noise = (np.random.default_rng(s) for s in ss.spawn(2))
    region_origin = (int(origin[0]) - m, int(origin[1]) - m)
    region_shape = (h + 2 * m, w + 2 * m)
    if isinstance(ctx.source, MixtureSource):
        src = ctx.source.sample(region_shape, r_src, index=int(index))
    else:
        src = ctx.source.sample(region_shape, r_src)
    src = np.array(src, np.float64)
    # light comes only from inside the lens field: zero the part of the margin outside the frame
    r0, c0 = region_origin
    src[: max(0, -r0)] = 0
    src[:, : max(0, -c0)] = 0
    src[max(0, H - r0) :] = 0
    src[:, max(0, W - c0) :] = 0
    peak = float(src.max())
    src = (src / peak if peak > 0 else src).astype(np.float32)
    lap("source")
    op = ctx.basis.operator(shape=region_shape, origin=region_origin, allow_outside=True)
    blurred = op(src)[m : m + h, m : m + w]
    sharp = src[m : m + h, m : m + w]
    lap("blur")
    noisy = ctx.noise.apply(blurred, r_noise)
    lap("noise")
    sigma = None if ctx.noise.is_noiseless else float(ctx.noise.sigma(float(np.mean(blurred))))
    wien = wiener(noisy, ctx.psf_axis, noise_sigma=sigma)
    lap("wiener")
    patch = max(16, min(128, (min(h, w) // 4) * 2))  # 4 patches across (x2 overlap): 128 for 256 px samples
    wsv = sv_wiener(noisy, lens, origin=tuple(int(o) for o in origin), patch=patch, noise_sigma=sigma, psf_at=ctx.basis.psfs_at)
    lap("wiener_sv")
    return {"sharp": sharp, "blurred": noisy.astype(np.float32), "wiener": wien.astype(np.float32),
            "wiener_sv": wsv.astype(np.float32)}


# --------------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------------
_CTX: _Context | None = None


def _init_worker(spec_json: dict, single_thread: bool = True) -> None:
    """Per-process set-up. Worker processes run single-threaded (FFT and BLAS): parallelism is across
    samples, and BLAS threads inherited through fork would oversubscribe the cores (measured: 2 workers
    went from 33 to 68 samples/s)."""
    global _CTX
    if single_thread:
        from threadpoolctl import threadpool_limits

        os.environ["PSFSIM_FFT_THREADS"] = "1"
        threadpool_limits(1)
    _CTX = _Context(SimulationSpec.from_json(spec_json))


def _run_block(path: str, b: int, block: int) -> tuple[int, int, dict]:
    import zarr

    ctx = _CTX
    g = zarr.open_group(path, mode="r+")
    n = ctx.spec.n
    i0, i1 = b * block, min((b + 1) * block, n)
    origins = g["origin"][i0:i1]
    h, w = ctx.spec.size
    out = {k: np.empty((i1 - i0, h, w), np.float32) for k in ARRAYS}
    stages: dict = {}
    for j, i in enumerate(range(i0, i1)):
        s = make_sample(ctx, i, origins[j], stages)
        for k in ARRAYS:
            out[k][j] = s[k]
    t = time.perf_counter()
    for k in ARRAYS:
        g[k][i0:i1] = out[k]
    g["done"][b] = 1  # last: a block is complete only once all its arrays are written
    stages["write"] = time.perf_counter() - t
    return b, i1 - i0, stages


def _block_size(spec: SimulationSpec) -> int:
    h, w = spec.size
    # at least ~8 blocks (parallel work units, resume granularity), at most 64 samples or 16 MiB a shard
    return int(max(1, min(spec.n // 8, _SHARD_BYTES // (4 * h * w), 64)))


def _create_store(path: Path, spec: SimulationSpec, lens, source, command: str) -> None:
    """Create the group and its arrays in a temporary folder, then swap it in for ``path`` (which, if it
    exists, is a psfsim dataset being overwritten): never a half-created store, and the old one is only
    removed once the new one is ready."""
    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        _populate_store(tmp, spec, lens, source, command)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _populate_store(tmp: Path, spec: SimulationSpec, lens, source, command: str) -> None:
    import zarr

    from .operators import lowrank_basis

    n = spec.n
    h, w = spec.size
    block = _block_size(spec)
    g = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    for k in ARRAYS:
        g.create_array(k, shape=(n, h, w), dtype="float32", chunks=(1, h, w), shards=(block, h, w),
                       dimension_names=("sample", "y", "x"), fill_value=np.float32(np.nan))
    origins = sample_origins(spec, lens.field.shape_px, np.arange(n))
    a = g.create_array("origin", shape=(n, 2), dtype="int32", chunks=(n, 2), dimension_names=("sample", "rc"))
    a[:] = origins.astype(np.int32)
    basis = lowrank_basis(lens, tol=spec.tol)
    rr, cc = np.meshgrid(basis.rows, basis.cols, indexing="ij")
    gx, gy = lens.field.pixel_to_field(rr, cc)
    g.create_array("psf_grid", data=basis.node_psfs.astype(np.float32), dimension_names=("gy", "gx", "ky", "kx"))
    g.create_array("psf_grid_x", data=gx.astype(np.float32), dimension_names=("gy", "gx"))
    g.create_array("psf_grid_y", data=gy.astype(np.float32), dimension_names=("gy", "gx"))
    nb = -(-n // block)
    g.create_array("done", shape=(nb,), dtype="uint8", chunks=(1,), fill_value=0, dimension_names=("block",))
    ny, nx = len(basis.rows), len(basis.cols)
    g.attrs.update({
        "format": "psfsim-dataset/1",
        "spec": spec.to_json(),
        "lens_name": lens.name,
        "source_description": source.describe(),
        "noise": {"photons": spec.photons, "read_noise": spec.read_noise,
                  "model": "(Poisson(photons * x) + N(0, read_noise^2)) / photons, x = blurred sample"},
        "normalisation": "each sample's source region (window + PSF margin) divided by its maximum, so sharp <= 1, before blur and noise",
        "splits": split_indices(spec),
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
    })


def simulate(spec: SimulationSpec, out: str | os.PathLike, *, workers: int = 1, overwrite: bool = False,
             progress: bool = True, command: str = "", max_blocks: int | None = None) -> dict:
    """Write (or finish) the dataset of ``spec`` at ``out``. Returns timing figures.

    Parameters
    ----------
    workers : int
        Processes (1: in this process).
    overwrite : bool
        Replace an existing store written with different arguments.
    max_blocks : int, optional
        Stop after this many blocks (tests of resumption).
    """
    import zarr

    out = Path(out)
    lens, source = validate_spec(spec)
    if out.exists() and not out.is_dir():
        raise PsfsimError(f"--out {out}: exists and is not a folder")
    if not out.parent.exists():
        raise PsfsimError(f"--out {out}: folder {out.parent} does not exist")
    if workers < 1:
        raise PsfsimError(f"--workers {workers}: expected >= 1")
    fresh = not out.exists() or (out.is_dir() and not any(out.iterdir()))
    if not fresh:
        try:
            attrs = zarr.open_group(str(out), mode="r").attrs
            is_dataset, old = attrs.get("format") == "psfsim-dataset/1", attrs.get("spec")
        except Exception:
            is_dataset, old = False, None
        if not is_dataset:  # never delete a folder that is not ours, --overwrite or not
            raise PsfsimError(f"--out {out}: exists and is not a psfsim dataset; nothing was changed (choose another path)")
        if old != spec.to_json():
            if not overwrite:
                raise PsfsimError(f"{out} was written with different arguments; nothing was changed (use --overwrite to replace it)")
            fresh = True
    if fresh:
        _create_store(out, spec, lens, source, command)
    g = zarr.open_group(str(out), mode="r+")
    block = int(g.attrs["block"])
    done = g["done"][:]
    todo = [int(b) for b in np.nonzero(done == 0)[0]]
    if max_blocks is not None:
        todo = todo[:max_blocks]
    def block_len(b):
        return min((b + 1) * block, spec.n) - b * block

    n_todo = sum(block_len(b) for b in todo)
    n_missing = sum(block_len(int(b)) for b in np.nonzero(done == 0)[0])
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    stats: dict = {}
    with tqdm(total=spec.n, initial=spec.n - n_missing,
              desc="simulate", unit="sample", disable=not progress, file=sys.stderr) as bar:
        if workers == 1:
            if _CTX is None or _CTX.spec != spec:
                _init_worker(spec.to_json(), single_thread=False)
            for b in todo:
                _, k, st = _run_block(str(out), b, block)
                for key, v in st.items():
                    stats[key] = stats.get(key, 0.0) + v
                bar.update(k)
        else:
            from concurrent.futures import ProcessPoolExecutor, as_completed
            import multiprocessing as mp

            ex = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_init_worker,
                                     initargs=(spec.to_json(),))
            try:
                futs = [ex.submit(_run_block, str(out), b, block) for b in todo]
                for f in as_completed(futs):
                    _, k, st = f.result()
                    for key, v in st.items():
                        stats[key] = stats.get(key, 0.0) + v
                    bar.update(k)
            except BaseException:
                # interrupted or failed: drop the queued blocks (finished ones stay; a re-run resumes)
                ex.shutdown(wait=True, cancel_futures=True)
                raise
            ex.shutdown(wait=True)
    elapsed = time.perf_counter() - t0
    complete = bool(np.all(g["done"][:] == 1))
    if complete and not g.attrs.get("complete"):
        g.attrs["complete"] = True
        g.attrs["completed"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        import warnings

        with warnings.catch_warnings():  # consolidated metadata is not (yet) in the v3 spec: zarr warns
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(str(out))  # xarray / dask open it without listing every array
    return {"samples_written": n_todo, "elapsed_s": elapsed, "rate": n_todo / elapsed if elapsed > 0 else float("inf"),
            "complete": complete, "stage_seconds": stats}


# --------------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------------
def open_dataset(path: str | os.PathLike, *, allow_incomplete: bool = False):
    """Open a dataset store (a ``zarr.Group``), refusing an incomplete one with how to finish it."""
    import zarr

    p = Path(path)
    if not p.is_dir():
        raise PsfsimError(f"{p}: no dataset there")
    try:
        g = zarr.open_group(str(p), mode="r")
    except Exception as e:
        raise PsfsimError(f"{p}: not a Zarr group ({type(e).__name__}: {e})") from None
    if g.attrs.get("format") != "psfsim-dataset/1":
        raise PsfsimError(f"{p}: not a psfsim dataset")
    if not g.attrs.get("complete") and not allow_incomplete:
        done = g["done"][:]
        cmd = g.attrs.get("command") or "psfsim simulate ... (the same arguments)"
        raise PsfsimError(f"{p}: incomplete dataset ({int(done.sum())} of {len(done)} blocks written); "
                          f"finish it by running the same command again: {cmd}")
    return g


def dataset_summary(path, *, max_eval: int = 200) -> str:
    """Text summary of a dataset (``psfsim info DATA.zarr``): lens, sizes, splits, noise, completeness, baselines."""
    g = open_dataset(path)  # an incomplete store is refused with the command that finishes it
    a = g.attrs
    spec = a["spec"]
    done = g["done"][:]
    lines = [
        f"dataset         {path}",
        f"complete        yes ({len(done)} blocks of {a['block']} samples)",
        f"lens            {a['lens_name']}",
        f"samples         {spec['n']} x {spec['size'][0]} x {spec['size'][1]} float32, origins {spec['origins']}, source {spec['source']!r}",
        f"splits          " + ", ".join(f"{k} {len(v)}" for k, v in a["splits"].items()),
        f"noise           photons {spec['photons']}, read noise {spec['read_noise']}, seed {spec['seed']}",
        f"operator        rank {a['operator']['rank']}, grid {a['operator']['grid'][0]}x{a['operator']['grid'][1]}",
        f"created         {a['created']} by psfsim {a['psfsim_version']}",
    ]
    test = a["splits"]["test"]
    which = "test split" if test else "all samples (empty test split)"
    idx = (test or list(range(spec["n"])))[:max_eval]
    for k, (p, s) in baseline_scores(g, idx).items():
        lines.append(f"{k:15s} PSNR {p:6.2f} dB  SSIM {s:.3f}  ({which}, {len(idx)} samples)")
    return "\n".join(lines)


def baseline_scores(g, indices) -> dict[str, tuple[float, float]]:
    """Mean PSNR / SSIM of ``blurred``, ``wiener``, ``wiener_sv`` against ``sharp`` on ``indices``."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    idx = np.asarray(sorted(indices))
    sharp = g["sharp"].get_orthogonal_selection((idx,))
    res = {}
    for k in ("blurred", "wiener", "wiener_sv"):
        arr = g[k].get_orthogonal_selection((idx,))
        p = np.mean([peak_signal_noise_ratio(s, x, data_range=1.0) for s, x in zip(sharp, arr)])
        s = np.mean([structural_similarity(s, x, data_range=1.0) for s, x in zip(sharp, arr)])
        res[k] = (float(p), float(s))
    return res


def export_hdf5(path, to, *, overwrite: bool = False) -> Path:
    """Write a complete dataset's arrays and attributes to HDF5 (h5py), atomically.

    Nested attributes (spec, splits, ...) are stored as JSON strings; flat ones as they are.
    """
    import h5py

    g = open_dataset(path)
    to = Path(to)
    if to.exists() and not overwrite:
        raise PsfsimError(f"--to {to}: exists (use --overwrite)")
    if not to.parent.exists():
        raise PsfsimError(f"--to {to}: folder {to.parent} does not exist")
    tmp = to.with_name(f".{to.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            for name in sorted(g.array_keys()):
                arr = g[name]
                chunks = (1,) + tuple(arr.shape[1:]) if name in ARRAYS else None
                ds = f.create_dataset(name, shape=arr.shape, dtype=arr.dtype, chunks=chunks,
                                      compression="gzip" if name in ARRAYS else None, compression_opts=1 if name in ARRAYS else None)
                step = 64
                for i in range(0, arr.shape[0], step):
                    ds[i : i + step] = arr[i : i + step]
                dims = arr.metadata.dimension_names
                if dims:
                    ds.attrs["dimension_names"] = json.dumps(list(dims))
            for k, v in g.attrs.items():
                f.attrs[k] = v if isinstance(v, (str, int, float, bool)) else json.dumps(v)
        tmp.replace(to)
    finally:
        if tmp.exists():
            tmp.unlink()
    return to
