"""pipelines.output: the OME-Zarr output store, its completion record, lock, resume, pyramid and export.

References: ome-zarr-models (NGFF 0.5 validation of the metadata), ome-zarr-py's ``Reader`` (reads the array
back), scikit-image's ``downscale_local_mean`` and a brute-force loop (pyramid levels), astropy ``WCS`` and
``fits.getdata`` / tifffile ``imread`` (exports), and an uninterrupted run's chunk files, byte for byte (resume).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from pipelines import OutputStore, PipelineError, export, open_frame, open_result
from pipelines.output import downsample_mean2, record_difference

from .conftest import run_python

RECORD = {"route": {"name": "wiener", "lens": "abc123"}, "input": {"path": "/nowhere/in.npy", "size": 1},
          "tile": 32, "seed": 0, "provenance": {"command": "pipelines wiener ..."}}


def _data(shape, seed=0):
    a = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    a.flat[7] = np.nan  # a masked pixel: kept as NaN
    return a


def _write(store: OutputStore, a: np.ndarray, indices=None) -> None:
    worker = pickle.loads(pickle.dumps(store))  # as a worker process would get it: no lock
    assert worker._lock is None
    for idx in store.pending() if indices is None else indices:
        worker.write_chunk(idx, a[worker.chunk_region(idx)])


def _complete(path, a, chunks=(32, 32), record=RECORD, pyramid=False, **kw) -> None:
    with OutputStore.create(path, shape=a.shape, chunks=chunks, record=record, **kw) as s:
        _write(s, a)
        s.finish(summary={"tiles": int(np.prod(s.grid))}, pyramid=pyramid)


def _chunk_files(path: Path) -> dict:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted((path / "0").rglob("*")) if f.is_file()}


@pytest.mark.parametrize("shape", [(70, 100), (3, 45, 64)])
def test_round_trip_read_back_by_ome_zarr_py_and_valid_ngff(tmp_path, shape):
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image import Image

    a = _data(shape)
    out = tmp_path / "out.zarr"
    _complete(out, a)
    arr, meta = open_result(out)
    np.testing.assert_array_equal(arr[...], a)
    assert meta["record"] == RECORD and meta["status"] == "complete" and meta["summary"]["tiles"] > 1
    ms = Image.from_zarr(zarr.open_group(str(out), mode="r")).ome_attributes.multiscales[0]  # validates NGFF 0.5
    assert [ax.name for ax in ms.axes] == (["y", "x"] if len(shape) == 2 else ["t", "y", "x"])
    node = next(iter(Reader(parse_url(str(out)))()))
    np.testing.assert_array_equal(np.asarray(node.data[0]), a)
    assert zarr.open_array(str(out / "0"), mode="r").chunks == ((32, 32) if len(shape) == 2 else (1, 32, 32))


def test_pyramid_levels_are_2x_means_and_valid_ngff(tmp_path, monkeypatch):
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image import Image
    from skimage.transform import downscale_local_mean

    import pipelines.output as output

    a = np.random.default_rng(1).random((2, 136, 200)).astype(np.float32)
    out = tmp_path / "p.zarr"
    seen = []

    def spy(block):
        seen.append(block.shape)
        return downsample_mean2(block)

    monkeypatch.setattr(output, "downsample_mean2", spy)
    _complete(out, a, chunks=(32, 48), pyramid=True)
    assert max(int(np.prod(s)) for s in seen) <= 64 * 96  # chunk-wise: one frame's 2 x 2 chunks at a time
    node = next(iter(Reader(parse_url(str(out)))()))
    levels = [np.asarray(d) for d in node.data]
    assert [lv.shape for lv in levels] == [(2, 136, 200), (2, 68, 100), (2, 34, 50), (2, 17, 25)]  # fits a chunk
    for k in (1, 2, 3):
        np.testing.assert_allclose(levels[k], downscale_local_mean(levels[k - 1], (1, 2, 2)), rtol=1e-6)
    ms = Image.from_zarr(zarr.open_group(str(out), mode="r")).ome_attributes.multiscales[0]
    tr = [d.coordinateTransformations for d in ms.datasets]
    assert [t[0].scale for t in tr] == [[1, 1, 1], [1, 2, 2], [1, 4, 4], [1, 8, 8]]
    assert tr[2][1].translation == [0, 1.5, 1.5]  # centre of the 4 x 4 level-0 pixels averaged
    assert open_result(out)[1]["levels"] == 4


def test_downsample_of_odd_edges_and_nan_against_brute_force():
    a = np.random.default_rng(2).random((7, 5)).astype(np.float32)
    a[0, 0] = a[0, 1] = a[1, 0] = np.nan
    a[2:4, 2:4] = np.nan
    got = downsample_mean2(a)
    ref = np.full((4, 3), np.nan)
    for i in range(4):
        for j in range(3):
            v = a[2 * i:2 * i + 2, 2 * j:2 * j + 2]
            v = v[np.isfinite(v)]
            if v.size:
                ref[i, j] = v.mean()
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    assert got.dtype == np.float32 and np.isnan(got[1, 1]) and got[0, 0] == a[1, 1]


def test_crash_between_data_and_flag_then_resume_is_byte_identical(tmp_path, monkeypatch):
    a = _data((100, 130))
    ref = tmp_path / "ref.zarr"
    _complete(ref, a)

    out = tmp_path / "out.zarr"
    s = OutputStore.create(out, shape=a.shape, chunks=(32, 32), record=RECORD)
    todo = s.pending()
    assert len(todo) == 4 * 5
    _write(s, a, todo[:7])

    def killed(done, idx):  # the process dies after the chunk's data and digest, before its flag
        raise KeyboardInterrupt

    monkeypatch.setattr(OutputStore, "_mark_done", staticmethod(killed))
    crashed = todo[7]
    with pytest.raises(KeyboardInterrupt):
        _write(s, a, [crashed])
    monkeypatch.undo()
    s.close()
    data_key = "c/" + "/".join(map(str, crashed))
    assert (out / "0" / data_key).is_file()  # its data reached the disk...
    for bad in (lambda: open_result(out), lambda: export(out, tmp_path / "x.tif")):
        with pytest.raises(PipelineError, match=r"incomplete \(13 of 20 chunk\(s\) not written"):
            bad()
    assert not (tmp_path / "x.tif").exists()

    s = OutputStore.create(out, shape=a.shape, chunks=(32, 32), record=RECORD)  # the same run: resumed
    assert s.pending() == todo[7:]  # ...but it was never marked, so it is computed again
    with pytest.raises(PipelineError, match="13 chunk"):
        s.finish(summary={})
    _write(s, a)
    s.finish(summary={"tiles": 20})
    s.close()
    assert _chunk_files(out) == _chunk_files(ref)
    np.testing.assert_array_equal(open_result(out)[0][...], a)


def test_chunks_written_from_another_process(tmp_path):
    """A worker process gets the pickled store (no lock), writes its chunks and their flags; the run that holds
    the lock finishes it, and the result equals a store written in one process, byte for byte."""
    a = _data((64, 96))
    ref = tmp_path / "ref.zarr"
    _complete(ref, a)
    out = tmp_path / "out.zarr"
    with OutputStore.create(out, shape=a.shape, chunks=(32, 32), record=RECORD) as s:
        half = s.pending()[::2]
        np.save(tmp_path / "a.npy", a)
        (tmp_path / "job.pkl").write_bytes(pickle.dumps((s, half)))
        code = ("import pickle, sys, numpy as np\n"
                "s, todo = pickle.load(open(sys.argv[1], 'rb'))\n"
                "a = np.load(sys.argv[2])\n"
                "[s.write_chunk(i, a[s.chunk_region(i)]) for i in todo]\n")
        run_python(code, tmp_path / "job.pkl", tmp_path / "a.npy")
        assert s.pending() == [i for i in np.ndindex(*s.grid) if i not in half]
        _write(s, a)
        s.finish(summary={"tiles": 6})
    assert _chunk_files(out) == _chunk_files(ref)


def test_resume_recomputes_a_chunk_that_fails_its_digest(tmp_path, capsys):
    import zarr

    a = _data((64, 64))
    out = tmp_path / "out.zarr"
    s = OutputStore.create(out, shape=a.shape, chunks=(32, 32), record=RECORD)
    _write(s, a, [(0, 0), (0, 1), (1, 0)])
    s.close()
    zarr.open_array(str(out / "0"), mode="r+")[0:32, 32:64] = 0.0  # altered behind the store's back
    s = OutputStore.create(out, shape=a.shape, chunks=(32, 32), record=RECORD)
    assert s.pending() == [(0, 1), (1, 1)]
    assert "1 written chunk(s) fail verification (first (0, 1)" in capsys.readouterr().err
    s.close()


def test_complete_store_of_the_same_record_has_nothing_pending(tmp_path):
    a = _data((40, 40))
    out = tmp_path / "out.zarr"
    _complete(out, a)
    with OutputStore.create(out, shape=a.shape, chunks=(32, 32), record={**RECORD, "provenance": "other"}) as s:
        assert s.pending() == []
        s.finish(summary={"again": True}, pyramid=True)  # a pyramid added to a finished run
    assert open_result(out)[1]["levels"] == 2


def test_store_of_another_record_is_refused_naming_the_difference(tmp_path):
    a = _data((40, 40))
    out = tmp_path / "out.zarr"
    _complete(out, a)
    other = {**RECORD, "route": {"name": "wiener", "lens": "def456"}}
    with pytest.raises(PipelineError, match=r'written by another run \(record.route.lens: "abc123" in the store, '
                                            r'"def456" now\); nothing was changed \(use --overwrite'):
        OutputStore.create(out, shape=a.shape, chunks=(32, 32), record=other)
    with pytest.raises(PipelineError, match=r"chunks: \[32, 32\] in the store, \[16, 16\] now"):
        OutputStore.create(out, shape=a.shape, chunks=(16, 16), record=RECORD)
    with pytest.raises(PipelineError, match=r"exists \(the same run\)"):
        OutputStore.create(out, shape=a.shape, chunks=(32, 32), record=RECORD, resume=False)
    np.testing.assert_array_equal(open_result(out)[0][...], a)  # untouched by the refusals
    with OutputStore.create(out, shape=a.shape, chunks=(32, 32), record=other, overwrite=True) as s:
        assert len(s.pending()) == 4  # replaced: a fresh store
    with pytest.raises(PipelineError, match="incomplete"):
        open_result(out)
    assert record_difference({"a": [1, {"b": 2}]}, {"a": [1, {"b": 3}]}) == "record.a[1].b: 2 in the store, 3 now"


def test_refusals_of_paths_and_writers(tmp_path):
    a = _data((40, 40))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    with pytest.raises(PipelineError, match="exists and is not a pipelines output; nothing was changed"):
        OutputStore.create(tmp_path / "mine", shape=a.shape, chunks=(32, 32), record=RECORD, overwrite=True)
    assert (tmp_path / "mine" / "keep.txt").exists()
    import zarr

    zarr.create_array(str(tmp_path / "in.zarr"), shape=a.shape, dtype="f4")[:] = a
    frame = open_frame(tmp_path / "in.zarr")
    with pytest.raises(PipelineError, match="in.zarr: is the input"):
        OutputStore.create(tmp_path / "in.zarr", shape=a.shape, chunks=(32, 32), record={"input": frame.identity()},
                           overwrite=True)
    with pytest.raises(PipelineError, match="is the input"):
        OutputStore.create(tmp_path / "mine", shape=a.shape, chunks=(32, 32), record=RECORD,
                           inputs=[tmp_path / "mine"])
    with pytest.raises(PipelineError, match="exists and is not a folder"):
        OutputStore.create(tmp_path / "mine" / "keep.txt", shape=a.shape, chunks=(32, 32), record=RECORD)
    inside = {**RECORD, "input": {"path": str(tmp_path / "o.zarr" / "frame.npy")}}
    with pytest.raises(PipelineError, match="contains the input"):
        OutputStore.create(tmp_path / "o.zarr", shape=a.shape, chunks=(32, 32), record=inside)
    # and the reverse: an output inside the input Zarr folder (a new group in the input store) is refused too
    for out in (tmp_path / "in.zarr" / "deblurred.zarr", tmp_path / "in.zarr" / "sub" / "o.zarr"):
        (out.parent).mkdir(exist_ok=True)
        with pytest.raises(PipelineError, match=r"lies inside the input .*in.zarr; choose an output path outside"):
            OutputStore.create(out, shape=a.shape, chunks=(32, 32), record={"input": frame.identity()})
        assert not out.exists()
    (tmp_path / "in.zarr" / "sub").rmdir()
    with pytest.raises(PipelineError, match=r"shape \(40,\): expected \(H, W\)"):
        OutputStore.create(tmp_path / "o.zarr", shape=(40,), chunks=(32, 32), record=RECORD)
    with pytest.raises(PipelineError, match="cannot be stored as JSON"):
        OutputStore.create(tmp_path / "o.zarr", shape=a.shape, chunks=(32, 32), record={"x": float("nan")})
    s = OutputStore.create(tmp_path / "o.zarr", shape=a.shape, chunks=(32, 32), record=RECORD)
    try:
        with pytest.raises(PipelineError, match="another writer holds it"):
            OutputStore.create(tmp_path / "o.zarr", shape=a.shape, chunks=(32, 32), record=RECORD)
        with pytest.raises(PipelineError, match=r"block of shape \(32, 31\); expected \(32, 32\)"):
            s.write_chunk((0, 0), np.zeros((32, 31), np.float32))
        with pytest.raises(PipelineError, match=r"chunk index \(2, 0\) out of range"):
            s.write_chunk((2, 0), np.zeros((32, 32), np.float32))
        with pytest.raises(PipelineError, match="needs the store's lock"):
            pickle.loads(pickle.dumps(s)).finish(summary={})
    finally:
        s.close()
    # a worker of a run whose store was taken over by another run writes nothing
    stale = pickle.loads(pickle.dumps(s))
    s2 = OutputStore.create(tmp_path / "o.zarr", shape=a.shape, chunks=(32, 32), record=RECORD)
    with pytest.raises(PipelineError, match="taken over by another run"):
        stale.write_chunk((0, 0), a[:32, :32])
    assert s2.pending() == [(0, 0), (0, 1), (1, 0), (1, 1)]
    s2.close()


def test_export_fits_keeps_the_input_header_and_wcs(tmp_path):
    from astropy.io import fits
    from astropy.wcs import WCS

    a = _data((50, 60))
    hdr = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": 30.0, "CRPIX2": 25.0,
                       "CRVAL1": 10.5, "CRVAL2": -3.25, "CD1_1": -2e-4, "CD2_2": 2e-4, "BUNIT": "adu",
                       "EXPTIME": 30.0})
    fits.PrimaryHDU(np.zeros((50, 60), ">i2"), header=hdr).writeto(tmp_path / "in.fits")
    frame = open_frame(tmp_path / "in.fits")
    out = tmp_path / "out.zarr"
    _complete(out, a, record={"route_name": "wiener", "input": frame.identity()})
    got = export(out, tmp_path / "res.fits")
    np.testing.assert_array_equal(fits.getdata(got), a)  # NaN kept at the masked pixel
    h = fits.getheader(got)
    assert WCS(h).wcs.compare(WCS(fits.getheader(tmp_path / "in.fits")).wcs)
    assert h["BUNIT"] == "adu" and h["EXPTIME"] == 30.0 and h["BITPIX"] == -32
    assert "in.fits" in "".join(str(v) for v in h["HISTORY"])  # long cards wrap
    with pytest.raises(PipelineError, match="exists"):
        export(out, tmp_path / "res.fits")
    export(out, tmp_path / "res.fits", overwrite=True)

    # a record without the cards (only their digest): the input's own header, when it is unchanged
    ident = {k: v for k, v in frame.identity().items() if k != "header"}
    out2 = tmp_path / "out2.zarr"
    _complete(out2, a, record={"input": ident})
    assert WCS(fits.getheader(export(out2, tmp_path / "res2.fits"))).wcs.compare(WCS(hdr).wcs)


def test_export_tiff_and_refusals(tmp_path):
    import tifffile

    a = _data((3, 40, 50))
    out = tmp_path / "out.zarr"
    _complete(out, a, chunks=(16, 16))
    np.testing.assert_array_equal(tifffile.imread(export(out, tmp_path / "res.tif")), a)
    back = open_frame(tmp_path / "res.tif")  # three greyscale pages, not an RGB image
    assert back.info.shape == (3, 40, 50)
    np.testing.assert_array_equal(back.read(2, slice(None), slice(None)), a[2])
    with pytest.raises(PipelineError, match=r"unknown type '.png'; expected one of .fits"):
        export(out, tmp_path / "res.png")
    with pytest.raises(PipelineError, match="not a pipelines output"):
        export(tmp_path, tmp_path / "x.tif")
    import zarr

    zarr.open_array(str(out / "0"), mode="r+")[1, 0:16, 16:32] = 1.0  # altered after completion
    with pytest.raises(PipelineError, match=r"chunk \(1, 0, 1\) differs from its recorded digest"):
        export(out, tmp_path / "y.tif")
    assert not (tmp_path / "y.tif").exists()


def test_current_run_id_sees_a_takeover_that_an_open_group_handle_does_not(tmp_path):
    """The check a writer makes before each chunk and flag reads the record from disk, so it sees another handle
    rewrite the run id (a zarr group opened earlier keeps its cached attributes and would not)."""
    import zarr

    from pipelines.output import current_run_id

    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    g.attrs["pipelines"] = {"run_id": "a"}
    other = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+", zarr_format=3, use_consolidated=False)
    other.attrs["pipelines"] = {"run_id": "b"}
    assert current_run_id(tmp_path / "s.zarr") == "b"
    assert current_run_id(tmp_path / "missing.zarr") is None
