"""Tile-local bases (``local=True``): against a direct sum of scipy convolutions, the exact operator,
adjointness (dot-product test) and the global operator."""

import pickle

import numpy as np
import pytest
from scipy.signal import fftconvolve

import psfsim
import psfsim.operators.lowrank as lr
from psfsim.errors import PsfsimError
from psfsim.operators import ExactOperator, LowRankBasis, make_operator, to_torch


def _small_psf(name: str, n: int, k: int):
    """A preset's optics on an ``n x n`` field with a ``k x k`` PSF box: several local blocks in a small window."""
    d = psfsim.load_lens(name).to_dict()
    H, W = d["field"]["shape_px"]
    if d["field"].get("axis_px") is not None:  # the relay's axis is off the frame's centre: keep it, scaled
        d["field"]["axis_px"] = [d["field"]["axis_px"][0] * n / H, d["field"]["axis_px"][1] * n / W]
    d["field"]["shape_px"] = [n, n]
    d["psf"]["size_px"] = k
    return psfsim.lens_from_dict(d, check_psf_box=False)


@pytest.fixture(scope="module")
def relay_small():
    return _small_psf("relay", 128, 17)


@pytest.fixture
def small_blocks(monkeypatch):
    """The smallest local blocks the rule allows (transforms of ``6 k``): several blocks in a small window."""
    monkeypatch.setattr(lr, "LOCAL_BLOCK_PAD", 1)


def _direct_local_sum(op, img):
    """The definition, block by block of the source: ``sum_b sum_k fftconvolve(S_b(w_bk . x), e_bk)`` cropped to
    the window ('same', centre ``k // 2``), with each block's own eigen-PSFs and coefficient maps."""
    H, W = op.shape
    k = op.k
    c = k // 2
    Wr, Wc = op.basis.spline_factors(origin=op.origin, shape=op.shape)
    out = np.zeros_like(img)
    for (E, C), (r0, r1, c0, c1) in zip(op._local, op._blocks()):
        for kk in range(len(E)):
            w = Wr @ C[:, :, kk] @ Wc.T  # (H, W) map of the block's eigen-PSF kk
            src = np.zeros_like(img)
            src[..., r0:r1, c0:c1] = (img * w)[..., r0:r1, c0:c1]
            out += fftconvolve(src, E[kk][None], mode="full")[..., c : c + H, c : c + W]
    return out


def test_local_forward_is_the_blockwise_sum_of_convolutions(relay_small, small_blocks):
    """Forward == the direct sum over source blocks of scipy.signal.fftconvolve with the block's basis (float64
    rounding), for a window off the frame's corner with blocks of unequal size."""
    op = make_operator(relay_small, shape=(120, 101), origin=(-9, 13), dtype=np.float64, allow_outside=True,
                       local=True)
    assert op.n_blocks > 1 and op.local and len(op.local_ranks) == op.n_blocks
    img = np.random.default_rng(1).random((2, 120, 101))
    np.testing.assert_allclose(op(img), _direct_local_sum(op, img), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_local_adjoint_dot_product(relay_small, small_blocks, dtype, tol):
    """<A x, y> = <x, A^T y> (dot-product test) for a multi-block window, float64 and float32."""
    op = make_operator(relay_small, shape=(128, 117), origin=(0, 5), dtype=dtype, local=True)
    assert op.n_blocks > 1
    rng = np.random.default_rng(2)
    x, y = rng.random((2, 128, 117)).astype(dtype), rng.random((2, 128, 117)).astype(dtype)
    lhs = np.vdot(op(x).astype(np.float64), y.astype(np.float64))
    rhs = np.vdot(x.astype(np.float64), op.adjoint(y).astype(np.float64))
    assert abs(lhs - rhs) / abs(lhs) < tol


def test_local_meets_the_error_target_against_the_exact_operator(relay_small, small_blocks):
    """Against ExactOperator (every source pixel spread with its own PSF): a random image and a lattice of point
    sources (the hardest input) within the 1 % target, and no worse than the global basis on the points; each
    block uses at most the global rank."""
    shape = (128, 128)
    exact = ExactOperator(relay_small, shape=shape, origin=(0, 0))
    loc = make_operator(relay_small, shape=shape, local=True, dtype=np.float64)
    glob = make_operator(relay_small, shape=shape, dtype=np.float64)
    assert loc.n_blocks > 1 and max(loc.local_ranks) <= glob.rank
    rng = np.random.default_rng(3)
    pts = np.zeros(shape)
    pts[4::9, 4::9] = 1.0
    for img in (rng.random(shape), pts):
        ref = exact(img)
        e_loc = np.linalg.norm(loc(img) - ref) / np.linalg.norm(ref)
        e_glob = np.linalg.norm(glob(img) - ref) / np.linalg.norm(ref)
        assert e_loc < 0.01
        assert e_loc < 1.25 * e_glob + 1e-4


def test_local_bases_need_fewer_eigen_psfs_on_the_relay():
    """The relay's PSF changes strongly over its field: 300 px blocks need far fewer eigen-PSFs than the whole
    field's basis (the point of the option)."""
    lens = psfsim.load_lens("relay")
    op = make_operator(lens, shape=(600, 700), origin=(0, 0), local=True)
    assert op.n_blocks >= 4
    assert np.mean(op.local_ranks) < 0.6 * op.rank


def test_local_kernel_transforms_recomputed_past_the_byte_bound(relay_small, small_blocks, monkeypatch):
    op = make_operator(relay_small, shape=(128, 128), local=True)
    img = np.random.default_rng(4).random((128, 128)).astype(np.float32)
    cached = op(img), op.adjoint(img)
    assert op._local_kft
    monkeypatch.setattr(lr, "LOCAL_KERNEL_BYTES", 0)
    op2 = make_operator(relay_small, shape=(128, 128), local=True)
    np.testing.assert_array_equal(op2(img), cached[0])
    np.testing.assert_array_equal(op2.adjoint(img), cached[1])
    assert not op2._local_kft


def test_local_operator_pickles_and_refuses_torch_and_bad_flags(relay_small, small_blocks):
    op = make_operator(relay_small, shape=(100, 90), origin=(5, 5), local=True)
    img = np.random.default_rng(5).random((100, 90)).astype(np.float32)
    op(img)
    back = pickle.loads(pickle.dumps(op))
    np.testing.assert_array_equal(back(img), op(img))
    np.testing.assert_array_equal(back.adjoint(img), op.adjoint(img))
    with pytest.raises(PsfsimError, match="local=True"):
        to_torch(op)
    with pytest.raises(PsfsimError, match="local = 'yes'"):
        make_operator(relay_small, shape=(10, 10), local="yes")


def test_local_on_a_loaded_basis(relay_small, small_blocks, tmp_path):
    """A basis saved and loaded keeps the full SVD the local bases are cut from: same operator."""
    basis = LowRankBasis.build(relay_small)
    path = basis.save(tmp_path / "b.npz")
    loaded = LowRankBasis.load(path, register=False)
    img = np.random.default_rng(6).random((128, 128)).astype(np.float32)
    a = basis.operator(shape=(128, 128), local=True)
    b = loaded.operator(shape=(128, 128), local=True)
    assert a.local_ranks == b.local_ranks
    np.testing.assert_allclose(a(img), b(img), rtol=0, atol=1e-6)


@pytest.mark.parametrize("local", [False, True])
def test_blocks_in_threads_give_the_same_bits_as_one_thread(relay_small, small_blocks, monkeypatch, local):
    """Several blocks with workers=2 run a wave of blocks in two threads: the output is bit-identical to one
    worker's (every pixel's contributions arrive in one fixed order), forward and adjoint."""
    monkeypatch.setattr(lr, "MAX_BLOCK_PAD", 1)  # the global operator's smallest blocks too
    img = np.random.default_rng(7).random((2, 300, 290)).astype(np.float32)
    ops = [make_operator(relay_small, shape=(300, 290), origin=(-80, -70), allow_outside=True, local=local,
                         workers=n) for n in (1, 2)]
    assert max(len(w) for w in ops[1]._block_waves()) >= 2 and ops[1].fft.workers == 2  # threads are used
    np.testing.assert_array_equal(ops[0](img), ops[1](img))
    np.testing.assert_array_equal(ops[0].adjoint(img), ops[1].adjoint(img))
