"""Lens descriptions: typed, validated dataclasses loaded from TOML (presets in ``psfsim/presets/*.toml``).

A lens file fully determines the point spread function at every point of its field: the optics
(wavelengths, numerical aperture, pixel pitch, pupil obscuration), the frame it images (its field), the PSF
sampling, and the wavefront aberration as Seidel coefficients plus Zernike terms that may vary as
polynomials over the field, or tabulated at field points (``[field_table]``, :mod:`psfsim.field_table`). See
the README's "Lens file" section for the format.

Everything is validated here, at the edge: a bad file raises :class:`~psfsim.errors.LensError` naming the
key, the value and what is allowed, and unknown keys are errors (a typo must never be ignored). Each table has
its parser (``_parse_optics``, ``_parse_field``, ``_parse_psf``, ``_parse_seidel``, ``_parse_zernike``,
``_parse_field_table``), all
sharing one number check (``_finite``).
"""

from __future__ import annotations

import copy
import importlib.resources as resources
import math
import os
import re
import tomllib
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import LensError, NyquistWarning, PsfsimError
from .field_table import FieldTable
from .zernike import MAX_NOLL, noll_to_nm

__all__ = [
    "Optics",
    "FieldGeometry",
    "PSFSampling",
    "Seidel",
    "ZernikeTerm",
    "Lens",
    "load_lens",
    "lens_from_dict",
    "lens_from_toml",
    "preset_names",
    "presets_dir",
    "resolve_lens_path",
    "MAX_MONOMIAL_DEGREE",
    "CONVENTIONS",
    "MAX_WAVELENGTHS",
    "MAX_IMMERSION_INDEX",
    "MAX_FRAME_SIDE",
    "AXIS_MARGIN_FRAMES",
    "MAX_ABERRATION_WAVES",
    "MEMORY_BUDGET_BYTES",
    "MAX_PSF_FLOP",
    "memory_budget_bytes",
    "probe_points",
    "field_probe_grid",
]

#: Highest total degree of a field monomial in ``rms_waves`` (``x3y2`` has degree 5).
MAX_MONOMIAL_DEGREE = 6
#: Default largest fraction of a PSF's energy allowed outside its ``size_px`` box (``[psf] max_energy_outside``).
DEFAULT_MAX_ENERGY_OUTSIDE = 0.05
#: Smallest PSF box accepted, in pixels.
MIN_PSF_SIZE = 5
#: Largest PSF box accepted, in pixels (the memory and work bounds usually refuse far smaller boxes first).
MAX_PSF_SIZE = 4095

#: Most wavelengths in ``optics.wavelength_nm`` (each costs one DFT per PSF; 64 sample any band finely).
MAX_WAVELENGTHS = 64
#: Largest ``optics.immersion_index``: immersion liquids reach about 1.8 (high-index oils, methylene iodide
#: 1.74); beyond 2 are solid-immersion lenses, whose NA > 1.5 needs a vector diffraction model, not this one.
MAX_IMMERSION_INDEX = 2.0
#: Largest side of ``field.shape_px``, in pixels. The largest detector mosaics are ~60000 px across; the lens
#: never allocates its frame, but a float32 frame of 131072^2 px is already 64 GiB.
MAX_FRAME_SIDE = 131072
#: ``field.axis_px`` must lie within this many frame sizes of the frame (field coordinates stay of order 1).
AXIS_MARGIN_FRAMES = 2
#: Largest |coefficient| in waves of a Seidel or Zernike term: a pupil of at most 1024 samples represents a
#: wavefront slope of at most 256 waves across the normalised pupil, so larger terms can never be sampled.
MAX_ABERRATION_WAVES = 1e4
#: Default memory budget of a lens's PSF engine in bytes; ``$PSFSIM_MEMORY_BUDGET`` (bytes) overrides it.
MEMORY_BUDGET_BYTES = 4 * 2**30
#: Most floating-point operations of one PSF (all wavelengths; about 10 s on one core): larger boxes or
#: pupils are refused on load.
MAX_PSF_FLOP = 1e11
#: Nodes along the longer side of the field grid where rays are traced on load (the wavefront's field
#: polynomials have degree <= 6, so 25 nodes, 1/12 of the field apart, resolve their bumps).
FIELD_PROBE_NODES = 25
#: Field points, besides the 9 standard ones, where the box check evaluates the diffraction PSF: the grid
#: nodes whose ray-traced spots are worst.
EXTRA_PROBES = 8

#: Monomial names as written: ``x``/``y`` with an optional exponent of 2 or more (1 is never written).
_MONOMIAL_RE = re.compile(r"^(?:x([2-9]|[1-9]\d+)?)?(?:y([2-9]|[1-9]\d+)?)?$")
#: Any spelling of a monomial (``x1y``, ``x01``), to name what a non-canonical one means.
_LOOSE_MONOMIAL_RE = re.compile(r"^(?:x(\d*))?(?:y(\d*))?$")


def memory_budget_bytes() -> int:
    """Memory budget of a PSF engine: ``$PSFSIM_MEMORY_BUDGET`` (bytes, e.g. ``8e9``) or :data:`MEMORY_BUDGET_BYTES`."""
    env = os.environ.get("PSFSIM_MEMORY_BUDGET")
    if env is None or env.strip() == "":
        return MEMORY_BUDGET_BYTES
    try:
        v = float(env)
    except ValueError:
        v = float("nan")
    if not (math.isfinite(v) and v >= 1):
        raise LensError(f"PSFSIM_MEMORY_BUDGET = {env!r}: expected a number of bytes >= 1 (e.g. 8e9)")
    return int(v)


def presets_dir() -> Path:
    """Folder of the lens presets: ``$PSFSIM_PRESETS``, else the package's ``psfsim/presets`` (package data,
    found through :mod:`importlib.resources`, so an installed wheel has them; ``data/lenses`` in the
    repository is a link to it)."""
    env = os.environ.get("PSFSIM_PRESETS")
    if env:
        return Path(env)
    return Path(os.fspath(resources.files("psfsim") / "presets"))


def preset_names() -> list[str]:
    """Names of the lens presets (``microscope``, ``relay``, ``telescope``, ...)."""
    d = presets_dir()
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []


def resolve_lens_path(lens: str | os.PathLike) -> Path:
    """A lens argument is a path to a TOML file or a preset name; return the file's path."""
    p = Path(lens)
    if p.is_file():
        return p
    cand = presets_dir() / f"{lens}.toml"
    if cand.is_file() and os.sep not in str(lens):
        return cand
    if p.exists():
        raise LensError(f"lens {str(lens)!r} is not a file")
    raise LensError(
        f"lens {str(lens)!r} is neither a file nor a preset; presets: {', '.join(preset_names()) or '(none)'}"
    )


# --------------------------------------------------------------------------------------------------
# dataclasses
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Optics:
    """Imaging optics.

    Attributes
    ----------
    wavelength_nm : tuple of float
        Source wavelengths in nm (one for a monochromatic source).
    spectral_weights : tuple of float
        Relative spectral weights, normalised to sum 1, same length as ``wavelength_nm`` (the lens file's
        ``optics.weights``).
    na : float
        Numerical aperture on the side where ``pixel_pitch_um`` is measured (object side for a microscope;
        image side ``1 / (2 F#)`` for a telescope imaging objects at infinity).
    immersion_index : float
        Refractive index of the immersion medium; ``na`` must be below it.
    pixel_pitch_um : float
        Size of one detector pixel in µm, on the same side as ``na``.
    obscuration : float
        Central obscuration ratio ``e`` of the pupil (0 <= e < 1).
    """

    wavelength_nm: tuple[float, ...]
    spectral_weights: tuple[float, ...]
    na: float
    pixel_pitch_um: float
    immersion_index: float = 1.0
    obscuration: float = 0.0

    @property
    def reference_wavelength_nm(self) -> float:
        """Wavelength at which aberration coefficients are given (in waves): the weighted mean wavelength."""
        return float(np.dot(self.wavelength_nm, self.spectral_weights))

    @property
    def nyquist_pitch_um(self) -> float:
        """Nyquist pixel pitch ``lambda_min / (4 NA)`` in µm (intensity cut-off frequency ``2 NA / lambda``)."""
        return min(self.wavelength_nm) * 1e-3 / (4.0 * self.na)

    @property
    def airy_zero_px(self) -> float:
        """First dark ring radius ``0.61 lambda_ref / NA`` in detector pixels (unobscured pupil)."""
        return 0.6098 * self.reference_wavelength_nm * 1e-3 / self.na / self.pixel_pitch_um


@dataclass(frozen=True)
class FieldGeometry:
    """The frame a lens images, in detector pixels, and where its optical axis sits.

    Field coordinates of pixel ``(r, c)``: ``x = (c - col0) / R``, ``y = (r - row0) / R`` with the axis at
    ``(row0, col0)`` and ``R = hypot((H - 1) / 2, (W - 1) / 2)`` the frame's half-diagonal.
    """

    shape_px: tuple[int, int]
    axis_px: tuple[float, float]

    @property
    def half_diagonal_px(self) -> float:
        h, w = self.shape_px
        return math.hypot((h - 1) / 2.0, (w - 1) / 2.0)

    def pixel_to_field(self, row, col):
        """Field coordinates ``(x, y)`` of (fractional) pixel positions, arrays broadcast.

        THE formula of the project's convention (``x = (col - col0) / R``, ``y = (row - row0) / R``): numpy
        arrays and scalars give float64 arrays; torch tensors stay tensors (device and dtype kept), so
        :func:`psfsim.field.field_coords_torch` runs this same line on the GPU.
        """
        r0, c0 = self.axis_px
        R = self.half_diagonal_px
        if not (hasattr(row, "device") and hasattr(col, "device")):  # numpy / scalars (torch never imported here)
            row, col = np.asarray(row, float), np.asarray(col, float)
        return (col - c0) / R, (row - r0) / R

    def field_to_pixel(self, x, y):
        """Pixel positions ``(row, col)`` of field coordinates ``(x, y)``."""
        r0, c0 = self.axis_px
        R = self.half_diagonal_px
        return np.asarray(y, float) * R + r0, np.asarray(x, float) * R + c0

    def contains(self, x, y) -> np.ndarray:
        """True where field points ``(x, y)`` lie in the frame, half a pixel past its edge pixels at most
        (the pixels' own area), with a 1e-9 px rounding allowance. NaN is never inside."""
        r, c = self.field_to_pixel(x, y)
        h, w = self.shape_px
        tol = 0.5 + 1e-9
        return (r >= -tol) & (r <= h - 1 + tol) & (c >= -tol) & (c <= w - 1 + tol)

    def extent(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """Field coordinates ``((x_min, x_max), (y_min, y_max))`` of the frame's outer pixel edges."""
        h, w = self.shape_px
        x0, y0 = self.pixel_to_field(-0.5, -0.5)
        x1, y1 = self.pixel_to_field(h - 0.5, w - 0.5)
        return (float(x0), float(x1)), (float(y0), float(y1))

    @property
    def max_radius(self) -> float:
        """The largest field radius of the frame's pixels (a corner pixel's centre): the outer edge of radial
        statistics (PSNR against field radius)."""
        h, w = self.shape_px
        x, y = self.pixel_to_field(np.array([0, 0, h - 1, h - 1]), np.array([0, w - 1, 0, w - 1]))
        return float(np.max(np.hypot(x, y)))

    def extent_text(self) -> str:
        """The field's extent for messages: ``x in [a, b], y in [c, d] (the H x W px frame)``."""
        (x0, x1), (y0, y1) = self.extent()
        h, w = self.shape_px
        return f"x in [{x0:+.4f}, {x1:+.4f}], y in [{y0:+.4f}, {y1:+.4f}] (the {h} x {w} px frame)"

    @property
    def corners_field(self) -> np.ndarray:
        """Field coordinates ``(4, 2)`` of the frame's four corner pixels."""
        h, w = self.shape_px
        rows = np.array([0, 0, h - 1, h - 1], float)
        cols = np.array([0, w - 1, 0, w - 1], float)
        return np.stack(self.pixel_to_field(rows, cols), axis=1)


@dataclass(frozen=True)
class PSFSampling:
    """How PSFs are sampled.

    Attributes
    ----------
    size_px : int
        Side of the (odd) PSF box in detector pixels.
    oversample : int
        Sub-samples per pixel side: the PSF is computed on this finer grid, then integrated over pixels.
    pupil_samples : int
        Samples across the pupil diameter for the diffraction integral.
    max_energy_outside : float
        Largest fraction of a PSF's energy allowed outside the box anywhere in the field (checked on load).
    """

    size_px: int
    oversample: int = 4
    pupil_samples: int = 64
    max_energy_outside: float = DEFAULT_MAX_ENERGY_OUTSIDE


@dataclass(frozen=True)
class Seidel:
    """Hopkins wavefront coefficients ``W_klm`` in waves (peak, at the pupil edge and field height 1).

    ``W = W040 rho^4 + W131 h rho^3 cos(t - phi) + W222 h^2 rho^2 cos^2(t - phi) + W220 h^2 rho^2
    + W311 h^3 rho cos(t - phi)`` with ``phi`` the field point's azimuth, so coma and astigmatism turn with
    the field point as in a rotationally symmetric lens.
    """

    W040: float = 0.0
    W131: float = 0.0
    W222: float = 0.0
    W220: float = 0.0
    W311: float = 0.0


@dataclass(frozen=True)
class ZernikeTerm:
    """One Zernike term: Noll index and RMS waves as a polynomial in field coordinates.

    ``coefficients`` maps monomial exponents ``(px, py)`` to a coefficient, so ``{(0, 0): 0.02, (1, 0): 0.1}``
    is ``0.02 + 0.1 x`` RMS waves.
    """

    noll: int
    coefficients: tuple[tuple[tuple[int, int], float], ...]

    def rms_waves(self, x, y) -> np.ndarray:
        """RMS waves of this term at field points ``(x, y)`` (arrays broadcast)."""
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        out = np.zeros(np.broadcast_shapes(x.shape, y.shape))
        for (px, py), c in self.coefficients:
            out = out + c * x**px * y**py
        return out

    @property
    def field_constant(self) -> bool:
        return all(p == (0, 0) for p, _ in self.coefficients)


@dataclass(frozen=True, eq=False)
class Lens:
    """A validated lens: optics, field, PSF sampling and aberrations.

    Build one with :func:`load_lens` (a path or a preset name) or :func:`lens_from_dict`.
    ``description`` holds the description as written in its TOML (``to_dict()`` returns a copy), so the lens
    can be rebuilt from metadata. Two lenses are equal when their validated descriptions are
    (:attr:`canonical`); equal lenses share one PSF engine (:func:`psfsim.psf.engine_for`). Pickling drops the
    cached engine and canonical form, so a pickled lens is a few kB.

    ``field_table`` (a :class:`~psfsim.field_table.FieldTable`, or None) holds Zernike terms tabulated at field
    points; they add to the Seidel and polynomial Zernike terms. The description then holds the table's
    columns inline (a ``file`` is read on load), and :attr:`canonical` its contents.
    """

    name: str
    optics: Optics
    field: FieldGeometry
    psf_sampling: PSFSampling
    seidel: Seidel
    zernike: tuple[ZernikeTerm, ...]
    description: Mapping[str, Any] = field(default_factory=dict, repr=False)
    field_table: FieldTable | None = None

    # -- derived ---------------------------------------------------------------------------------
    @property
    def field_constant(self) -> bool:
        """True when the PSF is the same everywhere (no Seidel field terms, constant Zernike terms)."""
        s = self.seidel
        return (s.W131 == s.W222 == s.W220 == s.W311 == 0.0 and all(z.field_constant for z in self.zernike)
                and (self.field_table is None or self.field_table.field_constant))

    @cached_property
    def _engine(self):
        from .psf import engine_for

        return engine_for(self)

    def __getstate__(self) -> dict:
        # cached_property values live in __dict__: leave the engine (DFT matrices, pupil bases) and the
        # canonical form / fingerprint behind; the receiver recomputes them (the engine from its own cache)
        state = dict(self.__dict__)
        for k in _CACHED:
            state.pop(k, None)
        return state

    # -- PSFs --------------------------------------------------------------------------------------
    def psf(self, x: float, y: float, *, allow_outside: bool = False) -> np.ndarray:
        """PSF ``(k, k)`` float64 at field point ``(x, y)``, unit sum, centred on the box's central pixel.

        Field points must lie in the lens field (:meth:`check_points`; ``allow_outside`` as there).
        """
        return self.psfs([x], [y], allow_outside=allow_outside)[0]

    def psfs(self, x, y, *, allow_outside: bool = False) -> np.ndarray:
        """PSFs ``(B, k, k)`` float64 at field points ``x, y`` of shape ``(B,)`` (batched).

        Raises
        ------
        PsfsimError
            A field point outside the lens field (:meth:`check_points`).
        LensError
            A PSF that is not finite (a lens loaded with ``check_psf_box=False`` whose wavefront overflows).
        """
        x, y = self.check_points(x, y, allow_outside=allow_outside)
        return _finite_result(self._engine.psfs(x, y), "PSF", x, y)

    def check_points(self, x, y, *, allow_outside: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Field points ``x, y`` as flat float64 arrays ``(B,)``, checked against the lens field.

        A point must lie in the frame (in field coordinates, half a pixel past its edge pixels at most).
        ``allow_outside=True`` accepts points past the frame (a window's margin) where the PSF model still
        holds, and refuses the others: where the wavefront aliases in the pupil sampling (a step of more than
        half a wave between adjacent pupil samples) or where the ray-traced RMS spot radius exceeds half the
        PSF box (:func:`psfsim.psf_metrics.geometric_spots`).

        Raises
        ------
        PsfsimError
            Naming the first bad point, the field's extent and, past the frame, the figure that failed.
        """
        x = np.atleast_1d(np.asarray(x, float)).ravel()
        y = np.atleast_1d(np.asarray(y, float)).ravel()
        if x.shape != y.shape:
            raise PsfsimError(f"field points: x and y must have the same length, got {x.shape} and {y.shape}")
        bad = ~(np.isfinite(x) & np.isfinite(y))
        if bad.any():
            i = int(np.argmax(bad))
            raise PsfsimError(f"field point ({x[i]}, {y[i]}): field coordinates must be finite numbers")
        outside = ~self.field.contains(x, y)
        if outside.any():
            i = int(np.argmax(outside))
            if not allow_outside:
                raise PsfsimError(
                    f"field point ({x[i]:+.6g}, {y[i]:+.6g}) is outside the lens field: {self.field.extent_text()}; "
                    "pass allow_outside=True for points just past the frame (a window's margin)"
                )
            self._check_model_holds(x[outside], y[outside])
        return x, y

    def _check_model_holds(self, x: np.ndarray, y: np.ndarray) -> None:
        """Refuse field points past the frame where the sampled pupil aliases or the spot outgrows the box."""
        from .psf_metrics import MAX_PHASE_STEP_WAVES

        sp = self._engine.spots(x, y)
        half = self.psf_sampling.size_px / 2.0
        for i in range(len(x)):
            step, rms = sp.max_phase_step[i], sp.rms_radius_px[i]
            if not (step <= MAX_PHASE_STEP_WAVES and rms <= half):
                raise PsfsimError(
                    f"field point ({x[i]:+.6g}, {y[i]:+.6g}) is outside the lens field ({self.field.extent_text()}) "
                    f"and the PSF model breaks down there: ray-traced RMS spot radius {rms:.4g} px (at most half "
                    f"the box, {half:g} px), wavefront step {step:.4g} waves between adjacent pupil samples "
                    f"(at most {MAX_PHASE_STEP_WAVES}: beyond it the pupil sampling aliases)"
                )

    def psf_grid(self, ny: int, nx: int):
        """PSFs on a regular ``ny x nx`` grid of pixel positions spanning the frame (corners included).

        Returns a :class:`psfsim.psf.PSFGrid` with ``psfs (ny, nx, k, k)``, field coordinates ``x, y (ny, nx)``
        and the pixel positions ``rows (ny,)``, ``cols (nx,)`` of the grid nodes.
        """
        from .psf import psf_grid

        return psf_grid(self, ny, nx)

    def _per_point(self, method: str, x, y, allow_outside: bool) -> np.ndarray:
        """Evaluate an engine method ``(B,) -> (B,)`` at field points of any shape; result has ``x``'s shape."""
        shape = np.broadcast_shapes(np.shape(x), np.shape(y))
        xf, yf = self.check_points(np.broadcast_to(np.asarray(x, float), shape),
                                   np.broadcast_to(np.asarray(y, float), shape), allow_outside=allow_outside)
        out = getattr(self._engine, method)(xf, yf)
        return _finite_result(out, method, xf, yf).reshape(shape)

    def strehl(self, x, y, *, allow_outside: bool = False) -> np.ndarray:
        """Strehl ratio at field points (peak intensity over the aberration-free peak), shape of ``x``."""
        return self._per_point("strehl", x, y, allow_outside)

    def fwhm_px(self, x, y, *, allow_outside: bool = False) -> np.ndarray:
        """Equivalent-area FWHM in pixels at field points: ``2 sqrt(A / pi)``, ``A`` the area above half peak."""
        return self._per_point("fwhm_px", x, y, allow_outside)

    def energy_outside(self, x, y, *, allow_outside: bool = False) -> np.ndarray:
        """Fraction of each PSF's energy that falls outside the ``size_px`` box, shape of ``x``.

        Extrapolated to a finely sampled pupil (:mod:`psfsim.psf_metrics`)."""
        return self._per_point("energy_outside", x, y, allow_outside)

    def psf_metrics(self, x, y, *, allow_outside: bool = False):
        """Strehl ratio, FWHM (pixels) and energy outside the box at field points ``(B,)``, from one
        evaluation: a :class:`psfsim.psf_metrics.PSFMetrics` of ``(B,)`` float64 arrays."""
        x, y = self.check_points(x, y, allow_outside=allow_outside)
        m = self._engine.metrics(x, y)
        for name in ("strehl", "fwhm_px", "energy_outside"):
            _finite_result(getattr(m, name), name, x, y)
        return m

    def wavefront_waves(self, x: float, y: float, rho, theta) -> np.ndarray:
        """Wavefront aberration ``W(rho, theta)`` in waves (at the reference wavelength) at field point ``(x, y)``."""
        from .wavefront import wavefront

        return wavefront(self, x, y, rho, theta)

    def field_coords(self, *, origin=(0, 0), shape=None, **kwargs) -> np.ndarray:
        """Field coordinates ``(2, h, w)`` of a window (keyword-only, as everywhere); see
        :func:`psfsim.field.field_coords` (``dtype``, ``allow_outside`` pass through)."""
        from .field import field_coords

        return field_coords(self, origin=origin, shape=shape, **kwargs)

    @cached_property
    def canonical(self) -> str:
        """The validated description as canonical JSON (sorted keys, normalised numbers): two lenses with
        the same canonical description make the same PSFs everywhere."""
        import json
        from dataclasses import asdict

        optics = asdict(self.optics)
        optics["weights"] = optics.pop("spectral_weights")  # the lens file's key: fingerprints stay stable
        d = {"name": self.name, "optics": optics, "field": asdict(self.field),
             "psf": asdict(self.psf_sampling), "seidel": asdict(self.seidel),
             "zernike": [{"noll": z.noll, "coefficients": [[list(p), c] for p, c in z.coefficients]} for z in self.zernike]}
        if self.field_table is not None:  # the table's contents, not its file name: a changed table is a new lens
            d["field_table"] = self.field_table.canonical()
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of :attr:`canonical`: the key of every per-lens cache (bases, PSF engines) and of saved
        bases, so two loads of one file, an unpickled lens or a worker's copy share them."""
        import hashlib

        return hashlib.sha256(self.canonical.encode()).hexdigest()

    def __eq__(self, other) -> bool:
        return isinstance(other, Lens) and self.canonical == other.canonical

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def to_dict(self) -> dict:
        """The lens description as written in its TOML (a deep copy), enough to rebuild it."""
        return copy.deepcopy(dict(self.description))


def _finite_result(a: np.ndarray, what: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``a`` (leading axis over field points) if every value is finite, else a :class:`LensError` naming the
    first field point where it is not."""
    ok = np.isfinite(a).reshape(len(x), -1).all(axis=1) if a.size else np.ones(0, bool)
    if not ok.all():
        i = int(np.argmin(ok))
        raise LensError(
            f"{what} at field point ({x[i]:+.6g}, {y[i]:+.6g}) is not finite: the wavefront overflows there "
            "(aberration coefficients too large for the field); nothing returned"
        )
    return a


#: Per-instance caches of a Lens (cached_property names), not pickled.
_CACHED = ("_engine", "canonical", "fingerprint")


# --------------------------------------------------------------------------------------------------
# parsing and validation
# --------------------------------------------------------------------------------------------------
_TOP_KEYS = {"name", "convention", "optics", "field", "psf", "seidel", "zernike", "field_table"}
_OPTICS_KEYS = {"wavelength_nm", "weights", "na", "immersion_index", "pixel_pitch_um", "obscuration"}
_FIELD_KEYS = {"shape_px", "axis_px"}
_PSF_KEYS = {"size_px", "oversample", "pupil_samples", "max_energy_outside"}
_SEIDEL_KEYS = {"W040", "W131", "W222", "W220", "W311"}
_ZERNIKE_KEYS = {"noll", "rms_waves"}
#: Sign conventions of the ``convention`` key; the first is the default (see :func:`_apply_convention`).
CONVENTIONS = ("born-wolf", "poppy")


def _check_keys(d: Mapping, allowed: set[str], where: str) -> None:
    if not isinstance(d, Mapping):
        raise LensError(f"[{where}] must be a table, got {d!r}")
    unknown = sorted(set(d) - allowed, key=str)
    if unknown:
        raise LensError(
            f"unknown key {where + '.' if where else ''}{unknown[0]} "
            f"(allowed in {'[' + where + ']' if where else 'the top level'}: {', '.join(sorted(allowed))})"
        )


def _finite(v, key: str, *, integer: bool = False, shown=None, expected: str | None = None):
    """The one number check: ``v`` if it is a finite number (a whole number when ``integer``), else a
    :class:`LensError` ``"<key> = <shown or v>: <expected>"``. Booleans are not numbers here."""
    ok = isinstance(v, int) if integer else isinstance(v, (int, float)) and _float_finite(v)
    if isinstance(v, bool) or not ok:
        expected = expected or f"expected a {'whole number' if integer else 'finite number'}"
        raise LensError(f"{key} = {_short(v if shown is None else shown)}: {expected}")
    return v


def _short(v, limit: int = 80) -> str:
    """``repr(v)`` cut to ``limit`` characters for messages (a 400-digit integer, a list of 2000 values)."""
    r = repr(v)
    return r if len(r) <= limit else f"{r[: limit - 20]}...({len(r)} characters)"


def _float_finite(v) -> bool:
    """True when ``v`` converts to a finite float (a huge int overflows: not finite)."""
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def _num(d: Mapping, key: str, where: str, default=None, *, integer=False):
    """``d[key]`` checked by :func:`_finite`, or ``default`` when absent (absent without default: an error)."""
    if key not in d:
        if default is None:
            raise LensError(f"missing key {where}.{key}")
        return default
    return _finite(d[key], f"{where}.{key}", integer=integer)


def _canonical_monomial(px: int, py: int) -> str:
    """The one spelling of ``x^px y^py``: ``c``, ``x``, ``y``, ``x2``, ``xy``, ``x2y``, ..."""
    if px == py == 0:
        return "c"
    part = lambda v, e: "" if e == 0 else v if e == 1 else f"{v}{e}"  # noqa: E731
    return part("x", px) + part("y", py)


def _loose_monomial(name, where: str) -> tuple[int, int]:
    """Exponents of any spelling of a monomial (``x1y`` -> (1, 1)); unknown names are errors."""
    m = _LOOSE_MONOMIAL_RE.match(name) if isinstance(name, str) else None
    if name == "c":
        return (0, 0)
    if not name or m is None:
        raise LensError(
            f"{where}: unknown monomial {name!r} (use c, x, y, x2, xy, y2, x3, x2y, ... in field coordinates)"
        )
    px = 0 if "x" not in name else int(m.group(1) or 1)
    py = 0 if "y" not in name else int(m.group(2) or 1)
    return (px, py)


def _parse_monomial(name: str, where: str) -> tuple[int, int]:
    """Exponents ``(px, py)`` of a monomial written canonically (``c``, ``x``, ``x2y``; exponent 1 never written)."""
    px, py = _loose_monomial(name, where)
    if name != "c" and _MONOMIAL_RE.match(name) is None:
        raise LensError(
            f"{where}: monomial {name!r} is not written canonically: write {_canonical_monomial(px, py)!r} "
            "(exponents >= 2 only, exponent 1 never written, no leading zeros)"
        )
    if px + py > MAX_MONOMIAL_DEGREE:
        raise LensError(f"{where}: monomial {name!r} has degree {px + py} > {MAX_MONOMIAL_DEGREE}")
    return (px, py)


def _check_duplicate_monomials(names, where: str) -> None:
    """Two keys spelling one monomial (``x`` and ``x1``) would be summed silently: refuse, naming both."""
    seen: dict[tuple[int, int], str] = {}
    for name in names:
        p = _loose_monomial(name, where)
        if p in seen:
            raise LensError(
                f"{where}: keys {seen[p]!r} and {name!r} are the same monomial {_canonical_monomial(*p)!r}; "
                "write it once"
            )
        seen[p] = name


def _aberration(v, key: str) -> float:
    """A Seidel or Zernike coefficient in waves: finite and at most :data:`MAX_ABERRATION_WAVES` in size."""
    v = float(_finite(v, key))
    if not abs(v) <= MAX_ABERRATION_WAVES:
        raise LensError(
            f"{key} = {v!r}: expected |waves| <= {MAX_ABERRATION_WAVES:g} (a pupil of at most 1024 samples "
            "represents a wavefront slope of at most 256 waves across the pupil)"
        )
    return v


def _as_list(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _parse_optics(o: Mapping) -> Optics:
    """``[optics]`` -> :class:`Optics` (spectral weights normalised to sum 1)."""
    _check_keys(o, _OPTICS_KEYS, "optics")
    if "wavelength_nm" not in o:
        raise LensError("missing key optics.wavelength_nm")
    wl = _as_list(o["wavelength_nm"])
    if not wl:
        raise LensError("optics.wavelength_nm = []: expected a wavelength or a list of them")
    if len(wl) > MAX_WAVELENGTHS:
        raise LensError(
            f"optics.wavelength_nm: {len(wl)} wavelengths; at most {MAX_WAVELENGTHS} (each costs one DFT per PSF; "
            f"{MAX_WAVELENGTHS} sample any band finely)"
        )
    bad_wl = "wavelengths must be finite numbers > 0"
    for v in wl:
        if _finite(v, "optics.wavelength_nm", shown=o["wavelength_nm"], expected=bad_wl) <= 0:
            raise LensError(f"optics.wavelength_nm = {o['wavelength_nm']!r}: {bad_wl}")
    if "weights" in o:
        w = _as_list(o["weights"])
        if len(w) != len(wl):
            raise LensError(
                f"optics.weights = {o['weights']!r}: {len(w)} weights for {len(wl)} wavelengths (need one per wavelength)"
            )
        bad_w = "weights must be finite numbers >= 0"
        for v in w:
            if _finite(v, "optics.weights", shown=o["weights"], expected=bad_w) < 0:
                raise LensError(f"optics.weights = {o['weights']!r}: {bad_w}")
        if sum(w) <= 0:
            raise LensError(f"optics.weights = {o['weights']!r}: weights must not all be 0")
    else:
        w = [1.0] * len(wl)
    wsum = float(sum(w))
    immersion = _num(o, "immersion_index", "optics", 1.0)
    if not 1.0 <= immersion <= MAX_IMMERSION_INDEX:
        raise LensError(
            f"optics.immersion_index = {immersion!r}: expected 1 <= immersion_index <= {MAX_IMMERSION_INDEX} "
            "(air is 1, immersion liquids reach about 1.8; solid immersion beyond 2 has NA > 1.5, which needs a "
            "vector diffraction model, not psfsim's scalar one)"
        )
    na = _num(o, "na", "optics")
    if not 0 < na < immersion:
        raise LensError(f"optics.na = {na!r}: expected 0 < na < immersion_index ({immersion})")
    pitch = _num(o, "pixel_pitch_um", "optics")
    if pitch <= 0:
        raise LensError(f"optics.pixel_pitch_um = {pitch!r}: expected > 0")
    obsc = _num(o, "obscuration", "optics", 0.0)
    if not 0 <= obsc < 1:
        raise LensError(f"optics.obscuration = {obsc!r}: expected 0 <= obscuration < 1")
    return Optics(
        wavelength_nm=tuple(float(v) for v in wl),
        spectral_weights=tuple(float(v) / wsum for v in w),
        na=float(na),
        pixel_pitch_um=float(pitch),
        immersion_index=float(immersion),
        obscuration=float(obsc),
    )


def _parse_field(f: Mapping) -> FieldGeometry:
    """``[field]`` -> :class:`FieldGeometry` (axis defaults to the frame centre)."""
    _check_keys(f, _FIELD_KEYS, "field")
    if "shape_px" not in f:
        raise LensError("missing key field.shape_px")
    shp = f["shape_px"]
    bad_shape = "expected [H, W], two whole numbers >= 1"
    if not isinstance(shp, (list, tuple)) or len(shp) != 2:
        raise LensError(f"field.shape_px = {shp!r}: {bad_shape}")
    for s in shp:
        if _finite(s, "field.shape_px", integer=True, shown=shp, expected=bad_shape) < 1:
            raise LensError(f"field.shape_px = {shp!r}: {bad_shape}")
    H, W = int(shp[0]), int(shp[1])
    if H == 1 and W == 1:
        raise LensError(f"field.shape_px = {shp!r}: a field of one pixel has no extent")
    if max(H, W) > MAX_FRAME_SIDE:
        raise LensError(
            f"field.shape_px = {shp!r}: at most {MAX_FRAME_SIDE} px per side (one float32 frame of {H} x {W} px "
            f"would be {H * W * 4 / 2**40:.3g} TiB; the largest detector mosaics are ~60000 px across)"
        )
    if "axis_px" in f:
        ax = f["axis_px"]
        bad_axis = "expected [row, col], two finite numbers"
        if not isinstance(ax, (list, tuple)) or len(ax) != 2:
            raise LensError(f"field.axis_px = {ax!r}: {bad_axis}")
        axis = tuple(float(_finite(a, "field.axis_px", shown=ax, expected=bad_axis)) for a in ax)
        _check_axis(axis, (H, W), ax)
    else:
        axis = ((H - 1) / 2.0, (W - 1) / 2.0)
    return FieldGeometry(shape_px=(H, W), axis_px=axis)


def _check_axis(axis, shape, shown) -> None:
    """The optical axis within :data:`AXIS_MARGIN_FRAMES` frame sizes of the frame (rows and columns)."""
    m = AXIS_MARGIN_FRAMES
    for a, n, what in zip(axis, shape, ("row", "col")):
        lo, hi = -m * n, (n - 1) + m * n
        if not lo <= a <= hi:
            raise LensError(
                f"field.axis_px = {shown!r}: the axis {what} {a:g} is more than {m} frame sizes from the frame "
                f"(allowed {lo}..{hi} for a side of {n} px); field coordinates would be far from 1 everywhere"
            )


def _parse_psf(p: Mapping, optics: Optics) -> PSFSampling:
    """``[psf]`` -> :class:`PSFSampling`; the oversampled grid must reach Nyquist for ``optics``."""
    _check_keys(p, _PSF_KEYS, "psf")
    size = _num(p, "size_px", "psf", integer=True)
    if size % 2 == 0 or not MIN_PSF_SIZE <= size <= MAX_PSF_SIZE:
        raise LensError(f"psf.size_px = {size!r}: expected an odd whole number >= {MIN_PSF_SIZE} (at most {MAX_PSF_SIZE})")
    ovs = _num(p, "oversample", "psf", 4, integer=True)
    if not 1 <= ovs <= 16:
        raise LensError(f"psf.oversample = {ovs!r}: expected a whole number in 1..16")
    npup = _num(p, "pupil_samples", "psf", 64, integer=True)
    if not 16 <= npup <= 1024:
        raise LensError(f"psf.pupil_samples = {npup!r}: expected a whole number in 16..1024")
    meo = _num(p, "max_energy_outside", "psf", DEFAULT_MAX_ENERGY_OUTSIDE)
    if not 0 < meo < 1:
        raise LensError(f"psf.max_energy_outside = {meo!r}: expected 0 < value < 1")
    pitch = optics.pixel_pitch_um
    fine_limit = optics.nyquist_pitch_um
    if pitch / ovs > fine_limit * (1 + 1e-9):
        need = math.ceil(pitch / fine_limit)
        raise LensError(
            f"psf.oversample = {ovs}: the oversampled grid ({pitch / ovs:.4g} um) is coarser than Nyquist "
            f"lambda_min/(4 NA) = {fine_limit:.4g} um; need oversample >= {need}"
        )
    return PSFSampling(size_px=int(size), oversample=int(ovs), pupil_samples=int(npup), max_energy_outside=float(meo))


def _parse_seidel(s: Mapping) -> Seidel:
    """``[seidel]`` (optional) -> :class:`Seidel`, absent coefficients 0."""
    _check_keys(s, _SEIDEL_KEYS, "seidel")
    return Seidel(**{k: _aberration(s[k], f"seidel.{k}") if k in s else 0.0 for k in _SEIDEL_KEYS})


def _parse_zernike(zs) -> tuple[ZernikeTerm, ...]:
    """``[[zernike]]`` (optional) -> Zernike terms, ``rms_waves`` a number or a field polynomial."""
    if not isinstance(zs, list):
        raise LensError(f"zernike = {zs!r}: expected an array of tables [[zernike]]")
    terms = []
    for i, z in enumerate(zs):
        where = f"zernike[{i}]"
        _check_keys(z, _ZERNIKE_KEYS, where)
        j = _num(z, "noll", where, integer=True)
        if not 1 <= j <= MAX_NOLL:
            raise LensError(f"{where}.noll = {j!r}: unknown Noll index (expected 1..{MAX_NOLL})")
        if "rms_waves" not in z:
            raise LensError(f"missing key {where}.rms_waves")
        rw = z["rms_waves"]
        if isinstance(rw, Mapping):
            _check_duplicate_monomials(list(rw), f"{where}.rms_waves")
            coeffs = [
                (_parse_monomial(mono, f"{where}.rms_waves"), _aberration(c, f"{where}.rms_waves.{mono}"))
                for mono, c in rw.items()
            ]
        else:
            coeffs = [((0, 0), _aberration(rw, f"{where}.rms_waves"))]
        terms.append(ZernikeTerm(noll=int(j), coefficients=tuple(coeffs)))
    return tuple(terms)


_TABLE_SETTINGS = {"file", "wavelength_nm", "interpolation", "extrapolate", "keep_tilt", "source"}


def _parse_field_table(t, base_dir, flip_odd: bool) -> tuple[FieldTable, dict]:
    """``[field_table]`` (optional) -> a :class:`~psfsim.field_table.FieldTable`, and the section as the lens's
    description keeps it: a ``file`` is read and replaced by its columns inline (``source`` names the file), so
    the description rebuilds the lens anywhere and its fingerprint follows the table's contents."""
    from .field_table import _ZCOL_RE, read_table_csv, table_from_columns

    where = "field_table"
    if not isinstance(t, Mapping):
        raise LensError(f"[{where}] must be a table, got {_short(t)}")
    columns = {k for k in t if k in ("row_px", "col_px") or (isinstance(k, str) and _ZCOL_RE.match(k))}
    unknown = sorted(set(t) - _TABLE_SETTINGS - columns, key=str)
    if unknown:
        raise LensError(
            f"unknown key {where}.{unknown[0]} (allowed in [{where}]: {', '.join(sorted(_TABLE_SETTINGS))}, and "
            "inline columns row_px, col_px, Z1 .. Z231)"
        )
    wl = _num(t, "wavelength_nm", where)
    if wl <= 0:
        raise LensError(f"{where}.wavelength_nm = {wl!r}: expected the table's wavelength in nm, > 0")
    keep_tilt = t.get("keep_tilt", False)
    if not isinstance(keep_tilt, bool):
        raise LensError(f"{where}.keep_tilt = {_short(keep_tilt)}: expected true or false")
    for k in ("interpolation", "extrapolate", "source", "file"):
        if k in t and not isinstance(t[k], str):
            raise LensError(f"{where}.{k} = {_short(t[k])}: expected a string")
    desc = {k: copy.deepcopy(v) for k, v in t.items() if k != "file"}
    if "file" in t:
        if columns:
            raise LensError(f"[{where}] has both file = {t['file']!r} and inline columns ({sorted(columns)[0]}, ...): "
                            "give one or the other")
        if "source" in t:
            raise LensError(f"[{where}] has both file and source: source names the file of an inline table")
        path = Path(t["file"])
        if not path.is_absolute():
            if base_dir is None:
                raise LensError(f"{where}.file = {t['file']!r} is relative and this description has no folder to "
                                "resolve it against (load the lens from its file, or pass base_dir=)")
            path = Path(base_dir) / path
        cols = read_table_csv(path, where=f"{where}.file = {t['file']!r}")
        desc["source"] = t["file"]
        desc.update(cols)
    else:
        if not columns:
            raise LensError(f"[{where}] needs file = \"TABLE.csv\" or inline columns row_px, col_px, Z..")
        cols = {}
        for k in sorted(columns):
            v = t[k]
            if not isinstance(v, (list, tuple)):
                raise LensError(f"{where}.{k} = {_short(v)}: expected an array of numbers, one per field point")
            cols[k] = [float(_finite(x, f"{where}.{k}", shown=v, expected="expected finite numbers")) for x in v]
    for k, v in cols.items():
        big = np.nonzero(~(np.abs(np.asarray(v, float)) <= MAX_ABERRATION_WAVES))[0] if k not in ("row_px", "col_px") else []
        if len(big):
            _aberration(v[int(big[0])], f"{where}.{k}[{int(big[0])}]")  # raises, naming the value
    table = table_from_columns(cols, wavelength_nm=float(wl), interpolation=t.get("interpolation", "linear"),
                               extrapolate=t.get("extrapolate", "none"), keep_tilt=keep_tilt,
                               source=str(t.get("file", t.get("source", "inline"))), flip_odd=flip_odd, where=where)
    return table, desc


def _check_table_covers(table: FieldTable, fieldg: FieldGeometry) -> None:
    """Every pixel of the frame inside the table's convex hull (the frame is convex: its four corner pixels),
    unless ``extrapolate = "nearest"``."""
    if table.extrapolate == "nearest":
        return
    h, w = fieldg.shape_px
    rows = np.array([0, 0, h - 1, h - 1], float)
    cols = np.array([0, w - 1, 0, w - 1], float)
    dist, _ = table.hull_distance(rows, cols)
    if np.all(dist <= 1e-6):
        return
    i = int(np.argmax(dist))
    raise LensError(
        f"field_table: the frame's corner pixel (row {rows[i]:g}, col {cols[i]:g}) lies {dist[i]:.4g} px outside the "
        f"table's convex hull ({table.n_points} points, {table.extent_text()}; frame {h} x {w} px): the table "
        "must cover every pixel of the frame, or set field_table.extrapolate = \"nearest\""
    )


def _parse_convention(d: Mapping) -> str:
    c = d.get("convention", CONVENTIONS[0])
    if c not in CONVENTIONS:
        raise LensError(f"convention = {c!r}: expected one of {', '.join(repr(v) for v in CONVENTIONS)}")
    return c


def _apply_convention(seidel: Seidel, terms: tuple[ZernikeTerm, ...], convention: str):
    """Coefficients in psfsim's (Born & Wolf) convention from ones written in ``convention``.

    poppy's PSF is ours mirrored through the optical axis (a +x tilt moves it to -x). Mirroring the image is
    mirroring the pupil, ``W(u, v) -> W(-u, -v)``, which flips the sign of every term odd in the pupil
    coordinates: Zernikes of odd radial order ``n`` (tilt, coma, trefoil, ...) and Seidel W131 and W311;
    even terms (defocus, astigmatism, spherical, W040, W222, W220) are unchanged.
    """
    if convention == "born-wolf":
        return seidel, terms
    seidel = Seidel(W040=seidel.W040, W131=-seidel.W131, W222=seidel.W222, W220=seidel.W220, W311=-seidel.W311)
    terms = tuple(
        ZernikeTerm(noll=t.noll, coefficients=tuple((p, -c) for p, c in t.coefficients)) if noll_to_nm(t.noll)[0] % 2 else t
        for t in terms
    )
    return seidel, terms


def lens_from_dict(d: Mapping[str, Any], *, check_psf_box: bool = True, where: str = "<dict>",
                   base_dir: str | os.PathLike | None = None) -> Lens:
    """Validate a lens description (the parsed TOML) into a :class:`Lens`.

    Parameters
    ----------
    d : mapping
        The description, as :func:`tomllib.loads` returns it. Kept unchanged as :attr:`Lens.description`,
        except that a ``[field_table] file`` is replaced by the table's columns inline (``source`` names it).
    check_psf_box : bool
        Bound the energy outside the PSF box over the whole field (:func:`_check_box`: rays traced on a dense
        field grid choose where the diffraction PSF is evaluated) and refuse the lens when it exceeds
        ``[psf] max_energy_outside`` (default 5 %), when the wavefront aliases in the pupil sampling, or when
        a PSF or a figure is not finite. The memory and work bounds are checked either way.
    where : str
        Where the description came from (a file name), prefixed to messages.
    base_dir : path, optional
        Folder that a relative ``[field_table] file`` is resolved against (the lens file's folder); without
        it a relative table file is an error. The description the lens keeps holds the table inline.

    Raises
    ------
    LensError
        Naming the key, the value and what is allowed.
    """
    try:
        return _lens_from_dict(d, check_psf_box=check_psf_box, base_dir=base_dir)
    except LensError as e:
        raise LensError(f"{where}: {e}") from None


def _lens_from_dict(d: Mapping[str, Any], *, check_psf_box: bool, base_dir=None) -> Lens:
    _check_keys(d, _TOP_KEYS, "")
    name = d.get("name", "unnamed")
    if not isinstance(name, str) or not name:
        raise LensError(f"name = {name!r}: expected a non-empty string")
    convention = _parse_convention(d)
    for sec in ("optics", "field", "psf"):
        if sec not in d:
            raise LensError(f"missing table [{sec}]")
    optics = _parse_optics(d["optics"])
    fieldg = _parse_field(d["field"])
    sampling = _parse_psf(d["psf"], optics)
    seidel, terms = _apply_convention(_parse_seidel(d.get("seidel", {})), _parse_zernike(d.get("zernike", [])), convention)
    description = copy.deepcopy(dict(d))
    table = None
    if "field_table" in d:
        table, description["field_table"] = _parse_field_table(d["field_table"], base_dir, convention == "poppy")
        _check_table_covers(table, fieldg)
    lens = Lens(
        name=name,
        optics=optics,
        field=fieldg,
        psf_sampling=sampling,
        seidel=seidel,
        zernike=terms,
        description=description,
        field_table=table,
    )
    if optics.pixel_pitch_um > optics.nyquist_pitch_um * (1 + 1e-9):
        warnings.warn(
            f"lens {name!r}: optics.pixel_pitch_um = {optics.pixel_pitch_um} is coarser than Nyquist "
            f"lambda_min/(4 NA) = {optics.nyquist_pitch_um:.4g} um "
            f"(x{optics.pixel_pitch_um / optics.nyquist_pitch_um:.2f}): the PSF is undersampled by the detector",
            NyquistWarning,
            stacklevel=3,
        )
    _check_resources(lens)
    if check_psf_box:
        _check_box(lens)
    return lens


def probe_points(fieldg: FieldGeometry) -> np.ndarray:
    """Field points ``(n, 2)``: the frame's centre, corners and edge midpoints, and the axis when it lies in
    the frame (9 points, 10 for a decentred axis inside the frame)."""
    h, w = fieldg.shape_px
    rows = np.array([(h - 1) / 2, 0, 0, 0, (h - 1) / 2, (h - 1) / 2, h - 1, h - 1, h - 1], float)
    cols = np.array([(w - 1) / 2, 0, (w - 1) / 2, w - 1, 0, w - 1, 0, (w - 1) / 2, w - 1], float)
    x, y = fieldg.pixel_to_field(rows, cols)
    pts = np.stack([x, y], 1)
    if fieldg.contains(0.0, 0.0) and not np.any(np.all(np.abs(pts) < 1e-12, axis=1)):
        pts = np.concatenate([[[0.0, 0.0]], pts])
    return pts


def field_probe_grid(fieldg: FieldGeometry, n: int = FIELD_PROBE_NODES) -> np.ndarray:
    """Field points ``(P, 2)`` of a grid over the whole frame, corners included: ``n`` nodes along the longer
    side, proportionally fewer (at least 2, at most the pixels) along the shorter, odd counts so the centre
    row and column are nodes."""
    from .field import grid_positions

    h, w = fieldg.shape_px
    longest = max(h, w)

    def nodes(side):
        k = min(side, max(2, int(round(n * side / longest))))
        return k + (1 - k % 2) if k < side else k

    rr, cc = np.meshgrid(grid_positions(nodes(h), h), grid_positions(nodes(w), w), indexing="ij")
    x, y = fieldg.pixel_to_field(rr.ravel(), cc.ravel())
    return np.stack([x, y], 1)


def _check_resources(lens: Lens) -> None:
    """Refuse, before anything is allocated, a lens whose PSF engine would exceed the memory budget
    (:func:`memory_budget_bytes`) or :data:`MAX_PSF_FLOP` per PSF."""
    from .psf import engine_cost

    o, ps = lens.optics, lens.psf_sampling
    cost = engine_cost(lens)
    what = (f"psf.size_px = {ps.size_px}, psf.oversample = {ps.oversample}, {len(o.wavelength_nm)} wavelength(s), "
            f"{cost.M} pupil samples x {cost.ks} sub-samples across the box")
    budget = memory_budget_bytes()
    if cost.peak_bytes > budget:
        raise LensError(
            f"{what}: the PSF engine needs about {cost.peak_bytes / 2**30:.3g} GiB (DFT matrices, pupil bases, "
            f"one batch of pupil fields and intensities) > the memory budget {budget / 2**30:.3g} GiB "
            "(psfsim.lens.MEMORY_BUDGET_BYTES; $PSFSIM_MEMORY_BUDGET in bytes overrides it); use a smaller "
            "size_px or oversample"
        )
    if cost.flop_per_psf > MAX_PSF_FLOP:
        raise LensError(
            f"{what}: one PSF costs about {cost.flop_per_psf:.3g} floating-point operations > {MAX_PSF_FLOP:.3g} "
            "(psfsim.lens.MAX_PSF_FLOP, about 10 s per PSF on one core); use a smaller size_px or oversample"
        )


def _point_text(x, y) -> str:
    return f"({x:+.4f}, {y:+.4f})"


def _worst_first(pts: np.ndarray, sp) -> np.ndarray:
    """Indices of field points ordered worst spot first: most rays outside the box, then the largest RMS spot
    radius; ties (a wavefront that varies along x only) go to the point nearest the axis."""
    h = np.round(np.hypot(pts[:, 0], pts[:, 1]), 9)
    frac = np.nan_to_num(sp.fraction_outside, nan=np.inf)
    rms = np.nan_to_num(sp.rms_radius_px, nan=np.inf, posinf=np.inf)
    return np.lexsort((h, -np.round(rms, 6), -np.round(frac, 6)))


def _check_rays(lens: Lens, pts: np.ndarray):
    """Trace rays at field points ``pts (P, 2)``; refuse a wavefront that is not finite, or one that aliases in
    the engine's pupil sampling (the diffraction PSF is wrong there), naming the worst such point. Returns the
    :class:`~psfsim.psf_metrics.GeometricSpots`."""
    from .psf_metrics import MAX_PHASE_STEP_WAVES

    sp = lens._engine.spots(pts[:, 0], pts[:, 1])
    step = sp.max_phase_step
    finite = np.isfinite(step) & np.isfinite(sp.rms_radius_px)
    if not finite.all():
        i = int(np.argmin(finite))
        raise LensError(f"the wavefront is not finite at field point {_point_text(*pts[i])}: aberration "
                        "coefficients too large for the field")
    bad = ~(step <= MAX_PHASE_STEP_WAVES)
    if not bad.any():
        return sp
    i = int(next(j for j in _worst_first(pts, sp) if bad[j]))
    M = lens._engine.M
    need = int(math.ceil(M * step[i] / MAX_PHASE_STEP_WAVES))
    fix = (f"use a larger odd size_px, smaller aberrations or psf.pupil_samples >= {need + need % 2}" if need <= 1024
           else "use smaller aberrations (no pupil sampling psfsim allows, at most 1024, resolves them)")
    raise LensError(
        f"psf.size_px = {lens.psf_sampling.size_px} is too small for this lens: at field point "
        f"{_point_text(*pts[i])} (the worst of {len(pts)} points ray-traced over the field) rays put "
        f"{100 * sp.fraction_outside[i]:.1f} % of the energy outside the box (RMS spot radius "
        f"{sp.rms_radius_px[i]:.4g} px, box half-width {lens.psf_sampling.size_px / 2:g} px; allowed: "
        f"psf.max_energy_outside = {100 * lens.psf_sampling.max_energy_outside:.1f} %), and the wavefront steps "
        f"{step[i]:.4g} waves between adjacent samples of the {M}-sample pupil (at most {MAX_PHASE_STEP_WAVES}: "
        f"beyond it the sampled pupil aliases and the PSF is wrong); {fix}"
    )


def _diffraction_probes(lens: Lens, grid: np.ndarray, sp) -> np.ndarray:
    """The standard probe points plus the :data:`EXTRA_PROBES` grid nodes with the worst ray-traced spots."""
    pts = np.concatenate([probe_points(lens.field), grid[_worst_first(grid, sp)[:EXTRA_PROBES]]])
    _, first = np.unique(np.round(pts, 12), axis=0, return_index=True)
    return pts[np.sort(first)]


def _check_box(lens: Lens) -> None:
    """Bound the energy outside the PSF box over the whole field.

    Rays are traced on a dense grid over the frame (:func:`field_probe_grid`): a wavefront that is not finite
    or aliases anywhere is refused, and the nodes with the worst spots are where the diffraction PSF is
    evaluated, with the standard points. Every PSF, Strehl ratio, FWHM and energy fraction there must be
    finite, and the energy outside at most ``[psf] max_energy_outside``; the error names the worst point.
    """
    grid = field_probe_grid(lens.field)
    sp = _check_rays(lens, grid)
    pts = _diffraction_probes(lens, grid, sp)
    m = lens.psf_metrics(pts[:, 0], pts[:, 1])  # finite Strehl / FWHM / energy need finite PSFs: checked there
    out = m.energy_outside
    limit = lens.psf_sampling.max_energy_outside
    if np.all(out <= limit):
        return
    i = int(np.argmax(np.where(np.isfinite(out), out, np.inf)))
    raise LensError(
        f"psf.size_px = {lens.psf_sampling.size_px} is too small for this lens: {100 * out[i]:.1f} % of the "
        f"PSF's energy falls outside the box at field point {_point_text(*pts[i])} (the worst of {len(pts)} "
        f"points probed, chosen by ray tracing {len(grid)} points over the field; allowed: "
        f"psf.max_energy_outside = {100 * limit:.1f} %); use a larger odd size_px"
    )


def lens_from_toml(text: str, *, check_psf_box: bool = True, where: str = "<toml>",
                   base_dir: str | os.PathLike | None = None) -> Lens:
    """Parse TOML text into a validated :class:`Lens` (``where``: its origin, for messages; ``base_dir``: the
    folder a relative ``[field_table] file`` is resolved against)."""
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise LensError(f"{where}: not valid TOML ({e})") from None
    return lens_from_dict(d, check_psf_box=check_psf_box, where=where, base_dir=base_dir)


def load_lens(lens: str | os.PathLike | Lens, *, check_psf_box: bool = True) -> Lens:
    """Load and validate a lens: a TOML path, a preset name (``"microscope"``) or a :class:`Lens` (returned).

    Examples
    --------
    >>> lens = load_lens("microscope")
    >>> lens.psf(0.5, -0.2).shape
    (33, 33)
    """
    if isinstance(lens, Lens):
        return lens
    path = resolve_lens_path(lens)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise LensError(f"{path}: cannot read lens file ({e})") from None
    return lens_from_toml(text, check_psf_box=check_psf_box, where=str(path), base_dir=path.parent)
