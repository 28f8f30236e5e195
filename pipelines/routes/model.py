"""The model route: a recon checkpoint applied tile by tile, each tile with its own window of the lens field.

- The model is loaded once per process (``recon.load_checkpoint``, ``weights_only=True``) and kept in a
  module-level cache keyed by the checkpoint's SHA-256 and the device: the threaded scheduler's threads and a
  distributed worker's tasks share one copy; the route object pickles only the path, the hash and settings.
- Coordinates of each block come from ``recon.batch_coords`` (``psfsim.field_coords_torch``) at the block's
  origin in the lens field.
- Normalisation as the checkpoint recorded it. Training samples (kind ``source_region_max``) were divided by
  the SHARP source region's maximum, so the model's inputs (blurred) peaked below 1, typically at the
  checkpoint's ``input_peak`` (the median over training inputs of their maximum; 1 for an old checkpoint that
  does not record it, with recon's warning). The frame's robust maximum is mapped to that peak:
  ``x_model = vmin + (vmax - vmin) * input_peak * x / scale``, with ``scale`` ONE statistic of the
  whole frame computed once in :meth:`ModelRoute.prepare` (:func:`~pipelines.routes.base.frame_scale`: the
  frame's maximum ignoring its brightest 1e-5 of pixels), never per tile (per-tile statistics make seams);
  the output is mapped back by the inverse, so it is in the input's units.
- Micro-batches of up to ``batch`` blocks of one shape. Out of memory on the device: the batch is halved, then
  (at one block) the block is computed in sub-tiles of half its size with the model's halo and alignment
  (which gives the same result, the argument of :mod:`pipelines.tiling`), with a warning each time.
- CoordGate gates are cached per tile window (``recon.layers.CoordGate``: key = the window's coordinates, so a
  stack of frames processed window by window reuses them): the route bounds every layer's cache by
  ``gate_cache_windows`` windows and its share of ``gate_cache_bytes``.
"""

from __future__ import annotations

import hashlib
import math
import threading
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np

from psfsim.cache import BoundedCache

from ..errors import PipelineError
from .base import check_call, check_frame_window, fill_block, frame_scale, positive_scale, ROBUST_FRACTION

__all__ = ["ModelRoute", "model_route", "tile_geometry", "global_tail", "checkpoint_sha256", "loaded_model", "NORMALISATIONS", "clear_models"]

#: Normalisation kinds the route knows how to apply to a whole frame.
NORMALISATIONS = ("source_region_max",)
#: Models of this process, keyed by (checkpoint SHA-256, device): at most 4 (a worker rarely needs more).
_MODELS = BoundedCache(max_items=4)
_LOAD_LOCK = threading.Lock()


def checkpoint_sha256(path) -> str:
    """SHA-256 (hex) of a checkpoint file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    p = Path(path)
    try:
        with open(p, "rb") as f:
            for piece in iter(lambda: f.read(2**20), b""):
                h.update(piece)
    except OSError as e:
        raise PipelineError(f"checkpoint {p}: cannot read it ({e.strerror or e})") from None
    return h.hexdigest()


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise PipelineError(f"device = {device!r}: expected auto, cpu or cuda")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"device = {device!r}: this process has no CUDA device (use --device auto or cpu)")
    return str(device)


def loaded_model(path, sha256: str, device: str):
    """``(model, info)`` of a checkpoint on ``device``, loaded once per process (checked against ``sha256``)."""
    key = (sha256, device)
    hit = _MODELS.peek(key)
    if hit is not None:
        return hit
    with _LOAD_LOCK:  # one load per process even when several threads ask at once
        hit = _MODELS.peek(key)
        if hit is not None:
            return hit
        from recon import load_checkpoint
        from recon.errors import ReconError

        got = checkpoint_sha256(path)
        if got != sha256:
            raise PipelineError(f"checkpoint {path}: its SHA-256 is now {got[:12]}, not {sha256[:12]} as when the run "
                                "started (the file changed); start the run again")
        try:
            model, info = load_checkpoint(path, device=device)
        except ReconError as e:
            raise PipelineError(str(e)) from None
        return _MODELS.put(key, (model, info))


def clear_models() -> None:
    """Forget this process's loaded models (tests; a worker that must free its device memory)."""
    _MODELS.clear()


def tile_geometry(model, path="<model>") -> tuple[int, int | None, int, bool]:
    """``(align, halo, tile_halo, exact)`` of a recon model for tiled inference, from its ``tile_align`` and
    ``tile_halo`` (every 2-D recon model reports them: ``2^depth`` and the exact receptive reach for U-Nets,
    1 and the reach for FCNNs) and its ``halo`` (None for a global receptive field, such as MultiWienerNet's
    FFT Wiener layer: then ``exact`` is False and ``tile_halo`` is only a practical context).

    Raises
    ------
    PipelineError
        A model that reports no tiling geometry (naming the checkpoint and the model's class).
    """
    align, tile_halo = getattr(model, "tile_align", None), getattr(model, "tile_halo", None)
    if not (isinstance(align, int) and align >= 1 and isinstance(tile_halo, int) and tile_halo >= 0):
        raise PipelineError(f"checkpoint {path}: model {type(model).__name__} reports no tiling geometry "
                            f"(tile_align = {align!r}, tile_halo = {tile_halo!r}; expected whole numbers >= 1 and "
                            ">= 0): it cannot be tiled")
    halo = getattr(model, "halo", None)
    return align, None if halo is None else int(halo), tile_halo, halo is not None


def global_tail(model, halo: int) -> tuple[float | None, int | None]:
    """For a model whose global part is a :class:`recon.layers.MultiWiener` followed by a U-Net (MultiWienerNet):
    the largest fraction, over its K filters, of the Wiener inverse filter's impulse-response L1 mass beyond
    ``halo - unet.halo`` pixels (Chebyshev distance; the U-Net consumes ``unet.halo`` of the context), and the
    least halo (a multiple of 8) that makes it < 1e-6. ``(None, None)`` for another global model.

    The filter ``conj(H) / (|H|^2 + reg)`` (Yanny et al., Optica 9, 96 (2022), Eq. 2) is evaluated on a
    ``n x n`` grid, ``n >= max(256, 4 reach)``, so a tail beyond ``n / 2`` is not resolved (a lower bound there).
    """
    import torch

    wiener, unet = getattr(model, "wiener", None), getattr(model, "unet", None)
    if wiener is None or unet is None:
        return None, None
    reach = max(0, int(halo) - int(unet.halo))
    n = 1 << max(8, int(math.ceil(math.log2(4 * reach + max(wiener.psf_size) + 1))))
    with torch.no_grad():
        Hf = wiener.transfer((n, n), torch.float64, torch.device("cpu"))
        reg = wiener.reg.detach().to(torch.float64).cpu()[:, None, None]
        g = torch.fft.irfft2(Hf.conj() / (Hf.real.square() + Hf.imag.square() + reg), s=(n, n)).abs().numpy()
    d = np.minimum(np.arange(n), n - np.arange(n))
    cheb = np.maximum(d[:, None], d[None, :])
    mass = np.stack([np.bincount(cheb.ravel(), weights=gk.ravel(), minlength=n // 2 + 1) for gk in g])
    beyond = mass[:, ::-1].cumsum(axis=1)[:, ::-1] / mass.sum(axis=1, keepdims=True)  # beyond[:, r]: mass at >= r
    tail = float(beyond[:, reach + 1].max()) if reach + 1 < beyond.shape[1] else 0.0
    ok = np.nonzero(beyond.max(axis=0) < 1e-6)[0]
    need = (int(ok[0]) - 1 if ok.size else n // 2) + int(unet.halo)
    return tail, -(-need // 8) * 8


def _coordgates(model):
    from recon.layers.coordgate import CoordGate

    return [m for m in model.modules() if isinstance(m, CoordGate)]


def _is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, torch.OutOfMemoryError):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


class ModelRoute:
    """Tiled inference of a recon checkpoint (see the module docstring). Build it with :func:`model_route`."""

    name = "deblur"

    def __init__(self, checkpoint, *, device: str = "auto", batch: int = 4, halo: int | None = None,
                 robust_fraction: float = ROBUST_FRACTION, gate_cache_windows: int = 8,
                 gate_cache_bytes: int = 1024 * 2**20):
        self.path = str(Path(checkpoint).resolve())
        if not Path(self.path).is_file():
            raise PipelineError(f"checkpoint {checkpoint}: no such file")
        if device != "auto":
            resolve_device(device)  # refuse a bad name now, in the client
        self.device = device
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise PipelineError(f"batch = {batch!r}: expected a whole number >= 1")
        self.batch = batch
        self.robust_fraction = float(robust_fraction)
        self.gate_cache_windows = int(gate_cache_windows)
        self.gate_cache_bytes = int(gate_cache_bytes)
        if self.gate_cache_windows < 0 or self.gate_cache_bytes < 0:
            raise PipelineError("gate cache bounds must be >= 0 (0 turns the gate cache off)")
        self.sha256 = checkpoint_sha256(self.path)
        model, info = loaded_model(self.path, self.sha256, "cpu")
        self.lens = info.lens
        self.normalisation = info.normalisation
        self.input_peak = float(getattr(info, "input_peak", 1.0))
        self.model_config = dict(info.model_config)
        if self.normalisation.kind not in NORMALISATIONS:
            raise PipelineError(f"checkpoint {self.path}: normalisation kind {self.normalisation.kind!r} is not one "
                                f"pipelines applies to a frame ({', '.join(NORMALISATIONS)})")
        if not self.normalisation.vmax > self.normalisation.vmin:
            raise PipelineError(f"checkpoint {self.path}: normalisation range [{self.normalisation.vmin}, "
                                f"{self.normalisation.vmax}] is empty")
        from recon.models.registry import MODELS

        spec = MODELS.get(self.model_config.get("name"))
        dims = getattr(spec, "dims", None)
        if dims != 2:
            raise PipelineError(f"checkpoint {self.path}: model {self.model_config.get('name')!r} is "
                                f"{'a ' + str(dims) + '-D' if dims else 'not a known 2-D'} model; the deblur route "
                                "tiles 2-D frames and needs a 2-D model (unet, cgunet, pafu_unet, multiwienernet, ...)")
        chans = (self.model_config.get("in_channels", 1), self.model_config.get("out_channels", 1))
        if chans != (1, 1):
            raise PipelineError(f"checkpoint {self.path}: model {self.model_config.get('name')!r} has {chans[0]} input "
                                f"and {chans[1]} output channels; the deblur route feeds it one frame at a time "
                                "(1 -> 1 channels)")
        self.align, model_halo, self.tile_halo, self.exact = tile_geometry(model, self.path)
        if halo is None:
            halo = self.tile_halo
        try:
            bad = isinstance(halo, bool) or int(halo) != halo or halo < 0
        except (TypeError, ValueError):
            bad = True
        if bad:
            raise PipelineError(f"halo = {halo!r}: expected a whole number >= 0")
        self.halo = int(halo)
        self.model_halo = model_halo
        self.tail_beyond_halo = None
        if model_halo is not None and self.halo < model_halo:
            warnings.warn(f"halo {self.halo} < the model's receptive reach {model_halo}: tiles will differ from a "
                          "whole-frame pass near their borders (seams)", stacklevel=2)
        if not self.exact:
            self.tail_beyond_halo, need = global_tail(model, self.halo)
            tail = ("" if self.tail_beyond_halo is None else
                    f"; {self.tail_beyond_halo:.2g} of its Wiener filters' impulse response lies beyond this halo, "
                    f"the relative error of the Wiener layer's output (a halo of {need} px makes it < 1e-6)")
            warnings.warn(f"checkpoint {Path(self.path).name}: model {self.model_config.get('name')!r} has a global "
                          f"receptive field, so tiles with a halo of {self.halo} px approximate a whole-frame pass "
                          f"and cannot reproduce it exactly{tail}", UserWarning, stacklevel=2)
        self.position_aware = bool(getattr(model, "position_aware", True))

    # -- the Route protocol ----------------------------------------------------------------------
    def identity(self) -> dict:
        return {"route": self.name, "checkpoint": self.path, "checkpoint_sha256": self.sha256,
                "model_config": self.model_config, "lens": self.lens.name, "lens_fingerprint": self.lens.fingerprint,
                "normalisation": asdict(self.normalisation), "input_peak": self.input_peak, "robust_fraction": self.robust_fraction,
                "halo": self.halo, "align": self.align, "tiling_exact": self.exact,
                "tail_beyond_halo": self.tail_beyond_halo}

    def check_frame(self, frame_shape, origin=None):
        """Refuse a frame that does not lie inside the checkpoint's lens field at ``origin``."""
        return check_frame_window(self.lens, frame_shape, origin, what=f"frame (checkpoint {Path(self.path).name})")

    def prepare(self, frame, index: int, *, origin=None) -> dict:
        """``{"scale", ...}``: the frame's robust maximum (:func:`~pipelines.routes.base.frame_scale`), the value
        that maps to the checkpoint's ``input_peak`` (in the normalised range); plus the frame's origin and index."""
        (r0, c0), _ = self.check_frame(frame.frame_shape, origin)
        stats = frame_scale(frame, index, fraction=self.robust_fraction)
        positive_scale(stats, frame, index)
        stats.update(origin=[r0, c0], index=int(index))
        return stats

    def __call__(self, blocks, origins, stats) -> list[np.ndarray]:
        import torch

        origins = check_call(blocks, origins)
        scale = float(stats["scale"])
        if not (math.isfinite(scale) and scale > 0):
            raise PipelineError(f"stats scale = {scale!r}: expected the positive frame statistic of prepare()")
        vmin, vmax = float(self.normalisation.vmin), float(self.normalisation.vmax)
        device = resolve_device(self.device)
        model, _ = loaded_model(self.path, self.sha256, device)
        self._bound_gate_caches(model)
        filled, masks = zip(*(fill_block(b) for b in blocks)) if blocks else ((), ())
        gain = np.float32(self.input_peak / scale)  # the frame's robust max -> the training inputs' typical peak
        xs = [vmin + (vmax - vmin) * (f * gain) for f in filled]
        out: list[np.ndarray | None] = [None] * len(blocks)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, x in enumerate(xs):
            by_shape.setdefault(x.shape, []).append(i)
        with torch.no_grad():
            for shape, idx in by_shape.items():
                ys = self._run(model, device, [xs[i] for i in idx], [origins[i] for i in idx], self.batch)
                for i, y in zip(idx, ys):
                    out[i] = y
        from psfsim.checks import remask

        res = []
        for y, m, o in zip(out, masks, origins):
            bad = ~np.isfinite(y) if m is None else ~np.isfinite(y) & ~m
            if bad.any():
                r, c = (int(v) for v in np.argwhere(bad)[0])
                raise PipelineError(f"checkpoint {Path(self.path).name}: the model's output has {int(bad.sum())} "
                                    f"non-finite pixels outside the input's NaN mask in the tile read at lens-field "
                                    f"origin {tuple(o)}, shape {y.shape} (frame index {stats.get('index', '?')}; "
                                    f"first at tile pixel ({r}, {c})); the frame's values may be far outside the "
                                    "training range, or the checkpoint is damaged")
            y = ((y - np.float32(vmin)) * np.float32(scale / (self.input_peak * (vmax - vmin)))).astype(np.float32,
                                                                                                        copy=False)
            res.append(remask(y, m))
        return res

    # -- inside ----------------------------------------------------------------------------------
    def _forward(self, model, device, xs, origins) -> list[np.ndarray]:
        import torch

        shape = xs[0].shape
        x = torch.from_numpy(np.stack(xs)[:, None]).to(device)
        coords = None
        if self.position_aware:
            from recon import batch_coords

            coords = batch_coords(self.lens, origins=np.asarray(origins, np.int64), shape=shape, device=device)
        y = model(x, coords)
        return list(y[:, 0].float().cpu().numpy())

    def _run(self, model, device, xs, origins, batch) -> list[np.ndarray]:
        """Blocks of one shape in micro-batches; on out-of-memory halve the batch, then split the block."""
        out: list[np.ndarray] = []
        i = 0
        while i < len(xs):
            try:
                out += self._forward(model, device, xs[i:i + batch], origins[i:i + batch])
                i += batch
            except Exception as e:  # noqa: BLE001 (only out-of-memory is handled; the rest re-raised)
                if not _is_oom(e):
                    raise
                _empty_cache(device)
                if batch > 1:
                    warnings.warn(f"out of memory on {device} with a batch of {batch} blocks of {xs[0].shape}: "
                                  f"halving the batch to {batch // 2}", ResourceWarning, stacklevel=2)
                    batch //= 2
                    continue
                out.append(self._split(model, device, xs[i], origins[i]))
                i += 1
        return out

    def _split(self, model, device, x, origin) -> np.ndarray:
        """One block computed in sub-tiles of half its size (same result: halo and alignment kept)."""
        from ..tiling import TileGrid

        side = (min(max(x.shape) // 2, min(x.shape)) // self.align) * self.align
        grid = TileGrid(x.shape, tile=side, halo=self.halo, align=self.align) if side >= max(self.align, 8) else None
        if grid is None or (grid.read_shape[0] >= x.shape[0] and grid.read_shape[1] >= x.shape[1]):
            raise PipelineError(f"out of memory on {device} even for one block of {x.shape} (a sub-tile with the "
                                f"halo of {self.halo} px is no smaller): use a smaller --tile, a smaller model or "
                                "--device cpu")
        warnings.warn(f"out of memory on {device} for one block of {x.shape}: computing it in sub-tiles of "
                      f"{side} px (halo {self.halo}); a smaller --tile avoids this", ResourceWarning, stacklevel=2)
        y = np.empty(x.shape, np.float32)
        for t in grid:
            sub = x[t.rows, t.cols]
            r = self._run(model, device, [np.ascontiguousarray(sub)],
                          [(origin[0] + t.read[0], origin[1] + t.read[2])], 1)[0]
            y[t.out[0]:t.out[1], t.out[2]:t.out[3]] = r[t.inner]
        return y

    def _bound_gate_caches(self, model) -> None:
        """Bound every CoordGate layer's per-window gate cache: ``gate_cache_windows`` windows and a share of
        ``gate_cache_bytes`` in proportion to the layer's gate size per window (measured once a window has been
        cached; until then each layer gets an equal share)."""
        gates = _coordgates(model)
        if not gates:
            return
        if self.gate_cache_windows == 0 or self.gate_cache_bytes == 0:
            for g in gates:
                g.cache_gates = False
            return
        state = getattr(model, "_pipelines_gate_bounds", None)
        if state == "sized":
            return
        sizes = [g._gates.nbytes / max(1, len(g._gates)) for g in gates]
        if state is None or all(s > 0 for s in sizes):
            total = sum(sizes)
            for g, s in zip(gates, sizes):
                share = s / total if total > 0 and all(v > 0 for v in sizes) else 1.0 / len(gates)
                g.cache_gates = True
                g._gates.max_items = self.gate_cache_windows
                g._gates.max_bytes = max(1, int(self.gate_cache_bytes * share))
                g._gates._trim()
            model._pipelines_gate_bounds = "sized" if total > 0 and all(v > 0 for v in sizes) else "equal"

    def __repr__(self) -> str:
        return (f"ModelRoute({Path(self.path).name}, {self.model_config.get('name')}, halo={self.halo}, "
                f"align={self.align}, batch={self.batch}, device={self.device!r})")


def _empty_cache(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()


def model_route(checkpoint, *, device: str = "auto", batch: int = 4, halo: int | None = None, **options) -> ModelRoute:
    """The ``deblur`` route of a recon checkpoint (:class:`ModelRoute`).

    Parameters
    ----------
    checkpoint : path
        A ``recon-checkpoint/1`` file (loaded with ``weights_only=True``).
    device : {"auto", "cpu", "cuda"}
        ``auto``: each worker's GPU when it has one, else its CPU.
    batch : int
        Blocks per forward pass (halved on out-of-memory).
    halo : int, optional
        Context per side, pixels; default the model's ``tile_halo`` (its exact receptive reach; for a model with a
        global receptive field, MultiWienerNet, a practical context: tiling is then approximate and warned
        about, with the share of the Wiener filters' response beyond the halo).
    options :
        ``robust_fraction`` (frame statistic), ``gate_cache_windows``, ``gate_cache_bytes``.
    """
    return ModelRoute(checkpoint, device=device, batch=batch, halo=halo, **options)
