"""Routes: every tile of a small frame run in-process (a loop, no Dask) against an independent whole-frame
computation (the model called once on the whole frame; psfsim's in-memory blur, Wiener, SV-Wiener and RL)."""

import pickle
import warnings

import numpy as np
import pytest

import psfsim
from pipelines.errors import PipelineError
from pipelines.routes import model_route, rl_route, simulate_route, wiener_route
from pipelines.routes.base import frame_scale
from pipelines.tiling import TileGrid, seam_score

from .conftest import ArrayFrame, scene

ORIGIN = (37, 50)  # the frame's place in the 160 x 224 lens field: off-centre
SHAPE = (102, 150)  # not multiples of the U-Nets' alignment (4): the far-edge tiles are exercised


def tiled(route, frame, *, tile, origin=ORIGIN, index=0, batch_all=False):
    """Every tile of the frame through the route, trimmed into place (what the runner does, minus Dask)."""
    stats = route.prepare(frame, index, origin=origin)
    grid = TileGrid(frame.frame_shape, tile=tile, halo=route.halo, align=route.align)
    out = np.full(frame.frame_shape, np.nan, np.float32)
    tiles = list(grid)
    groups = [tiles] if batch_all else [[t] for t in tiles]
    for group in groups:
        blocks = [frame.read(index, t.rows, t.cols) for t in group]
        res = route(blocks, [(origin[0] + t.read[0], origin[1] + t.read[2]) for t in group], stats)
        for t, r, b in zip(group, res, blocks):
            assert r.shape == b.shape and r.dtype == np.float32
            out[t.out[0]:t.out[1], t.out[2]:t.out[3]] = r[t.inner]
    return out, stats, grid


@pytest.fixture(scope="module")
def blurred_frame(pl_lens):
    sharp = scene(SHAPE, seed=1)
    y = psfsim.blur(sharp, pl_lens, origin=ORIGIN)
    y = y + 0.01 * np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    return sharp, y


@pytest.mark.parametrize("name", ["cgunet", "unet"])
def test_model_route_tiled_equals_whole_frame(name, checkpoints, pl_lens, blurred_frame):
    """Reference: recon.load_checkpoint's model called once on the whole frame with the frame's coordinates."""
    import torch

    import recon

    _, y = blurred_frame
    route = model_route(checkpoints[name], device="cpu", batch=3)
    assert route.align == 4 and route.halo == 23
    frame = ArrayFrame(y)
    out, stats, grid = tiled(route, frame, tile=32, batch_all=True)
    assert grid.grid == (4, 5) and any(t.read[1] == SHAPE[0] for t in grid) and stats["scale"] == float(y.max())
    model, _ = recon.load_checkpoint(checkpoints[name])
    coords = recon.batch_coords(pl_lens, origins=[ORIGIN], shape=SHAPE)
    with torch.no_grad():
        ref = model(torch.from_numpy(y / stats["scale"])[None, None], coords)[0, 0].numpy() * stats["scale"]
    assert np.abs(ref).max() > 1e-2  # a non-trivial output
    assert np.abs(out - ref).max() < 1e-4
    # one tile at a time (batch of one) gives the same
    out1, _, _ = tiled(route, frame, tile=32)
    assert np.abs(out1 - ref).max() < 1e-4
    assert seam_score(out, 32) < 1.2


def test_model_route_wrong_window_and_position(checkpoints, blurred_frame):
    """The CG-UNet's output depends on the field window: the same frame at another origin differs; a frame
    outside the checkpoint's lens field is refused, naming it."""
    _, y = blurred_frame
    route = model_route(checkpoints["cgunet"], device="cpu")
    frame = ArrayFrame(y)
    a, _, _ = tiled(route, frame, tile=48)
    b, _, _ = tiled(route, frame, tile=48, origin=(0, 0))
    assert np.abs(a - b).max() > 1e-3
    with pytest.raises(PipelineError, match=r"does not lie inside the lens field \(160, 224\)"):
        route.prepare(frame, 0, origin=(100, 0))
    with pytest.raises(PipelineError, match="no such file"):
        model_route(checkpoints["cgunet"].parent / "missing.pt")


def test_model_route_gate_cache_reused_per_window_and_bounded(checkpoints, blurred_frame):
    """A stack processed window by window: the gate MLPs run for the first frame only; caches stay bounded."""
    import torch

    from pipelines.routes.model import clear_models, loaded_model

    clear_models()
    _, y = blurred_frame
    route = model_route(checkpoints["cgunet"], device="cpu", gate_cache_windows=3, gate_cache_bytes=4 * 2**20)
    stack = ArrayFrame(np.stack([y, 0.5 * y, y[::-1].copy()]))
    model, _ = loaded_model(route.path, route.sha256, "cpu")
    from recon.layers.coordgate import CoordGate

    layers = [m for m in model.modules() if isinstance(m, CoordGate)]
    calls = []
    hooks = [g.gate.register_forward_hook(lambda *a: calls.append(1)) for g in layers]
    try:
        grid = TileGrid(SHAPE, tile=32, halo=route.halo, align=route.align)
        stats = [route.prepare(stack, n, origin=ORIGIN) for n in range(3)]
        per_window = []
        for t in grid:  # window-major: every frame of the stack at this window, then the next window
            before = len(calls)
            for n in range(3):
                route([stack.read(n, t.rows, t.cols)], [(ORIGIN[0] + t.read[0], ORIGIN[1] + t.read[2])], stats[n])
            per_window.append(len(calls) - before)
        # gates computed once per window (for frame 1), reused by frames 2 and 3 (and by a later tile whose read
        # region is the same window); the cache holds 3 windows, so only the last 3 distinct ones can hit
        seen, expected = [], []
        for t in grid:
            expected.append(0 if t.read in seen[-3:] else len(layers))
            seen = [r for r in seen if r != t.read] + [t.read]
        assert per_window == expected and expected.count(0) < len(expected) - 3
        for g in layers:
            assert len(g._gates) <= 3 and (g._gates.nbytes <= g._gates.max_bytes or len(g._gates) == 1)
        assert sum(g._gates.max_bytes for g in layers) <= 4 * 2**20 + len(layers)
    finally:
        for h in hooks:
            h.remove()


def test_model_route_out_of_memory_halves_batch_then_splits(checkpoints, pl_lens, monkeypatch):
    """A device that runs out of memory above 2 blocks, or at 112 x 112 pixels a block: same result, warned."""
    import torch

    from pipelines.routes import model as model_mod

    y = psfsim.blur(scene((160, 224), seed=5), pl_lens)
    route = model_route(checkpoints["unet"], device="cpu", batch=4)
    frame = ArrayFrame(y)
    ref, _, grid = tiled(route, frame, tile=64, origin=(0, 0), batch_all=True)
    assert grid.read_shape == (112, 112)
    real = model_mod.ModelRoute._forward

    def small_device(self, model, device, xs, origins):
        if len(xs) > 2 or xs[0].size >= 112 * 112:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, model, device, xs, origins)

    monkeypatch.setattr(model_mod.ModelRoute, "_forward", small_device)
    with pytest.warns(ResourceWarning) as rec:
        out, _, _ = tiled(route, frame, tile=64, origin=(0, 0), batch_all=True)
    msgs = " ".join(str(w.message) for w in rec)
    assert "halving the batch to 2" in msgs and "halving the batch to 1" in msgs and "sub-tiles of 56 px" in msgs
    assert np.abs(out - ref).max() < 1e-4


def test_model_route_pickles_small_and_normalises_in_input_units(checkpoints, blurred_frame):
    _, y = blurred_frame
    route = model_route(checkpoints["unet"], device="cpu")
    data = pickle.dumps(route)
    assert len(data) < 20_000  # path, hash, settings and the lens: never the module
    route2 = pickle.loads(data)
    frame = ArrayFrame(y)
    a, _, _ = tiled(route2, frame, tile=64)
    b, s, _ = tiled(route2, ArrayFrame(1000.0 * y), tile=64)
    assert s["scale"] == pytest.approx(1000.0 * float(y.max()), rel=1e-6)
    np.testing.assert_allclose(b, 1000.0 * a, rtol=1e-4, atol=1e-3)  # output in the input's units
    ident = route.identity()
    assert ident["checkpoint_sha256"] == route.sha256 and len(ident["checkpoint_sha256"]) == 64


def test_frame_scale_is_exact_robust_max():
    rng = np.random.default_rng(0)
    a = rng.random((300, 400)).astype(np.float32)
    a[5, 7] = np.nan
    frame = ArrayFrame(a)
    s = frame_scale(frame, 0, fraction=1e-3, strip_bytes=4 * 400 * 7)  # 7-row strips
    finite = np.sort(a[np.isfinite(a)])[::-1]
    k = int(1e-3 * finite.size) + 1
    assert s["k"] == k and s["scale"] == float(finite[k - 1]) and s["n_nonfinite"] == 1
    assert frame_scale(frame, 0, fraction=0.0)["scale"] == float(np.nanmax(a))
    with pytest.raises(PipelineError, match="no finite pixel"):
        frame_scale(ArrayFrame(np.full((4, 4), np.nan)), 0)


def test_simulate_route_equals_psfsim_blur(pl_lens):
    sharp = scene(SHAPE, seed=3)
    route = simulate_route(pl_lens)
    assert route.halo == 8
    out, _, _ = tiled(route, ArrayFrame(sharp), tile=40)
    ref = psfsim.blur(sharp, pl_lens, origin=ORIGIN)
    assert np.abs(out - ref).max() < 1e-5 * float(ref.max())


def test_simulate_route_noise_independent_of_tiling_and_calibrated(pl_lens):
    """Same seed: byte-identical output for tiles of 40, 64 and the whole frame; the noise around psfsim's blur
    has the Poisson-Gaussian variance NoiseModel.sigma predicts (an analytic reference)."""
    sharp = scene(SHAPE, seed=4) * 3.0
    route = simulate_route(pl_lens, photons=500.0, read_noise=2.0, seed=7, noise_block=32)
    frame = ArrayFrame(sharp)
    a, stats, _ = tiled(route, frame, tile=40)
    b, _, _ = tiled(route, frame, tile=64)
    c, _, _ = tiled(route, frame, tile=min(SHAPE))
    assert np.array_equal(a, b) and np.array_equal(a, c) and np.isfinite(a).all()
    other, _, _ = tiled(simulate_route(pl_lens, photons=500.0, read_noise=2.0, seed=8, noise_block=32), frame, tile=40)
    assert not np.array_equal(a, other)
    scale = stats["scale"]
    blurred = psfsim.blur(sharp, pl_lens, origin=ORIGIN)
    z = (a - blurred) / (scale * route.noise.sigma(np.clip(blurred / scale, 0, None)))
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1.0) < 0.05
    with pytest.raises(PipelineError, match="photons"):
        simulate_route(pl_lens, photons=-1)


def test_wiener_routes_equal_psfsim(pl_lens, blurred_frame):
    _, y = blurred_frame
    frame = ArrayFrame(y)
    # SV Wiener: exact tiling (aligned to the patch stride, halo = patch + k)
    sv = wiener_route(pl_lens, sv=True, patch=16)
    assert sv.align == 8 and sv.halo == 16 + 17
    out, stats, _ = tiled(sv, frame, tile=48)
    ref = psfsim.sv_wiener(y, pl_lens, origin=ORIGIN, patch=16)  # balance resolved on the whole frame
    assert stats["balance_from"] == "whole frame"
    assert np.abs(out - ref).max() < 1e-4 * float(np.abs(ref).max())
    # global Wiener with the axis PSF: equal up to the filter's tail beyond the halo
    g = wiener_route(pl_lens)
    assert g.halo == 4 * 17
    out, stats, _ = tiled(g, frame, tile=48)
    ref = psfsim.wiener(y, pl_lens.psf(0.0, 0.0))
    assert stats["tail_beyond_halo"] < 1e-6
    assert np.abs(out - ref).max() < 1e-4 * float(np.abs(ref).max())
    # a halo that truncates the filter is warned about, naming the halo that would do
    with pytest.warns(UserWarning, match="beyond the halo of 2 px"):
        wiener_route(pl_lens, halo=2).prepare(frame, 0, origin=ORIGIN)


def test_rl_route_equals_psfsim(pl_lens, blurred_frame):
    _, y = blurred_frame
    route = rl_route(pl_lens, iterations=3)
    assert route.halo == 3 * 16
    out, _, _ = tiled(route, ArrayFrame(y), tile=40)
    op = psfsim.make_operator(pl_lens, shape=SHAPE, origin=ORIGIN)
    ref = psfsim.richardson_lucy(y, op, iters=3).image
    assert np.abs(out - ref).max() < 1e-4 * float(ref.max())


def test_nan_pixels_masked_not_spread(pl_lens, blurred_frame):
    _, y = blurred_frame
    y = y.copy()
    y[50, 60] = np.nan
    y[10:12, 100] = np.nan
    for route in (simulate_route(pl_lens), wiener_route(pl_lens, sv=True, patch=16)):
        out, _, _ = tiled(route, ArrayFrame(y), tile=48)
        assert np.array_equal(np.isnan(out), np.isnan(y))
