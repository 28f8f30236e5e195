"""What determines a dataset: :class:`SimulationSpec`, its validation, the window origins and the splits.

Pure functions of the spec: every origin and every split assignment derives from ``(seed, index)`` alone, so
a resumed or parallel run computes the same values as an uninterrupted one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import PsfsimError

__all__ = ["SimulationSpec", "validate_spec", "check_spec_values", "sample_origins", "split_codes", "split_indices",
           "simulate_command", "SPLIT_NAMES", "FORMAT", "ARRAYS", "MAX_SAMPLES", "MAX_SAMPLE_PIXELS"]

#: Store format written by this version; readers refuse any other.
FORMAT = "psfsim-dataset/3"
#: The per-sample image arrays, each ``(N, H, W)`` float32.
ARRAYS = ("sharp", "blurred", "wiener", "wiener_sv")
#: Split names, in the order of their codes in the ``split`` array (0, 1, 2).
SPLIT_NAMES = ("train", "val", "test")
#: Most samples a dataset may have (written or read): bounds what a reader allocates for ``origin`` / ``split``.
MAX_SAMPLES = 10**7
#: Most pixels ``H * W`` of one sample (8192 x 8192): bounds one chunk (and one read) of an image array.
MAX_SAMPLE_PIXELS = 2**26


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
    from ..sources import parse_source

    lens = lens_from_dict(spec.lens, where="lens")
    check_spec_values(spec, lens)
    source = parse_source(spec.source)
    m = lens.psf_sampling.size_px // 2
    h, w = spec.size
    source.check((h + 2 * m, w + 2 * m))
    return lens, source


def check_spec_values(spec: SimulationSpec, lens) -> None:
    """The checks of :func:`validate_spec` that need neither the source nor any file: sizes (bounded by
    :data:`MAX_SAMPLES` and :data:`MAX_SAMPLE_PIXELS`), seed, split fractions, origins, noise.

    Raises
    ------
    PsfsimError
        Naming the argument, its value and what was expected.
    """
    from ..noise import NoiseModel

    if int(spec.n) != spec.n or not 0 < spec.n <= MAX_SAMPLES:
        raise PsfsimError(f"--n {spec.n}: expected a whole number > 0 and <= {MAX_SAMPLES}")
    H, W = lens.field.shape_px
    h, w = spec.size
    if h < 8 or w < 8:
        raise PsfsimError(f"--size {h},{w}: expected at least 8,8")
    if h > H or w > W:
        raise PsfsimError(f"--size {h},{w} is larger than the lens field {H},{W}")
    if h * w > MAX_SAMPLE_PIXELS:
        raise PsfsimError(f"--size {h},{w}: expected at most {MAX_SAMPLE_PIXELS} pixels a sample")
    if int(spec.seed) != spec.seed or spec.seed < 0:
        raise PsfsimError(f"--seed {spec.seed}: expected a whole number >= 0")
    if len(spec.split) != 3 or not all(np.isfinite(s) and s >= 0 for s in spec.split) or abs(sum(spec.split) - 1) > 1e-6:
        raise PsfsimError(f"--split {','.join(str(s) for s in spec.split)}: expected three fractions >= 0 summing to 1")
    if spec.origins not in ("random", "tile"):
        raise PsfsimError(f"--origins {spec.origins!r}: expected 'random' or 'tile'")
    if not (np.isfinite(spec.tol) and 0 < spec.tol < 1):
        raise PsfsimError(f"tol {spec.tol}: expected 0 < tol < 1")
    NoiseModel(spec.photons, spec.read_noise)


def _preset_name(lens_dict: dict) -> str | None:
    """The bundled preset whose description is ``lens_dict``, if any."""
    import warnings
    from pathlib import Path

    from ..lens import load_lens

    for toml in sorted((Path(__file__).parent.parent / "presets").glob("*.toml")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if load_lens(toml.stem, check_psf_box=False).to_dict() == lens_dict:
                    return toml.stem
        except PsfsimError:
            continue
    return None


def simulate_command(spec: SimulationSpec, out) -> str:
    """The ``psfsim simulate`` command line that writes (or finishes) the dataset of ``spec`` at ``out``,
    rebuilt from the spec alone (never from text stored in a file): absolute ``--out``, every value
    shell-quoted. A lens that is not a bundled preset appears as ``LENS.toml``, followed by a note naming it.
    """
    import os
    import shlex

    preset = _preset_name(spec.lens)
    args = ["--lens", preset or "LENS.toml", "--source", spec.source, "--n", str(spec.n),
            "--size", f"{spec.size[0]},{spec.size[1]}", "--seed", str(spec.seed)]
    if spec.photons is not None:
        args += ["--photons", repr(float(spec.photons))]
    if spec.read_noise:
        args += ["--read-noise", repr(float(spec.read_noise))]
    args += ["--split", ",".join(repr(float(v)) for v in spec.split), "--origins", spec.origins,
             "--out", os.path.abspath(out)]
    cmd = "psfsim simulate " + " ".join(shlex.quote(str(a)) for a in args)
    notes = []
    if preset is None:
        notes.append(f"LENS.toml: the lens {str(spec.lens.get('name', '?'))!r} the store was written with, "
                     "stored as its spec.lens")
    if spec.tol != SimulationSpec.tol:
        notes.append(f"tol {spec.tol!r} is not a command-line option: use psfsim.simulate")
    return cmd + (f" ({'; '.join(notes)})" if notes else "")


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
