"""Stand-ins for the torchvision names that deepinv 0.5.0 imports at import time (benchmark-only shim).

Each stand-in exists so that ``import deepinv`` completes; calling or instantiating one raises
:class:`ShimError`, so no deepinv code path that really needs torchvision can silently run on a stub.
``deepinv.physics.SpaceVaryingBlur`` (the operator the benchmark times) uses none of them.
"""

from __future__ import annotations


class ShimError(RuntimeError):
    """Raised by every stand-in: this torchvision is an import shim, not the library."""


def _message(name: str) -> str:
    return (f"torchvision.{name} was called, but this torchvision is the import shim of benchmarks/peers/shim "
            "(deepinv's SpaceVaryingBlur does not need it; see benchmarks/peers/README.md)")


def function(qualname: str):
    """A function that raises :class:`ShimError` when called."""

    def stub(*args, **kwargs):
        raise ShimError(_message(qualname))

    stub.__name__ = qualname.rsplit(".", 1)[-1]
    stub.__qualname__ = stub.__name__
    return stub


def klass(qualname: str):
    """A class that raises :class:`ShimError` when instantiated (usable in annotations such as ``str | cls``)."""

    def __init__(self, *args, **kwargs):
        raise ShimError(_message(qualname))

    def __new__(cls, *args, **kwargs):  # also for enum-style calls such as InterpolationMode("bilinear")
        raise ShimError(_message(qualname))

    return type(qualname.rsplit(".", 1)[-1], (), {"__init__": __init__, "__new__": __new__,
                                                   "__module__": "torchvision." + qualname.rsplit(".", 1)[0]})
