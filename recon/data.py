"""Training data for recon: crops of a psfsim store, or clean crops blurred on the training device.

Two sources of :class:`Batch` es (``x (B, C, h, w)``, ``coords (B, 2, h, w)``, ``y (B, 1, h, w)``,
``origins (B, 2)``), the same type whichever the source, so the trainer does not care:

* :class:`StoreDataset`: a torch ``Dataset`` over a :class:`psfsim.DatasetReader` (lazy, picklable: each
  DataLoader worker reopens the store) with random crops whose **field window travels with them**: a crop's
  ``origin`` is the sample's origin plus the crop offset, and its ``coords`` come from
  :func:`psfsim.field_coords` of that window, never recomputed by hand. Use :func:`loader` to batch it.
* :class:`OnTheFlyDataset`: clean source crops (CPU, numpy, :func:`psfsim.sources.parse_source`) blurred at
  random field windows **on the training device** by psfsim's batched torch operator
  (:func:`psfsim.torch_blur`), with the same Poisson-Gaussian noise as the stores (:func:`torch_noise`).

Randomness is a pure function of seeds, never of a global RNG state: a store crop of ``(seed, epoch, index)``,
a shuffled order of ``(seed, epoch)``, an on-the-fly training batch of ``(seed, step)``, the on-the-fly
validation set of ``seed`` alone. A resumed run therefore needs only its epoch (or step) to see the same data.

**No geometric augmentation.** A blurred sample is the lens's blur *at its field coordinates*; a flipped or
rotated blurred crop is blurred by a mirrored PSF that the lens does not have at those coordinates (coma and
astigmatism point along the field radius), so it would teach the model a wrong physics. psfsim already
augments the *source* before blurring (:mod:`psfsim.sources`), which is the physically correct place.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, fields

import numpy as np
import torch

from .errors import ReconError

__all__ = ["Batch", "StoreDataset", "OnTheFlyDataset", "SeededSampler", "collate", "loader", "torch_noise",
           "dataset_identity", "ARRAYS"]

#: The per-sample image arrays of a psfsim store (``psfsim.dataset.spec.ARRAYS``).
ARRAYS = ("sharp", "blurred", "wiener", "wiener_sv")
BASELINES = ("wiener", "wiener_sv")


# ----------------------------------------------------------------------------------------------------------
# batches
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Batch:
    """One training batch, whichever the data source.

    Attributes
    ----------
    x : Tensor (B, C, h, w)
        Model input (``blurred``, then the Wiener baselines when asked for).
    coords : Tensor (B, 2, h, w)
        Field coordinates of x's pixels (``model(x, coords)``).
    y : Tensor (B, 1, h, w)
        Target (``sharp``).
    origins : Tensor (B, 2) int64
        Each crop's window origin ``(row, col)`` in the lens field.
    index : Tensor (B,) int64
        Store sample indices (on-the-fly: the position in the batch's generation order).
    """

    x: torch.Tensor
    coords: torch.Tensor
    y: torch.Tensor
    origins: torch.Tensor
    index: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    def pin_memory(self) -> "Batch":  # DataLoader(pin_memory=True) calls this on custom batch types
        return Batch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def __len__(self) -> int:
        return int(self.x.shape[0])


def collate(items) -> Batch:
    """Stack :class:`StoreDataset` items (dicts) into a :class:`Batch`."""
    if isinstance(items, Batch):
        return items
    return Batch(x=torch.stack([it["input"] for it in items]), coords=torch.stack([it["coords"] for it in items]),
                 y=torch.stack([it["target"] for it in items]), origins=torch.stack([it["origin"] for it in items]),
                 index=torch.as_tensor([int(it["index"]) for it in items], dtype=torch.int64))


# ----------------------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------------------
def _pair(v, what: str) -> tuple[int, int]:
    try:
        t = (v, v) if np.isscalar(v) else tuple(v)
        if len(t) != 2 or any(int(a) != a or isinstance(a, bool) for a in t):
            raise ValueError
        return int(t[0]), int(t[1])
    except (TypeError, ValueError):
        raise ReconError(f"{what} = {v!r}: expected an integer or two (h, w)") from None


def _check_crop(crop, size, multiple_of: int, what: str = "crop") -> tuple[int, int]:
    """``crop`` (None: the whole sample ``size``) as ``(h, w)``, checked against the samples and the model."""
    m = int(multiple_of)
    if m < 1:
        raise ReconError(f"multiple_of = {multiple_of!r}: expected an integer >= 1 (2^depth of the model)")
    h, w = size if crop is None else _pair(crop, what)
    label = f"{what} {h}x{w}" if crop is not None else f"samples of {h}x{w} (crop None: whole samples)"
    if h < 1 or w < 1:
        raise ReconError(f"{label}: expected at least 1x1")
    if h > size[0] or w > size[1]:
        raise ReconError(f"{label}: larger than the samples of {size[0]}x{size[1]}")
    if h % m or w % m:
        raise ReconError(f"{label}: not a multiple of {m} (2^depth of the model); use e.g. "
                         f"{max(m, h // m * m)}x{max(m, w // m * m)}")
    return h, w


def _open_reader(path):
    import psfsim

    try:
        return psfsim.DatasetReader(path)
    except ReconError:
        raise
    except psfsim.PsfsimError as e:  # incomplete store, missing or malformed array, not a store: one message
        raise ReconError(f"--data {path}: {e}") from None


def dataset_identity(reader) -> dict:
    """What identifies a store (recorded in checkpoints): path, creation time, SHA-256 of its spec, lens
    fingerprint, sample size and count."""
    spec = json.dumps(reader.spec.to_json(), sort_keys=True, separators=(",", ":"))
    return {"kind": "store", "path": str(os.path.abspath(reader.path)), "created": str(reader.attrs.get("created", "")),
            "spec_sha256": hashlib.sha256(spec.encode()).hexdigest(), "lens_fingerprint": reader.lens.fingerprint,
            "n": len(reader), "size": list(reader.size)}


# ----------------------------------------------------------------------------------------------------------
# store dataset
# ----------------------------------------------------------------------------------------------------------
class StoreDataset(torch.utils.data.Dataset):
    """Crops of one split of a psfsim dataset store, with their field coordinates.

    Parameters
    ----------
    path : path
        The store (``DATA.zarr``), complete.
    split : {"train", "val", "test"}
    crop : int or (int, int), optional
        Crop shape ``(h, w)``. ``train``: a random crop per (``seed``, epoch, sample); ``val`` / ``test``: the
        centre crop (deterministic). None: whole samples.
    arrays_in : sequence of str
        Input channels, of ``blurred``, ``wiener``, ``wiener_sv`` (the target is always ``sharp``).
    with_baselines : bool
        Append ``wiener`` and ``wiener_sv`` as input channels (those not already in ``arrays_in``).
    seed : int
        Seed of the crops (and of :class:`SeededSampler`'s order).
    multiple_of : int
        The crop (or the whole sample) must be a multiple of this: ``2 ** depth`` of a U-Net.
    random_crop : bool, optional
        Random (default for ``train``) or centre crops.
    cache : bool
        Read the split once into memory (every array it uses); workers forked afterwards share it.

    Each item is a dict: ``input (C, h, w)`` float32, ``target (1, h, w)`` float32, ``coords (2, h, w)``
    float32, ``origin (2,)`` int64 (the crop's window origin in the lens field: sample origin + offset),
    ``index`` (the store sample). :func:`collate` stacks them into a :class:`Batch`. ``dataset[k]`` is the
    split's ``k``-th sample; the crop depends on ``(seed, epoch, sample index)`` (:meth:`set_epoch`).

    No geometric augmentation (see the module docstring: a flipped blurred crop no longer matches the lens's
    blur at its coordinates).
    """

    def __init__(self, path, split: str = "train", crop=None, arrays_in=("blurred",), with_baselines: bool = False,
                 seed: int = 0, multiple_of: int = 1, *, random_crop: bool | None = None, cache: bool = False):
        self.reader = _open_reader(path)
        splits = self.reader.splits
        if split not in splits:
            raise ReconError(f"split {split!r}: unknown; expected one of {', '.join(splits)}")
        self.split = split
        self.indices = splits[split]
        if len(self.indices) == 0:
            raise ReconError(f"--data {path}: split {split!r} is empty ({len(self.reader)} samples, "
                             f"split fractions {list(self.reader.spec.split)})")
        arrays_in = (arrays_in,) if isinstance(arrays_in, str) else tuple(arrays_in)
        if with_baselines:
            arrays_in += tuple(b for b in BASELINES if b not in arrays_in)
        for a in arrays_in:
            if a not in ARRAYS or a == "sharp":
                raise ReconError(f"input array {a!r}: not in the store; expected some of blurred, wiener, wiener_sv")
        if not arrays_in or len(set(arrays_in)) != len(arrays_in):
            raise ReconError(f"arrays_in = {arrays_in!r}: expected distinct names of blurred, wiener, wiener_sv")
        self.arrays_in = arrays_in
        for a in ("sharp", *arrays_in):  # consolidated metadata would list an array whose folder is gone
            if not (self.reader.path / a / "zarr.json").is_file():
                raise ReconError(f"--data {path}: array {a!r} is missing from the store (no {a}/zarr.json); "
                                 "re-run psfsim simulate --overwrite")
        self.size = self.reader.size
        self.crop = _check_crop(crop, self.size, multiple_of)
        self.seed = int(seed)
        self.random_crop = (split == "train") if random_crop is None else bool(random_crop)
        # shared memory: DataLoader workers (forked or spawned, persistent or not) see set_epoch at once
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._cache = self._load_cache() if cache else None

    # -- metadata -------------------------------------------------------------------------------------------
    @property
    def lens(self):
        return self.reader.lens

    @property
    def normalisation(self):
        return self.reader.normalisation

    @property
    def identity(self) -> dict:
        return dataset_identity(self.reader)

    @property
    def in_channels(self) -> int:
        return len(self.arrays_in)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Crops (and :class:`SeededSampler`'s order) of epoch ``epoch``. Call it before ``iter(loader)``, never
        while a loader is being iterated (its workers read the epoch when they make each item)."""
        self._epoch[0] = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return (f"StoreDataset({str(self.reader.path)!r}, split={self.split!r}, {len(self)} samples, crop "
                f"{self.crop[0]}x{self.crop[1]}, inputs {'+'.join(self.arrays_in)})")

    # -- cache ----------------------------------------------------------------------------------------------
    def _load_cache(self) -> dict:
        h, w = self.size
        need = len(self.indices) * h * w * 4 * (len(self.arrays_in) + 1)
        try:
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux
            avail = None
        if avail is not None and need > avail // 2:
            raise ReconError(f"cache=True: split {self.split!r} needs {need / 2**30:.2f} GiB, more than half the "
                             f"free memory ({avail / 2**30:.2f} GiB); train without the cache")
        b = self.reader.read(self.indices, arrays=("sharp", *self.arrays_in))
        imgs = {k: getattr(b, k) for k in ("sharp", *self.arrays_in)}
        self._check_finite(imgs, self.indices)
        return imgs

    def _check_finite(self, imgs: dict, idx) -> None:
        """A chunk never written (or whose shard file is gone) reads as the fill value, NaN: refuse it."""
        for k, a in imgs.items():
            bad = np.isnan(a.reshape(len(a), -1)).any(axis=1)
            if bad.any():
                raise ReconError(f"--data {self.reader.path}: array {k!r} has no data for sample {int(idx[np.argmax(bad)])} "
                                 "(a missing or damaged chunk: NaN fill value); re-run psfsim simulate --overwrite")

    # -- items ----------------------------------------------------------------------------------------------
    def offset(self, index: int, epoch: int | None = None) -> tuple[int, int]:
        """Crop offset ``(row, col)`` inside store sample ``index`` at ``epoch`` (default: the current one)."""
        (H, W), (h, w) = self.size, self.crop
        if not self.random_crop:
            return (H - h) // 2, (W - w) // 2
        e = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, e, int(index)])
        return int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))

    def _positions(self, ks) -> np.ndarray:
        ks = np.asarray(ks, np.int64)
        n = len(self.indices)
        if ks.size and (ks.min() < -n or ks.max() >= n):
            raise IndexError(f"item {int(ks[(ks < -n) | (ks >= n)][0])}: expected 0 <= item < {n}")
        return ks % n

    def __getitem__(self, k) -> dict:
        return self.__getitems__([k])[0]

    def __getitems__(self, ks) -> list[dict]:
        """Several items with one store read (every chunk fetched concurrently); used by DataLoader."""
        import psfsim

        pos = self._positions(ks)
        idx = self.indices[pos]
        names = ("sharp", *self.arrays_in)
        if self._cache is not None:
            imgs = {k: self._cache[k][pos] for k in names}
        else:
            b = self.reader.read(idx, arrays=names)
            imgs = {k: getattr(b, k) for k in names}
            self._check_finite(imgs, idx)
        h, w = self.crop
        offsets = np.array([self.offset(int(i)) for i in idx], np.int64).reshape(-1, 2)
        crop_origins = self.reader.origins[idx] + offsets  # each crop's window in the lens field
        coords = psfsim.field_coords_batch(self.lens, origins=crop_origins, shape=(h, w), dtype=np.float32)
        out = []
        for j, i in enumerate(idx):
            r, c = offsets[j]
            o = (int(crop_origins[j, 0]), int(crop_origins[j, 1]))
            inp = np.stack([imgs[a][j, r : r + h, c : c + w] for a in self.arrays_in])
            out.append({"input": torch.from_numpy(np.ascontiguousarray(inp, np.float32)),
                        "target": torch.from_numpy(np.ascontiguousarray(imgs["sharp"][j, None, r : r + h, c : c + w],
                                                                        np.float32)),
                        "coords": torch.from_numpy(coords[j]),
                        "origin": torch.tensor(o, dtype=torch.int64), "index": int(i)})
        return out


class SeededSampler(torch.utils.data.Sampler):
    """Order of one epoch: a permutation of ``(seed, epoch)`` (``shuffle``) or ``0..n-1``; the epoch is read
    from the dataset (:meth:`StoreDataset.set_epoch`), so resuming needs only the epoch number."""

    def __init__(self, dataset, *, shuffle: bool, seed: int = 0):
        self.dataset, self.shuffle, self.seed = dataset, bool(shuffle), int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        n = len(self.dataset)
        if not self.shuffle:
            return iter(range(n))
        e = getattr(self.dataset, "epoch", 0)
        return iter(np.random.default_rng([self.seed, e, 2**31]).permutation(n).tolist())


def loader(dataset, batch: int, workers: int = 0, device="cpu", *, shuffle: bool | None = None, seed: int | None = None,
           drop_last: bool | None = None, prefetch_factor: int | None = None) -> torch.utils.data.DataLoader:
    """A DataLoader of :class:`Batch` es over a :class:`StoreDataset`.

    ``shuffle`` and ``drop_last`` default to True for the train split; the order is :class:`SeededSampler`'s
    (``seed`` defaults to the dataset's). Pinned memory when ``device`` is CUDA, persistent workers, a seeded
    generator. Call ``dataset.set_epoch(e)`` before each epoch's ``iter(loader)``.
    """
    if int(batch) != batch or batch < 1:
        raise ReconError(f"--batch {batch!r}: expected an integer >= 1")
    if int(workers) != workers or workers < 0:
        raise ReconError(f"workers = {workers!r}: expected an integer >= 0")
    train = getattr(dataset, "split", "train") == "train"
    shuffle = train if shuffle is None else shuffle
    drop_last = (train and len(dataset) >= batch) if drop_last is None else drop_last
    seed = getattr(dataset, "seed", 0) if seed is None else int(seed)
    kw = {}
    if workers > 0:
        kw = {"persistent_workers": True, "prefetch_factor": prefetch_factor or 2}
    return torch.utils.data.DataLoader(dataset, batch_size=int(batch), sampler=SeededSampler(dataset, shuffle=shuffle, seed=seed),
                                       num_workers=int(workers), collate_fn=collate, drop_last=drop_last,
                                       pin_memory=torch.device(device).type == "cuda",
                                       generator=torch.Generator().manual_seed(seed), **kw)


# ----------------------------------------------------------------------------------------------------------
# noise
# ----------------------------------------------------------------------------------------------------------
def torch_noise(image: torch.Tensor, noise, generator: torch.Generator | None = None) -> torch.Tensor:
    """:meth:`psfsim.NoiseModel.apply` in torch, on ``image``'s device: ``(Poisson(photons x) + N(0, read^2)) /
    photons`` (``photons`` None: ``x + N(0, read^2)``), negative means taken as 0 photons. ``generator`` must
    live on ``image``'s device. Same distribution as the numpy one, not the same draws."""
    if noise.is_noiseless:
        return image.clone()
    if noise.photons is None:
        return image + noise.read_noise * torch.randn(image.shape, generator=generator, device=image.device,
                                                      dtype=image.dtype)
    p = float(noise.photons)
    counts = torch.poisson(image.clamp(min=0) * p, generator=generator)
    if noise.read_noise > 0:
        counts = counts + noise.read_noise * torch.randn(image.shape, generator=generator, device=image.device,
                                                         dtype=image.dtype)
    return counts / p


# ----------------------------------------------------------------------------------------------------------
# on-the-fly data
# ----------------------------------------------------------------------------------------------------------
_TRAIN, _VAL = 0, 1  # seed streams


class OnTheFlyDataset:
    """Clean crops of a source blurred at random field windows on the training device; never a repeat.

    Parameters
    ----------
    lens : Lens, str or path
    source : str
        A psfsim source spec (``cells``, ``stars``, ``skimage:camera``, a folder, ...).
    crop : int or (int, int)
        Crop shape ``(h, w)``; a multiple of ``multiple_of``, at most the lens field.
    batch : int
        Samples per training step.
    noise : psfsim.NoiseModel, optional
        Poisson-Gaussian noise (default none), as the stores' (:func:`torch_noise`).
    seed : int
    device : str or torch.device
        Where the blur, the noise and the coordinates are computed (and the batches live).
    steps_per_epoch : int
        Steps :meth:`epoch` yields.
    val_samples : int
        Size of the fixed validation set (:meth:`validation`).
    tol, rank : the fast operator's (:func:`psfsim.torch_blur`).

    Batch of global step ``s`` (:meth:`batch`) is a pure function of ``(seed, s)``: sample ``i``'s window and
    source crop from a numpy generator seeded by ``(seed, 0, s, i)``, its noise from a torch generator seeded
    by ``(seed, 0, s)``. The validation set uses stream 1: ``(seed, 1, j, i)``, fixed whatever the training.

    Each source region (crop plus the PSF half-width ``m = k // 2`` on every side, the part outside the lens
    field set to 0) is divided by its maximum, exactly as psfsim's stores (normalisation
    ``source_region_max``); it is blurred as a whole (``allow_outside=True``, so light from the margin reaches
    the crop's edges) and the margin is cropped off.
    """

    def __init__(self, lens, source: str, *, crop, batch: int, noise=None, seed: int = 0, device="cpu",
                 steps_per_epoch: int = 100, val_samples: int = 64, multiple_of: int = 1, tol: float = 0.01,
                 rank: int | None = None):
        import psfsim
        from psfsim.sources import parse_source

        try:
            self.lens = lens if isinstance(lens, psfsim.Lens) else psfsim.load_lens(lens)
            self.source = parse_source(source)
            self.noise = noise if noise is not None else psfsim.NoiseModel()
        except ReconError:
            raise
        except psfsim.PsfsimError as e:
            raise ReconError(str(e)) from None
        self.source_spec = str(source)
        H, W = self.lens.field.shape_px
        self.crop = _check_crop(crop, (H, W), multiple_of)
        self.margin = self.lens.psf_sampling.size_px // 2
        h, w = self.crop
        try:
            self.source.check((h + 2 * self.margin, w + 2 * self.margin))
        except psfsim.PsfsimError as e:
            raise ReconError(str(e)) from None
        for name, v, lo in (("batch", batch, 1), ("steps_per_epoch", steps_per_epoch, 1), ("val_samples", val_samples, 1)):
            if int(v) != v or v < lo:
                raise ReconError(f"{name} = {v!r}: expected an integer >= {lo}")
        self.batch_size, self.steps_per_epoch, self.val_samples = int(batch), int(steps_per_epoch), int(val_samples)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.tol, self.rank = float(tol), rank
        self.blur = psfsim.torch_blur(self.lens, rank=rank, tol=tol).to(self.device)
        self._val: list[Batch] | None = None

    # -- metadata -------------------------------------------------------------------------------------------
    in_channels = 1

    @property
    def normalisation(self):
        from psfsim.dataset.reader import Normalisation

        return Normalisation(kind="source_region_max", margin_px=int(self.margin), vmin=0.0, vmax=1.0)

    @property
    def identity(self) -> dict:
        return {"kind": "on-the-fly", "lens_fingerprint": self.lens.fingerprint, "source": self.source_spec,
                "crop": list(self.crop), "seed": self.seed, "noise": self.noise.to_dict(), "tol": self.tol,
                "rank": self.rank, "val_samples": self.val_samples}

    # -- generation -----------------------------------------------------------------------------------------
    def _sources(self, stream: int, step: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` normalised source regions ``(n, h + 2m, w + 2m)`` float32 and their crops' origins ``(n, 2)``."""
        from psfsim.dataset.sample import source_region

        (H, W), (h, w), m = self.lens.field.shape_px, self.crop, self.margin
        regions = np.empty((n, h + 2 * m, w + 2 * m), np.float32)
        origins = np.empty((n, 2), np.int64)
        for i in range(n):
            rng = np.random.default_rng([self.seed, stream, int(step), i])
            o = (int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1)))
            regions[i] = source_region(self.source, (H, W), (o[0] - m, o[1] - m), regions.shape[1:], rng,
                                       index=int(step) * n + i)
            origins[i] = o
        return regions, origins

    def _make(self, stream: int, step: int, n: int, *, noisy: bool = True) -> Batch:
        from psfsim import field_coords_torch

        regions, origins = self._sources(stream, step, n)
        m, (h, w), dev = self.margin, self.crop, self.device
        src = torch.from_numpy(regions).to(dev)[:, None]
        o = torch.from_numpy(origins).to(dev)
        with torch.no_grad():
            blurred = self.blur(src, o - m, allow_outside=True)[..., m : m + h, m : m + w]
            if noisy and not self.noise.is_noiseless:
                g = torch.Generator(device=dev).manual_seed(
                    int(np.random.SeedSequence([self.seed, stream, int(step)]).generate_state(1, np.uint64)[0] >> 1))
                blurred = torch_noise(blurred, self.noise, g)
        # float64 then float32: bit-equal to psfsim.field_coords(..., dtype=float32), as the store crops' coords
        coords = field_coords_torch(self.lens, origins=o, shape=(h, w), device=dev, dtype=torch.float64).float()
        return Batch(x=blurred.float().contiguous(), coords=coords, y=src[..., m : m + h, m : m + w].contiguous(),
                     origins=o, index=torch.arange(n, device=dev))

    def batch(self, step: int, *, noisy: bool = True) -> Batch:
        """Training batch of global step ``step`` (never the same twice; the same for the same step)."""
        return self._make(_TRAIN, int(step), self.batch_size, noisy=noisy)

    def epoch(self, epoch: int):
        """The :attr:`steps_per_epoch` training batches of ``epoch``."""
        for s in range(int(epoch) * self.steps_per_epoch, (int(epoch) + 1) * self.steps_per_epoch):
            yield self.batch(s)

    def validation(self) -> list[Batch]:
        """The fixed validation set (``val_samples`` samples in batches of ``batch``), made once, kept on the device."""
        if self._val is None:
            n, b = self.val_samples, self.batch_size
            self._val = [self._make(_VAL, j, min(b, n - j * b)) for j in range((n + b - 1) // b)]
        return self._val

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __repr__(self) -> str:
        return (f"OnTheFlyDataset(lens {self.lens.name!r}, source {self.source_spec!r}, crop {self.crop[0]}x"
                f"{self.crop[1]}, batch {self.batch_size}, device {self.device})")
