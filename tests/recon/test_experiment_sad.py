"""``recon experiment sad`` (the PAFU paper's Spatially Adaptive Dataset): the data generator against
scipy.ndimage morphology (an independent reference), the PAFU layer's exact minimal solution built by hand, and
the command end to end: table, figures, verdicts, resume unit by unit, settings mismatch refused."""

import json
import shutil

import numpy as np
import pytest
import torch
from scipy import ndimage

from recon.cli import main
from recon.experiments import sad
from recon.models import build_model


def _batch(variant, n=6, seed=0):
    return sad.sad_batch(n, generator=torch.Generator().manual_seed(seed), variant=variant)


@pytest.mark.parametrize("variant", ["fixed", "shifted"])
def test_target_is_the_5x5_dilation_of_the_black_pixels_by_scipy(variant):
    """Reference: scipy.ndimage.binary_dilation of the black pixels by a 5 x 5 square gives the black squares,
    and grey_erosion (the 5 x 5 minimum) is 0 exactly where the target is black; elsewhere the target is x."""
    x, y, mask = _batch(variant)
    for i in range(x.shape[0]):
        xi, yi, mi = x[i, 0].numpy(), y[i, 0].numpy(), mask[i, 0].numpy()
        dil = ndimage.binary_dilation(xi == 0, structure=np.ones((5, 5), bool))
        np.testing.assert_array_equal(mi, dil)
        ero = ndimage.grey_erosion(xi, size=(5, 5), mode="constant", cval=1.0)
        np.testing.assert_array_equal(yi, np.where(ero == 0, 0.0, xi).astype(np.float32))
        assert dil.mean() > 0.2  # not vacuous: about a third of the pixels are black in the target


@pytest.mark.parametrize("variant", ["fixed", "shifted"])
def test_black_pixels_lie_on_a_regular_grid_inside_the_central_87x87(variant):
    x, _, _ = _batch(variant)
    assert x.shape == (6, 1, 89, 89) and x.dtype == torch.float32
    grids = []
    for i in range(x.shape[0]):
        r, c = np.nonzero(x[i, 0].numpy() == 0)
        assert r.min() >= 1 and r.max() <= 87 and c.min() >= 1 and c.max() <= 87
        rows, cols = np.unique(r), np.unique(c)
        assert len(r) == len(rows) * len(cols)  # a full Cartesian grid
        assert set(np.diff(rows)) == {8} and set(np.diff(cols)) == {8}
        # the grid fills the central square: no room for another row or column
        assert rows[0] - 8 < 1 and rows[-1] + 8 > 87 and cols[0] - 8 < 1 and cols[-1] + 8 > 87
        grids.append((tuple(rows), tuple(cols)))
    noise = x[x != 0]
    assert noise.min() > 0 and noise.max() <= 1
    if variant == "fixed":
        assert set(grids) == {(tuple(range(4, 85, 8)),) * 2}  # centred: 4 .. 84, the same in every sample
    else:
        assert len(set(grids)) > 1  # the phase is drawn per sample


def test_generator_is_seeded_and_checks_its_arguments():
    a, b = _batch("shifted", seed=4), _batch("shifted", seed=4)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert not torch.equal(a[0], _batch("shifted", seed=5)[0])
    g = torch.Generator()
    with pytest.raises(Exception, match="variant = 'moving'"):
        sad.sad_batch(1, generator=g, variant="moving")
    with pytest.raises(Exception, match="square = 4"):
        sad.sad_batch(1, generator=g, square=4)


@pytest.mark.slow
def test_one_pafu_layer_represents_the_target_exactly_away_from_the_edge():
    """The paper's minimal solution built by hand in recon's PAFU layer: a Dirac and a zero 5 x 5 kernel, and a
    scorer whose 25 hidden units each fire when one pixel of the 5 x 5 neighbourhood is (nearly) black. It gives
    the target exactly wherever the neighbourhood is inside the image (at the edge zero padding looks black)."""
    x, y, _ = _batch("shifted", n=2, seed=1)
    eps = float(x[x > 0].min()) / 2
    model = build_model("pafu_net", scorer_hidden=25).eval()
    p = model.pafu
    with torch.no_grad():
        p.weight.zero_()
        p.weight[0, 0, 2, 2] = 1.0  # kernel 0: Dirac; kernel 1: zero
        p.bias.zero_()
        conv1, _, conv2 = p.scorer
        conv1.weight.zero_()
        for j in range(25):
            conv1.weight[j, 0, j // 5, j % 5] = -1.0
        conv1.bias.fill_(eps)  # unit j: relu(eps - x at offset j) > 0 iff that pixel is black
        conv2.weight.zero_()
        conv2.weight[1, :, 0, 0] = 1.0
        conv2.bias.copy_(torch.tensor([eps / 2, 0.0]))  # zero kernel iff some unit fires
        out = model(x)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    torch.testing.assert_close(out[inner], y[inner], rtol=0, atol=0)
    k = sad.pafu_kernels(model)
    assert k["minimal"] and (k["dirac_index"], k["zero_index"]) == (0, 1) and k["dirac_error"] == 0


def test_pafu_kernels_measures_the_distance_to_the_minimal_solution():
    model = build_model("pafu_net")
    with torch.no_grad():
        model.pafu.weight.zero_()
        model.pafu.bias.zero_()
        model.pafu.weight[1, 0, 2, 2] = 0.85  # kernel 1: a Dirac scaled by 0.85
        model.pafu.weight[0, 0, 0, 4] = 0.05  # kernel 0: nearly zero
    k = sad.pafu_kernels(model)
    assert (k["dirac_index"], k["zero_index"]) == (1, 0)
    assert k["dirac_error"] == pytest.approx(0.15) and k["zero_error"] == pytest.approx(0.05)
    assert not k["minimal"]  # 0.15 > KERNEL_TOL


# -- the command end to end --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sad") / "quick"
    assert main(["experiment", "sad", "--quick", "--out", str(out), "--device", "cpu"]) == 0
    return out


@pytest.mark.slow
def test_quick_run_writes_table_figures_and_verdicts(quick_run, capsys):
    out = quick_run
    for name in ("sad.md", "sad.csv", "claims.md", "sad_errors.png", "sad_fixed.png", "sad_shifted.png",
                 "experiment.json"):
        assert (out / name).is_file(), name
    table = (out / "sad.md").read_text()
    for label in ("identity (the input)", "FCNN", "residual FCNN", "CoordGate", "PAFU"):
        assert label in table
    rows = (out / "sad.csv").read_text().splitlines()
    assert rows[0].startswith("variant,model,params") and len(rows) == 1 + 2 * 5
    claims = (out / "claims.md").read_text()
    assert "Dirac" in claims and claims.count("**held**") + claims.count("**did not hold**") == 5
    recs = sorted((out / "units").glob("*.json"))
    assert len(recs) == 8 and len(list((out / "units").glob("*.pt"))) == 8
    rec = json.loads((out / "units" / "shifted__pafu_net__seed0.json").read_text())
    assert rec["seed"] == 0 and 0 <= rec["pafu"]["selection_agreement"] <= 1 and rec["curve"][-1][0] == 20
    settings = json.loads((out / "experiment.json").read_text())["settings"]
    assert settings["quick"] is True and settings["seeds"] == 1
    # the models were compared at about equal parameter counts
    params = [json.loads(p.read_text())["params"] for p in recs]
    assert max(params) / min(params) < 1.15


def _no_time(csv_text):
    return [line.rsplit(",", 1)[0] for line in csv_text.splitlines()]


@pytest.mark.slow
def test_resume_skips_finished_units_and_reruns_only_a_missing_one(quick_run, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(quick_run, out)
    before = (out / "sad.csv").read_text()
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "units").iterdir()}
    res = sad.run(out, quick=True, device="cpu", progress=False)
    assert res.computed == [] and len(res.reused) == 8
    assert (out / "sad.csv").read_text() == before
    assert {p.name: p.stat().st_mtime_ns for p in (out / "units").iterdir()} == stamps
    (out / "units" / "fixed__res_fcnn__seed0.json").unlink()
    res = sad.run(out, quick=True, device="cpu", progress=False)
    assert res.computed == ["fixed/res_fcnn/seed0"]
    after = {p.name: p.stat().st_mtime_ns for p in (out / "units").iterdir()}
    changed = {n for n in after if after[n] != stamps.get(n)}
    assert changed == {"fixed__res_fcnn__seed0.json", "fixed__res_fcnn__seed0.pt"}
    # seeded: the re-run unit reproduces its numbers, so the table is the same (CPU), its run time aside
    assert _no_time((out / "sad.csv").read_text()) == _no_time(before)
    assert "0 unit(s) computed" in sad.run(out, quick=True, device="cpu", progress=False).summary()


@pytest.mark.slow
def test_other_settings_in_the_same_folder_are_refused_with_exit_2(quick_run, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(quick_run, out)
    capsys.readouterr()
    assert main(["experiment", "sad", "--quick", "--seeds", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("recon: error: --out") and "--overwrite" in err and len(err.splitlines()) == 1
    assert len(list((out / "units").glob("*.json"))) == 8  # nothing removed


def test_bad_options_exit_2_with_one_line(tmp_path, capsys):
    assert main(["experiment", "sad", "--quick", "--steps", "0", "--out", str(tmp_path / "a")]) == 2
    assert "--steps 0: expected a whole number >= 1" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    assert main(["experiment", "sad", "--quick", "--out", str(tmp_path / "b")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "b" / "notes.txt").read_text() == "mine"
