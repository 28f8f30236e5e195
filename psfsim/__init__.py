"""psfsim: field-dependent aberrations of a lens -> spatially-varying PSFs -> blur operators and datasets.

The public API (``import psfsim`` stays light: no torch, no dask):

>>> import psfsim
>>> lens = psfsim.load_lens("microscope")           # a TOML path or a preset name
>>> lens.psf(0.5, -0.2).shape                        # PSF at field point (x, y)
(33, 33)
>>> grid = lens.psf_grid(5, 5)                       # grid.psfs: (5, 5, 33, 33)
>>> psfsim.field_coords(lens, origin=(0, 0), shape=(64, 64)).shape
(2, 64, 64)
>>> psfsim.field_coords_batch(lens, origins=[(0, 0), (100, 50)], shape=(64, 64)).shape   # also field_coords_torch
(2, 2, 64, 64)
>>> op = psfsim.make_operator(lens, shape=(256, 256), origin=(0, 0))   # fast blur, with op.adjoint
>>> blurred = psfsim.blur(image, lens, origin=(0, 0))                  # one-off
>>> tblur = psfsim.torch_blur(lens)            # nn.Module: tblur(x (B, C, h, w), origins (B, 2)), any device
>>> noisy = psfsim.NoiseModel(photons=1000, read_noise=2).apply(blurred, np.random.default_rng(0))
>>> restored = psfsim.sv_wiener(noisy, lens, origin=(0, 0))
>>> psfsim.simulate(psfsim.SimulationSpec(...), "data.zarr")          # a training dataset
>>> reader = psfsim.DatasetReader("data.zarr")                        # its samples, windows and coordinates
"""

from ._version import __version__
from .errors import LensError, NyquistWarning, PsfsimError
from .field import centred_origin, check_window, field_coords, field_coords_batch, field_coords_torch, grid_positions
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
from .field_table import FieldTable, read_table_csv
from .psf_metrics import PSFMetrics
from .dataset import DatasetReader, SimulationSpec, open_dataset, simulate
from .noise import NoiseModel
from .operators import (
    ExactOperator,
    LowRankBasis,
    LowRankOperator,
    blur,
    lowrank_basis,
    make_operator,
    result_dtype,
    torch_blur,
)
from .restore import richardson_lucy, sv_wiener, wiener
from .zernike import ansi_to_nm, nm_to_ansi, nm_to_noll, noll_to_nm, zernike, zernike_noll

__all__ = [
    "__version__",
    "LensError",
    "NyquistWarning",
    "PsfsimError",
    "field_coords",
    "field_coords_batch",
    "field_coords_torch",
    "grid_positions",
    "check_window",
    "centred_origin",
    "FieldGeometry",
    "Lens",
    "Optics",
    "PSFSampling",
    "Seidel",
    "ZernikeTerm",
    "lens_from_dict",
    "FieldTable",
    "read_table_csv",
    "lens_from_toml",
    "load_lens",
    "preset_names",
    "PSFEngine",
    "PSFGrid",
    "psf_grid",
    "PSFMetrics",
    "SimulationSpec",
    "open_dataset",
    "DatasetReader",
    "simulate",
    "NoiseModel",
    "ExactOperator",
    "LowRankBasis",
    "LowRankOperator",
    "blur",
    "lowrank_basis",
    "make_operator",
    "torch_blur",
    "result_dtype",
    "richardson_lucy",
    "sv_wiener",
    "wiener",
    "noll_to_nm",
    "nm_to_noll",
    "ansi_to_nm",
    "nm_to_ansi",
    "zernike",
    "zernike_noll",
]
