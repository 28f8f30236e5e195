"""pipelines.runner: tiled runs against psfsim's whole-frame, in-memory result; resume and a killed worker
against an uninterrupted run (byte for byte); NaN masking; refusals.

References: ``psfsim.blur`` of the whole frame at its origin in the lens field (psfsim's own operator, no
tiling, no Dask) for the simulate route, and an uninterrupted threaded run for resume / kill / cluster runs.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import psfsim
from pipelines.errors import PipelineError
from pipelines.frames import open_frame
from pipelines.runner import run

LENS = {"name": "tiny-pl", "optics": {"wavelength_nm": 520.0, "na": 0.4, "pixel_pitch_um": 0.325},
        "field": {"shape_px": [256, 256]}, "psf": {"size_px": 17, "oversample": 2},
        "seidel": {"W040": 0.5, "W131": 0.6, "W222": 0.4}}
ORIGIN = (40, 30)  # the frame is an off-centre window of the lens field


@pytest.fixture(scope="module")
def lens():
    return psfsim.lens_from_dict(LENS, check_psf_box=False)


@pytest.fixture(scope="module")
def sharp(tmp_path_factory):
    """A 160 x 200 frame of smooth structure plus points (float32, in [0, 1]) as a .npy file."""
    rng = np.random.default_rng(7)
    a = np.zeros((160, 200), np.float32)
    a[rng.integers(0, 160, 60), rng.integers(0, 200, 60)] = 1.0
    yy, xx = np.mgrid[:160, :200]
    a += 0.3 * (1 + np.sin(xx / 9.0) * np.cos(yy / 13.0)).astype(np.float32)
    p = tmp_path_factory.mktemp("frames") / "sharp.npy"
    np.save(p, a)
    return p, a


def _read(out):
    import zarr

    return zarr.open_group(str(out), mode="r")["0"][:]


def _sim(lens):
    from pipelines.routes import simulate_route

    return simulate_route(lens)


class Wrapped:
    """A route that behaves as ``inner`` (same identity, so the same run) but counts its calls, and can fail on
    call ``fail_at`` (an injected failure: a bug, a full disk) or kill its own process on call ``kill_at`` once
    (a worker killed mid-run; ``marker`` records that it happened)."""

    def __init__(self, inner, *, fail_at=None, kill_at=None, marker=None):
        self.inner, self.fail_at, self.kill_at, self.marker = inner, fail_at, kill_at, marker
        self.calls = 0
        self.name, self.halo, self.align = inner.name, inner.halo, inner.align
        self.lens = getattr(inner, "lens", None)

    def identity(self):
        return self.inner.identity()

    def prepare(self, frame, index, **kw):
        return self.inner.prepare(frame, index, **kw)

    def check_frame(self, *a, **kw):
        return self.inner.check_frame(*a, **kw)

    def __call__(self, blocks, origins, stats):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("injected failure")
        if self.calls == self.kill_at and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner(blocks, origins, stats)


def test_threaded_run_equals_psfsim_whole_frame_blur(lens, sharp, tmp_path):
    path, a = sharp
    res = run(_sim(lens), open_frame(path), tmp_path / "out.zarr", tile=64, origin=ORIGIN, progress=False)
    got = _read(tmp_path / "out.zarr")
    want = psfsim.blur(a, lens, origin=ORIGIN)  # psfsim, in memory, whole frame
    assert got.shape == a.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5 * float(np.abs(want).max()), rtol=0)
    assert res.tiles_total == res.tiles_computed == 3 * 4
    text = res.summary()
    assert "160 x 200" in text and "12 computed" in text and "Mpix/s" in text and "peak RSS" in text


def test_stack_frame_by_frame(lens, sharp, tmp_path):
    _, a = sharp
    stack = np.stack([a, a[::-1, ::-1].copy()])
    np.save(tmp_path / "stack.npy", stack)
    res = run(_sim(lens), open_frame(tmp_path / "stack.npy"), tmp_path / "out.zarr", tile=80, origin=ORIGIN,
              progress=False)
    got = _read(tmp_path / "out.zarr")
    assert got.shape == stack.shape and res.n_frames == 2 and res.tiles_total == 2 * 2 * 3
    for n in range(2):
        want = psfsim.blur(stack[n], lens, origin=ORIGIN)
        np.testing.assert_allclose(got[n], want, atol=1e-5 * float(np.abs(want).max()), rtol=0)


def test_nan_pixels_filled_and_masked_not_spread(lens, sharp, tmp_path):
    _, a = sharp
    b = a.copy()
    bad = [(5, 7), (100, 150), (63, 64)]  # one on a tile border
    for r, c in bad:
        b[r, c] = np.nan
    np.save(tmp_path / "nan.npy", b)
    frame = open_frame(tmp_path / "nan.npy")
    with pytest.raises(PipelineError, match=r"3 NaN or infinite pixel\(s\), at \(row, col\) \(5, 7\), \(63, 64\)"):
        run(_sim(lens), frame, tmp_path / "refused.zarr", tile=64, origin=ORIGIN, progress=False, nan_policy="raise")
    assert not (tmp_path / "refused.zarr").exists()
    with pytest.warns(UserWarning, match="3 NaN"):
        res = run(_sim(lens), frame, tmp_path / "out.zarr", tile=64, origin=ORIGIN, progress=False)
    got = _read(tmp_path / "out.zarr")
    assert sorted(map(tuple, np.argwhere(np.isnan(got)).tolist())) == sorted(bad)  # the same pixels, no more
    assert res.nan[0]["count"] == 3 and "3 non-finite pixel(s) at (5, 7)" in res.summary()
    # away from the holes (beyond the PSF's reach) the result is the clean frame's
    want = psfsim.blur(a, lens, origin=ORIGIN)
    far = np.ones(a.shape, bool)
    for r, c in bad:
        far[max(0, r - 9):r + 10, max(0, c - 9):c + 10] = False
    np.testing.assert_allclose(got[far], want[far], atol=1e-5 * float(np.abs(want).max()), rtol=0)


def test_resume_after_a_failure_computes_only_missing_chunks_byte_identical(lens, sharp, tmp_path):
    from pipelines.output import open_result

    path, _ = sharp
    frame = open_frame(path)
    run(_sim(lens), frame, tmp_path / "ref.zarr", tile=48, origin=ORIGIN, progress=False)
    failing = Wrapped(_sim(lens), fail_at=6)
    with pytest.raises(RuntimeError, match="injected failure"):
        run(failing, frame, tmp_path / "out.zarr", tile=48, origin=ORIGIN, progress=False, threads=1)
    with pytest.raises(PipelineError):
        open_result(tmp_path / "out.zarr")  # never looks complete
    counting = Wrapped(_sim(lens))
    res = run(counting, frame, tmp_path / "out.zarr", tile=48, origin=ORIGIN, progress=False)
    assert counting.calls == res.tiles_computed == res.tiles_total - 5  # the 5 written chunks were not redone
    assert "5 already done (resumed)" in res.summary()
    ref, got = _read(tmp_path / "ref.zarr"), _read(tmp_path / "out.zarr")
    assert ref.tobytes() == got.tobytes()
    again = Wrapped(_sim(lens))  # complete: nothing left to compute
    assert run(again, frame, tmp_path / "out.zarr", tile=48, origin=ORIGIN, progress=False).tiles_computed == 0
    assert again.calls == 0


def test_store_of_another_run_refused(lens, sharp, tmp_path):
    path, _ = sharp
    frame = open_frame(path)
    run(_sim(lens), frame, tmp_path / "out.zarr", tile=64, origin=ORIGIN, progress=False)
    with pytest.raises(PipelineError):
        run(_sim(lens), frame, tmp_path / "out.zarr", tile=64, origin=(0, 0), progress=False)


def test_refusals_before_any_store(lens, sharp, tmp_path):
    path, _ = sharp
    frame = open_frame(path)
    out = tmp_path / "out.zarr"
    with pytest.raises(PipelineError, match="smaller than one tile"):
        run(_sim(lens), frame, out, tile=256, progress=False)
    with pytest.raises(PipelineError, match="does not lie inside the lens field"):
        run(_sim(lens), frame, out, tile=64, origin=(100, 0), progress=False)  # 100 + 160 > 256
    with pytest.raises(PipelineError, match="--origin"):
        run(_sim(lens), frame, out, tile=64, origin=(-1, 0), progress=False)
    with pytest.raises(PipelineError, match="give one of them"):
        run(_sim(lens), frame, out, tile=64, workers=2, scheduler="tcp://127.0.0.1:1", progress=False)
    with pytest.raises(PipelineError, match="no Dask scheduler answered"):
        run(_sim(lens), frame, out, tile=64, origin=ORIGIN, scheduler="tcp://127.0.0.1:9", connect_timeout=1,
            progress=False)
    assert not out.exists()


@pytest.mark.slow
def test_killed_worker_run_completes_byte_identical(lens, sharp, tmp_path):
    """A 2-process LocalCluster on loopback, reached by its address (``scheduler=``). The reference is an
    uninterrupted run on it; then one worker is SIGKILLed in the middle of a chunk: the scheduler reschedules its
    chunks, the plugin installs the route on the nanny's replacement worker, and the output equals the reference
    byte for byte. (Against the threaded scheduler the results agree to float32 rounding only: numeric
    libraries run with other thread counts there.)"""
    import logging

    from distributed import LocalCluster

    path, a = sharp
    frame = open_frame(path)
    marker = tmp_path / "killed"
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1", dashboard_address=None,
                      silence_logs=logging.CRITICAL) as cluster:
        addr = cluster.scheduler_address
        run(_sim(lens), frame, tmp_path / "ref.zarr", tile=48, origin=ORIGIN, progress=False, scheduler=addr)
        route = Wrapped(_sim(lens), kill_at=1, marker=str(marker))
        res = run(route, frame, tmp_path / "out.zarr", tile=48, origin=ORIGIN, progress=False, scheduler=addr)
    assert marker.exists()  # a worker really died mid-run
    assert res.tiles_computed == res.tiles_total and res.worker_peak_rss_mib > 0
    ref = _read(tmp_path / "ref.zarr")
    assert ref.tobytes() == _read(tmp_path / "out.zarr").tobytes()
    want = psfsim.blur(a, lens, origin=ORIGIN)
    np.testing.assert_allclose(ref, want, atol=1e-5 * float(np.abs(want).max()), rtol=0)


def test_stack_runs_window_by_window(lens, sharp, tmp_path):
    """The frames of a stack are computed at one tile window after another (a CoordGate model's gate cache holds
    a few windows: frame-by-frame order would recompute every window's gates for every frame). Reference: the
    sequence of windows the route is called at comes in runs of N identical windows, and every chunk is done."""
    _, a = sharp
    stack = np.stack([a, a[::-1, ::-1].copy(), 0.5 * a])
    np.save(tmp_path / "stack.npy", stack)
    seen = []

    class Recording(Wrapped):
        def __call__(self, blocks, origins, stats):
            seen.append(tuple(origins))
            return super().__call__(blocks, origins, stats)

    res = run(Recording(_sim(lens)), open_frame(tmp_path / "stack.npy"), tmp_path / "out.zarr", tile=80,
              origin=ORIGIN, progress=False, threads=1, qc=False)
    assert res.tiles_computed == 3 * 2 * 3 and len(seen) == 2 * 3 * 3
    runs = [seen[i:i + 3] for i in range(0, len(seen), 3)]
    assert all(r[0] == r[1] == r[2] for r in runs) and len({r[0] for r in runs}) == 2 * 3
