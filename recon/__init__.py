"""recon: PyTorch models for spatially-varying deblurring, field-aware from the first line.

Every position-aware model is called as ``model(x, coords)``: ``x (B, C, H, W)`` and ``coords (B, 2, H, W)``,
the field coordinates of x's pixels from psfsim (a crop, a training sample or a tile: the same call).

>>> import recon, psfsim
>>> lens = psfsim.load_lens("microscope")
>>> model = recon.build_model("cgunet", depth=3)
>>> coords = recon.batch_coords(lens, origins=[(0, 0), (512, 256)], shape=(128, 128))   # (2, 2, 128, 128)
>>> y = model(x, coords)

Built on psfsim (it may import psfsim, never the other way round).
"""

from psfsim._version import __version__

from .coords import batch_coords, coords_1d, frame_coords, pool_coords
from .errors import ReconError
from .models import build_model, model_names, model_table
from .checkpoint import CheckpointInfo, check_store_matches, load_checkpoint, save_checkpoint
from .data import Batch, OnTheFlyDataset, StoreDataset
from . import evaluate  # the module: recon.evaluate.evaluate(data, checkpoint, out) -> EvalResult
from . import train  # the module: recon.train.train(config) is the entry point (a function here would hide it)
from .config import TrainConfig
from .evaluate import EvalResult, Score, compare
from .export import ExportResult, export_onnx, export_pt2
from .train import TrainingDiverged, TrainResult

__all__ = ["__version__", "ReconError", "batch_coords", "frame_coords", "coords_1d", "pool_coords", "build_model",
           "model_names", "model_table", "StoreDataset", "OnTheFlyDataset", "Batch", "save_checkpoint", "load_checkpoint",
           "CheckpointInfo", "check_store_matches", "TrainConfig", "TrainResult", "TrainingDiverged", "train",
           "evaluate", "compare", "EvalResult", "Score", "export_onnx", "export_pt2", "ExportResult"]
