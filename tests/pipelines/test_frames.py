"""pipelines.frames: every format read lazily, region by region, checked against the format's own library.

Reference for each kind: the whole array as its own library reads it (numpy ``np.load``, tifffile ``imread``,
astropy ``fits.getdata``, zarr ``Array[...]``, ome-zarr-py's ``Reader``), cast to float32.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from pipelines import PipelineError, open_frame
from pipelines.frames import header_digest

from .conftest import run_python

H, W = 70, 90
REGIONS = [(slice(0, H), slice(0, W)), (slice(5, 37), slice(11, 80)), (slice(64, 70), slice(0, 9)),
           (slice(33, 34), slice(89, 90))]


def _img(seed=0, shape=(H, W), dtype=np.uint16):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 60000, shape).astype(dtype)


def _write_all(d: Path) -> dict:
    """One file of each kind in ``d``: {name: (path, open_frame kwargs, reference float32 array)}."""
    import warnings

    import tifffile
    import zarr
    from astropy.io import fits
    from ome_zarr.format import FormatV05

    with warnings.catch_warnings():  # ome-zarr 0.18's module defines a default argument with a deprecated class
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr.writer import write_image

    out = {}
    a = _img(0)
    np.save(d / "a.npy", a)
    out["npy"] = (d / "a.npy", {}, np.load(d / "a.npy"))
    f64 = np.random.default_rng(1).normal(size=(2, H, W))
    np.save(d / "s64.npy", f64)
    out["npy-stack-f64"] = (d / "s64.npy", {}, np.load(d / "s64.npy"))
    # BigTIFF, tiled and compressed: read through tifffile's zarr view
    tifffile.imwrite(d / "tiled.tif", a, bigtiff=True, tile=(32, 32), compression="zlib")
    out["tiff-tiled"] = (d / "tiled.tif", {}, tifffile.imread(d / "tiled.tif"))
    # BigTIFF stack, uncompressed and contiguous: memory-mapped
    stack = np.stack([_img(2, dtype=np.float32), _img(3, dtype=np.float32), _img(4, dtype=np.float32)])
    tifffile.imwrite(d / "stack.tif", stack, bigtiff=True, photometric="minisblack")
    out["tiff-stack"] = (d / "stack.tif", {}, tifffile.imread(d / "stack.tif"))
    # FITS: a 2-D image with a WCS after an empty primary, a cube, a scaled image with BLANK pixels
    hdr = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": 45.0, "CRPIX2": 35.0,
                       "CRVAL1": 150.1, "CRVAL2": 2.2, "CDELT1": -1e-4, "CDELT2": 1e-4, "BUNIT": "adu"})
    sci = fits.ImageHDU(a.astype(">i4"), header=hdr, name="SCI")
    fits.HDUList([fits.PrimaryHDU(), sci]).writeto(d / "wcs.fits")
    out["fits"] = (d / "wcs.fits", {}, fits.getdata(d / "wcs.fits", ext=1))
    fits.PrimaryHDU(stack.astype(">f4")).writeto(d / "cube.fits")
    out["fits-cube"] = (d / "cube.fits", {}, fits.getdata(d / "cube.fits"))
    raw = (a // 4).astype(np.int16)
    raw[3, 4] = raw[60, 70] = -32768
    hs = fits.PrimaryHDU(raw)
    hs.header["BSCALE"], hs.header["BZERO"], hs.header["BLANK"] = 0.5, 100.0, -32768
    hs.writeto(d / "scaled.fits")
    out["fits-scaled"] = (d / "scaled.fits", {}, fits.getdata(d / "scaled.fits"))
    # Zarr v3: an array, and a named array of a plain group
    z = zarr.create_array(str(d / "a.zarr"), shape=(H, W), chunks=(32, 32), dtype="uint16")
    z[:] = a
    out["zarr"] = (d / "a.zarr", {}, zarr.open_array(str(d / "a.zarr"), mode="r")[...])
    g = zarr.open_group(str(d / "g.zarr"), mode="w")
    g.create_array("frames", shape=stack.shape, chunks=(1, 32, 32), dtype="float32")[:] = stack
    out["zarr-group"] = (d / "g.zarr", {"array": "frames"}, zarr.open_group(str(d / "g.zarr"))["frames"][...])
    # OME-Zarr (NGFF 0.5) written by ome-zarr-py, (t, c, z, y, x) with t = c = z = 1: level 0 of the multiscale
    ome = zarr.open_group(str(d / "ome.zarr"), mode="w", zarr_format=3)
    write_image(a[None, None, None].astype(np.float32), ome, axes="tczyx", fmt=FormatV05(), scale_factors=(2,))
    out["ome-zarr"] = (d / "ome.zarr", {}, _ome_reference(d / "ome.zarr")[0])
    return out


def _ome_reference(path) -> np.ndarray:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(path)))()))
    return np.asarray(node.data[0])[0, 0]  # (t, c, z, y, x) -> (z, y, x) = (1, H, W)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return _write_all(tmp_path_factory.mktemp("frames"))


KINDS = ["npy", "npy-stack-f64", "tiff-tiled", "tiff-stack", "fits", "fits-cube", "fits-scaled", "zarr", "zarr-group",
         "ome-zarr"]


@pytest.mark.parametrize("name", KINDS)
def test_sections_equal_the_format_library_full_read(files, name):
    path, kw, ref = files[name]
    f = open_frame(path, **kw)
    ref = np.asarray(ref, dtype=np.float32).reshape((-1, H, W))
    assert f.n_frames == ref.shape[0] and f.frame_shape == (H, W)
    assert f.info.shape == ((H, W) if ref.shape[0] == 1 and name not in ("ome-zarr",) else ref.shape)
    for n in range(f.n_frames):
        for rows, cols in REGIONS:
            got = f.read(n, rows, cols)
            assert got.dtype == np.float32 and got.flags.c_contiguous
            np.testing.assert_array_equal(got, ref[n][rows, cols])  # NaN (FITS BLANK) compares equal to NaN
    # the Dask view of the last frame, in uneven chunks
    np.testing.assert_array_equal(f.to_dask(f.n_frames - 1, chunks=(25, 40)).compute(), ref[-1])


def test_kinds_and_read_paths(files):
    """The lazy path each format takes (a memory map or tifffile's zarr view), and the stored dtype."""
    assert open_frame(files["tiff-tiled"][0])._options["layout"] == "zarr"
    assert open_frame(files["tiff-stack"][0])._options["layout"] == "memmap"
    assert open_frame(files["fits"][0])._options["memmap"] is True
    assert open_frame(files["fits-scaled"][0])._options["memmap"] is False  # astropy cannot memmap scaled data
    kinds = {k: open_frame(files[k][0], **files[k][1]).info.kind for k in KINDS}
    assert kinds["ome-zarr"] == "ome-zarr" and kinds["zarr-group"] == "zarr" and kinds["tiff-stack"] == "tiff"
    assert open_frame(files["npy-stack-f64"][0]).info.dtype == "float64"
    import zarr
    from ome_zarr_models.v05.image import Image

    f = open_frame(files["ome-zarr"][0])
    level0 = Image.from_zarr(zarr.open_group(str(files["ome-zarr"][0]), mode="r")).ome_attributes.multiscales[0]
    assert f.info.array == level0.datasets[0].path and f.info.shape == (1, H, W)  # (t, c, z, y, x) = (1, 1, 1, H, W) -> a stack of one


def test_fits_header_kept_with_its_wcs(files):
    from astropy.io import fits
    from astropy.wcs import WCS

    f = open_frame(files["fits"][0])
    assert f.info.hdu == 1  # the first 2-D image HDU (the primary is empty)
    cards = {k: v for k, v, _ in f.info.header}
    assert cards["CTYPE1"] == "RA---TAN" and cards["CRVAL1"] == 150.1 and cards["BUNIT"] == "adu"
    hdr = fits.Header([fits.Card(k, v, c) for k, v, c in f.info.header])
    ref = WCS(fits.getheader(files["fits"][0], ext=1))
    assert WCS(hdr).wcs.compare(ref.wcs)
    ident = f.identity()
    assert ident["header_sha256"] == header_digest(f.info.header) and ident["header"][0][0] == "XTENSION"
    assert open_frame(files["fits"][0], hdu="SCI").info.hdu == 1
    assert open_frame(files["npy"][0]).info.header is None


@pytest.mark.parametrize("name", KINDS)
def test_unpickled_frame_reads(files, name):
    path, kw, ref = files[name]
    f = open_frame(path, **kw)
    f.read(0, slice(0, 8), slice(0, 8))  # opened in this process: the handle must not travel
    g = pickle.loads(pickle.dumps(f))
    assert len(pickle.dumps(f)) < 20_000
    ref = np.asarray(ref, dtype=np.float32).reshape((-1, H, W))
    np.testing.assert_array_equal(g.read(f.n_frames - 1, slice(10, 50), slice(20, 77)), ref[-1][10:50, 20:77])


def test_pickled_frames_read_in_another_process(files, tmp_path):
    """Every kind pickled here, read in a fresh interpreter (as a process-based Dask worker would)."""
    frames = {k: open_frame(files[k][0], **files[k][1]) for k in KINDS}
    (tmp_path / "frames.pkl").write_bytes(pickle.dumps(frames))
    code = ("import pickle, sys, numpy as np\n"
            "fr = pickle.load(open(sys.argv[1], 'rb'))\n"
            "np.savez(sys.argv[2], **{k: f.read(f.n_frames - 1, slice(3, 41), slice(7, 88)) for k, f in fr.items()})\n")
    run_python(code, tmp_path / "frames.pkl", tmp_path / "out.npz")
    got = np.load(tmp_path / "out.npz")
    for k in KINDS:
        ref = np.asarray(files[k][2], dtype=np.float32).reshape((-1, H, W))[-1]
        np.testing.assert_array_equal(got[k], ref[3:41, 7:88], err_msg=k)


def test_nan_report_counts_and_locates(tmp_path):
    a = np.ones((3000, 40), np.float32)
    bad = [(2999, 39), (0, 5), (1500, 0), (7, 7), (7, 8)] + [(2000 + i, i) for i in range(12)]
    for r, c in bad:
        a[r, c] = np.nan
    a[1, 1] = np.inf
    np.save(tmp_path / "nan.npy", np.stack([np.zeros_like(a), a]))
    f = open_frame(tmp_path / "nan.npy")
    import pipelines.frames as frames

    old = frames._BAND_PIXELS
    frames._BAND_PIXELS = 40 * 700  # bands of 700 rows: positions found across band borders
    try:
        count, where = f.nan_report(1)
    finally:
        frames._BAND_PIXELS = old
    ref = np.argwhere(~np.isfinite(a))  # row-major order, the reference
    assert count == len(ref) == len(bad) + 1
    assert where == [tuple(int(v) for v in p) for p in ref[:10]]
    assert f.nan_report(0) == (0, [])


def test_file_changed_after_open_is_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((8, 8), np.float32))
    f = open_frame(tmp_path / "a.npy")
    g = pickle.loads(pickle.dumps(f))
    np.save(tmp_path / "a.npy", np.zeros((8, 9), np.float32))
    with pytest.raises(PipelineError, match="changed since it was opened"):
        g.read(0, slice(0, 2), slice(0, 2))


def test_bad_regions_and_indices(files):
    f = open_frame(files["tiff-stack"][0])
    with pytest.raises(PipelineError, match=r"frame index 3 out of range; expected 0 <= index < 3"):
        f.read(3, slice(0, 2), slice(0, 2))
    with pytest.raises(PipelineError, match="step 1"):
        f.read(0, slice(0, 10, 2), slice(0, 2))
    assert f.read(0, slice(60, 100), slice(85, 200)).shape == (10, 5)  # clipped like a numpy slice


def _refusal(tmp_path, name):
    import tifffile
    import zarr

    p = tmp_path / name
    if name == "missing.npy":
        pass
    elif name == "img.png":
        p.write_bytes(b"\x89PNG")
    elif name == "folder":
        p.mkdir()
    elif name == "cube4.npy":
        np.save(p, np.zeros((2, 2, 4, 4), np.float32))
    elif name == "line.npy":
        np.save(p, np.zeros(5, np.float32))
    elif name == "complex.npy":
        np.save(p, np.zeros((4, 4), np.complex64))
    elif name == "empty.npy":
        np.save(p, np.zeros((0, 4), np.float32))
    elif name == "strings.npy":
        np.save(p, np.array([["a", "b"]]))
    elif name == "rgb.tif":
        tifffile.imwrite(p, np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    elif name == "garbage.fits":
        p.write_bytes(b"not a fits file at all" * 200)
    elif name == "plain.zarr":
        g = zarr.open_group(str(p), mode="w")
        g.create_array("x", shape=(4, 4), dtype="f4")
    elif name == "truncated.npy":
        np.save(p, np.zeros((64, 64), np.float32))
        p.write_bytes(p.read_bytes()[:40])
    return p


REFUSALS = [
    ("missing.npy", {}, "no such file or folder"),
    ("img.png", {}, "unknown frame type '.png'; expected a Zarr"),
    ("folder", {}, "is a folder but not a Zarr store"),
    ("cube4.npy", {}, r"shape \(2, 2, 4, 4\) has 4 axes; expected a 2-D frame \(H, W\) or a stack"),
    ("line.npy", {}, r"shape \(5,\) has 1 axes; expected a 2-D frame"),
    ("complex.npy", {}, "complex64 are not real numbers; expected a real numeric image"),
    ("empty.npy", {}, r"shape \(0, 4\) is empty"),
    ("strings.npy", {}, "are not real numbers"),
    ("rgb.tif", {}, "has colour samples; expected a greyscale frame"),
    ("garbage.fits", {}, "cannot read its header"),
    ("plain.zarr", {}, r"without OME-Zarr multiscales; choose an array with --array \(arrays: x\)"),
    ("plain.zarr", {"array": "nope"}, "--array 'nope': no such array"),
    ("complex.npy", {"hdu": 1}, "--hdu 1: applies to FITS files only"),
    ("complex.npy", {"array": "x"}, "--array x: applies to Zarr stores only"),
    ("truncated.npy", {}, "cannot read"),
]


@pytest.mark.parametrize("name,kw,msg", REFUSALS, ids=[f"{n}-{'-'.join(k)}" for n, k, _ in REFUSALS])
def test_refusals_name_the_path_and_what_was_expected(tmp_path, name, kw, msg):
    p = _refusal(tmp_path, name)
    with pytest.raises(PipelineError, match=msg) as e:
        open_frame(p, **kw)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_fits_hdu_choice_refusals(files):
    with pytest.raises(PipelineError, match="--hdu 7"):
        open_frame(files["fits"][0], hdu=7)
    with pytest.raises(PipelineError, match="holds no image"):
        open_frame(files["fits"][0], hdu=0)  # the empty primary
