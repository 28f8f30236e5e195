"""One BLAS thread while the fast operator evaluates its coefficient maps (``(h, nx) @ (nx, w)`` products).

Those products have an inner dimension of 2-33 (the grid's columns): a single thread does a 512 x 512 one in
about 0.1 ms, while OpenBLAS's own threads took 40-50 ms on a 2-core machine running other jobs (measured,
``benchmarks/bench_operators.py``'s section on blocks). The limit is process-wide while it holds (threadpoolctl
sets the BLAS library's thread count): it is taken by the first operator call that needs it and restored by the
last one to finish, so concurrent calls from a threaded scheduler nest correctly.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

__all__ = ["single_blas_thread"]

_lock = threading.Lock()
_state = {"depth": 0, "limiter": None, "controller": None}


@contextmanager
def single_blas_thread():
    """Context in which BLAS runs one thread (re-entrant and thread-safe: the outermost exit restores)."""
    with _lock:
        if _state["depth"] == 0:
            if _state["controller"] is None:
                from threadpoolctl import ThreadpoolController

                _state["controller"] = ThreadpoolController()
            _state["limiter"] = _state["controller"].limit(limits=1, user_api="blas")
        _state["depth"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["depth"] -= 1
            if _state["depth"] == 0:
                _state["limiter"].restore_original_limits()
                _state["limiter"] = None
