"""The one timing loop of the benchmarks: best wall time of repeated calls after a warm-up call."""

from __future__ import annotations

import time


def best_of(fn, n: int, sync=None) -> float:
    """Best wall time (s) of ``n`` calls of ``fn()`` after one warm-up call (plans, caches, lazy members);
    ``sync`` (e.g. ``torch.cuda.synchronize``) is called after each call so device work is counted."""
    fn()
    if sync:
        sync()
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - t)
    return best


def interleaved(fns: dict, rounds: int) -> dict:
    """Best wall time (s) of each callable over ``rounds`` rounds, the callables called in turn within a round
    (a load change slows them alike), after one warm-up call each (plans, caches, lazy members)."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for key, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - t)
    return best
