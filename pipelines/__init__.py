"""pipelines: Dask pipelines that deblur frames far larger than memory, tile by tile.

Built on ``recon`` and ``psfsim``. Its tiled routes arrive with the pipelines issues; today it provides the
command-line entry point and an environment report (``pipelines env``).
"""

from psfsim._version import __version__

__all__ = ["__version__"]
