"""Per-tile computations of the pipelines (the Route protocol, :mod:`.base`):

- :func:`model_route` (``deblur``): a recon checkpoint, each tile with its own window of the lens field;
- :func:`wiener_route` (``wiener``, global or ``sv=True``) and :func:`rl_route` (``rl``): psfsim's restorations;
- :func:`simulate_route` (``simulate``): psfsim's fast blur plus noise that does not depend on the tiling.

torch and recon are imported only by the model route, when it is built.
"""

from .base import Route, check_frame_window, frame_scale
from .classical import RLRoute, WienerRoute, rl_route, wiener_route
from .simulate import SimulateRoute, simulate_route

__all__ = ["Route", "check_frame_window", "frame_scale", "model_route", "ModelRoute", "wiener_route", "WienerRoute",
           "rl_route", "RLRoute", "simulate_route", "SimulateRoute"]


def model_route(checkpoint, **options):
    """The ``deblur`` route of a recon checkpoint; see :func:`pipelines.routes.model.model_route`."""
    from .model import model_route as make

    return make(checkpoint, **options)


def __getattr__(name):
    if name == "ModelRoute":
        from .model import ModelRoute

        return ModelRoute
    raise AttributeError(name)
