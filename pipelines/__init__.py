"""pipelines: Dask pipelines that deblur frames far larger than memory, tile by tile.

Built on ``recon`` and ``psfsim``. Frames are read lazily region by region (:func:`open_frame`: Zarr / OME-Zarr,
BigTIFF, FITS, npy) and results written chunk by chunk into a resumable OME-Zarr store (:class:`OutputStore`,
:func:`open_result`, :func:`export`); the command line is ``pipelines`` (``pipelines env`` reports the Dask stack).
"""

from psfsim._version import __version__

from .errors import PipelineError
from .frames import Frame, FrameInfo, open_frame
from .output import OutputStore, export, open_result

__all__ = ["__version__", "PipelineError", "Frame", "FrameInfo", "open_frame", "OutputStore", "open_result",
           "export"]
