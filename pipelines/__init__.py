"""pipelines: Dask pipelines that deblur frames far larger than memory, tile by tile.

Built on ``recon`` and ``psfsim``. Frames are read lazily region by region (:func:`open_frame`: Zarr / OME-Zarr,
BigTIFF, FITS, npy) and results written chunk by chunk into a resumable OME-Zarr store (:class:`OutputStore`,
:func:`open_result`, :func:`export`). :class:`TileGrid` places the tiles (halo, alignment, clipping at the frame
edge); a route (:func:`model_route`, :func:`wiener_route`, :func:`rl_route`, :func:`simulate_route`) computes a
batch of tiles at their lens-field origins; :func:`run` drives one task per output chunk on Dask (threaded, a
LocalCluster, or an existing cluster). Command line: ``pipelines deblur | wiener | rl | simulate | export | env``.
"""

from psfsim._version import __version__

from .errors import PipelineError
from .frames import Frame, FrameInfo, open_frame
from .output import OutputStore, export, open_result
from .tiling import Tile, TileGrid, seam_score
from .routes import model_route, rl_route, simulate_route, wiener_route
from .runner import RunResult, run

__all__ = ["__version__", "PipelineError", "Frame", "FrameInfo", "open_frame", "OutputStore", "open_result",
           "export", "Tile", "TileGrid", "seam_score", "model_route", "wiener_route", "rl_route", "simulate_route",
           "run", "RunResult"]
