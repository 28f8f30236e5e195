"""Datasets that cannot lie: the writer lock, per-block digests, verify, repair on resume, pinned inputs.

The reusable pieces (:mod:`psfsim.integrity`) first, then the dataset built on them: a tiny store (16 samples of
16 x 16 on a 32 x 32 lens, 8 blocks of 2) damaged in the ways a disk or a person damages it.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import zarr

import psfsim
from psfsim.cli import main
from psfsim.dataset import DatasetReader, SimulationSpec, export_hdf5, open_dataset, simulate, verify_dataset
from psfsim.integrity import (WriterLock, clean_stale_temporaries, digest_arrays, lock_holder, lock_path,
                              verify_blocks)

from .conftest import TINY_TOML

TINY_LENS = {"name": "tiny", "optics": {"wavelength_nm": 520.0, "na": 0.4, "pixel_pitch_um": 0.325},
             "field": {"shape_px": [32, 32]}, "psf": {"size_px": 17, "oversample": 2, "pupil_samples": 32}}
ARRAYS = ("sharp", "blurred", "wiener", "wiener_sv")


def _spec(**kw):
    base = dict(lens=psfsim.lens_from_dict(TINY_LENS).to_dict(), source="stars", n=16, size=(16, 16), seed=1,
                photons=200.0)
    base.update(kw)
    return SimulationSpec(**base)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# -- psfsim.integrity ---------------------------------------------------------------------------------------------
def test_lock_is_exclusive_and_names_its_holder(tmp_path):
    out = tmp_path / "x.zarr"
    with WriterLock(out, what="simulate") as lk:
        assert lock_holder(out)["pid"] == os.getpid() and lock_holder(out)["run_id"] == lk.run_id
        with pytest.raises(psfsim.PsfsimError, match=rf"another writer holds it: PID {os.getpid()} on "):
            WriterLock(out).acquire()
    assert lock_holder(out) is None and not lock_path(out).exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    out = tmp_path / "x.zarr"
    lock_path(out).write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "run_id": "old"}))
    assert lock_holder(out) is None
    with WriterLock(out):
        pass
    assert "taking over the lock" in capsys.readouterr().err
    # a live PID that started after the lock was written is another process: the lock is stale
    lock_path(out).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "pid_start": 1}))
    assert lock_holder(out) is None
    # another host's lock is never taken over (its PID means nothing here)
    lock_path(out).write_text(json.dumps({"host": "elsewhere", "pid": _dead_pid(), "run_id": "r"}))
    with pytest.raises(psfsim.PsfsimError, match="on elsewhere"):
        WriterLock(out).acquire()


def test_stale_temporaries_are_removed(tmp_path):
    out = tmp_path / "x.zarr"
    (tmp_path / ".x.zarr.abc123.creating").mkdir()
    (tmp_path / ".x.zarr.creating-4242").mkdir()
    (tmp_path / ".x.h5.q1.tmp.h5").write_bytes(b"0" * 10)
    (tmp_path / ".x.zarr.keep").write_text("not a temporary")
    removed = clean_stale_temporaries(out)
    assert sorted(p.name for p in removed) == [".x.zarr.abc123.creating", ".x.zarr.creating-4242"]
    assert (tmp_path / ".x.zarr.keep").exists() and (tmp_path / ".x.h5.q1.tmp.h5").exists()


def test_digest_and_verify_blocks():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    d = digest_arrays([a, a + 1])
    assert d == digest_arrays([a.copy(), a + 1]) and d != digest_arrays([a + 1, a])
    assert d != digest_arrays([a.astype(np.float64), a + 1])
    rec = {0: d, 1: d, 2: None}

    def compute(b):
        if b == 1:
            raise ValueError("checksum mismatch")
        return d

    bad = verify_blocks([0, 1, 2], rec.get, compute)
    assert sorted(bad) == [1, 2] and "unreadable" in bad[1] and "no digest" in bad[2]


# -- the dataset --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    p = tmp_path_factory.mktemp("ref") / "ref.zarr"
    simulate(_spec(), p, progress=False)
    return p


def _copy(ref, tmp_path):
    p = tmp_path / "d.zarr"
    shutil.copytree(ref, p)
    return p


def _same(a, b):
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    for k in ARRAYS + ("origin", "split", "done", "digest"):
        np.testing.assert_array_equal(ga[k][:], gb[k][:], err_msg=k)


def _shard(store, name, b):
    return store / name / "c" / str(b) / "0" / "0"


def _flip(p):
    data = bytearray(p.read_bytes())
    data[len(data) // 3] ^= 0x10
    p.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["delete", "truncate", "flip"])
def test_damaged_block_is_named_by_verify_and_recomputed_by_resume(ref, tmp_path, capsys, damage):
    d = _copy(ref, tmp_path)
    shard = _shard(d, "blurred", 3)
    {"delete": lambda p: p.unlink(), "truncate": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
     "flip": _flip}[damage](shard)
    assert sorted(verify_dataset(d).bad) == [3]
    assert main(["verify", str(d)]) == 1
    out = capsys.readouterr().out
    assert "block 3 (samples 6-7)" in out and "1 BAD" in out
    assert main(["info", "--verify", str(d)]) == 1
    capsys.readouterr()
    with pytest.raises(psfsim.PsfsimError, match="block 3 .*(unreadable|differs from its recorded digest)"):
        export_hdf5(d, tmp_path / "x.h5")
    assert sorted(os.listdir(tmp_path)) == ["d.zarr"]  # nothing left by the refused export
    r = simulate(_spec(), d, progress=False)
    assert r["complete"] and r["repaired"] == 1 and r["samples_written"] == 2
    assert "recomputing them" in capsys.readouterr().err
    _same(ref, d)
    assert main(["verify", str(d)]) == 0


def test_complete_flag_with_blocks_missing_is_refused_then_repaired(ref, tmp_path):
    d = _copy(ref, tmp_path)
    g = zarr.open_group(str(d), mode="r+", use_consolidated=False)
    g["done"][5] = 0
    with pytest.raises(psfsim.PsfsimError, match="bookkeeping disagrees.*'complete' is true but 1 of 8"):
        DatasetReader(d)
    with pytest.raises(psfsim.PsfsimError, match="bookkeeping"):
        export_hdf5(d, tmp_path / "x.h5")
    assert simulate(_spec(), d, progress=False)["samples_written"] == 2
    _same(ref, d)
    DatasetReader(d)


def test_corrupt_done_marker_is_not_done(ref, tmp_path, capsys):
    d = _copy(ref, tmp_path)
    (d / "done" / "c" / "2").write_bytes(b"garbage that is not zstd")
    assert main(["info", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'done' marker of block(s) 2 is unreadable" in err
    assert simulate(_spec(), d, progress=False)["samples_written"] == 2
    _same(ref, d)


def test_damaged_split_is_one_line(ref, tmp_path, capsys):
    d = _copy(ref, tmp_path)
    (d / "split" / "c" / "0").write_bytes(b"not zstd")
    assert main(["verify", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "array 'split' is unreadable" in err


def test_second_writer_is_refused_naming_the_holder(ref, tmp_path):
    d = _copy(ref, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_path(d).write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid, "run_id": "r1",
                                            "started": "2026-01-01T00:00:00+00:00"}))
        for overwrite, seed in ((False, 1), (True, 7)):
            with pytest.raises(psfsim.PsfsimError, match=rf"another writer holds it: PID {holder.pid} "):
                simulate(_spec(seed=seed), d, progress=False, overwrite=overwrite)
        # an incomplete store being written says so, not "run the same command again"
        g = zarr.open_group(str(d), mode="r+", use_consolidated=False)
        g.attrs["complete"] = False
        g["done"][0] = 0
        with pytest.raises(psfsim.PsfsimError, match=rf"being written by PID {holder.pid}.*wait for it"):
            open_dataset(d)
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(psfsim.PsfsimError, match="incomplete dataset.*running the same command"):
        open_dataset(d)
    simulate(_spec(), d, progress=False)  # the dead holder's lock is taken over
    _same(ref, d)


def test_block_refuses_a_store_of_another_run(ref, tmp_path):
    from psfsim.dataset import writer

    d = _copy(ref, tmp_path)
    writer._init_worker(_spec().to_json(), single_thread=False)
    with pytest.raises(psfsim.PsfsimError, match="replaced or taken over by another run"):
        writer._run_block(str(d), 0, 2, "not-this-store's-run")


def test_different_arguments_name_the_argument(ref, tmp_path):
    d = _copy(ref, tmp_path)
    with pytest.raises(psfsim.PsfsimError, match=r"different arguments \(--seed: stored 1, now 2\)"):
        simulate(_spec(seed=2), d, progress=False)
    with pytest.raises(psfsim.PsfsimError, match=r"--photons: stored 200.0, now 100.0"):
        simulate(_spec(photons=100.0), d, progress=False)


def test_changed_environment_is_refused(ref, tmp_path):
    d = _copy(ref, tmp_path)
    g = zarr.open_group(str(d), mode="r+", use_consolidated=False)
    env = dict(g.attrs["environment"], fft_backend="pyfftw")
    g.attrs["environment"] = env
    with pytest.raises(psfsim.PsfsimError, match="fft_backend: the store was written with 'pyfftw'.*changes results"):
        simulate(_spec(), d, progress=False)


def test_changed_source_folder_is_refused(tmp_path):
    from psfsim.io import write_array

    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        write_array(src / f"{i}.npy", rng.random((40, 40)).astype(np.float32))
    spec = _spec(source=str(src), n=8)
    d = tmp_path / "d.zarr"
    simulate(spec, d, progress=False, max_blocks=1)
    a = zarr.open_group(str(d)).attrs
    assert [r["name"] for r in a["sources"]] == [str(src / "0.npy"), str(src / "1.npy")]
    write_array(src / "2.npy", rng.random((40, 40)).astype(np.float32))
    with pytest.raises(psfsim.PsfsimError, match=r"different arguments \(source file .*2.npy was added since\)"):
        simulate(spec, d, progress=False)
    (src / "2.npy").unlink()
    write_array(src / "1.npy", rng.random((40, 40)).astype(np.float32))
    with pytest.raises(psfsim.PsfsimError, match="1.npy changed since"):
        simulate(spec, d, progress=False)


def test_relative_source_is_stored_absolute(tmp_path, monkeypatch):
    from psfsim.io import write_array

    (tmp_path / "imgs").mkdir()
    write_array(tmp_path / "imgs" / "a.npy", np.ones((40, 40), np.float32))
    monkeypatch.chdir(tmp_path)
    simulate(_spec(source="imgs,stars", n=8), "d.zarr", progress=False, max_blocks=1)
    assert zarr.open_group("d.zarr").attrs["spec"]["source"] == f"{tmp_path / 'imgs'},stars"
    monkeypatch.chdir("/")
    with pytest.raises(psfsim.PsfsimError, match=rf"--source {tmp_path / 'imgs'},stars .*--out {tmp_path / 'd.zarr'}"):
        open_dataset(tmp_path / "d.zarr")


def test_export_checks_free_space_first(ref, tmp_path, monkeypatch, capsys):
    import psfsim.dataset.export as export

    monkeypatch.setattr(export.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    out = tmp_path / "out"
    out.mkdir()
    assert main(["export", str(ref), "--to", str(out / "x.h5")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MiB free on its disk" in err and "nothing was written" in err
    assert list(out.iterdir()) == []


def test_export_removes_stale_temporaries_and_never_copies_nan(ref, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".x.h5.killed.tmp.h5").write_bytes(b"0" * 1000)
    assert export_hdf5(ref, out / "x.h5").exists()
    assert sorted(os.listdir(out)) == ["x.h5"]
    import h5py

    with h5py.File(out / "x.h5") as f:
        assert not np.isnan(f["blurred"][:]).any() and f["digest"].shape == (8, 32)


def test_info_on_a_folder_that_is_not_a_store(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a psfsim dataset" in err and "lens" not in err




def test_cli_simulate_exits_nonzero_when_incomplete(tmp_path, monkeypatch, capsys):
    import psfsim.dataset as ds

    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    orig = ds.simulate
    monkeypatch.setattr(ds, "simulate", lambda *a, **k: orig(*a, **{**k, "max_blocks": 1}))
    rc = main(["simulate", "--lens", str(tmp_path / "tiny.toml"), "--source", "stars", "--n", "16", "--size", "16,16",
               "--out", str(tmp_path / "d.zarr"), "--workers", "1"])
    assert rc == 1 and "INCOMPLETE" in capsys.readouterr().out


def _race_worker(path, q, barrier):
    from psfsim.integrity import WriterLock as _WL

    barrier.wait()
    try:
        lk = _WL(path).acquire()
        q.put("held")
        import time as _t

        _t.sleep(0.3)
        lk.release()
    except Exception as e:  # noqa: BLE001 - the refusal is the expected outcome
        q.put(type(e).__name__)


def test_racing_takeovers_of_a_stale_lock_leave_one_holder(tmp_path):
    """Three processes start against a dead writer's lock at once: exactly one takes it over (the check and the
    takeover run under an flock), the others are refused; a symlink to the store shares the store's lock."""
    import json as _json
    import multiprocessing as _mp
    import socket as _socket

    from psfsim.integrity import lock_path

    ctx = _mp.get_context("fork")
    for t in range(4):
        path = tmp_path / f"s{t}.zarr"
        lock_path(path).write_text(_json.dumps({"host": _socket.gethostname(), "pid": 999_999_999, "pid_start": 1,
                                                "run_id": "dead", "what": "writer", "started": "x"}))
        q, b = ctx.Queue(), ctx.Barrier(3)
        ps = [ctx.Process(target=_race_worker, args=(path, q, b)) for _ in range(3)]
        for p in ps:
            p.start()
        for p in ps:
            p.join(30)
        results = [q.get(timeout=5) for _ in range(3)]
        assert results.count("held") == 1, results
    store = tmp_path / "real.zarr"
    store.mkdir()
    (tmp_path / "link.zarr").symlink_to(store)
    assert lock_path(tmp_path / "link.zarr") == lock_path(store)


@pytest.mark.parametrize("array", ["psf_grid", "origin", "split"])
def test_damaged_static_arrays_are_named_by_verify_and_refused_by_export(ref, tmp_path, capsys, array):
    """The arrays written once at creation (PSF grid, origins, splits) have their own digests: a still-decodable
    rewrite (the reviewer's case: origin[0] moved, every split code set to test) is caught, not exported."""
    d = _copy(ref, tmp_path)
    g = zarr.open_group(str(d), mode="r+", use_consolidated=False)
    if array == "psf_grid":
        g[array][0, 0, 0, 0] = g[array][0, 0, 0, 0] + 1.0
    elif array == "origin":
        g[array][0] = g[array][1]
    else:
        g[array][:] = 2
    r = verify_dataset(d)
    assert not r.ok and array in r.static
    assert main(["verify", str(d)]) == 1
    assert f"array {array}: content differs" in capsys.readouterr().out
    with pytest.raises(psfsim.PsfsimError, match=f"array {array}: content differs"):
        export_hdf5(d, tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()


def test_read_flags_reads_damaged_and_invalid_flags_as_not_done():
    """Reference: the flags written by hand. A whole-array read that fails falls back to one flag at a time; a
    flag that cannot be read, or is neither 0 nor 1, reads 0 and is reported damaged (1-D and grid-shaped)."""
    import numpy as np

    from psfsim.integrity import read_flags

    class Damaged:
        def __init__(self, a, broken):
            self.a, self.broken = a, broken

        def __getitem__(self, idx):
            if idx is Ellipsis or idx == self.broken:
                raise OSError("zstd: corrupted block")
            return self.a[idx]

    a = np.array([[1, 0, 2], [1, 1, 0]], np.uint8)
    flags, damaged = read_flags(a, (2, 3))
    assert flags.tolist() == [[1, 0, 0], [1, 1, 0]] and damaged.tolist() == [[False, False, True], [False] * 3]
    flags, damaged = read_flags(Damaged(a, (1, 0)), (2, 3))
    assert flags.tolist() == [[1, 0, 0], [0, 1, 0]] and np.argwhere(damaged).tolist() == [[0, 2], [1, 0]]
    flags, damaged = read_flags(Damaged(np.array([1, 1, 0, 1]), (3,)), (4,))
    assert flags.tolist() == [1, 1, 0, 0] and np.flatnonzero(damaged).tolist() == [3]
