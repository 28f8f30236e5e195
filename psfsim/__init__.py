"""psfsim: field-dependent aberrations of a lens -> spatially-varying PSFs -> blur operators and datasets.

The public API (``import psfsim`` stays light: no torch, no dask):

>>> import psfsim
>>> lens = psfsim.load_lens("microscope")           # a TOML path or a preset name
>>> lens.psf(0.5, -0.2).shape                        # PSF at field point (x, y)
(33, 33)
>>> grid = lens.psf_grid(5, 5)                       # grid.psfs: (5, 5, 33, 33)
>>> psfsim.field_coords(lens, origin=(0, 0), shape=(64, 64)).shape
(2, 64, 64)
"""

from ._version import __version__
from .errors import LensError, NyquistWarning, PsfsimError
from .field import centred_origin, check_window, field_coords
from .lens import (
    FieldGeometry,
    Lens,
    Optics,
    PSFSampling,
    Seidel,
    ZernikeTerm,
    lens_from_dict,
    lens_from_toml,
    load_lens,
    preset_names,
)
from .psf import PSFEngine, PSFGrid, psf_grid
from .zernike import ansi_to_nm, nm_to_ansi, nm_to_noll, noll_to_nm, zernike, zernike_noll

__all__ = [
    "__version__",
    "LensError",
    "NyquistWarning",
    "PsfsimError",
    "field_coords",
    "check_window",
    "centred_origin",
    "FieldGeometry",
    "Lens",
    "Optics",
    "PSFSampling",
    "Seidel",
    "ZernikeTerm",
    "lens_from_dict",
    "lens_from_toml",
    "load_lens",
    "preset_names",
    "PSFEngine",
    "PSFGrid",
    "psf_grid",
    "noll_to_nm",
    "nm_to_noll",
    "ansi_to_nm",
    "nm_to_ansi",
    "zernike",
    "zernike_noll",
]
