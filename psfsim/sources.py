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
        texture = _smooth_noise(shape, rng, 1.5)
        texture *= 0.5
        texture += 1
        rows, cols = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
        fh, fw = float(h), float(w)
        for _ in range(n_cells):
            # the reference draws, value for value: uniform(lo, hi) is lo + (hi - lo) * random() and normal(0, s)
            # is 0 + s * standard_normal() in numpy's Generator, so consecutive ones are drawn in one call
            d = rng.random(7).tolist()  # cy, cx, a, b, t, amp_body, amp_nuc
            cy, cx = 0.0 + fh * d[0], 0.0 + fw * d[1]
            a, b = 6.0 + 12.0 * d[2], 4.0 + 8.0 * d[3]
            t = 0.0 + np.pi * d[4]
            amp_body, amp_nuc, shift = 0.2 + (0.6 - 0.2) * d[5], 0.5 + 0.5 * d[6], 0.2 * a * rng.standard_normal()
            n_p = int(rng.poisson(4))
            puncta = []
            for _ in range(n_p):
                gy, gx = rng.standard_normal(2).tolist()
                ua, ub = rng.random(2).tolist()
                puncta.append((cy + (0.0 + b / 2 * gy), cx + (0.0 + a / 2 * gx), 0.3 + (1.0 - 0.3) * ua,
                               0.6 + (1.5 - 0.6) * ub))
            R = int(np.ceil(1.6 * a)) + 4
            r0, r1 = max(0, int(cy) - R), min(h, int(cy) + R + 1)
            c0, c1 = max(0, int(cx) - R), min(w, int(cx) + R + 1)
            if r0 >= r1 or c0 >= c1:
                continue
            _render_cell(img[r0:r1, c0:c1], texture[r0:r1, c0:c1], rows[r0:r1, None], cols[None, c0:c1], expit,
                         cy, cx, a, b, t, amp_body, amp_nuc, shift, puncta)
        return np.clip(img, 0, None, out=img)


def _render_cell(sub, texture, yy, xx, expit, cy, cx, a, b, t, amp_body, amp_nuc, shift, puncta) -> None:
    """Add one cell (body, nucleus, puncta) into ``sub`` in place, over its bounding box: rows ``yy (h, 1)`` and
    columns ``xx (1, w)`` of the box, float64.

    Every pixel gets the value of the reference formula (a soft-edged textured ellipse, a Gaussian nucleus times
    the body, Gaussian puncta), operation for operation: the offsets and their squares are taken along one axis
    (a row or a column of the box) and combined once per pixel, in place, so a sample is bit-identical to one
    computed on the full ``mgrid`` of the box, at about half the full-box operations."""
    dy, dx = yy - cy, xx - cx
    cos_t, sin_t = np.cos(t), np.sin(t)
    u = dx * cos_t + dy * sin_t
    u /= a
    v = -dx * sin_t + dy * cos_t
    v /= b
    u *= u
    v *= v
    u += v
    u -= 1
    u *= -8  # -(u^2 + v^2 - 1) * 8: the negation and the power of two are exact in either order
    body = expit(u, out=u)  # soft-edged ellipse
    tmp = np.multiply(body, amp_body, out=v)
    tmp *= texture
    sub += tmp
    tmp = np.add((dx - shift) ** 2, dy**2, out=tmp)
    np.negative(tmp, out=tmp)
    tmp /= 2 * (0.35 * b) ** 2
    np.exp(tmp, out=tmp)
    tmp *= amp_nuc
    tmp *= body
    sub += tmp
    if puncta:  # all of the cell's puncta at once, added one after the other (the reference's order)
        # the divisor from Python floats, as the reference: Python's sg**2 (libm pow) is not always numpy's sg * sg
        py, px, amp, den = (np.array(c)[:, None, None] for c in zip(*((y, x, p, 2 * s**2) for y, x, p, s in puncta)))
        e = np.add((yy - py) ** 2, (xx - px) ** 2)
        np.negative(e, out=e)
        e /= den
        np.exp(e, out=e)
        e *= amp
        for ek in e:
            sub += ek


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
        # pixel coordinates as a column (h, 1) and a row (1, w): every expression below is evaluated per pixel as
        # on the full (h, w) grids, value for value, the separable parts once per row or column
        yy, xx = np.arange(h, dtype=np.float64)[:, None], np.arange(w, dtype=np.float64)[None, :]
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        r = np.hypot((yy - cy) / (rng.uniform(0.15, 0.4) * h), (xx - cx) / (rng.uniform(0.15, 0.4) * w))
        order = 1 if rng.random() < 0.4 else int(rng.integers(3, 10))  # Gaussian or flat-top
        beam = r ** (2 * order)
        beam *= -2
        beam = np.exp(beam, out=beam)
        kind = rng.random()
        if kind < 0.4:  # speckle: |FFT of a random phase screen through a small aperture|^2
            # exp(2 pi i u) as cos + i sin of the same phase (what the complex exp computes, at half its cost)
            phase = rng.random(shape)
            phase *= 2 * np.pi
            field = np.empty(shape, np.complex128)
            np.cos(phase, out=field.real)
            np.sin(phase, out=field.imag)
            fy = np.fft.fftfreq(h)[:, None]
            fx = np.fft.fftfreq(w)[None, :]
            ap = np.hypot(fy, fx) < rng.uniform(0.05, 0.2)
            f = np.fft.fft2(field)
            f *= ap
            sp = np.abs(np.fft.ifft2(f))
            sp **= 2
            sp /= sp.mean()
            sp += 0.3
            beam *= sp
        elif kind < 0.8:  # interference fringes
            k = rng.uniform(0.05, 0.5)
            t = rng.uniform(0, np.pi)
            amp = rng.uniform(0.3, 1.0)
            arg = xx * np.cos(t) + yy * np.sin(t)
            arg *= k
            arg += rng.uniform(0, 2 * np.pi)
            fringe = np.cos(arg, out=arg)
            fringe *= amp
            fringe += 1
            beam *= fringe
        return np.clip(beam, 0, None, out=beam)


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
