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

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "get_backend", "default_workers"]

BACKENDS = ("pyfftw", "scipy")
#: Measured default (benchmarks/bench_fft.py): see the README's "FFT backend" section for the figures.
DEFAULT_BACKEND = "scipy"


def default_workers() -> int:
    """Threads for one FFT: ``$PSFSIM_FFT_THREADS`` or the number of usable CPU cores."""
    env = os.environ.get("PSFSIM_FFT_THREADS")
    if env:
        return max(1, int(env))
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
    raise ValueError(f"unknown FFT backend {name!r}; expected one of {', '.join(BACKENDS)}")


def get_backend(name: str | None = None, workers: int | None = None) -> SimpleNamespace:
    """The FFT functions of backend ``name`` (default: ``$PSFSIM_FFT`` or :data:`DEFAULT_BACKEND`)."""
    name = name or os.environ.get("PSFSIM_FFT") or DEFAULT_BACKEND
    return _backend(name, workers or default_workers())
