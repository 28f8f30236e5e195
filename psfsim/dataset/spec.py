"""What determines a dataset: :class:`SimulationSpec`, its validation, the window origins and the splits.

Pure functions of the spec: every origin and every split assignment derives from ``(seed, index)`` alone, so
a resumed or parallel run computes the same values as an uninterrupted one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import PsfsimError

__all__ = ["SimulationSpec", "validate_spec", "sample_origins", "split_codes", "split_indices", "SPLIT_NAMES",
           "FORMAT", "ARRAYS"]

#: Store format written by this version; readers refuse any other.
FORMAT = "psfsim-dataset/2"
#: The per-sample image arrays, each ``(N, H, W)`` float32.
ARRAYS = ("sharp", "blurred", "wiener", "wiener_sv")
#: Split names, in the order of their codes in the ``split`` array (0, 1, 2).
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class SimulationSpec:
    """Everything that determines a dataset's content (compared on resume; ``workers`` is not part of it).

    Attributes
    ----------
    lens : dict
        The lens description as written in its TOML (``Lens.to_dict()``).
    source : str
        Source spec (:func:`psfsim.sources.parse_source`).
    n : int
        Number of samples.
    size : (int, int)
        Sample shape ``(H, W)`` in pixels; at most the lens field.
    seed : int
        Seed of everything random (origins, source crops and augmentations, noise, splits); >= 0.
    photons : float or None
        Photo-electrons at value 1.0 (Poisson noise); ``None``: no shot noise.
    read_noise : float
        Gaussian read noise, electrons RMS (image units when ``photons`` is None).
    split : (float, float, float)
        Train / val / test fractions, summing to 1.
    origins : {"random", "tile"}
        Random (seeded) window origins, or windows tiling the field evenly (sample ``i`` takes tile
        ``i mod n_tiles``). Irrelevant when ``size`` is the whole field.
    tol : float
        Target relative error of the fast (low-rank) blur operator.
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
        """The spec as plain JSON types (lists for tuples), as stored in the ``spec`` attribute."""
        d = asdict(self)
        d["size"] = list(self.size)
        d["split"] = list(self.split)
        return json.loads(json.dumps(d))

    @classmethod
    def from_json(cls, d: dict) -> "SimulationSpec":
        """Inverse of :meth:`to_json`."""
        d = dict(d)
        d["size"] = tuple(d["size"])
        d["split"] = tuple(d["split"])
        return cls(**d)


def validate_spec(spec: SimulationSpec):
    """Check a spec against its lens and source; return ``(lens, source)``.

    Raises
    ------
    PsfsimError
        Naming the argument, its value and what was expected.
    """
    from ..lens import lens_from_dict
    from ..noise import NoiseModel
    from ..sources import parse_source

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
    """Window origins ``(len(indices), 2)`` int64 ``(row, col)`` in the lens field, from ``(seed, index)`` alone."""
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


def split_codes(spec: SimulationSpec) -> np.ndarray:
    """Seeded train / val / test partition: ``(n,)`` uint8, the code of each sample (index in :data:`SPLIT_NAMES`)."""
    perm = np.random.default_rng(np.random.SeedSequence([spec.seed, 2**31 - 1])).permutation(spec.n)
    n_train = int(round(spec.split[0] * spec.n))
    n_val = int(round(spec.split[1] * spec.n))
    codes = np.full(spec.n, 2, np.uint8)
    codes[perm[:n_train]] = 0
    codes[perm[n_train : n_train + n_val]] = 1
    return codes


def split_indices(spec: SimulationSpec) -> dict[str, np.ndarray]:
    """Split name -> sorted int64 sample indices (the same partition as :func:`split_codes`)."""
    codes = split_codes(spec)
    return {name: np.flatnonzero(codes == c).astype(np.int64) for c, name in enumerate(SPLIT_NAMES)}
