"""Poisson-Gaussian detector noise, seeded by a ``numpy.random.Generator`` and recorded with the data.

An image normalised to [0, 1] is scaled so that 1.0 corresponds to ``photons`` detected photo-electrons
(the budget at the brightest level), drawn from a Poisson distribution, read noise of ``read_noise``
electrons RMS added (Gaussian), and scaled back: ``y = (Poisson(photons x) + N(0, read_noise^2)) / photons``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import PsfsimError

__all__ = ["NoiseModel"]


@dataclass(frozen=True)
class NoiseModel:
    """Poisson-Gaussian noise parameters.

    Attributes
    ----------
    photons : float or None
        Photo-electrons at image value 1.0; ``None`` means no shot noise (then ``read_noise`` is in image units).
    read_noise : float
        Gaussian read-noise RMS in electrons (or image units when ``photons`` is None).
    """

    photons: float | None = None
    read_noise: float = 0.0

    def __post_init__(self):
        def number(v):
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v)

        # Poisson draws need photons * value well inside int64 (numpy refuses lam > ~9e18)
        if self.photons is not None and not (number(self.photons) and 0 < self.photons <= 1e15):
            raise PsfsimError(f"photons = {self.photons!r}: expected a number > 0 and <= 1e15 (electrons at value 1.0)")
        if not (number(self.read_noise) and self.read_noise >= 0):
            raise PsfsimError(f"read_noise = {self.read_noise!r}: expected a number >= 0")

    @property
    def is_noiseless(self) -> bool:
        return self.photons is None and self.read_noise == 0

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Noisy copy of ``image`` ``(H, W)`` or ``(B, H, W)`` in [0, ~1] (negative means are treated as 0 photons).

        Output dtype by :func:`psfsim.operators.result_dtype`. Non-finite pixels and values beyond 1e3 (the
        Poisson mean ``photons * value`` must stay a count) are refused.
        """
        from .checks import checked_image
        from .checks import result_dtype

        if not isinstance(rng, np.random.Generator):
            raise PsfsimError(f"rng = {rng!r}: expected a numpy.random.Generator (np.random.default_rng(seed))")
        out_dtype = result_dtype(image)
        image, _ = checked_image(image, "image", work_dtype=np.float64)
        if self.photons is not None and float(np.max(image)) * self.photons > 1e18:
            raise PsfsimError(f"image: values up to {float(np.max(image)):.3g} times photons = {self.photons:g} exceed "
                              "the Poisson sampler's range (1e18 electrons); normalise the image to about [0, 1]")
        if self.is_noiseless:
            return image.astype(out_dtype, copy=True)
        if self.photons is None:
            return (image + self._read_noise(image.shape, rng)).astype(out_dtype)
        # the Poisson means in the image's dtype (a float32 image gives float32 means), as they always were
        counts = rng.poisson(np.clip(image, 0, None) * self.photons).astype(np.float64)
        if self.read_noise > 0:
            counts += self._read_noise(image.shape, rng)
        counts /= self.photons
        return counts.astype(out_dtype, copy=False)

    def _read_noise(self, shape, rng: np.random.Generator) -> np.ndarray:
        """``rng.normal(0.0, read_noise, shape)``, value for value and from the same draws (numpy's ``normal`` is
        ``loc + scale * standard_normal``), without its per-element ``loc`` and ``scale`` broadcasting."""
        z = rng.standard_normal(shape)
        z *= self.read_noise
        z += 0.0  # what loc = 0 adds: -0.0 becomes 0.0
        return z

    def sigma(self, level: float | np.ndarray = 0.5) -> np.ndarray:
        """Noise standard deviation in image units at image value ``level``."""
        if self.photons is None:
            return np.asarray(self.read_noise, float) + 0 * np.asarray(level, float)
        return np.sqrt(np.clip(level, 0, None) * self.photons + self.read_noise**2) / self.photons

    def to_dict(self) -> dict:
        return asdict(self)
