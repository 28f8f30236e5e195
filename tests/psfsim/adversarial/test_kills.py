"""Kills and concurrent writers, with real processes: ``psfsim simulate --workers 2`` on a tiny lens (400 samples
of 32 x 32, 8 blocks of 50, ~5 s on 2 shared cores).

* SIGKILL / SIGTERM to the main process only (what ``kill PID``, ``timeout`` and batch schedulers do): no worker
  survives it and ``done`` stops changing; SIGTERM is a clean stop (message, exit 143, lock released).
* A second writer (same arguments, or ``--overwrite`` with another seed) is refused with exit 2 naming the first;
  the store ends equal to a clean run.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from ..conftest import TINY_TOML

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _start(tmp_path, out, *extra, workers="2", n="400"):
    lens = tmp_path / "tiny.toml"
    lens.write_text(TINY_TOML)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "psfsim.cli", "simulate", "--lens", str(lens), "--source", "stars", "--n", n,
           "--size", "32,32", "--out", str(out), "--workers", workers, "--photons", "100", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _done(out) -> int:
    try:
        return int(np.sum(zarr.open_group(str(out), mode="r", use_consolidated=False)["done"][:] == 1))
    except Exception:  # noqa: BLE001 - not created yet
        return -1


def _wait(pred, timeout=60.0):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if pred():
            return True
        time.sleep(0.05)
    return False


def _children(pid) -> set[int]:
    out = set()
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out |= {int(x) for x in f.read().split()}
    except OSError:
        pass
    return out


def _alive(pid) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_kill_main_process_only_leaves_nothing_running(tmp_path, sig):
    out = tmp_path / "d.zarr"
    p = _start(tmp_path, out)
    kids: set[int] = set()
    try:
        assert _wait(lambda: _done(out) >= 1), p.communicate()
        kids = _children(p.pid)
        assert kids, "expected worker processes"
        os.kill(p.pid, sig)
        rc = p.wait(timeout=30)
        assert _wait(lambda: not any(_alive(k) for k in kids), timeout=10), "workers outlived their parent"
        n = _done(out)
        time.sleep(1.0)
        assert _done(out) == n < 8  # nothing writes any more
        if sig == signal.SIGTERM:
            assert rc == 143 and "terminated (SIGTERM)" in p.stderr.read()
        assert not (tmp_path / ".d.zarr.lock").exists() or sig == signal.SIGKILL
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for k in kids:  # a failed test leaves no orphan behind
            if _alive(k):
                os.kill(k, signal.SIGKILL)


def test_sigterm_in_process_stops_between_blocks(tmp_path):
    """``--workers 1``: SIGTERM takes effect after the running block: exit 143, one message, no traceback, and
    every block marked done verifies."""
    from psfsim.dataset import verify_dataset

    out = tmp_path / "d.zarr"
    p = _start(tmp_path, out, workers="1", n="3000")
    try:
        assert _wait(lambda: _done(out) >= 2), p.communicate()
        os.kill(p.pid, signal.SIGTERM)
        assert p.wait(timeout=30) == 143
        err = p.stderr.read()
        assert "terminated (SIGTERM)" in err and "Traceback" not in err and "Task" not in err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    r = verify_dataset(out)
    assert r.ok and 2 <= r.written < r.n_blocks and not (tmp_path / ".d.zarr.lock").exists()


@pytest.mark.slow
def test_second_writer_is_refused_and_the_store_equals_a_clean_run(tmp_path):
    out = tmp_path / "d.zarr"
    first = _start(tmp_path, out)
    try:
        assert _wait(lambda: (tmp_path / ".d.zarr.lock").exists() and _done(out) >= 0)
        os.kill(first.pid, signal.SIGSTOP)  # the first writer is alive and holds the lock however fast it runs
        try:
            for extra in ((), ("--overwrite", "--seed", "8")):
                second = _start(tmp_path, out, *extra)
                _, err = second.communicate(timeout=60)
                assert second.returncode == 2 and f"another writer holds it: PID {first.pid} " in err, err
                assert err.count("\n") == 1
        finally:
            os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=120) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    clean = tmp_path / "clean" / "d.zarr"
    clean.parent.mkdir()
    (tmp_path / "clean" / "tiny.toml").write_text(TINY_TOML)
    assert _start(tmp_path / "clean", clean).wait(timeout=120) == 0
    a, b = zarr.open_group(str(out), mode="r"), zarr.open_group(str(clean), mode="r")
    for k in ("sharp", "blurred", "wiener", "wiener_sv", "origin", "digest"):
        np.testing.assert_array_equal(a[k][:], b[k][:])
    assert json.loads((out / "zarr.json").read_text())["attributes"]["spec"]["seed"] == 0
