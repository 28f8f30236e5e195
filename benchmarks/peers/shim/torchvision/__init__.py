"""A benchmark-only import shim standing in for torchvision (never shipped; see benchmarks/peers/README.md).

deepinv 0.5.0 runs ``import torchvision`` in its ``__init__`` and imports a few torchvision names in modules that
``import deepinv`` loads; no torchvision wheel reachable here imports beside the CPU torch 2.13.0. This package
provides exactly those names, as stand-ins that raise when used, so that deepinv's own, unmodified
``SpaceVaryingBlur`` can be timed. benchmarks/bench_peers.py puts its parent folder first on ``sys.path``.
"""

__version__ = "0.0+benchmark.shim"
#: checked by bench_peers.py and setup_peers_venv.sh: the torchvision that deepinv imported is this shim
IS_BENCHMARK_SHIM = True

from . import datasets, transforms, utils  # noqa: E402,F401  (deepinv reaches them as attributes too)
