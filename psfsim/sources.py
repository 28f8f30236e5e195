"""Image sources for datasets: folders, one large image, scikit-image's bundled samples, procedural scenes.

A source is parsed from a spec string (``--source``):

==========================  ===========================================================================
``DIR``                     a folder of images (.tif, .png, .npy, .fits), each sample a random crop
``FILE``                    one large image, each sample a random crop
``skimage:NAME``            a bundled scikit-image sample (``cell``, ``camera``, ``hubble_deep_field``, ...)
``cells``                   procedural fluorescence-like cells (textured blobs and bright nuclei)
``stars``                   procedural star field (power-law fluxes, sub-pixel positions, sky background)
``beams``                   procedural laser / relay beams (Gaussian or flat-top, speckle, fringes)
``A,B,...``                 a mixture: sample ``i`` comes from source ``i mod n``
==========================  ===========================================================================

Every sample is a pure function of ``(source, shape, rng)``. Geometric augmentation (flips, 90-degree
rotations) is applied to the *source* crop, before any blur, never to a blurred image (that would break
the static, field-dependent PSF). Values are non-negative; normalisation happens in the dataset writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import PsfsimError
from .io import IMAGE_SUFFIXES, luminance, read_image

__all__ = ["Source", "parse_source", "SKIMAGE_NAMES", "PROCEDURAL"]

#: Bundled scikit-image samples that need no download (checked on parse).
SKIMAGE_NAMES = ("astronaut", "brick", "camera", "cell", "coins", "grass", "gravel", "hubble_deep_field",
                 "moon", "page", "text", "retina", "rocket", "coffee", "chelsea", "clock", "horse")
PROCEDURAL = ("cells", "stars", "beams")


def _augment(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips and 90-degree rotation of a square-or-not crop (source side only)."""
    if rng.random() < 0.5:
        a = a[::-1]
    if rng.random() < 0.5:
        a = a[:, ::-1]
    if a.shape[0] == a.shape[1] and rng.random() < 0.5:
        a = a.T
    return np.ascontiguousarray(a)


def _random_crop(img: np.ndarray, shape, rng: np.random.Generator, what: str) -> np.ndarray:
    h, w = shape
    if img.shape[0] < h or img.shape[1] < w:
        raise PsfsimError(f"{what}: image of shape {img.shape} is smaller than the sample region {tuple(shape)} "
                          "(sample size plus the PSF margin)")
    r = int(rng.integers(0, img.shape[0] - h + 1))
    c = int(rng.integers(0, img.shape[1] - w + 1))
    return img[r : r + h, c : c + w]


def _gray(img: np.ndarray) -> np.ndarray:
    img = np.asarray(luminance(img), np.float64)
    return img - img.min()


@dataclass
class Source:
    """A sample generator. ``sample(shape, rng) -> (h, w) float64 >= 0``; ``describe()`` for metadata."""

    spec: str

    def sample(self, shape, rng: np.random.Generator) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def check(self, shape) -> None:
        """Raise :class:`PsfsimError` now if samples of ``shape`` cannot be produced."""

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": type(self).__name__}


class ImageListSource(Source):
    """Random crops of a list of images (a folder, a large image, or bundled samples), augmented."""

    def __init__(self, spec: str, loaders: list, names: list[str]):
        super().__init__(spec)
        self._loaders = loaders
        self.names = names
        self._cache: dict[int, np.ndarray] = {}

    def _image(self, i: int) -> np.ndarray:
        if i not in self._cache:
            if len(self._cache) > 8:
                self._cache.clear()
            self._cache[i] = _gray(self._loaders[i]())
        return self._cache[i]

    def check(self, shape) -> None:
        shapes = [self._image(i).shape for i in range(len(self._loaders))]
        self._usable = [i for i, s in enumerate(shapes) if s[0] >= shape[0] and s[1] >= shape[1]]
        if not self._usable:
            raise PsfsimError(f"source {self.spec!r}: {self.names[0]} of shape {shapes[0]} is smaller than the "
                              f"sample region {tuple(shape)} (sample size plus the PSF margin)")

    def sample(self, shape, rng):
        usable = getattr(self, "_usable", None)
        if usable is None:
            self.check(shape)
            usable = self._usable
        i = usable[int(rng.integers(len(usable)))]
        return _augment(_random_crop(self._image(i), shape, rng, self.names[i]), rng)

    def describe(self):
        return {**super().describe(), "images": self.names[:50], "n_images": len(self.names)}


# --------------------------------------------------------------------------------------------------
# procedural scenes
# --------------------------------------------------------------------------------------------------
def _smooth_noise(shape, rng, scale_px: float) -> np.ndarray:
    """Gaussian-filtered white noise with correlation length ``scale_px``, unit std."""
    from scipy.ndimage import gaussian_filter

    n = gaussian_filter(rng.standard_normal(shape), scale_px, mode="wrap")
    return n / (n.std() + 1e-12)


class CellsSource(Source):
    """Fluorescence-like cells: textured elliptical bodies with bright nuclei and puncta on a dim background.

    Each cell is rendered only inside its bounding box (cost independent of the number of cells' reach).
    """

    def sample(self, shape, rng):
        from scipy.special import expit

        h, w = shape
        img = np.full(shape, 0.02)
        n_cells = max(1, int(rng.poisson(h * w / 3000)))
        texture = 1 + 0.5 * _smooth_noise(shape, rng, 1.5)
        for _ in range(n_cells):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            a, b = rng.uniform(6, 18), rng.uniform(4, 12)
            t = rng.uniform(0, np.pi)
            amp_body, amp_nuc, shift = rng.uniform(0.2, 0.6), rng.uniform(0.5, 1.0), 0.2 * a * rng.standard_normal()
            n_p = int(rng.poisson(4))
            puncta = [(cy + rng.normal(0, b / 2), cx + rng.normal(0, a / 2), rng.uniform(0.3, 1.0), rng.uniform(0.6, 1.5)) for _ in range(n_p)]
            R = int(np.ceil(1.6 * a)) + 4
            r0, r1 = max(0, int(cy) - R), min(h, int(cy) + R + 1)
            c0, c1 = max(0, int(cx) - R), min(w, int(cx) + R + 1)
            if r0 >= r1 or c0 >= c1:
                continue
            yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float64)
            dy, dx = yy - cy, xx - cx
            u = (dx * np.cos(t) + dy * np.sin(t)) / a
            v = (-dx * np.sin(t) + dy * np.cos(t)) / b
            body = expit(-(u * u + v * v - 1) * 8)  # soft-edged ellipse
            sub = img[r0:r1, c0:c1]
            sub += amp_body * body * texture[r0:r1, c0:c1]
            sub += amp_nuc * np.exp(-((dx - shift) ** 2 + dy**2) / (2 * (0.35 * b) ** 2)) * body
            for py, px, amp, sg in puncta:
                sub += amp * np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * sg**2))
        return np.clip(img, 0, None)


class StarsSource(Source):
    """Star field: Poisson number of point sources with power-law fluxes (N(>F) ~ F^-1.5, Euclidean counts),
    sub-pixel positions (bilinear split), on a sky background with a faint gradient."""

    def sample(self, shape, rng):
        h, w = shape
        img = np.full(shape, 1.0) + 0.2 * np.add.outer(np.linspace(-1, 1, h) * rng.normal(), np.linspace(-1, 1, w) * rng.normal())
        n = int(rng.poisson(h * w / 400))
        flux = (1 - rng.random(n)) ** (-1 / 1.5) * 20.0  # Pareto, x_min = 20 sky units
        y = rng.uniform(0, h - 1, n)
        x = rng.uniform(0, w - 1, n)
        y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
        fy, fx = y - y0, x - x0
        y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
        np.add.at(img, (y0, x0), flux * (1 - fy) * (1 - fx))
        np.add.at(img, (y0, x1), flux * (1 - fy) * fx)
        np.add.at(img, (y1, x0), flux * fy * (1 - fx))
        np.add.at(img, (y1, x1), flux * fy * fx)
        return np.clip(img, 0, None)


class BeamsSource(Source):
    """Laser / relay beam profiles: Gaussian or super-Gaussian (flat-top) beams, with speckle and fringes."""

    def sample(self, shape, rng):
        h, w = shape
        yy, xx = np.mgrid[:h, :w].astype(np.float64)
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        r = np.hypot((yy - cy) / (rng.uniform(0.15, 0.4) * h), (xx - cx) / (rng.uniform(0.15, 0.4) * w))
        order = 1 if rng.random() < 0.4 else int(rng.integers(3, 10))  # Gaussian or flat-top
        beam = np.exp(-2 * r ** (2 * order))
        kind = rng.random()
        if kind < 0.4:  # speckle: |FFT of a random phase screen through a small aperture|^2
            field = np.exp(2j * np.pi * rng.random(shape))
            fy = np.fft.fftfreq(h)[:, None]
            fx = np.fft.fftfreq(w)[None, :]
            ap = np.hypot(fy, fx) < rng.uniform(0.05, 0.2)
            sp = np.abs(np.fft.ifft2(np.fft.fft2(field) * ap)) ** 2
            beam = beam * (0.3 + sp / sp.mean())
        elif kind < 0.8:  # interference fringes
            k = rng.uniform(0.05, 0.5)
            t = rng.uniform(0, np.pi)
            beam = beam * (1 + rng.uniform(0.3, 1.0) * np.cos(k * (xx * np.cos(t) + yy * np.sin(t)) + rng.uniform(0, 2 * np.pi)))
        return np.clip(beam, 0, None)


class MixtureSource(Source):
    """Sample ``i`` from ``sources[i mod n]`` (the dataset passes the index)."""

    def __init__(self, spec: str, sources: list[Source]):
        super().__init__(spec)
        self.sources = sources

    def check(self, shape):
        for s in self.sources:
            s.check(shape)

    def sample(self, shape, rng, index: int = 0):
        return self.sources[index % len(self.sources)].sample(shape, rng)

    def describe(self):
        return {**super().describe(), "sources": [s.describe() for s in self.sources]}


def _skimage_loader(name):
    def load():
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def parse_source(spec: str) -> Source:
    """Build a :class:`Source` from a spec string (see the module docstring)."""
    spec = spec.strip()
    if not spec:
        raise PsfsimError("--source is empty")
    if "," in spec:
        return MixtureSource(spec, [parse_source(s) for s in spec.split(",")])
    if spec in PROCEDURAL:
        return {"cells": CellsSource, "stars": StarsSource, "beams": BeamsSource}[spec](spec)
    if spec.startswith("skimage:"):
        name = spec.split(":", 1)[1]
        if name not in SKIMAGE_NAMES:
            raise PsfsimError(f"source {spec!r}: unknown bundled scikit-image sample (use one of {', '.join(SKIMAGE_NAMES)})")
        return ImageListSource(spec, [_skimage_loader(name)], [spec])
    p = Path(spec)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if not files:
            raise PsfsimError(f"source {spec!r}: folder has no image ({', '.join(IMAGE_SUFFIXES)})")
        readable = []
        for f in files:
            try:
                read_image(f)
                readable.append(f)
            except PsfsimError:
                continue
        if not readable:
            raise PsfsimError(f"source {spec!r}: none of the {len(files)} image files in the folder is a readable 2-D image")
        return ImageListSource(spec, [lambda f=f: read_image(f) for f in readable], [f.name for f in readable])
    if p.is_file():
        read_image(p)  # fail early with the reader's message
        return ImageListSource(spec, [lambda: read_image(p)], [p.name])
    raise PsfsimError(f"source {spec!r}: not a folder, an image file, skimage:NAME, or one of {', '.join(PROCEDURAL)}")
