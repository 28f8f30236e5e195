"""Datasets: the blur of a window equals the crop of the blurred frame, resumption is bit-exact, readers."""

import json
import subprocess
import sys

import numpy as np
import pytest
import zarr

import psfsim
from psfsim.dataset import SampleContext, SimulationSpec, export_hdf5, make_sample, open_dataset, sample_origins, simulate
from psfsim.operators import lowrank_basis
from psfsim.sources import parse_source


@pytest.fixture(scope="module")
def small_lens():
    """The microscope optics on a 160 x 192 field (strong variation over a small frame)."""
    d = psfsim.load_lens("microscope").to_dict()
    d["field"]["shape_px"] = [160, 192]
    return psfsim.lens_from_dict(d)


def _spec(lens, **kw):
    base = dict(lens=lens.to_dict(), source="cells", n=10, size=(48, 64), seed=5, photons=None, read_noise=0.0)
    base.update(kw)
    return SimulationSpec(**base)


def test_window_blur_equals_crop_of_blurred_frame(small_lens):
    """A sample's blurred window (with the light from around it) equals the crop of the whole blurred frame."""
    spec = _spec(small_lens)
    ctx = SampleContext(spec)
    H, W = small_lens.field.shape_px
    m = ctx.margin
    for i, origin in enumerate([(0, 0), (37, 50), (160 - 48, 192 - 64)]):
        s = make_sample(ctx, i, origin)
        # rebuild the same source region and paste it into an otherwise dark frame
        rng_src = np.random.default_rng(np.random.SeedSequence([spec.seed, i, 0]).spawn(2)[0])
        src = parse_source("cells").sample((48 + 2 * m, 64 + 2 * m), rng_src)
        frame = np.zeros((H + 2 * m, W + 2 * m))
        frame[origin[0] : origin[0] + 48 + 2 * m, origin[1] : origin[1] + 64 + 2 * m] = src
        frame = frame[m : m + H, m : m + W]
        frame /= frame[max(0, origin[0] - m) : origin[0] + 48 + m, max(0, origin[1] - m) : origin[1] + 64 + m].max()
        full = lowrank_basis(small_lens).operator(shape=(H, W), origin=(0, 0))(frame.astype(np.float32))
        crop = full[origin[0] : origin[0] + 48, origin[1] : origin[1] + 64]
        np.testing.assert_allclose(s.blurred, crop, atol=2e-6)
        np.testing.assert_allclose(s.sharp, frame[origin[0] : origin[0] + 48, origin[1] : origin[1] + 64], atol=1e-6)


def test_simulate_store_layout_and_metadata(small_lens, tmp_path):
    spec = _spec(small_lens, photons=300.0, read_noise=1.5, source="cells,stars,beams")
    out = tmp_path / "d.zarr"
    res = simulate(spec, out, progress=False, command="psfsim simulate (test)")
    assert res["complete"] and res["samples_written"] == 10
    g = zarr.open_group(str(out), mode="r")
    for k in ("sharp", "blurred", "wiener", "wiener_sv"):
        a = g[k]
        assert a.shape == (10, 48, 64) and a.dtype == np.float32 and a.chunks == (1, 48, 64)
        assert np.all(np.isfinite(a[:]))
    assert g["sharp"][:].max() <= 1.0 + 1e-6 and g["sharp"][:].min() >= 0
    assert g["origin"].shape == (10, 2) and g["origin"].dtype == np.int32  # checked against the blur below
    assert g["psf_grid"].ndim == 4 and g["psf_grid_x"].shape == g["psf_grid"].shape[:2]
    a = g.attrs
    assert a["complete"] is True and a["spec"]["seed"] == 5 and a["spec"]["photons"] == 300.0
    assert psfsim.lens_from_dict(a["spec"]["lens"]).name == small_lens.name  # the lens can be rebuilt
    codes = g["split"][:]
    assert g["split"].dtype == np.uint8 and a["split_names"] == ["train", "val", "test"]
    assert sorted(codes.tolist()) == [0] * 8 + [1] + [2]  # 0.8 / 0.1 / 0.1 of 10 samples
    assert a["psfsim_version"] == psfsim.__version__ and "created" in a
    assert a["format"] == "psfsim-dataset/3"
    assert a["normalisation"]["kind"] == "source_region_max" and a["normalisation"]["margin_px"] == 16
    # the noisy sample has the Poisson-Gaussian variance around its mean (seeded)
    assert not np.array_equal(g["blurred"][0], g["sharp"][0])


# A lens whose PSF moves with the field point (x- and y-tilt growing linearly with x and y: a magnification
# error) on top of field curvature: a blur computed at the wrong window origin is displaced, so it cannot pass
# for the right one. Small PSF box and pupil grid keep the brute-force operator cheap (~0.5 s a window).
TILT_LENS = {"name": "tilt-field", "optics": {"wavelength_nm": 520.0, "na": 0.4, "pixel_pitch_um": 0.325},
             "field": {"shape_px": [96, 96]}, "psf": {"size_px": 17, "oversample": 2, "pupil_samples": 32},
             "seidel": {"W220": 0.3},
             "zernike": [{"noll": 2, "rms_waves": {"x": 0.3}}, {"noll": 3, "rms_waves": {"y": 0.21}}]}


def test_stored_origin_is_where_the_blur_was_made(tmp_path):
    """Independent check of ``origin``: re-blur the stored ``sharp`` at the stored origin with the brute-force
    operator (``ExactOperator``: every source pixel spread by its own PSF, no low-rank approximation, no
    origin sampling code) and find the stored ``blurred`` of a noise-free store.

    Only the interior (a PSF half-width from the window's edge) is compared: the store's blur also includes
    light from outside the window. Measured (6 samples): relative L2 error 0.7e-3 .. 2.1e-3 at the stored
    origin (the fast operator's own error), 0.027 .. 0.22 at an origin shifted by 8 px (rows, columns or both) or transposed.
    """
    src = tmp_path / "texture"  # white-noise texture: every pixel of the interior carries signal
    src.mkdir()
    np.save(src / "noise.npy", np.random.default_rng(0).random((160, 160)))
    lens = psfsim.lens_from_dict(TILT_LENS)
    spec = SimulationSpec(lens=lens.to_dict(), source=str(src), n=3, size=(32, 32), seed=3)  # noise-free
    simulate(spec, tmp_path / "d.zarr", progress=False)
    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="r")
    H, W = lens.field.shape_px
    h, w = spec.size
    m = lens.psf_sampling.size_px // 2
    inner = (slice(m, h - m), slice(m, w - m))
    tol = 6e-3  # 3x the largest measured error at the right origin

    def err(sharp, blurred, origin):
        ref = psfsim.make_operator(lens, shape=(h, w), origin=origin, method="exact")(sharp.astype(np.float64))
        return float(np.linalg.norm(blurred[inner] - ref[inner]) / np.linalg.norm(ref[inner]))

    for i in range(spec.n):
        sharp, blurred = g["sharp"][i], g["blurred"][i]
        r0, c0 = (int(v) for v in g["origin"][i])
        assert err(sharp, blurred, (r0, c0)) < tol, i
        shifted = (r0 + 8 if r0 + 8 <= H - h else r0 - 8, c0 + 8 if c0 + 8 <= W - w else c0 - 8)
        assert err(sharp, blurred, shifted) > tol, (i, "shifted origin matches")
        if abs(r0 - c0) >= 4:
            assert err(sharp, blurred, (c0, r0)) > tol, (i, "transposed origin matches")


def test_resume_is_bit_exact(small_lens, tmp_path):
    spec = _spec(small_lens, n=12, photons=200.0)
    ref = tmp_path / "ref.zarr"
    simulate(spec, ref, progress=False)
    part = tmp_path / "part.zarr"
    r = simulate(spec, part, progress=False, max_blocks=1)  # "killed" after the first block
    assert not r["complete"]
    with pytest.raises(psfsim.PsfsimError, match="incomplete dataset.*running the same command"):
        open_dataset(part)
    from psfsim.dataset import dataset_summary

    with pytest.raises(psfsim.PsfsimError, match="incomplete dataset"):  # psfsim info refuses it too
        dataset_summary(part)
    r = simulate(spec, part, progress=False)
    assert r["complete"] and r["samples_written"] == 12 - zarr.open_group(str(part)).attrs["block"]
    a, b = zarr.open_group(str(ref)), zarr.open_group(str(part))
    for k in ("sharp", "blurred", "wiener", "wiener_sv", "origin"):
        np.testing.assert_array_equal(a[k][:], b[k][:])


def test_parallel_workers_give_the_same_dataset(small_lens, tmp_path):
    spec = _spec(small_lens, n=8, size=(32, 32), photons=100.0)
    one, two = tmp_path / "one.zarr", tmp_path / "two.zarr"
    simulate(spec, one, progress=False, workers=1)
    simulate(spec, two, progress=False, workers=2)
    np.testing.assert_array_equal(zarr.open_group(str(one))["blurred"][:], zarr.open_group(str(two))["blurred"][:])


def test_different_arguments_refused_unless_overwrite(small_lens, tmp_path):
    out = tmp_path / "d.zarr"
    simulate(_spec(small_lens, n=4), out, progress=False)
    before = zarr.open_group(str(out))["sharp"][:]
    with pytest.raises(psfsim.PsfsimError, match="different arguments"):
        simulate(_spec(small_lens, n=4, seed=6), out, progress=False)
    np.testing.assert_array_equal(zarr.open_group(str(out))["sharp"][:], before)
    simulate(_spec(small_lens, n=4, seed=6), out, progress=False, overwrite=True)
    assert zarr.open_group(str(out)).attrs["spec"]["seed"] == 6


@pytest.mark.parametrize("kw, msg", [
    (dict(n=0), "--n"),
    (dict(size=(161, 64)), "larger than the lens field"),
    (dict(source="nowhere/dir"), "not a folder"),
    (dict(source="skimage:nonexistent"), "unknown bundled"),
    (dict(split=(0.5, 0.2, 0.2)), "--split"),
])
def test_bad_input(small_lens, tmp_path, kw, msg):
    with pytest.raises(psfsim.PsfsimError, match=msg):
        simulate(_spec(small_lens, **kw), tmp_path / "d.zarr", progress=False)
    assert not (tmp_path / "d.zarr").exists()


def test_folder_sources(small_lens, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(psfsim.PsfsimError, match="no image"):
        simulate(_spec(small_lens, source=str(empty)), tmp_path / "a.zarr", progress=False)
    small = tmp_path / "small"
    small.mkdir()
    np.save(small / "a.npy", np.ones((20, 20)))
    with pytest.raises(psfsim.PsfsimError, match="smaller than the sample region"):
        simulate(_spec(small_lens, source=str(small)), tmp_path / "b.zarr", progress=False)
    good = tmp_path / "good"
    good.mkdir()
    np.save(good / "a.npy", np.random.default_rng(0).random((120, 130)))
    simulate(_spec(small_lens, source=str(good), n=3), tmp_path / "c.zarr", progress=False)
    out = tmp_path / "file"
    out.write_text("")
    with pytest.raises(psfsim.PsfsimError, match="not a folder"):
        simulate(_spec(small_lens, source=str(good), n=3), out, progress=False)


def test_tile_origins_cover_the_field(small_lens):
    spec = _spec(small_lens, origins="tile", n=30)
    o = sample_origins(spec, (160, 192), range(30))
    covered = np.zeros((160, 192), bool)
    for r, c in o:
        covered[r : r + 48, c : c + 64] = True
    assert covered.all()


def test_readers_dask_xarray_and_hdf5(small_lens, tmp_path):
    import dask.array as da
    import h5py
    import xarray as xr

    out = tmp_path / "d.zarr"
    simulate(_spec(small_lens, n=4), out, progress=False)
    x = da.from_zarr(str(out), component="blurred")
    assert x.shape == (4, 48, 64)
    ds = xr.open_zarr(str(out))
    assert ds["sharp"].dims == ("sample", "y", "x")
    h5 = export_hdf5(out, tmp_path / "d.h5")
    with h5py.File(h5) as f:
        np.testing.assert_array_equal(f["wiener_sv"][:], zarr.open_group(str(out))["wiener_sv"][:])
        assert json.loads(f.attrs["spec"])["seed"] == 5 and f.attrs["complete"]


def test_cli_simulate_info_export(tmp_path):
    out = tmp_path / "d.zarr"
    lens = tmp_path / "lens.toml"
    lens.write_text('name = "t"\n[optics]\nwavelength_nm = 520.0\nna = 0.4\npixel_pitch_um = 0.325\n'
                    '[field]\nshape_px = [96, 96]\n[psf]\nsize_px = 33\n[seidel]\nW220 = 0.6\n')
    cmd = [sys.executable, "-m", "psfsim.cli"]
    r = subprocess.run(cmd + ["simulate", "--lens", str(lens), "--source", "stars", "--n", "6", "--size", "32,32",
                              "--out", str(out), "--photons", "100"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "samples/s" in r.stdout
    r = subprocess.run(cmd + ["info", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and "wiener_sv" in r.stdout and "complete        yes" in r.stdout
    r = subprocess.run(cmd + ["simulate", "--lens", str(lens), "--source", "stars", "--n", "0", "--out", str(tmp_path / "x.zarr")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--n" in r.stderr
    r = subprocess.run(cmd + ["export", str(out), "--to", str(tmp_path / "d.h5")], capture_output=True, text=True)
    assert r.returncode == 0 and (tmp_path / "d.h5").exists()


def test_never_deletes_a_folder_that_is_not_a_dataset(small_lens, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("x")
    with pytest.raises(psfsim.PsfsimError, match="not a psfsim dataset"):
        simulate(_spec(small_lens, n=2), precious, progress=False, overwrite=True)
    assert (precious / "thesis.txt").read_text() == "x"


@pytest.mark.parametrize("kw, msg", [(dict(seed=-1), "--seed"), (dict(split=(float("nan"), 0.5, 0.5)), "--split")])
def test_bad_seed_or_split_leaves_nothing(small_lens, tmp_path, kw, msg):
    with pytest.raises(psfsim.PsfsimError, match=msg):
        simulate(_spec(small_lens, **kw), tmp_path / "d.zarr", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_off_axis_frame_baseline_uses_the_frame_centre_psf():
    """A detector whose optical axis lies far off the frame (a wide-field telescope's outer detector): the
    global Wiener baseline (the store's and pipelines' ``reference_psf(which="axis")``) takes the frame centre's
    PSF (reference: the lens's own PSF at that field point), and an on-axis frame keeps the axis PSF."""
    import numpy as np

    from psfsim import lens_from_dict
    from psfsim.restore import reference_psf

    def baseline_psf(lens):
        return reference_psf(lens, origin=(0, 0), shape=(1, 1), which="axis")

    from .conftest import BASE
    import copy

    d = copy.deepcopy(BASE)
    d["field"]["axis_px"] = [-300.0, 600.0]
    d["seidel"] = {"W040": 0.3}
    lens = lens_from_dict(d)
    x, y = lens.field.pixel_to_field(127.5, 127.5)
    np.testing.assert_allclose(baseline_psf(lens), lens.psf(float(x), float(y)), atol=1e-12)
    on = lens_from_dict(BASE)
    np.testing.assert_allclose(baseline_psf(on), on.psf(0.0, 0.0), atol=1e-12)


def test_direct_shard_writer_writes_zarrs_bytes(tmp_path):
    """The writer's direct shard write (no per-chunk zarr pipeline) gives the very file zarr writes for the same
    block: full shards, the short last one, and an all-NaN (fill value) sample that zarr leaves out."""
    from psfsim.dataset.writer import _shard_writer, image_compressors

    n, h, w, block = 7, 24, 40, 3
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=3)
    arrays = [g.create_array(name, shape=(n, h, w), dtype="float32", chunks=(1, h, w), shards=(block, h, w),
                             compressors=image_compressors(), fill_value=np.float32(np.nan))
              for name in ("by_zarr", "direct")]
    rng = np.random.default_rng(0)
    data = (rng.poisson(50.0, (n, h, w)) / 50.0).astype(np.float32)
    data[1] = np.nan
    write = _shard_writer(arrays[1], block)
    assert write is not None
    for b in range(-(-n // block)):
        i0, i1 = b * block, min(n, (b + 1) * block)
        arrays[0][i0:i1] = data[i0:i1]
        write(tmp_path / "g.zarr" / "direct", b, data[i0:i1])
        key = arrays[0].metadata.encode_chunk_key((b, 0, 0))
        assert (tmp_path / "g.zarr" / "direct" / key).read_bytes() == (tmp_path / "g.zarr" / "by_zarr" / key).read_bytes()
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "g.zarr"))["direct"][:], data)
    # arrays of another layout (an older store's Zstandard) are left to zarr
    from zarr.codecs import Crc32cCodec, ZstdCodec

    old = g.create_array("old", shape=(n, h, w), dtype="float32", chunks=(1, h, w), shards=(block, h, w),
                         compressors=[ZstdCodec(level=0), Crc32cCodec()], fill_value=np.float32(np.nan))
    assert _shard_writer(old, block) is None and _shard_writer(arrays[1], block + 1) is None


# The procedural sources as they were first written (the reference: every sample is a pure function of the
# random stream, and stores made before must be reproducible bit for bit): full-grid numpy, one draw a call.
def _reference_cells(shape, rng):
    from scipy.ndimage import gaussian_filter
    from scipy.special import expit

    h, w = shape
    img = np.full(shape, 0.02)
    n_cells = max(1, int(rng.poisson(h * w / 3000)))
    n = gaussian_filter(rng.standard_normal(shape), 1.5, mode="wrap")
    texture = 1 + 0.5 * (n / (n.std() + 1e-12))
    for _ in range(n_cells):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        a, b = rng.uniform(6, 18), rng.uniform(4, 12)
        t = rng.uniform(0, np.pi)
        amp_body, amp_nuc, shift = rng.uniform(0.2, 0.6), rng.uniform(0.5, 1.0), 0.2 * a * rng.standard_normal()
        n_p = int(rng.poisson(4))
        puncta = [(cy + rng.normal(0, b / 2), cx + rng.normal(0, a / 2), rng.uniform(0.3, 1.0), rng.uniform(0.6, 1.5))
                  for _ in range(n_p)]
        R = int(np.ceil(1.6 * a)) + 4
        r0, r1 = max(0, int(cy) - R), min(h, int(cy) + R + 1)
        c0, c1 = max(0, int(cx) - R), min(w, int(cx) + R + 1)
        if r0 >= r1 or c0 >= c1:
            continue
        yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float64)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(t) + dy * np.sin(t)) / a
        v = (-dx * np.sin(t) + dy * np.cos(t)) / b
        body = expit(-(u * u + v * v - 1) * 8)
        sub = img[r0:r1, c0:c1]
        sub += amp_body * body * texture[r0:r1, c0:c1]
        sub += amp_nuc * np.exp(-((dx - shift) ** 2 + dy**2) / (2 * (0.35 * b) ** 2)) * body
        for py, px, amp, sg in puncta:
            sub += amp * np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * sg**2))
    return np.clip(img, 0, None)


def _reference_beams(shape, rng):
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    r = np.hypot((yy - cy) / (rng.uniform(0.15, 0.4) * h), (xx - cx) / (rng.uniform(0.15, 0.4) * w))
    order = 1 if rng.random() < 0.4 else int(rng.integers(3, 10))
    beam = np.exp(-2 * r ** (2 * order))
    kind = rng.random()
    if kind < 0.4:
        field = np.exp(2j * np.pi * rng.random(shape))
        fy = np.fft.fftfreq(h)[:, None]
        fx = np.fft.fftfreq(w)[None, :]
        ap = np.hypot(fy, fx) < rng.uniform(0.05, 0.2)
        sp = np.abs(np.fft.ifft2(np.fft.fft2(field) * ap)) ** 2
        beam = beam * (0.3 + sp / sp.mean())
    elif kind < 0.8:
        k = rng.uniform(0.05, 0.5)
        t = rng.uniform(0, np.pi)
        beam = beam * (1 + rng.uniform(0.3, 1.0) * np.cos(k * (xx * np.cos(t) + yy * np.sin(t)) + rng.uniform(0, 2 * np.pi)))
    return np.clip(beam, 0, None)


@pytest.mark.parametrize("name, reference", [("cells", _reference_cells), ("beams", _reference_beams)])
def test_procedural_sources_equal_the_reference_bit_for_bit(name, reference):
    """The vectorised sources give the reference's values exactly and leave the random stream where it does."""
    source = parse_source(name)
    for i in range(24):  # beams: 24 draws cover the speckle, fringe and plain kinds
        shape = [(288, 288), (61, 130), (33, 17)][i % 3]
        r1, r2 = np.random.default_rng([11, i]), np.random.default_rng([11, i])
        got = source.sample(shape, r1)
        assert got.dtype == np.float64 and got.shape == shape
        np.testing.assert_array_equal(got, reference(shape, r2))
        assert r1.random() == r2.random()


@pytest.mark.parametrize("photons, read_noise", [(1000.0, 2.0), (None, 0.01), (40.0, 0.0)])
def test_noise_equals_the_reference_bit_for_bit(photons, read_noise):
    """Poisson-Gaussian noise is ``(Poisson(photons x) + N(0, read_noise^2)) / photons`` from numpy's own
    ``poisson`` and ``normal`` draws, value for value (float32 and float64 images)."""
    nm = psfsim.NoiseModel(photons, read_noise)
    for dtype in (np.float32, np.float64):
        img = np.random.default_rng(1).random((40, 50)).astype(dtype)
        img[0, 0] = -0.0
        r1, r2 = np.random.default_rng(3), np.random.default_rng(3)
        got = nm.apply(img, r1)
        if photons is None:
            ref = (img + r2.normal(0.0, read_noise, img.shape)).astype(dtype)
        else:
            counts = r2.poisson(np.clip(img, 0, None) * photons).astype(np.float64)
            if read_noise > 0:
                counts += r2.normal(0.0, read_noise, img.shape)
            ref = (counts / photons).astype(dtype)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got.view(np.uint8), ref.view(np.uint8))  # signed zeros too
        assert r1.random() == r2.random()
