"""The runner's quality control: the re-blur residual map written chunk by chunk beside the result.

References: the residual map against ``|psfsim.blur(x_hat) - y|`` of the whole frame (psfsim's operator, no
tiling, no Dask); a correct restoration against one made with a wrong lens (both checked with the frame's lens);
an uninterrupted run's QC arrays, byte for byte (resume); ome-zarr-models (the store stays valid NGFF 0.5).
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import psfsim
from pipelines.cli import main
from pipelines.errors import PipelineError
from pipelines.frames import open_frame
from pipelines.output import open_result
from pipelines.routes import rl_route, simulate_route, wiener_route
from pipelines.runner import qc_dir_for, run

from .conftest import tiny_lens_toml

LENS = {"name": "tiny-qc", "optics": {"wavelength_nm": 520.0, "na": 0.4, "pixel_pitch_um": 0.325},
        "field": {"shape_px": [256, 256]}, "psf": {"size_px": 17, "oversample": 2},
        "seidel": {"W040": 0.5, "W131": 0.6, "W222": 0.4}}
LENS_TOML = tiny_lens_toml("tiny-qc")
ORIGIN = (40, 30)  # an off-centre window of the lens field
SHAPE = (96, 128)
SIGMA = 0.003
TILE = 48


@pytest.fixture(scope="module")
def lens():
    return psfsim.lens_from_dict(LENS, check_psf_box=False)


@pytest.fixture(scope="module")
def wrong():
    """The same optics without aberrations: a restoration with it under-corrects the frame."""
    return psfsim.lens_from_dict(dict(LENS, name="tiny-qc-perfect", seidel={"W040": 0.0}), check_psf_box=False)


def _sharp(shape, seed):
    rng = np.random.default_rng(seed)
    a = np.zeros(shape, np.float32)
    a[rng.integers(0, shape[0], 40), rng.integers(0, shape[1], 40)] = 1.0
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return a + 0.3 * (1 + np.sin(xx / 9.0 + seed) * np.cos(yy / 13.0)).astype(np.float32)


@pytest.fixture(scope="module")
def observed(lens, tmp_path_factory):
    """A frame blurred by psfsim at ORIGIN plus seeded Gaussian noise of SIGMA, as .npy; and a 2-frame stack."""
    d = tmp_path_factory.mktemp("qc")
    rng = np.random.default_rng(3)
    ys = [psfsim.blur(_sharp(SHAPE, s), lens, origin=ORIGIN) + SIGMA * rng.standard_normal(SHAPE) for s in (1, 2)]
    ys = [y.astype(np.float32) for y in ys]
    np.save(d / "y.npy", ys[0])
    np.save(d / "stack.npy", np.stack(ys))
    return d, ys


def _reference(lens, est, y):
    """|A(x_hat) - y| of the whole frame with psfsim's operator (NaN-free inputs)."""
    return np.abs(psfsim.blur(est, lens, origin=ORIGIN) - y)


def _qc(out):
    g = zarr.open_group(str(out), mode="r")
    return g, g.attrs["pipelines"]["qc"]


def test_qc_map_is_psfsims_whole_frame_residual_and_a_wrong_lens_stands_out(lens, wrong, observed, tmp_path):
    from ome_zarr_models.v05.image import Image

    d, (y, _) = observed
    frame = open_frame(d / "y.npy")
    good = run(rl_route(lens, iterations=10), frame, tmp_path / "good.zarr", tile=TILE, origin=ORIGIN,
               progress=False)
    g, q = _qc(tmp_path / "good.zarr")
    est = np.asarray(g["0"][...])
    ref = _reference(lens, est, y)
    got = np.asarray(g["qc/residual"][...])
    assert got.shape == SHAPE and g["qc/residual"].chunks == (TILE, TILE)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * float(ref.max()))
    s = q["summary"]["frames"][0]
    b = q["record"]["border_px"]
    inner = ref[b:-b, b:-b].astype(np.float64)
    assert s["rms"] == pytest.approx(np.sqrt(np.mean(inner**2)), rel=1e-5)
    assert s["mean_abs"] == pytest.approx(inner.mean(), rel=1e-5)
    assert s["n_pixels"] == inner.size and s["noise_sigma"] == pytest.approx(SIGMA, rel=0.25)
    worst = s["worst_tiles"][0]
    (r0, r1), (c0, c1) = worst["rows"], worst["cols"]
    assert r1 - r0 <= TILE and c1 - c0 <= TILE
    assert q["status"] == "complete" and q["record"]["lens_fingerprint"] == lens.fingerprint
    assert good.qc["chunks_computed"] == 6 and "qc: re-blur residual" in good.summary()
    png = qc_dir_for(tmp_path / "good.zarr") / "residual.png"
    assert png == tmp_path / "good.qc" / "residual.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    Image.from_zarr(zarr.open_group(str(tmp_path / "good.zarr"), mode="r"))  # still valid NGFF 0.5
    open_result(tmp_path / "good.zarr")
    # the same restoration with a lens without the aberrations, checked against the frame's lens
    bad = run(rl_route(wrong, iterations=10), frame, tmp_path / "bad.zarr", tile=TILE, origin=ORIGIN,
              progress=False, qc_lens=lens)
    sb = bad.qc["summary"]["frames"][0]
    assert sb["rms_over_noise"] > 2 * s["rms_over_noise"] and sb["mean_abs"] > 2 * s["mean_abs"]


def test_qc_resumes_only_missing_chunks_byte_identical(lens, observed, tmp_path, monkeypatch):
    import pipelines.qc as qc

    d, _ = observed
    frame = open_frame(d / "y.npy")
    run(wiener_route(lens), frame, tmp_path / "ref.zarr", tile=TILE, origin=ORIGIN, progress=False, threads=1)
    real = qc.residual_block
    calls = []

    def failing(*a, **kw):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("injected QC failure")
        return real(*a, **kw)

    monkeypatch.setattr(qc, "residual_block", failing)
    with pytest.raises(RuntimeError, match="injected QC failure"):
        run(wiener_route(lens), frame, tmp_path / "out.zarr", tile=TILE, origin=ORIGIN, progress=False, threads=1)
    open_result(tmp_path / "out.zarr")  # the result is complete; only its QC is not
    g, q = _qc(tmp_path / "out.zarr")
    assert q["status"] == "running" and int(np.asarray(g["qc/done"][...]).sum()) == 3
    calls.clear()
    res = run(wiener_route(lens), frame, tmp_path / "out.zarr", tile=TILE, origin=ORIGIN, progress=False, threads=1)
    assert len(calls) == res.qc["chunks_computed"] == 3 and res.tiles_computed == 0
    (gr, qr), (go, qo) = _qc(tmp_path / "ref.zarr"), _qc(tmp_path / "out.zarr")
    for name in ("qc/residual", "qc/stats", "qc/done", "0"):
        assert np.asarray(gr[name][...]).tobytes() == np.asarray(go[name][...]).tobytes(), name
    assert qr["summary"] == qo["summary"] and qo["status"] == "complete"
    calls.clear()
    again = run(wiener_route(lens), frame, tmp_path / "out.zarr", tile=TILE, origin=ORIGIN, progress=False)
    assert not calls and again.qc["chunks_computed"] == 0 and "read back from the store" in again.summary()


def test_qc_of_a_stack_frame_by_frame(lens, observed, tmp_path):
    d, ys = observed
    res = run(wiener_route(lens), open_frame(d / "stack.npy"), tmp_path / "s.zarr", tile=TILE, origin=ORIGIN,
              progress=False)
    g, q = _qc(tmp_path / "s.zarr")
    got = np.asarray(g["qc/residual"][...])
    assert got.shape == (2,) + SHAPE and g["qc/residual"].chunks == (1, TILE, TILE)
    frames = q["summary"]["frames"]
    assert len(frames) == 2 and q["summary"]["all"]["n_pixels"] == sum(f["n_pixels"] for f in frames)
    for n in range(2):
        ref = _reference(lens, np.asarray(g["0"][n]), ys[n])
        np.testing.assert_allclose(got[n], ref, rtol=0, atol=1e-5 * float(ref.max()))
        b = q["record"]["border_px"]
        assert frames[n]["rms"] == pytest.approx(np.sqrt(np.mean(ref[b:-b, b:-b].astype(np.float64) ** 2)), rel=1e-5)
    assert [p.name for p in sorted((tmp_path / "s.qc").iterdir())] == ["residual_t0.png", "residual_t1.png"]
    assert "frame 1: rms" in res.summary()


def test_cli_no_qc_then_qc_refusals_and_simulate_has_none(observed, tmp_path, capsys):
    d, _ = observed
    lens_file = tmp_path / "tiny.toml"
    lens_file.write_text(LENS_TOML)
    base = ["wiener", "--lens", str(lens_file), "--input", str(d / "y.npy"), "--tile", str(TILE),
            "--origin", f"{ORIGIN[0]},{ORIGIN[1]}", "--no-progress"]
    out = tmp_path / "w.zarr"
    assert main(base + ["--out", str(out), "--no-qc"]) == 0
    assert "qc" not in zarr.open_group(str(out), mode="r").attrs["pipelines"] and not (tmp_path / "w.qc").exists()
    capsys.readouterr()
    assert main(base + ["--out", str(out)]) == 0  # the same run again: the QC is added, nothing else computed
    text = capsys.readouterr().out
    assert "0 computed, 6 already done" in text and "qc: re-blur residual" in text and "w.qc/residual.png" in text
    # a QC with another lens is refused unless --overwrite (the result is kept either way)
    other = tmp_path / "other.toml"
    other.write_text(LENS_TOML.replace("W040 = 0.5", "W040 = 0.0").replace('"tiny-qc"', '"other"'))
    assert main(base + ["--out", str(out), "--qc-lens", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pipelines: error: ") and "QC was made differently" in err and "\n" not in err
    # a figure folder that this store's QC did not write is never written into
    (tmp_path / "x.qc").mkdir()
    (tmp_path / "x.qc" / "mine.txt").write_text("not yours")
    assert main(base + ["--out", str(tmp_path / "x.zarr")]) == 2
    assert "x.qc: exists and was not written by the QC" in capsys.readouterr().err
    with pytest.raises(PipelineError):
        open_result(tmp_path / "x.zarr")
    # simulate makes no estimate of the sharp frame: no QC
    import pipelines.runner as runner

    r = run(simulate_route(psfsim.lens_from_toml(LENS_TOML)), open_frame(d / "y.npy"), tmp_path / "sim.zarr",
            tile=TILE, origin=ORIGIN, progress=False)
    assert r.qc is None and "qc" not in zarr.open_group(str(tmp_path / "sim.zarr"), mode="r").attrs["pipelines"]
    assert not runner.qc_dir_for(tmp_path / "sim.zarr").exists()


@pytest.mark.slow  # two model runs and three PNG renders: ~10 s on a busy 2-core machine
def test_deblur_qc_writes_gate_maps_for_coordgate_only(checkpoints, pl_lens, tmp_path):
    from .conftest import scene

    H, W = (int(v) for v in pl_lens.field.shape_px)
    y = psfsim.blur(scene((H, W), seed=5), pl_lens) + 0.002 * np.random.default_rng(0).standard_normal((H, W))
    np.save(tmp_path / "f.npy", y.astype(np.float32))
    from pipelines.routes import model_route

    for name in ("cgunet", "unet"):
        res = run(model_route(checkpoints[name], device="cpu"), open_frame(tmp_path / "f.npy"),
                  tmp_path / f"{name}.zarr", tile=64, progress=False)
        files = sorted(p.name for p in (tmp_path / f"{name}.qc").iterdir())
        assert files == (["gates.png", "residual.png"] if name == "cgunet" else ["residual.png"])
        # random weights hallucinate: far more residual than the noise
        assert res.qc["summary"]["frames"][0]["rms_over_noise"] > 3
