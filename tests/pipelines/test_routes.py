"""Routes: every tile of a small frame run in-process (a loop, no Dask) against an independent whole-frame
computation (the model called once on the whole frame; psfsim's in-memory blur, Wiener, SV-Wiener and RL)."""

import pickle

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
    assert len(interior_reads(grid)) >= 4  # tiles that see only part of the frame
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


@pytest.fixture(scope="module")
def more_checkpoints(tmp_path_factory, pl_lens):
    """PAFU-UNet(2) and MultiWienerNet (PSFs of the lens, U-Net depth 2, Wiener regularisation 1: a long
    inverse-filter tail, far weaker than the authors' initial 1000), random weights (seeded)."""
    import torch

    import recon
    from psfsim.dataset.reader import Normalisation

    folder = tmp_path_factory.mktemp("ckpt2")
    out = {}
    for name, cfg in (("pafu_unet", {}), ("multiwienernet", {"lens": pl_lens.to_dict(), "reg_init": 1e-3})):
        torch.manual_seed(12)
        model = recon.build_model(name, depth=2, base_channels=4, **cfg)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                    m.weight.mul_(2.5)
        out[name] = recon.save_checkpoint(tmp_path_factory.mktemp(name) / f"{name}.pt", model, lens=pl_lens,
                                          normalisation=Normalisation("source_region_max", 8, 0.0, 1.0),
                                          dataset_identity={"test": "random weights"}, train_args={}, metrics={},
                                          input_peak=1.0)
    return out


def _whole_frame(path, pl_lens, y, scale, origin=ORIGIN):
    import torch

    import recon

    model, _ = recon.load_checkpoint(path)
    coords = recon.batch_coords(pl_lens, origins=[origin], shape=y.shape) if model.position_aware else None
    with torch.no_grad():
        return model(torch.from_numpy(y / scale)[None, None], coords)[0, 0].numpy() * scale


def test_pafu_unet_route_tiled_equals_whole_frame(more_checkpoints, pl_lens, blurred_frame):
    """Reference: the PAFU-UNet called once on the whole frame. Its alignment (2^depth) and halo come from the
    model's tile_align / tile_halo like every U-Net's."""
    _, y = blurred_frame
    route = model_route(more_checkpoints["pafu_unet"], device="cpu", batch=2)
    assert (route.align, route.halo, route.exact) == (4, 23, True)
    out, stats, grid = tiled(route, ArrayFrame(y), tile=32)
    assert any(t.read[1] == SHAPE[0] for t in grid) and len(interior_reads(grid)) >= 4
    ref = _whole_frame(more_checkpoints["pafu_unet"], pl_lens, y, stats["scale"])
    assert np.abs(ref).max() > 1e-2 and np.abs(out - ref).max() < 1e-4


def test_multiwienernet_route_is_aligned_and_near_exact_with_its_tile_halo(more_checkpoints, pl_lens):
    """MultiWienerNet keeps its U-Net under ``.unet``: tiles must still be aligned to 2^depth (with align 1 the
    error was 2.0 on a range of 4.5). Its Wiener layer is global (FFT): tiling is approximate and warned about,
    naming the share of the filters' response beyond the halo; with the default tile_halo (PSF box + U-Net
    halo) the measured error is at float32 rounding, and a halo that only covers the U-Net is visibly worse.
    Reference: the model called once on the whole frame."""
    origin = (10, 12)  # a larger frame than SHAPE: room for tiles with a 40 px halo that are not the whole frame
    y = psfsim.blur(scene((150, 206), seed=7), pl_lens, origin=origin)
    path = more_checkpoints["multiwienernet"]
    with pytest.warns(UserWarning, match=r"global receptive field.*beyond this halo") as rec:
        route = model_route(path, device="cpu", batch=2)
    assert (route.align, route.halo, route.exact) == (4, 17 + 23, False)
    msg = next(str(w.message) for w in rec if "global receptive field" in str(w.message))
    assert 0 < route.tail_beyond_halo < 1e-4 and f"halo of {route.halo} px" in msg
    assert route.identity()["tiling_exact"] is False
    out, stats, grid = tiled(route, ArrayFrame(y), tile=32, origin=origin)
    assert any(t.read[1] == y.shape[0] for t in grid) and len(interior_reads(grid)) >= 4
    ref = _whole_frame(path, pl_lens, y, stats["scale"], origin)
    err = np.abs(out - ref).max()
    assert np.abs(ref).max() > 1e-2 and err < 1e-5 * max(1.0, float(np.abs(ref).max()))
    with pytest.warns(UserWarning, match="global receptive field"):
        short = model_route(path, device="cpu", halo=24)
    assert short.tail_beyond_halo > 0.1
    out24, _, _ = tiled(short, ArrayFrame(y), tile=32, origin=origin)
    assert np.abs(out24 - ref).max() > 10 * err
    # unaligned tiles (what the route did before it read tile_align) differ grossly
    route.align = 1
    out1, _, _ = tiled(route, ArrayFrame(y), tile=30, origin=origin)
    assert np.abs(out1 - ref).max() > 100 * err


def test_every_2d_model_reports_its_tile_geometry():
    """One place for every model: tile_align is 2^(pooling levels) (the U-Net's depth, wherever it is kept) and
    tile_halo the exact reach, except for the global MultiWienerNet (halo None: not exact)."""
    import recon
    from recon.models.registry import MODELS

    from pipelines.routes.model import tile_geometry

    for name, spec in MODELS.items():
        if spec.dims != 2:
            continue
        m = recon.build_model(name)
        unet = getattr(m, "unet", m)
        align, halo, tile_halo, exact = tile_geometry(m, name)
        assert align == 2 ** getattr(unet, "depth", 0), name
        assert exact == (name != "multiwienernet") and (halo == tile_halo if exact else tile_halo > unet.halo), name


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


def test_no_origin_means_the_full_field_and_a_sub_window_is_refused(tmp_path, pl_lens, checkpoints, blurred_frame):
    """Issue 13: the frame is the lens's full field unless an origin places it. Without one, a frame of another
    shape is refused (both shapes named, --origin suggested) instead of running silently at (0, 0); an
    explicit (0, 0) is a sub-window at the corner, accepted. Through the runner too: nothing is written."""
    from pipelines.runner import run

    _, y = blurred_frame
    frame, full = ArrayFrame(y), ArrayFrame(np.random.default_rng(0).random((160, 224), np.float32))
    for route in (model_route(checkpoints["unet"], device="cpu"), wiener_route(pl_lens), simulate_route(pl_lens)):
        with pytest.raises(PipelineError, match=r"shape \(102, 150\) is not the lens field \(160, 224\).*"
                                                r"--origin ROW,COL \(origins \(0, 0\)..\(58, 74\) fit\)"):
            route.prepare(frame, 0)
        assert route.prepare(frame, 0, origin=(0, 0))["origin"] == [0, 0]
        assert route.prepare(full, 0)["origin"] == [0, 0]
        assert route.check_frame((160, 224)) == ((0, 0), (160, 224))
    out = tmp_path / "o.zarr"
    with pytest.raises(PipelineError, match="no origin was given"):
        run(simulate_route(pl_lens), frame, out, tile=32, progress=False)
    assert not out.exists()


def test_model_route_gate_cache_reused_per_window_and_bounded(checkpoints, blurred_frame):
    """A stack processed window by window: the gate MLPs run for the first frame only; caches stay bounded."""
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


def test_frame_reaches_the_model_at_the_training_inputs_scale(tmp_path, pl_lens, checkpoints, monkeypatch):
    """Training divides each sample by its SHARP maximum, so the model's (blurred) inputs peak below 1; the
    checkpoint records their typical peak (input_peak, the trainer's median of max(input)) and the route maps
    the frame's robust maximum to it. Reference: psfsim.blur of the frame's sharp scene scaled to max 1 (what
    training would have fed the model): the frame, given in counts, reaches the model within 3 % of it."""
    import recon
    from pipelines.routes import model as model_mod

    rng = np.random.default_rng(4)

    def points(shape, where):  # sharp scene, max 1: a background and point sources of 1
        a = np.full(shape, 0.1, np.float32)
        a[tuple(np.asarray(where).T)] = 1.0
        return a

    peaks = []  # training inputs: 32 x 32 windows of the field, one point source each
    for _ in range(16):
        o = (int(rng.integers(0, 160 - 32)), int(rng.integers(0, 224 - 32)))
        peaks.append(float(psfsim.blur(points((32, 32), [rng.integers(8, 24, 2)]), pl_lens, origin=o).max()))
    p = float(np.median(peaks))
    assert p < 0.9  # the blurred peak is well below 1: mapping the frame's max to 1 would be ~1/p too bright
    model, info = recon.load_checkpoint(checkpoints["unet"])
    ck = recon.save_checkpoint(tmp_path / "peak.pt", model, lens=pl_lens, normalisation=info.normalisation,
                               dataset_identity={}, train_args={}, metrics={}, input_peak=p)
    route = model_route(ck, device="cpu")
    assert route.input_peak == p and route.identity()["input_peak"] == p
    grid_pts = [(r, c) for r in range(8, SHAPE[0] - 8, 16) for c in range(8, SHAPE[1] - 8, 16)]
    y = psfsim.blur(points(SHAPE, grid_pts), pl_lens, origin=ORIGIN)  # sharp max 1: the training scale
    seen = []
    real = model_mod.ModelRoute._forward

    def spy(self, model, device, xs, origins):
        seen.append(np.stack(xs))
        return real(self, model, device, xs, origins)

    monkeypatch.setattr(model_mod.ModelRoute, "_forward", spy)
    frame = ArrayFrame(800.0 * y + 0.0)  # in counts
    route([frame.read(0, slice(None), slice(None))], [ORIGIN], route.prepare(frame, 0, origin=ORIGIN))
    x = seen[0][0]
    assert np.abs(x - y).max() < 0.03 * float(y.max())
    assert abs(float(x.max()) / p - 1) < 1e-5  # the frame's max sits at the recorded peak


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
    out, _, grid = tiled(route, ArrayFrame(sharp), tile=40)
    ref = psfsim.blur(sharp, pl_lens, origin=ORIGIN)
    assert len(interior_reads(grid)) > 0
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


@pytest.fixture(scope="module")
def field_frame(pl_lens):
    """A blurred, noisy frame covering the whole 160 x 224 lens field (room for tiles with large halos)."""
    y = psfsim.blur(scene((160, 224), seed=6), pl_lens)
    return y + 0.01 * np.random.default_rng(3).standard_normal(y.shape).astype(np.float32)


def interior_reads(grid):
    """Tiles whose read region is smaller than the frame along both axes (the tiling is not trivial)."""
    H, W = grid.frame_shape
    return [t for t in grid if t.read_shape[0] < H and t.read_shape[1] < W]


@pytest.mark.parametrize("psfs", ["lowrank", "exact"])
def test_sv_wiener_route_equals_psfsim(psfs, pl_lens, field_frame):
    y = field_frame
    frame = ArrayFrame(y)
    # SV Wiener: exact tiling (aligned to the patch stride, halo = patch + k)
    sv = wiener_route(pl_lens, sv=True, patch=16, psfs=psfs)
    assert sv.align == 8 and sv.halo == 16 + 17
    out, stats, grid = tiled(sv, frame, tile=48, origin=(0, 0))
    assert len(interior_reads(grid)) == len(grid)
    # balance resolved on the whole frame; the basis's PSFs (psfsim's default, "basis") or the lens's exact ones
    ref = psfsim.sv_wiener(y, pl_lens, origin=(0, 0), patch=16, psfs="basis" if psfs == "lowrank" else "exact")
    assert stats["balance_from"] == "whole frame"
    assert sv.identity()["psf"] == psfs and ("psfsim.sv_wiener's default" in str(sv.identity()["psf_note"])) \
        == (psfs == "lowrank")
    assert np.abs(out - ref).max() < 1e-4 * float(np.abs(ref).max())


def test_wiener_route_equals_psfsim(pl_lens, field_frame):
    y = field_frame
    frame = ArrayFrame(y)
    # global Wiener with the axis PSF: equal up to the filter's tail beyond the halo
    assert wiener_route(pl_lens).halo == 4 * 17
    g = wiener_route(pl_lens, halo=24)
    out, stats, grid = tiled(g, frame, tile=32, origin=(0, 0))
    assert len(interior_reads(grid)) == len(grid)
    ref = psfsim.wiener(y, pl_lens.psf(0.0, 0.0))
    assert stats["tail_beyond_halo"] < 1e-6
    assert np.abs(out - ref).max() < 1e-4 * float(np.abs(ref).max())
    # a halo that truncates the filter is warned about, naming the halo that would do
    with pytest.warns(UserWarning, match="beyond the halo of 2 px"):
        wiener_route(pl_lens, halo=2).prepare(frame, 0)


def test_rl_route_equals_psfsim(pl_lens, field_frame):
    y = field_frame
    route = rl_route(pl_lens, iterations=2)
    assert route.halo == 2 * 16
    out, _, grid = tiled(route, ArrayFrame(y), tile=32, origin=(0, 0))
    assert len(interior_reads(grid)) > len(grid) // 2
    op = psfsim.make_operator(pl_lens, shape=y.shape, origin=(0, 0))
    ref = psfsim.richardson_lucy(y, op, iters=2).image
    assert np.abs(out - ref).max() < 1e-4 * float(ref.max())
    # a halo short of iterations x (k - 1) is warned about
    with pytest.warns(UserWarning, match="halo 4 px"):
        rl_route(pl_lens, iterations=2, halo=4).prepare(ArrayFrame(y), 0)


def test_nan_pixels_masked_not_spread(pl_lens, blurred_frame):
    _, y = blurred_frame
    y = y.copy()
    y[50, 60] = np.nan
    y[10:12, 100] = np.nan
    for route in (simulate_route(pl_lens), wiener_route(pl_lens, sv=True, patch=16)):
        out, _, _ = tiled(route, ArrayFrame(y), tile=48)
        assert np.array_equal(np.isnan(out), np.isnan(y))


def test_model_nan_output_outside_the_input_mask_is_refused_naming_the_tile(checkpoints, blurred_frame,
                                                                            monkeypatch):
    """NaN input pixels come back NaN (masked); a NaN or inf the model makes elsewhere is an error, not data."""
    from pipelines.routes import model as model_mod

    _, y = blurred_frame
    y = y.copy()
    y[5, 6] = np.nan
    route = model_route(checkpoints["unet"], device="cpu")
    frame = ArrayFrame(y)
    out, _, _ = tiled(route, frame, tile=48)
    assert np.array_equal(np.isnan(out), np.isnan(y))  # the input's mask: fine
    real = model_mod.ModelRoute._forward

    def broken(self, model, device, xs, origins):
        ys = real(self, model, device, xs, origins)
        for yy in ys:
            yy[3, 4] = np.inf
        return ys

    monkeypatch.setattr(model_mod.ModelRoute, "_forward", broken)
    with pytest.raises(PipelineError, match=r"1 non-finite pixels outside the input's NaN mask in the tile read at "
                                            r"lens-field origin \(37, 50\), shape \(\d+, \d+\) \(frame index 0; "
                                            r"first at tile pixel \(3, 4\)\)"):
        tiled(route, frame, tile=48)


def test_model_route_refuses_unknown_normalisation_and_bad_settings(tmp_path, pl_lens, checkpoints):
    import torch

    import recon
    from psfsim.dataset.reader import Normalisation

    torch.manual_seed(0)
    p = recon.save_checkpoint(tmp_path / "z.pt", recon.build_model("unet", depth=1, base_channels=2), lens=pl_lens,
                              normalisation=Normalisation("zscore", 0, 0.0, 1.0), dataset_identity={}, train_args={},
                              metrics={})
    with pytest.raises(PipelineError, match="normalisation kind 'zscore'"):
        model_route(p, device="cpu")
    p2 = recon.save_checkpoint(tmp_path / "two.pt", recon.build_model("unet", depth=1, base_channels=2, in_channels=2),
                               lens=pl_lens, normalisation=Normalisation("source_region_max", 8, 0.0, 1.0),
                               dataset_identity={}, train_args={}, metrics={})
    with pytest.raises(PipelineError, match="2 input and 1 output channels"):
        model_route(p2, device="cpu")
    p3 = recon.save_checkpoint(tmp_path / "cg1d.pt", recon.build_model("cg1d"), lens=pl_lens,
                               normalisation=Normalisation("source_region_max", 8, 0.0, 1.0), dataset_identity={},
                               train_args={}, metrics={}, input_peak=1.0)
    with pytest.raises(PipelineError, match="model 'cg1d' is a 1-D model; the deblur route tiles 2-D frames"):
        model_route(p3, device="cpu")
    with pytest.raises(PipelineError, match="batch = 0"):
        model_route(checkpoints["unet"], batch=0)
    with pytest.raises(PipelineError, match="device = 'tpu'"):
        model_route(checkpoints["unet"], device="tpu")
    with pytest.raises(PipelineError, match="halo = -1"):
        model_route(checkpoints["unet"], halo=-1)


def test_frame_balance_of_a_large_frame_is_the_median_over_fixed_windows(monkeypatch, field_frame):
    """Reference: psfsim's resolve_balance on the 16 windows, computed here directly."""
    from psfsim.restore.wiener import resolve_balance

    from pipelines.routes import classical

    monkeypatch.setattr(classical, "BALANCE_WHOLE_PX", 100)
    monkeypatch.setattr(classical, "_BALANCE_WINDOW", 64)
    y = field_frame
    got = classical.frame_balance(ArrayFrame(y), 0)
    rows = np.round(np.linspace(0, 160 - 64, 4)).astype(int)
    cols = np.round(np.linspace(0, 224 - 64, 4)).astype(int)
    ref = np.median([resolve_balance(y[r:r + 64, c:c + 64], None, None) for r in rows for c in cols])
    assert got["balance"] == pytest.approx(ref, rel=1e-12) and got["balance_from"].startswith("median of 16")


def test_every_route_meets_the_protocol_with_json_records(pl_lens, checkpoints, blurred_frame):
    import json

    from pipelines.routes import Route

    _, y = blurred_frame
    frame = ArrayFrame(y)
    routes = [model_route(checkpoints["cgunet"], device="cpu"), wiener_route(pl_lens), wiener_route(pl_lens, sv=True),
              rl_route(pl_lens, iterations=1), simulate_route(pl_lens, photons=100.0, seed=3)]
    for r in routes:
        assert isinstance(r, Route) and r.name in ("deblur", "wiener", "rl", "simulate")
        ident = json.loads(json.dumps(r.identity()))
        assert ident["route"] == r.name and ident["halo"] == r.halo
        stats = json.loads(json.dumps(r.prepare(frame, 0, origin=ORIGIN)))
        assert stats["origin"] == list(ORIGIN) and stats["index"] == 0
        assert pickle.loads(pickle.dumps(r)).identity() == r.identity()
        with pytest.raises(PipelineError, match="does not lie inside the lens field"):
            r.prepare(frame, 0, origin=(-1, 0))
