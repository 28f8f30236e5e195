"""The batch and torch forms of field_coords against the one-window form (and the convention's formula)."""

import numpy as np
import pytest
import torch

import psfsim
from psfsim.field import field_coords, field_coords_batch, field_coords_torch, grid_positions


@pytest.fixture(scope="module")
def relay():
    """Decentred optical axis: the formula's axis offset is exercised."""
    return psfsim.load_lens("relay", check_psf_box=False)


def test_batch_form_equals_one_window_at_a_time(relay):
    origins = np.array([[0, 0], [100, 900], [37, 5]])
    b = field_coords_batch(relay, origins=origins, shape=(8, 6), dtype=np.float64)
    assert b.shape == (3, 2, 8, 6) and b.dtype == np.float64
    for i, o in enumerate(origins):
        np.testing.assert_array_equal(b[i], field_coords(relay, origin=tuple(o), shape=(8, 6)))
    # the convention written out: x = (col - col0) / R, y = (row - row0) / R
    g = relay.field
    r0, c0 = g.axis_px
    assert b[1, 0, 2, 3] == pytest.approx((900 + 3 - c0) / g.half_diagonal_px, abs=1e-15)
    assert b[1, 1, 2, 3] == pytest.approx((100 + 2 - r0) / g.half_diagonal_px, abs=1e-15)
    assert field_coords_batch(relay, origins=origins, shape=(8, 6)).dtype == np.float32


def test_torch_form_equals_numpy_on_the_tensor_device(relay):
    origins = torch.tensor([[0, 0], [100, 900], [37, 5]])
    t = field_coords_torch(relay, origins=origins, shape=(8, 6), dtype=torch.float64)
    assert t.device == origins.device and t.dtype == torch.float64 and t.shape == (3, 2, 8, 6)
    np.testing.assert_allclose(t.numpy(), field_coords_batch(relay, origins=origins.numpy(), shape=(8, 6), dtype=np.float64),
                               rtol=0, atol=1e-15)
    assert field_coords_torch(relay, origins=[[1, 2]], shape=(4, 4)).dtype == torch.float32


def test_batch_forms_check_every_window(relay):
    H, W = relay.field.shape_px
    with pytest.raises(psfsim.PsfsimError, match=rf"origin \(0, {W - 5}\) does not fit"):
        field_coords_batch(relay, origins=[[0, 0], [0, W - 5]], shape=(8, 6))
    with pytest.raises(psfsim.PsfsimError, match=r"expected \(B, 2\)"):
        field_coords_batch(relay, origins=[0, 0], shape=(8, 6))
    with pytest.raises(psfsim.PsfsimError, match="whole numbers"):
        field_coords_torch(relay, origins=torch.tensor([[0.5, 0.0]]), shape=(8, 6))
    c = field_coords_batch(relay, origins=[[-2, W - 3]], shape=(4, 6), allow_outside=True, dtype=np.float64)
    np.testing.assert_array_equal(c[0], field_coords(relay, origin=(-2, W - 3), shape=(4, 6), allow_outside=True))


def test_grid_positions_one_rule():
    np.testing.assert_array_equal(grid_positions(3, 101), [0.0, 50.0, 100.0])
    np.testing.assert_array_equal(grid_positions(1, 101), [50.0])
    with pytest.raises(psfsim.PsfsimError):
        grid_positions(0, 10)


def test_max_radius_is_the_corner_pixels_field_radius():
    """FieldGeometry.max_radius against field_coords of the four corner pixels (brute force), centred and
    off-centre axes."""
    import copy

    import numpy as np

    import psfsim

    from .conftest import BASE

    for axis in (None, [10.0, 200.0]):
        d = copy.deepcopy(BASE)
        if axis:
            d["field"]["axis_px"] = axis
        lens = psfsim.lens_from_dict(d)
        H, W = lens.field.shape_px
        want = max(float(np.hypot(*psfsim.field_coords(lens, origin=o, shape=(1, 1)).ravel()))
                   for o in ((0, 0), (0, W - 1), (H - 1, 0), (H - 1, W - 1)))
        assert lens.field.max_radius == pytest.approx(want, rel=1e-12)
