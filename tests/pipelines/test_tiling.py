"""Tile geometry (pipelines.tiling) against brute-force checks of its rules over random frames (hypothesis)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.errors import PipelineError
from pipelines.tiling import Tile, TileGrid, axis_reads, seam_score


@st.composite
def grids(draw):
    align = draw(st.sampled_from([1, 2, 4, 8, 16, 32]))
    tile = draw(st.integers(6, 96))
    halo = draw(st.integers(0, 60))
    H = draw(st.integers(tile, 300))
    W = draw(st.integers(tile, 300))
    return TileGrid((H, W), tile=tile, halo=halo, align=align)


@settings(max_examples=60, deadline=None)
@given(grids())
def test_every_pixel_in_exactly_one_inner_region(g):
    H, W = g.frame_shape
    count = np.zeros((H, W), np.int32)
    for t in g.tiles:
        r0, r1, c0, c1 = t.out
        block = np.zeros(t.read_shape, np.int32)
        block[t.inner] = 1  # the inner slice lies inside the read block and has the chunk's shape
        assert block.sum() == (r1 - r0) * (c1 - c0)
        count[r0:r1, c0:c1] += 1
    assert (count == 1).all()
    assert len(g) == g.grid[0] * g.grid[1]


@settings(max_examples=60, deadline=None)
@given(grids())
def test_reads_inside_frame_aligned_with_halo_and_static_shape(g):
    H, W = g.frame_shape
    a, h = g.align, g.halo
    for t in g.tiles:
        rr0, rr1, rc0, rc1 = t.read
        r0, r1, c0, c1 = t.out
        assert 0 <= rr0 <= r0 < r1 <= rr1 <= H and 0 <= rc0 <= c0 < c1 <= rc1 <= W
        assert rr0 % a == 0 and rc0 % a == 0
        # at least the halo on each side, except where the frame's edge clips it
        assert r0 - rr0 >= h or rr0 == 0
        assert rr1 - r1 >= h or rr1 == H
        assert c0 - rc0 >= h or rc0 == 0
        assert rc1 - c1 >= h or rc1 == W
        for n, (s, e), L in ((H, (rr0, rr1), g.read_shape[0]), (W, (rc0, rc1), g.read_shape[1])):
            length = e - s
            if length != L:  # the documented exception: a far-edge region ending at the frame's edge, of the
                # frame's length modulo align (read whole when the frame is too short for it)
                assert e == n and (length - n) % a == 0 and (length == L + n % a or (s == 0 and length == n))
            assert L % a == 0 or L == n


def test_static_length_is_the_least_aligned_cover():
    # brute force: the smallest multiple of align from an aligned start covering chunk + halo, over all chunks
    for n, tile, halo, align in [(1000, 128, 37, 8), (513, 64, 10, 16), (300, 100, 0, 1), (777, 50, 21, 32)]:
        _, _, L = axis_reads(n, tile=tile, halo=halo, align=align)
        need = max(((r0 - halo) % align) + tile + 2 * halo for r0 in range(0, n, tile))
        assert L == min(n, -(-need // align) * align)


def test_border_tiles_shift_inward_and_far_edge_keeps_remainder():
    g = TileGrid((100, 64), tile=32, halo=5, align=8)
    assert g.read_shape == (48, 48)
    t = g[0, 0]
    assert t.read == (0, 48, 0, 48) and t.inner == (slice(0, 32), slice(0, 32))
    last = g[3, 1]  # rows 96..100: 100 % 8 = 4 -> length 48 + 4 ending at the frame's edge
    assert last.out == (96, 100, 32, 64)
    assert last.read == (48, 100, 16, 64)
    assert last.inner == (slice(48, 52), slice(16, 48))


def test_refusals():
    with pytest.raises(PipelineError, match="smaller than one tile"):
        TileGrid((100, 50), tile=64, halo=4)
    with pytest.raises(PipelineError, match="halo"):
        TileGrid((100, 100), tile=64, halo=-1)
    with pytest.raises(PipelineError, match="align"):
        TileGrid((100, 100), tile=64, halo=1, align=0)
    assert isinstance(TileGrid((64, 64), tile=64, halo=0).tiles[0], Tile)


def test_seam_score_sees_a_seam_and_no_seam():
    rng = np.random.default_rng(0)
    # a smooth random field plus noise: no seam by construction
    yy, xx = np.mgrid[0:256, 0:256] / 256.0
    img = np.sin(7 * xx + 3 * yy) + 0.5 * np.cos(11 * yy) + 0.05 * rng.standard_normal((256, 256))
    clean = seam_score(img, 64)
    assert 0.8 < clean < 1.2
    # each 64 x 64 tile off by a random offset of ~1 noise sigma: the kind of seam per-tile statistics make
    offsets = np.kron(0.05 * rng.standard_normal((4, 4)), np.ones((64, 64)))
    assert seam_score(img + offsets, 64) > 1.5
    assert seam_score(img + offsets, 64) > 1.3 * clean
    assert seam_score(img[:60, :60], 64) == 1.0  # no interior border
