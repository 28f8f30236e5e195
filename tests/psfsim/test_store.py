"""psfsim.store: outputs land whole (all of them or none), under the usual file mode, never via a planted link."""

import os
import stat

import pytest

from psfsim.errors import PsfsimError
from psfsim.store import atomic_dir, atomic_file, atomic_outputs, check_output


def test_outputs_land_together_or_not_at_all(tmp_path):
    a, b = tmp_path / "img.npy", tmp_path / "img.npy.json"
    with atomic_outputs(a, b) as (ta, tb):
        ta.write_text("A")
        tb.write_text("B")
        assert not a.exists() and not b.exists()  # nothing visible until the block succeeds
    assert a.read_text() == "A" and b.read_text() == "B"
    with pytest.raises(RuntimeError):
        with atomic_outputs(a, b) as (ta, tb):
            ta.write_text("A2")
            raise RuntimeError("the sidecar failed")
    assert a.read_text() == "A" and b.read_text() == "B"  # the old pair, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.npy", "img.npy.json"]  # no temporaries left


def test_mode_follows_the_umask_and_links_are_not_followed(tmp_path, monkeypatch):
    import tempfile

    out = tmp_path / "x.txt"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    # a link planted at the first temporary name psfsim will try: created exclusively, so it moves on
    (tmp_path / ".x.txt.AAAA.tmp.txt").symlink_to(victim)
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: iter(["AAAA", "BBBB"]))
    old = os.umask(0o022)
    try:
        with atomic_file(out) as t:
            assert t.name == ".x.txt.BBBB.tmp.txt"
            t.write_text("new")
    finally:
        os.umask(old)
    assert out.read_text() == "new" and stat.S_IMODE(out.stat().st_mode) == 0o644
    assert victim.read_text() == "keep"


def test_atomic_dir_and_check_output(tmp_path):
    d = tmp_path / "store.zarr"
    with atomic_dir(d) as t:
        (t / "a").write_text("1")
    assert (d / "a").read_text() == "1"
    with pytest.raises(PsfsimError, match="exists"):
        with atomic_dir(d) as t:
            pass
    with atomic_dir(d, replace=True) as t:
        (t / "b").write_text("2")
    assert sorted(p.name for p in d.iterdir()) == ["b"]
    with pytest.raises(PsfsimError, match="is a folder"):
        check_output(d)
    with pytest.raises(PsfsimError, match="does not exist"):
        check_output(tmp_path / "nope" / "x.npy")
    (tmp_path / "y.npy").write_text("")
    with pytest.raises(PsfsimError, match="use --overwrite"):
        check_output(tmp_path / "y.npy", overwrite=False)
