"""recon.data: store crops carry their field window, seeded and worker-independent; on-the-fly batches equal
psfsim's numpy blur, never repeat, and validation is fixed; torch noise has the numpy noise's statistics."""

import numpy as np
import pytest
import torch

import psfsim
from recon import ReconError, StoreDataset
from recon.data import Batch, OnTheFlyDataset, collate, loader, torch_noise


def test_item_layout_and_coords_are_psfsims_of_the_crop_window(tiny_store):
    ds = StoreDataset(tiny_store, crop=(16, 24), with_baselines=True, multiple_of=8)
    r = psfsim.DatasetReader(tiny_store)
    assert ds.in_channels == 3 and ds.arrays_in == ("blurred", "wiener", "wiener_sv")
    for k in range(len(ds)):
        it = ds[k]
        i = int(it["index"])
        assert i == ds.indices[k] and it["input"].shape == (3, 16, 24) and it["target"].shape == (1, 16, 24)
        assert it["coords"].shape == (2, 16, 24) and it["origin"].dtype == torch.int64
        off = np.asarray(ds.offset(i))
        origin = np.asarray(r.origins[i]) + off
        assert it["origin"].tolist() == origin.tolist()
        want = psfsim.field_coords(r.lens, origin=tuple(origin), shape=(16, 24), dtype=np.float32)
        np.testing.assert_array_equal(it["coords"].numpy(), want)
        s = r[i]
        (a, b), (h, w) = off, (16, 24)
        np.testing.assert_array_equal(it["target"][0].numpy(), s.sharp[a : a + h, b : b + w])
        np.testing.assert_array_equal(it["input"][0].numpy(), s.blurred[a : a + h, b : b + w])
        np.testing.assert_array_equal(it["input"][2].numpy(), s.wiener_sv[a : a + h, b : b + w])


def test_crops_are_seeded_reproducible_and_change_across_epochs(tiny_store):
    a, b = StoreDataset(tiny_store, crop=16, seed=5), StoreDataset(tiny_store, crop=16, seed=5)
    origins = lambda ds: [ds[k]["origin"].tolist() for k in range(len(ds))]  # noqa: E731
    first = origins(a)
    assert first == origins(b)
    a.set_epoch(1)
    assert origins(a) != first
    a.set_epoch(0)
    assert origins(a) == first
    assert origins(StoreDataset(tiny_store, crop=16, seed=6)) != first


def test_val_and_test_crops_are_centred_and_whole_samples_without_crop(tiny_store):
    v = StoreDataset(tiny_store, split="val", crop=16)
    o0 = [v[k]["origin"].tolist() for k in range(len(v))]
    v.set_epoch(3)
    assert [v[k]["origin"].tolist() for k in range(len(v))] == o0
    r = psfsim.DatasetReader(tiny_store)
    assert o0[0] == (np.asarray(r.origins[v.indices[0]]) + 8).tolist()
    t = StoreDataset(tiny_store, split="test")
    it = t[0]
    assert it["input"].shape == (1, 32, 32)
    np.testing.assert_array_equal(it["coords"].numpy(), r.field_coords(int(t.indices[0])))


def test_loader_with_workers_gives_the_batches_of_no_workers(tiny_store):
    def run(workers):
        ds = StoreDataset(tiny_store, crop=16, seed=1)
        dl = loader(ds, 4, workers)
        out = []
        for e in range(2):
            ds.set_epoch(e)
            out += list(dl)
        return out

    b0, b2 = run(0), run(2)
    assert len(b0) == 2 * (19 // 4) and all(isinstance(b, Batch) for b in b0)
    for p, q in zip(b0, b2):
        for f in ("x", "coords", "y", "origins", "index"):
            assert torch.equal(getattr(p, f), getattr(q, f))
    assert not torch.equal(b0[0].index, b0[len(b0) // 2].index)  # the order is reshuffled per epoch
    x = b0[0]
    assert x.x.shape == (4, 1, 16, 16) and x.coords.shape == (4, 2, 16, 16) and x.y.shape == (4, 1, 16, 16)
    assert x.origins.shape == (4, 2)


def test_cache_gives_the_same_items(tiny_store):
    a = StoreDataset(tiny_store, crop=16, cache=True, with_baselines=True)
    b = StoreDataset(tiny_store, crop=16, with_baselines=True)
    ca, cb = collate(a.__getitems__(range(len(a)))), collate(b.__getitems__(range(len(b))))
    assert torch.equal(ca.x, cb.x) and torch.equal(ca.y, cb.y) and torch.equal(ca.coords, cb.coords)


def test_clear_errors(tiny_store, tmp_path):
    with pytest.raises(ReconError, match="split 'dev'"):
        StoreDataset(tiny_store, split="dev")
    with pytest.raises(ReconError, match="crop 48x48: larger than the samples of 32x32"):
        StoreDataset(tiny_store, crop=48)
    with pytest.raises(ReconError, match="crop 20x20: not a multiple of 8"):
        StoreDataset(tiny_store, crop=20, multiple_of=8)
    with pytest.raises(ReconError, match="samples of 32x32 .*not a multiple of 64"):
        StoreDataset(tiny_store, multiple_of=64)
    with pytest.raises(ReconError, match="input array 'noisy'"):
        StoreDataset(tiny_store, arrays_in=("noisy",))
    with pytest.raises(ReconError, match="input array 'sharp'"):
        StoreDataset(tiny_store, arrays_in=("sharp",))
    with pytest.raises(ReconError, match="no-store"):
        StoreDataset(tmp_path / "no-store.zarr")
    spec = psfsim.SimulationSpec(lens=psfsim.DatasetReader(tiny_store).spec.lens, source="cells", n=24, size=(16, 16))
    part = tmp_path / "part.zarr"
    psfsim.simulate(spec, part, workers=1, progress=False, max_blocks=1)
    with pytest.raises(ReconError, match="incomplete"):
        StoreDataset(part)


def test_missing_array_is_named(tiny_store, tmp_path):
    import shutil

    broken = tmp_path / "broken.zarr"
    shutil.copytree(tiny_store, broken)
    shutil.rmtree(broken / "wiener_sv")
    with pytest.raises(ReconError, match="wiener_sv"):
        StoreDataset(broken, with_baselines=True)[0]


def test_datasets_pickle_without_arrays(tiny_store):
    import pickle

    ds = StoreDataset(tiny_store, crop=16)
    blob = pickle.dumps(ds)
    assert len(blob) < 200_000
    ds2 = pickle.loads(blob)
    assert torch.equal(ds2[3]["input"], ds[3]["input"])


# -- on-the-fly ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def otf(tiny_lens):
    return OnTheFlyDataset(tiny_lens, "cells", crop=24, batch=3, noise=psfsim.NoiseModel(500.0, 1.5), seed=7,
                           val_samples=5, multiple_of=8)


def test_on_the_fly_noise_free_crop_is_psfsims_numpy_blur(otf, tiny_lens):
    b = otf.batch(4, noisy=False)
    regions, origins = otf._sources(0, 4, 3)
    m = otf.margin
    assert torch.equal(b.origins, torch.from_numpy(origins))
    for i in range(3):
        o = tuple(int(v) for v in origins[i])
        want = psfsim.blur(regions[i], tiny_lens, origin=(o[0] - m, o[1] - m), allow_outside=True)[m:-m, m:-m]
        np.testing.assert_allclose(b.x[i, 0].numpy(), want, atol=2e-6 * float(np.abs(want).max()), rtol=0)
        np.testing.assert_array_equal(b.y[i, 0].numpy(), regions[i][m:-m, m:-m])
        np.testing.assert_array_equal(b.coords[i].numpy(),
                                      psfsim.field_coords(tiny_lens, origin=o, shape=(24, 24), dtype=np.float32))
    assert float(torch.from_numpy(regions).amax(dim=(1, 2)).min()) == 1.0  # each region divided by its max


def test_on_the_fly_never_repeats_and_is_a_function_of_the_step(otf, tiny_lens):
    batches = [otf.batch(s) for s in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.equal(batches[i].y, batches[j].y) and not torch.equal(batches[i].origins, batches[j].origins)
    again = OnTheFlyDataset(tiny_lens, "cells", crop=24, batch=3, noise=psfsim.NoiseModel(500.0, 1.5), seed=7)
    b2 = again.batch(2)
    assert torch.equal(b2.x, batches[2].x) and torch.equal(b2.y, batches[2].y)
    assert not torch.equal(b2.x, again.batch(2, noisy=False).x)
    assert [torch.equal(a.y, b.y) for a, b in zip(list(otf.epoch(0))[:2], batches[:2])] == [True, True]


def test_on_the_fly_validation_is_fixed_and_apart_from_training(otf, tiny_lens):
    v = otf.validation()
    assert [len(b) for b in v] == [3, 2]
    fresh = OnTheFlyDataset(tiny_lens, "cells", crop=24, batch=3, noise=psfsim.NoiseModel(500.0, 1.5), seed=7,
                            val_samples=5).validation()
    for a, b in zip(v, fresh):
        assert torch.equal(a.x, b.x) and torch.equal(a.origins, b.origins)
    train_origins = {tuple(o) for s in range(3) for o in otf.batch(s).origins.tolist()}
    assert not train_origins & {tuple(o) for b in v for o in b.origins.tolist()}


def test_on_the_fly_errors(tiny_lens):
    with pytest.raises(ReconError, match="crop 20x20: not a multiple of 8"):
        OnTheFlyDataset(tiny_lens, "cells", crop=20, batch=2, multiple_of=8)
    with pytest.raises(ReconError, match="larger than the samples of 256x256"):
        OnTheFlyDataset(tiny_lens, "cells", crop=512, batch=2)
    with pytest.raises(ReconError, match="nope"):
        OnTheFlyDataset(tiny_lens, "skimage:nope", crop=16, batch=2)


@pytest.mark.parametrize("photons,read", [(200.0, 3.0), (None, 0.05), (50.0, 0.0)])
def test_torch_noise_matches_numpy_statistics(photons, read):
    nm = psfsim.NoiseModel(photons, read)
    levels = np.array([0.0, 0.1, 0.5, 1.0])
    img = np.repeat(levels[:, None], 40_000, axis=1)
    a = nm.apply(img, np.random.default_rng(0))
    t = torch_noise(torch.from_numpy(img), nm, torch.Generator().manual_seed(0)).numpy()
    assert not np.array_equal(torch_noise(torch.from_numpy(img), nm, torch.Generator().manual_seed(1)).numpy(), t)
    n = img.shape[1]
    for row, lv in enumerate(levels):
        sigma = float(nm.sigma(lv))
        se = sigma / np.sqrt(n)
        assert abs(t[row].mean() - lv) < 5 * se + 1e-12 and abs(a[row].mean() - lv) < 5 * se + 1e-12
        if sigma > 0:  # variance: standard error ~ sigma^2 sqrt(2 / n) (Gaussian); generous for Poisson
            assert abs(t[row].var() - sigma**2) < 6 * sigma**2 * np.sqrt(2 / n) + 1e-12
            assert abs(t[row].var() - a[row].var()) < 8 * sigma**2 * np.sqrt(2 / n) + 1e-12
    assert torch.equal(torch_noise(torch.ones(3), psfsim.NoiseModel()), torch.ones(3))


def test_missing_shard_is_refused_not_read_as_nan(tiny_store, tmp_path):
    import shutil

    broken = tmp_path / "broken2.zarr"
    shutil.copytree(tiny_store, broken)
    for f in (broken / "blurred" / "c").rglob("*"):
        if f.is_file():
            f.unlink()
    ds = StoreDataset(broken, crop=16)
    with pytest.raises(ReconError, match="array 'blurred' has no data for sample"):
        ds[0]
