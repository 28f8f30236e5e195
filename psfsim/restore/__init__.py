"""Classical deconvolution baselines: global Wiener, spatially-varying Wiener, Richardson-Lucy."""

from .richardson_lucy import RLResult, richardson_lucy
from .sv_wiener import sv_wiener
from .wiener import estimate_noise_sigma, wiener

__all__ = ["wiener", "sv_wiener", "richardson_lucy", "RLResult", "estimate_noise_sigma", "reference_psf"]


def reference_psf(lens, *, origin, shape, which: str = "axis"):
    """The single PSF for a global Wiener filter of a window: on the optical axis (``"axis"``), at the window's
    centre (``"centre"``), or the average over a 5 x 5 grid of the window (``"mean"``).

    ``"axis"`` is the lens's reference PSF, the same for every window: the on-axis PSF when the optical axis
    lies on the lens's frame, else the PSF at the frame's centre (an off-axis detector of a wide-field
    telescope, whose model, a tabulated lens for instance, need not describe the axis at all)."""
    import numpy as np

    from ..errors import PsfsimError

    if which == "axis":
        fh, fw = lens.field.shape_px
        ar, ac = lens.field.axis_px
        if 0 <= ar <= fh - 1 and 0 <= ac <= fw - 1:
            return lens.psf(0.0, 0.0)
        origin, shape, which = (0, 0), (fh, fw), "centre"
    r0, c0 = origin
    h, w = shape
    if which == "centre":
        x, y = lens.field.pixel_to_field(r0 + (h - 1) / 2, c0 + (w - 1) / 2)
        return lens.psf(float(x), float(y))
    if which == "mean":
        from ..field import grid_positions

        rr, cc = np.meshgrid(r0 + grid_positions(5, h), c0 + grid_positions(5, w), indexing="ij")
        x, y = lens.field.pixel_to_field(rr, cc)
        p = lens.psfs(x.ravel(), y.ravel()).mean(axis=0)
        return p / p.sum()
    raise PsfsimError(f"psf choice {which!r}: expected 'axis', 'centre' or 'mean'")
