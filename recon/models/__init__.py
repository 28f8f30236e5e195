"""Models, each called as ``model(x, coords)``: the 1-D CNN family, the small 2-D FCNNs (plain, residual,
CoordGate, PAFU), the U-Net family (plain, CoordGate,
CoordConv) and the baselines (MultiWienerNet, PAFU-UNet); :func:`build_model` rebuilds any of them from a plain
config."""

from .cnn1d import CNN1d, CoordConvCNN1d, CoordGateCNN1d, FreeGateLC1d, NoiseGateCNN1d
from .fcnn import FCNN, CoordGateFCNN, PAFUNet
from .multiwienernet import MultiWienerNet
from .pafu_unet import PAFUUNet
from .registry import MODELS, build_model, model_names, model_table
from .unet import UNet

__all__ = ["CNN1d", "CoordConvCNN1d", "CoordGateCNN1d", "NoiseGateCNN1d", "FreeGateLC1d", "FCNN", "CoordGateFCNN", "PAFUNet", "UNet", "MultiWienerNet", "PAFUUNet", "MODELS", "build_model",
           "model_names", "model_table"]
