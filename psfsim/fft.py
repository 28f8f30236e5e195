"""FFT backend: pyFFTW (FFTW plans, cached and reused, multi-threaded) or ``scipy.fft`` (pocketfft).

Both expose the ``scipy.fft`` calling convention (``fft2``, ``ifft2``, ``rfft2``, ``irfft2`` with ``s``,
``axes``). The default was picked by measuring both at the sizes psfsim uses
(``python benchmarks/bench_fft.py``, see the README): it can be overridden per call (``backend=...``) or
for the process with ``PSFSIM_FFT=scipy|pyfftw``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from types import SimpleNamespace

from .errors import PsfsimError

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "get_backend", "default_workers"]

BACKENDS = ("pyfftw", "scipy")
#: Measured default (benchmarks/bench_fft.py): see the README's "FFT backend" section for the figures.
DEFAULT_BACKEND = "scipy"


def default_workers() -> int:
    """Threads for one FFT: ``$PSFSIM_FFT_THREADS`` or the number of usable CPU cores."""
    env = os.environ.get("PSFSIM_FFT_THREADS")
    if env:
        try:
            n = int(env)
            if n < 1:
                raise ValueError
        except ValueError:
            raise PsfsimError(f"PSFSIM_FFT_THREADS={env!r}: expected a whole number >= 1") from None
        return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover (not Linux)
        return max(1, os.cpu_count() or 1)


@lru_cache(maxsize=None)
def _backend(name: str, workers: int) -> SimpleNamespace:
    if name == "scipy":
        import scipy.fft as sf

        def wrap(f):
            def call(a, s=None, axes=(-2, -1)):
                return f(a, s=s, axes=axes, workers=workers)

            return call

        return SimpleNamespace(
            name="scipy", workers=workers, fft2=wrap(sf.fft2), ifft2=wrap(sf.ifft2),
            rfft2=wrap(sf.rfft2), irfft2=wrap(sf.irfft2), next_fast_len=sf.next_fast_len,
        )
    if name == "pyfftw":
        import pyfftw
        import pyfftw.interfaces.scipy_fft as pf
        import scipy.fft as sf

        pyfftw.interfaces.cache.enable()  # keep FFTW plans alive between calls: plans are reused
        pyfftw.interfaces.cache.set_keepalive_time(300.0)

        def wrap(f):
            def call(a, s=None, axes=(-2, -1)):
                return f(a, s=s, axes=axes, workers=workers, planner_effort="FFTW_ESTIMATE")

            return call

        return SimpleNamespace(
            name="pyfftw", workers=workers, fft2=wrap(pf.fft2), ifft2=wrap(pf.ifft2),
            rfft2=wrap(pf.rfft2), irfft2=wrap(pf.irfft2), next_fast_len=sf.next_fast_len,
        )
    raise PsfsimError(f"unknown FFT backend {name!r} (PSFSIM_FFT or backend=); expected one of {', '.join(BACKENDS)}")


def get_backend(name: str | None = None, workers: int | None = None) -> SimpleNamespace:
    """The FFT functions of backend ``name`` (default: ``$PSFSIM_FFT`` or :data:`DEFAULT_BACKEND`) with
    ``workers`` threads per transform (default :func:`default_workers`). Every operator and restoration takes
    ``workers=``: pass 1 when a threaded scheduler (Dask) runs several windows at once, so that ``n`` tasks
    do not each start one thread per core."""
    name = name or os.environ.get("PSFSIM_FFT") or DEFAULT_BACKEND
    if workers is not None and (int(workers) != workers or workers < 1):
        raise PsfsimError(f"workers = {workers!r}: expected a whole number >= 1")
    return _backend(name, int(workers) if workers else default_workers())
