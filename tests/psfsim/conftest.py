import copy

import pytest

from psfsim import lens_from_dict

BASE = {
    "name": "test",
    "optics": {"wavelength_nm": 520.0, "na": 0.4, "pixel_pitch_um": 0.325},
    "field": {"shape_px": [256, 256]},
    "psf": {"size_px": 33, "oversample": 4},
}


#: A small, well-sampled lens file (64 x 64 field): CLI tests write it as lens.toml.
SMALL_LENS_TOML = """\
name = "small"
[optics]
wavelength_nm = 520.0
na = 0.4
pixel_pitch_um = 0.325
[field]
shape_px = [64, 64]
[psf]
size_px = 33
oversample = 4
"""


#: A tiny lens (32 x 32 field, 17 px box) for subprocess tests of simulate (stores in a second).
TINY_TOML = """name = "tiny"
[optics]
wavelength_nm = 520.0
na = 0.4
pixel_pitch_um = 0.325
[field]
shape_px = [32, 32]
[psf]
size_px = 17
oversample = 2
pupil_samples = 32
"""


def make_lens(check_psf_box=True, **sections):
    """A lens from BASE with sections overridden: make_lens(seidel={"W220": 0.5}, optics={"na": 0.3})."""
    d = copy.deepcopy(BASE)
    for k, v in sections.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            d[k].update(v)
        else:
            d[k] = v
    return lens_from_dict(d, check_psf_box=check_psf_box)


@pytest.fixture
def lens_factory():
    return make_lens


def preset_on_field(name: str, n: int):
    """A preset's optics on an ``n x n`` field: the blur changes strongly across a small image (fast tests)."""
    import psfsim

    d = psfsim.load_lens(name).to_dict()
    d["field"]["shape_px"] = [n, n]
    return psfsim.lens_from_dict(d)
