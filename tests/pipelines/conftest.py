"""Shared fixtures of the pipelines tests: a small lens, in-memory frames with the Frame interface, and tiny
random-weight checkpoints (CG-UNet and UNet of depth 2) written by recon.save_checkpoint."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import psfsim


def run_python(code: str, *args) -> None:
    """Run ``code`` in a fresh interpreter with this checkout importable (as a process-based Dask worker runs a
    task): ``sys.argv[1:]`` are ``args``; raises if it fails."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", code, *map(str, args)], check=True, env=env, timeout=120)

#: A small lens whose blur changes across its 160 x 224 field (field curvature + coma), 17 px PSF box.
PL_LENS = {"name": "pl-small", "optics": {"wavelength_nm": 520.0, "na": 0.4, "pixel_pitch_um": 0.325},
           "field": {"shape_px": [160, 224]}, "psf": {"size_px": 17, "oversample": 2, "pupil_samples": 32},
           "seidel": {"W220": 0.3, "W131": 0.15}}


class ArrayFrame:
    """An in-memory frame with the interface of ``pipelines.frames.Frame`` (``frame_shape``, ``n_frames``,
    ``read(index, rows, cols) -> float32``), counting the pixels read."""

    def __init__(self, a):
        a = np.asarray(a)
        self.a = a if a.ndim == 3 else a[None]
        self.n_frames = self.a.shape[0]
        self.frame_shape = tuple(self.a.shape[1:])
        self.pixels_read = 0

    def read(self, index, rows, cols):
        out = np.asarray(self.a[index, rows, cols], np.float32)
        self.pixels_read += out.size
        return out


def scene(shape, seed=0):
    """A sharp test scene in [0, 1]: smooth structure, sharp discs and point sources."""
    rng = np.random.default_rng(seed)
    H, W = shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    img = 0.25 + 0.1 * np.sin(xx / 9.0 + rng.random() * 6) * np.cos(yy / 13.0)
    for _ in range(max(4, H * W // 900)):
        r, c, rad = rng.random() * H, rng.random() * W, 2 + rng.random() * 6
        img += 0.3 * rng.random() * (((yy - r) ** 2 + (xx - c) ** 2) < rad**2)
    pts = rng.integers(0, [H, W], size=(max(2, H * W // 2000), 2))
    img[pts[:, 0], pts[:, 1]] += 0.5
    return (img / img.max()).astype(np.float32)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: on a busy shared CPU torch's thread pool spins and small convolutions take 100x
    longer (the tests' tensors are tiny)."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def pl_lens():
    return psfsim.lens_from_dict(PL_LENS)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, pl_lens):
    """``{"cgunet": path, "unet": path}``: depth 2, 4 base channels, random weights (seeded)."""
    import torch

    import recon
    from psfsim.dataset.reader import Normalisation

    folder = tmp_path_factory.mktemp("ckpt")
    out = {}
    for i, name in enumerate(("cgunet", "unet")):
        torch.manual_seed(10 + i)
        model = recon.build_model(name, depth=2, base_channels=4)
        with torch.no_grad():  # PyTorch's default init shrinks activations ~3x a layer: the output would barely
            for m in model.modules():  # depend on the input or the field window; this keeps it responsive
                if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                    m.weight.mul_(2.5)
        out[name] = recon.save_checkpoint(folder / f"{name}.pt", model, lens=pl_lens,
                                          normalisation=Normalisation("source_region_max", 8, 0.0, 1.0),
                                          dataset_identity={"test": "random weights"}, train_args={}, metrics={},
                                          input_peak=1.0)
    return out


def tiny_lens_toml(name: str) -> str:
    """The lens file of the command-line tests: a 256 x 256 field, a 17 px box and three Seidel terms."""
    return f"""name = "{name}"
[optics]
wavelength_nm = 520.0
na = 0.4
pixel_pitch_um = 0.325
[field]
shape_px = [256, 256]
[psf]
size_px = 17
oversample = 2
max_energy_outside = 0.2
[seidel]
W040 = 0.5
W131 = 0.6
W222 = 0.4
"""
