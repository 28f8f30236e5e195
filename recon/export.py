"""Export a checkpoint's model to ONNX (``recon export CKPT --to model.onnx``) or torch.export (``--to model.pt2``),
checked against the torch model before the file is put in place.

**ONNX**: two inputs, ``image (B, C, H, W)`` and ``coords (B, 2, H, W)`` (the field coordinates, as
``model(x, coords)``), one output ``output (B, 1, H, W)``; batch, height and width are dynamic. The legacy
TorchScript exporter (``torch.onnx.export(..., dynamo=False)``, opset 17) is used: the dynamo exporter needs
``onnxscript``, which recon does not depend on. The graph is traced, so the U-Nets' padding of a size that is
not a multiple of ``2^depth`` is **not** in it: give the ONNX model ``H`` and ``W`` multiples of ``2^depth``
(pad beforehand). The file is checked with ``onnx.checker`` and run with onnxruntime (CPU) at two sizes and
batches, ``(2, H, W)`` and ``(1, H + 2^d, W + 2 * 2^d)``: the largest absolute difference to the torch model
must stay below ``tolerance`` (default :data:`TOLERANCE`, float32 round-off of a few hundred summed terms),
else nothing is written and :class:`ReconError` says by how much.

**pt2**: :func:`torch.export.export` with height and width dynamic as multiples of ``2^depth`` (and batch
dynamic), saved with :func:`torch.export.save`, loaded back with :func:`torch.export.load` and checked the same
way. It needs no extra package.

Which models of the registry export (torch 2.13, onnx 1.23, onnxruntime 1.32; ``tests/recon/test_export.py``):

==================  ==========================================  ==========================================
model               ONNX                                        pt2 (torch.export)
==================  ==========================================  ==========================================
``unet``            yes (max abs diff ~6e-8)                    yes (bit-identical)
``cgunet``          yes (~1.5e-8)                               yes (bit-identical)
``coordconv_unet``  yes (~5e-8)                                 yes (bit-identical)
``pafu_unet``       no: traces, but its per-pixel kernel gather  yes (bit-identical)
                    keeps the traced size in an ``Expand``
                    node and fails at any other size
``multiwienernet``  no: ``aten::fft_rfft2`` (its Wiener layer)  no: the Wiener layer's FFT padding
                    has no ONNX operator                        specialises height and width
==================  ==========================================  ==========================================

Models that ignore ``coords`` (``unet``, ``pafu_unet``) still get the ``coords`` input in the ONNX graph
(unused), so every exported model is called the same way. A model that does not export gets a :class:`ReconError` naming the operator or node.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import ReconError

__all__ = ["TOLERANCE", "ExportResult", "export", "export_onnx", "export_pt2", "parse_size"]

#: Default largest max abs difference (float32 outputs of data in [0, 1]) between the export and torch.
TOLERANCE = 1e-4
OPSET = 17
DEFAULT_SIZE = (64, 64)


@dataclass(frozen=True)
class ExportResult:
    """An export and its check.

    Attributes
    ----------
    path : Path
    format : {"onnx", "pt2"}
    model : str
    shapes : tuple of (B, H, W)
        Input shapes checked.
    max_abs_diff : tuple of float
        Largest ``|export - torch|`` at each checked shape.
    tolerance : float
    """

    path: Path
    format: str
    model: str
    shapes: tuple
    max_abs_diff: tuple
    tolerance: float

    @property
    def ok(self) -> bool:
        return all(d <= self.tolerance for d in self.max_abs_diff)

    def summary(self) -> str:
        checks = ", ".join(f"{b}x{h}x{w}: {d:.2e}" for (b, h, w), d in zip(self.shapes, self.max_abs_diff))
        return (f"wrote {self.path} ({self.format}, model {self.model}); max abs difference to torch {checks} "
                f"(tolerance {self.tolerance:g})")


def parse_size(size) -> tuple[int, int]:
    """``"H,W"``, ``"S"``, an int or a pair -> ``(H, W)``."""
    if size is None:
        return DEFAULT_SIZE
    try:
        if isinstance(size, str):
            parts = [p for p in re.split(r"[,x ]+", size.strip()) if p]
            t = tuple(int(p) for p in parts)
        elif np.isscalar(size):
            t = (int(size),)
        else:
            t = tuple(int(v) for v in size)
        t = t * 2 if len(t) == 1 else t
        if len(t) != 2 or min(t) < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise ReconError(f"--size {size!r}: expected H,W (positive integers)") from None
    return t


def _resolve(model_or_checkpoint):
    """``(model in eval mode on CPU, name, in_channels, 2^depth)``."""
    if isinstance(model_or_checkpoint, torch.nn.Module):
        model = model_or_checkpoint
        cfg = getattr(model, "model_config", {}) or {}
    else:
        from .checkpoint import load_checkpoint

        model, info = load_checkpoint(model_or_checkpoint, device="cpu")
        cfg = info.model_config
    model = model.cpu().eval()
    name = str(cfg.get("name", type(model).__name__))
    cin = int(cfg.get("in_channels", 1))
    m = 2 ** int(getattr(model, "depth", 0))
    return model, name, cin, m


def _shapes(size, m: int) -> list[tuple[int, int, int]]:
    h, w = parse_size(size)
    if h % m or w % m:
        raise ReconError(f"--size {h},{w}: not a multiple of 2^depth = {m}; use e.g. {max(m, h // m * m)},{max(m, w // m * m)}")
    return [(2, h, w), (1, h + m, w + 2 * m)]


def _inputs(b: int, cin: int, h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, cin, h, w, generator=g)
    coords = torch.rand(b, 2, h, w, generator=g) * 1.4 - 0.7
    return x, coords


def _check_out(to, suffix: str, overwrite: bool) -> Path:
    to = Path(to)
    if to.suffix != suffix:
        raise ReconError(f"--to {to}: expected a {suffix} file")
    if to.exists() and not overwrite:
        raise ReconError(f"--to {to}: exists (use --overwrite to replace it)")
    if not to.parent.is_dir():
        raise ReconError(f"--to {to}: folder {to.parent} does not exist")
    return to


def _first_line(e: BaseException, limit: int = 300) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:limit]


def export_onnx(model_or_checkpoint, to, *, size=None, tolerance: float = TOLERANCE, opset: int = OPSET,
                overwrite: bool = False) -> ExportResult:
    """Export to ONNX (inputs ``image``, ``coords``; output ``output``; dynamic batch, height, width) and check it
    with onnxruntime at two shapes; the file is put in place only when both differences are within
    ``tolerance``.

    Parameters
    ----------
    model_or_checkpoint : path or nn.Module
        A recon checkpoint, or a model built by :func:`recon.build_model`.
    to : path
        ``model.onnx``.
    size : "H,W" or (H, W), optional
        Example size (multiples of ``2^depth``; default 64 x 64); the second check adds ``2^depth`` rows and
        ``2 * 2^depth`` columns.
    """
    from psfsim.store import atomic_file

    try:
        import onnx
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - dev extra
        raise ReconError(f"ONNX export needs onnx and onnxruntime (pip install onnx onnxruntime): {e}") from None
    to = _check_out(to, ".onnx", overwrite)
    model, name, cin, m = _resolve(model_or_checkpoint)
    shapes = _shapes(size, m)
    example = _inputs(*shapes[0][:1], cin, *shapes[0][1:], seed=0)
    dyn = {0: "batch", 2: "height", 3: "width"}
    with atomic_file(to) as tmp:
        try:
            with warnings.catch_warnings(), torch.no_grad(), _quiet_stdout():
                warnings.simplefilter("ignore")  # TracerWarnings of the shape checks; the legacy exporter's notice
                torch.onnx.export(model, example, str(tmp), input_names=["image", "coords"], output_names=["output"],
                                  dynamic_axes={"image": dyn, "coords": dyn, "output": dyn}, opset_version=int(opset),
                                  dynamo=False, do_constant_folding=True)
        except ReconError:
            raise
        except Exception as e:  # noqa: BLE001 - any exporter failure is the model's ops: name the operator
            op = re.search(r"(aten::\w+|prim::\w+)", str(e))
            what = f"operator {op.group(1)} has no ONNX equivalent at opset {opset}" if op else _first_line(e)
            raise ReconError(f"model {name!r} does not export to ONNX: {what}") from None
        _keep_coords_input(onnx, tmp)
        try:
            onnx.checker.check_model(str(tmp))
        except Exception as e:  # noqa: BLE001
            raise ReconError(f"model {name!r}: the exported ONNX graph is invalid ({_first_line(e)})") from None
        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # failures come back as exceptions, reported below; no log lines on stderr
        sess = ort.InferenceSession(str(tmp), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        if names != ["image", "coords"]:
            raise ReconError(f"model {name!r}: the exported ONNX graph has inputs {names}, expected image, coords")
        diffs = []
        for k, (b, h, w) in enumerate(shapes):
            x, c = _inputs(b, cin, h, w, seed=k + 1)
            feeds = {n: a.numpy() for n, a in (("image", x), ("coords", c)) if n in names}
            try:
                got = sess.run(["output"], feeds)[0]
            except Exception as e:  # noqa: BLE001 - a graph that baked in the traced shape fails here
                node = re.search(r"running (\w+) node\. Name:'([^']*)'", str(e))
                where = f"node {node.group(2)} ({node.group(1)})" if node else _first_line(e)
                raise ReconError(f"model {name!r} does not export to ONNX with dynamic size: the graph traced at "
                                 f"{shapes[0][1]}x{shapes[0][2]} fails at {h}x{w} in {where} (an operation that "
                                 "keeps the traced shape)") from None
            with torch.no_grad():
                ref = model(x, c).numpy()
            if got.shape != ref.shape:
                raise ReconError(f"model {name!r}: ONNX output of shape {got.shape} at input {b}x{h}x{w}, torch "
                                 f"{ref.shape}")
            diffs.append(float(np.max(np.abs(got.astype(np.float64) - ref))))
        res = ExportResult(path=to, format="onnx", model=name, shapes=tuple(shapes), max_abs_diff=tuple(diffs),
                           tolerance=float(tolerance))
        _require(res)
    return res


@contextlib.contextmanager
def _quiet_stdout():
    """Silence file descriptor 1 (the legacy exporter prints its whole IR graph there, from C++, on failure)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _keep_coords_input(onnx, path) -> None:
    """A model that ignores ``coords`` (plain U-Net, PAFU-UNet) loses that input in the trace: add it back,
    unused, so every exported model takes the same two inputs."""
    m = onnx.load(str(path))
    if any(i.name == "coords" for i in m.graph.input):
        return
    m.graph.input.append(onnx.helper.make_tensor_value_info("coords", onnx.TensorProto.FLOAT,
                                                            ["batch", 2, "height", "width"]))
    onnx.save(m, str(path))


def _require(res: ExportResult) -> None:
    bad = [(s, d) for s, d in zip(res.shapes, res.max_abs_diff) if not d <= res.tolerance]
    if bad:
        (b, h, w), d = bad[0]
        raise ReconError(f"model {res.model!r}: the {res.format} export differs from torch by {d:.3g} at input "
                         f"{b}x{h}x{w}, more than the tolerance {res.tolerance:g}; nothing written")


def export_pt2(model_or_checkpoint, to, *, size=None, tolerance: float = TOLERANCE,
               overwrite: bool = False) -> ExportResult:
    """Export with :func:`torch.export.export` (batch dynamic, height and width dynamic multiples of
    ``2^depth``) to ``model.pt2``, loaded back and checked at two shapes like :func:`export_onnx`."""
    from psfsim.store import atomic_file

    to = _check_out(to, ".pt2", overwrite)
    model, name, cin, m = _resolve(model_or_checkpoint)
    shapes = _shapes(size, m)
    example = _inputs(*shapes[0][:1], cin, *shapes[0][1:], seed=0)
    Dim = torch.export.Dim
    batch, hb, wb = Dim("batch", min=1, max=4096), Dim("hblocks", min=1, max=65536), Dim("wblocks", min=1, max=65536)
    spec = {0: batch, 2: m * hb, 3: m * wb}
    with atomic_file(to) as tmp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ep = torch.export.export(model, example, dynamic_shapes=(spec, spec))
        except Exception as e:  # noqa: BLE001
            raise ReconError(f"model {name!r} does not export with torch.export (dynamic batch and size): "
                             f"{_first_line(e)}") from None
        torch.export.save(ep, str(tmp))
        loaded = torch.export.load(str(tmp)).module()
        diffs = []
        for k, (b, h, w) in enumerate(shapes):
            x, c = _inputs(b, cin, h, w, seed=k + 1)
            with torch.no_grad():
                try:
                    got = loaded(x, c)
                except Exception as e:  # noqa: BLE001
                    raise ReconError(f"model {name!r}: the pt2 export fails at input {b}x{h}x{w} ({_first_line(e)})") from None
                ref = model(x, c)
            diffs.append(float((got.double() - ref.double()).abs().max()))
        res = ExportResult(path=to, format="pt2", model=name, shapes=tuple(shapes), max_abs_diff=tuple(diffs),
                           tolerance=float(tolerance))
        _require(res)
    return res


def export(model_or_checkpoint, to, *, size=None, tolerance: float | None = None, overwrite: bool = False) -> ExportResult:
    """:func:`export_onnx` or :func:`export_pt2`, by the suffix of ``to``."""
    tol = TOLERANCE if tolerance is None else float(tolerance)
    if not (math.isfinite(tol) and tol >= 0):
        raise ReconError(f"--tolerance {tolerance!r}: expected a number >= 0")
    suffix = Path(to).suffix
    if suffix == ".onnx":
        return export_onnx(model_or_checkpoint, to, size=size, tolerance=tol, overwrite=overwrite)
    if suffix == ".pt2":
        return export_pt2(model_or_checkpoint, to, size=size, tolerance=tol, overwrite=overwrite)
    raise ReconError(f"--to {to}: unknown format {suffix or '(no suffix)'!r}; expected model.onnx or model.pt2")
