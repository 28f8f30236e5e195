"""Checks of what users hand to the numerical core: images, PSFs, lenses; and the NaN policy.

NaN policy (every psfsim function that takes an image): non-finite pixels (NaN, inf) are **refused** by
default with :class:`~psfsim.errors.PsfsimError` naming the argument and how many pixels; a computation
never spreads them over the output. ``nan_policy="fill"`` is the explicit alternative for data with masked
pixels (dead pixels, saturated stars, FITS blanks): each non-finite pixel is filled with its nearest finite
neighbour for the computation, and the output is NaN at exactly those pixels again (mask in, same mask out).
Values too large for the computation's dtype (sums of ``H W`` of them must stay finite) are refused too.
"""

from __future__ import annotations

import numpy as np

from .errors import PsfsimError

__all__ = ["result_dtype", "NAN_POLICIES", "checked_image", "remask", "check_result", "checked_psf", "as_lens"]

NAN_POLICIES = ("raise", "fill")


def result_dtype(a) -> np.dtype:
    """The one dtype rule of psfsim (operators, restorations, image files read): float32 and float64 are kept;
    any other real input (integers, bool, float16) gives float32. Complex input is refused."""
    dt = np.dtype(a) if isinstance(a, (np.dtype, type)) else np.asarray(a).dtype
    if dt.kind == "c":
        raise PsfsimError(f"complex input ({dt}): expected a real image (take .real or abs() yourself)")
    if dt.kind not in "fiub":
        raise PsfsimError(f"input of dtype {dt}: expected a real numeric image")
    return dt if dt in (np.float32, np.float64) else np.dtype(np.float32)


def _fill_nearest(a: np.ndarray, bad: np.ndarray) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt

    out = a.copy()
    for i in range(a.shape[0]):
        if bad[i].any():
            if bad[i].all():
                raise PsfsimError("image: every pixel is NaN or inf; nothing to fill from")
            idx = distance_transform_edt(bad[i], return_distances=False, return_indices=True)
            out[i] = a[i][tuple(idx)]
    return out


def checked_image(a, name: str = "image", *, nan_policy: str = "raise", ndims=(2, 3), work_dtype=np.float32):
    """Validate an image argument: a real numeric array of ``ndims`` dimensions, non-empty, finite (or filled
    under ``nan_policy="fill"``) and within the range ``work_dtype`` can sum over.

    Returns
    -------
    (ndarray, mask or None)
        The array (filled where it was non-finite) and the boolean mask of those pixels (``None`` when all
        pixels were finite); pass both to :func:`remask` with the result.
    """
    if nan_policy not in NAN_POLICIES:
        raise PsfsimError(f"nan_policy = {nan_policy!r}: expected one of {', '.join(NAN_POLICIES)}")
    try:
        a = np.asarray(a)
    except (TypeError, ValueError) as e:
        raise PsfsimError(f"{name}: not an array ({e})") from None
    if a.dtype.kind == "c":
        raise PsfsimError(f"{name}: complex input ({a.dtype}); expected a real image (take .real or abs() yourself)")
    if a.dtype.kind not in "fiub":
        raise PsfsimError(f"{name}: dtype {a.dtype} is not a real numeric type")
    if a.ndim not in ndims:
        want = " or ".join({2: "(H, W)", 3: "(B, H, W)"}.get(n, f"{n}-D") for n in ndims)
        raise PsfsimError(f"{name} of shape {a.shape}: expected {want}")
    if a.size == 0:
        raise PsfsimError(f"{name} of shape {a.shape} is empty")
    mask = None
    if a.dtype.kind == "f":
        # two reductions, no temporaries: max and min are NaN when any pixel is (and inf when one is)
        hi, lo = float(a.max()), float(a.min())
        finite = None if (np.isfinite(hi) and np.isfinite(lo)) else np.isfinite(a)
        if finite is not None:
            nbad = int(a.size - np.count_nonzero(finite))
            if nan_policy == "raise":
                raise PsfsimError(f"{name} has {nbad} NaN or infinite pixel(s) of {a.size}; psfsim refuses them "
                                  "rather than spread them (nan_policy='fill' fills them from their neighbours for "
                                  "the computation and leaves them NaN in the output)")
            mask = ~finite
            a3 = a.reshape((-1,) + a.shape[-2:])
            a = _fill_nearest(a3, mask.reshape(a3.shape)).reshape(a.shape)
            hi, lo = float(a.max()), float(a.min())
        peak = max(abs(hi), abs(lo))
        limit = float(np.finfo(np.result_type(work_dtype, np.float32)).max) / (16.0 * a.shape[-1] * a.shape[-2])
        if peak > limit:
            raise PsfsimError(f"{name}: values up to {peak:.3g} overflow the {np.dtype(work_dtype).name} computation "
                              f"(largest accepted {limit:.3g}); rescale the image")
    return a, mask


def remask(out: np.ndarray, mask) -> np.ndarray:
    """Put NaN back at the masked pixels (``mask`` from :func:`checked_image`; ``None``: nothing to do)."""
    if mask is None:
        return out
    out = np.array(out, copy=True)
    out[np.broadcast_to(mask, out.shape)] = np.nan
    return out


def check_result(out: np.ndarray, what: str, mask=None) -> np.ndarray:
    """Refuse a non-finite result (outside ``mask``): an overflow or a degenerate parameter, never written."""
    if mask is None and out.size and np.isfinite(out.min()) and np.isfinite(out.max()):
        return out  # the common case in two reductions, no mask array
    ok = np.isfinite(out)
    if mask is not None:
        ok |= np.broadcast_to(mask, out.shape)
    if not ok.all():
        raise PsfsimError(f"{what}: the result has {int(out.size - np.count_nonzero(ok))} non-finite pixel(s) "
                          "(a parameter out of the computation's range, e.g. an extreme balance); nothing returned")
    return out


def checked_psf(psf, name: str = "psf") -> np.ndarray:
    """A PSF argument: 2-D, non-empty, finite, with a positive sum."""
    a, _ = checked_image(psf, name, ndims=(2,), work_dtype=np.float64)
    s = float(a.sum())
    if not s > 0:
        raise PsfsimError(f"{name}: sums to {s:g}; expected a PSF with a positive sum (light)")
    return a


def as_lens(lens):
    """A :class:`~psfsim.lens.Lens`, or a preset name / TOML path loaded into one."""
    import os

    from .lens import Lens, load_lens

    if isinstance(lens, Lens):
        return lens
    if isinstance(lens, (str, os.PathLike)):
        return load_lens(lens)
    raise PsfsimError(f"lens = {lens!r}: expected a Lens (psfsim.load_lens), a preset name or a TOML path")
