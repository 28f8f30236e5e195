"""DatasetReader: typed samples with their field window, batched reads, splits stored as arrays, pickling,
and refusal of incomplete or older stores."""

import multiprocessing as mp
import pickle
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import zarr

import psfsim
from psfsim.dataset import DatasetBatch, DatasetReader, DatasetSample, Normalisation, SimulationSpec, simulate


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """10 noisy samples of 48 x 64 from the microscope optics on a 160 x 192 field."""
    d = psfsim.load_lens("microscope").to_dict()
    d["field"]["shape_px"] = [160, 192]
    lens = psfsim.lens_from_dict(d)
    spec = SimulationSpec(lens=lens.to_dict(), source="cells", n=10, size=(48, 64), seed=7, photons=500.0,
                          read_noise=1.0, split=(0.6, 0.2, 0.2))
    path = tmp_path_factory.mktemp("reader") / "d.zarr"
    simulate(spec, path, progress=False)
    return path, spec, lens


def test_metadata(store):
    path, spec, lens = store
    r = DatasetReader(path)
    assert len(r) == 10 and r.size == (48, 64) and r.seed == 7 and r.spec == spec
    assert r.lens == lens
    assert (r.noise.photons, r.noise.read_noise) == (500.0, 1.0)
    assert r.normalisation == Normalisation(kind="source_region_max", margin_px=16, vmin=0.0, vmax=1.0)
    sp = r.splits
    assert list(sp) == ["train", "val", "test"] and [len(v) for v in sp.values()] == [6, 2, 2]
    assert all(v.dtype == np.int64 and np.all(np.diff(v) > 0) for v in sp.values())
    assert sorted(np.concatenate(list(sp.values())).tolist()) == list(range(10))
    sharp = zarr.open_group(str(path), mode="r")["sharp"][:]
    assert sharp.min() >= r.normalisation.vmin and sharp.max() <= r.normalisation.vmax + 1e-6
    assert "DatasetReader(" in repr(r)


def test_sample_matches_the_store_and_carries_its_window(store):
    path, spec, lens = store
    r = DatasetReader(path)
    g = zarr.open_group(str(path), mode="r")
    for i in (0, 9, -1):
        s = r[i]
        j = i % 10
        assert isinstance(s, DatasetSample) and s.index == j
        for k in ("sharp", "blurred", "wiener", "wiener_sv"):
            a = getattr(s, k)
            assert a.shape == (48, 64) and a.dtype == np.float32
            np.testing.assert_array_equal(a, g[k][j])
        assert s.origin == tuple(int(v) for v in g["origin"][j])
        assert r.window(i) == (s.origin, (48, 64))
        assert s.field_coords.shape == (2, 48, 64) and s.field_coords.dtype == np.float32
        np.testing.assert_array_equal(s.field_coords, psfsim.field_coords(lens, origin=s.origin, shape=(48, 64)).astype(np.float32))
        assert s.split in r.splits and j in r.splits[s.split]
    with pytest.raises(IndexError):
        r[10]
    with pytest.raises(psfsim.PsfsimError, match="expected an integer"):
        r[1.5]


def test_batched_read_equals_single_reads(store):
    r = DatasetReader(store[0])
    idx = [7, 2, 2, 9, 0]  # any order, repeats allowed
    b = r.read(idx, arrays=("sharp", "blurred", "wiener_sv"), coords=True)
    assert isinstance(b, DatasetBatch) and b.wiener is None
    assert b.sharp.shape == (5, 48, 64) and b.sharp.dtype == np.float32 and b.origins.shape == (5, 2)
    for j, i in enumerate(idx):
        s = r[i]
        np.testing.assert_array_equal(b.sharp[j], s.sharp)
        np.testing.assert_array_equal(b.blurred[j], s.blurred)
        np.testing.assert_array_equal(b.wiener_sv[j], s.wiener_sv)
        np.testing.assert_array_equal(b.field_coords[j], s.field_coords)
        assert tuple(b.origins[j]) == s.origin
    b = r.read(np.arange(3), arrays="wiener")  # sorted, unique: no reordering
    np.testing.assert_array_equal(b.wiener[2], r[2].wiener)
    b = r.read([], coords=True)
    assert b.sharp.shape == (0, 48, 64) and b.origins.shape == (0, 2) and b.field_coords.shape == (0, 2, 48, 64)
    with pytest.raises(psfsim.PsfsimError, match="arrays.*expected some of"):
        r.read([0], arrays=("sharpest",))
    with pytest.raises(psfsim.PsfsimError, match="sample index 12"):
        r.read([0, 12])
    with pytest.raises(psfsim.PsfsimError, match="1-D sequence of integers"):
        r.read([[0, 1]])


def _blurred_sum(reader, i):
    return float(reader[i].blurred.sum()), reader.window(i)


def test_pickles_without_arrays_and_reads_in_worker_processes(store):
    r = DatasetReader(store[0])
    r[3], r.splits, r.lens  # open handles, load origins, codes and the lens: none of them may be pickled
    blob = pickle.dumps(r)
    assert len(blob) < 20_000 and b"multiarray" not in blob  # no ndarray pickled (the attrs name numpy's version)
    r2 = pickle.loads(blob)
    np.testing.assert_array_equal(r2[3].blurred, r[3].blurred)
    for ctx in ("fork", "spawn"):  # DataLoader workers fork by default; Dask / macOS spawn
        with ProcessPoolExecutor(2, mp_context=mp.get_context(ctx)) as ex:
            got = list(ex.map(_blurred_sum, [r, r], [3, 8]))
        assert got == [_blurred_sum(r, 3), _blurred_sum(r, 8)]


def test_lens_is_built_without_warnings(tmp_path):
    """An undersampled lens warns when the dataset is written, not again each time a reader builds it."""
    d = {"name": "coarse", "optics": {"wavelength_nm": 520.0, "na": 0.4, "pixel_pitch_um": 0.5},
         "field": {"shape_px": [64, 64]}, "psf": {"size_px": 33, "oversample": 4}}
    with pytest.warns(psfsim.NyquistWarning):
        lens = psfsim.lens_from_dict(d)
    with pytest.warns(psfsim.NyquistWarning):
        simulate(SimulationSpec(lens=lens.to_dict(), source="stars", n=2, size=(32, 32)), tmp_path / "d.zarr", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert DatasetReader(tmp_path / "d.zarr").lens == lens


def test_refuses_incomplete_older_and_foreign_stores(store, tmp_path):
    path, spec, _ = store
    part = tmp_path / "part.zarr"
    simulate(spec, part, progress=False, max_blocks=1, command="psfsim simulate --n 10 (test)")
    with pytest.raises(psfsim.PsfsimError, match=r"incomplete dataset \(1 of .* blocks.*psfsim simulate ") as e:
        DatasetReader(part)
    msg = str(e.value)  # the command is rebuilt from the spec (absolute --out), never the stored text
    assert "(test)" not in msg and f"--out {part.resolve()}" in msg and "--n 10 --size 48,64 --seed 7" in msg
    g = zarr.open_group(str(part), mode="r+")
    g.attrs["format"] = "psfsim-dataset/1"
    with pytest.raises(psfsim.PsfsimError, match="psfsim-dataset/1.*regenerate it by re-running simulate"):
        DatasetReader(part)
    with pytest.raises(psfsim.PsfsimError, match="older psfsim dataset.*--overwrite"):
        simulate(spec, part, progress=False)  # the writer does not resume into an older format either
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(psfsim.PsfsimError, match="not a"):
        DatasetReader(empty)
    with pytest.raises(psfsim.PsfsimError, match="no dataset there"):
        DatasetReader(tmp_path / "missing.zarr")
