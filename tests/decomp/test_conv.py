"""Conv kernel factorisations: exact at full rank, monotone in rank, and the factor
shapes compose as the documented conv chains (checked with a direct conv)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from onnxprune.decomp import (
    cp,
    cp_relative_error,
    reconstruct_cp,
    reconstruct_spatial,
    reconstruct_tucker2,
    relative_error,
    spatial_svd,
    tucker2,
    tucker2_ranks,
)
from onnxprune.errors import UsageError

FAST = settings(derandomize=True, max_examples=30, deadline=None)

kernels = st.tuples(
    st.integers(1, 12), st.integers(1, 12), st.integers(1, 5), st.integers(1, 5), st.integers(0, 2**16)
)


def _kernel(shape: tuple[int, int, int, int], seed: int, dtype: type = np.float64) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _conv(x: np.ndarray, w: np.ndarray, groups: int = 1) -> np.ndarray:
    """Cross-correlation like ONNX Conv, stride 1, no padding: x [C,H,W], w [O,C/g,kh,kw]."""
    kh, kw = w.shape[2:]
    win = sliding_window_view(x, (kh, kw), axis=(1, 2))  # [C, H', W', kh, kw]
    if groups == 1:
        return np.einsum("oiyx,ihwyx->ohw", w, win)
    assert groups == x.shape[0] == w.shape[0] and w.shape[1] == 1
    return np.einsum("cyx,chwyx->chw", w[:, 0], win)


def _pad(x: np.ndarray, ph: int, pw: int) -> np.ndarray:
    return np.pad(x, ((0, 0), (ph, ph), (pw, pw)))


# --- Tucker-2 ---------------------------------------------------------------------

@FAST
@given(kernels, st.sampled_from(["hosvd", "hooi"]))
def test_tucker2_full_rank_is_exact(k: tuple[int, ...], method: str) -> None:
    cout, cin, kh, kw, seed = k
    W = _kernel((cout, cin, kh, kw), seed)
    t = tucker2(W, cout, cin, method=method)
    assert t.first.shape == (cin, cin, 1, 1)
    assert t.core.shape == (cout, cin, kh, kw)
    assert t.last.shape == (cout, cout, 1, 1)
    np.testing.assert_allclose(reconstruct_tucker2(t), W, atol=1e-10)


@FAST
@given(kernels)
def test_tucker2_error_monotone_in_rank(k: tuple[int, ...]) -> None:
    cout, cin, kh, kw, seed = k
    W = _kernel((cout, cin, kh, kw), seed)
    rng = np.random.default_rng(seed)
    rank_in = int(rng.integers(1, cin + 1))
    previous = np.inf
    for rank_out in range(1, cout + 1):
        t = tucker2(W, rank_out, rank_in)
        assert t.first.shape == (rank_in, cin, 1, 1)
        assert t.core.shape == (rank_out, rank_in, kh, kw)
        assert t.last.shape == (cout, rank_out, 1, 1)
        err = relative_error(W, reconstruct_tucker2(t))
        assert err <= previous + 1e-12
        previous = err
        # HOOI starts from the HOSVD and only improves it.
        hooi = tucker2(W, rank_out, rank_in, method="hooi")
        assert relative_error(W, reconstruct_tucker2(hooi)) <= err + 1e-9


def test_tucker2_factors_are_orthonormal_and_recover_multilinear_rank() -> None:
    rng = np.random.default_rng(0)
    core = rng.standard_normal((3, 2, 3, 3))
    W = np.einsum("oa,abyx,ib->oiyx", rng.standard_normal((10, 3)), core, rng.standard_normal((7, 2)))
    t = tucker2(W, 3, 2)
    first, last = t.first[:, :, 0, 0], t.last[:, :, 0, 0]
    np.testing.assert_allclose(first @ first.T, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(last.T @ last, np.eye(3), atol=1e-12)
    assert relative_error(W, reconstruct_tucker2(t)) < 1e-12
    assert relative_error(W, reconstruct_tucker2(tucker2(W, 2, 2))) > 1e-3


def test_tucker2_chain_is_the_conv() -> None:
    # 1x1 -> kxk (carries the padding) -> 1x1 equals one kxk conv with the rebuilt kernel.
    rng = np.random.default_rng(1)
    W = rng.standard_normal((6, 5, 3, 2))
    x = rng.standard_normal((5, 9, 8))
    t = tucker2(W, 4, 3)
    y = _conv(_pad(_conv(x, t.first), 1, 1), t.core)
    y = _conv(y, t.last)
    np.testing.assert_allclose(y, _conv(_pad(x, 1, 1), reconstruct_tucker2(t)), atol=1e-10)


def test_tucker2_keeps_float32() -> None:
    W = _kernel((8, 4, 3, 3), 0, np.float32)
    t = tucker2(W, 8, 4)
    assert all(a.dtype == np.float32 for a in t)
    np.testing.assert_allclose(reconstruct_tucker2(t), W, atol=1e-5)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((0, 2), {}), ((9, 2), {}), ((2, 5), {}), ((2.5, 2), {}), ((2, 2), {"method": "svd"})],
)
def test_tucker2_rejects_bad_arguments(args: tuple, kwargs: dict) -> None:
    with pytest.raises(UsageError):
        tucker2(_kernel((8, 4, 3, 3), 0), *args, **kwargs)


def test_tucker2_rejects_non_kernel() -> None:
    with pytest.raises(UsageError):
        tucker2(np.ones((3, 3)), 1, 1)


# --- Tucker-2 ranks ---------------------------------------------------------------

def _tucker_kernel(
    cout: int, cin: int, k: int, r_out: int, r_in: int, seed: int, noise: float
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    core = rng.standard_normal((r_out, r_in, k, k))
    W = np.einsum(
        "oa,abyx,ib->oiyx", rng.standard_normal((cout, r_out)), core, rng.standard_normal((cin, r_in))
    )
    return W + noise * np.std(W) * rng.standard_normal(W.shape)


@pytest.mark.parametrize("seed", range(4))
def test_tucker2_ranks_vbmf_finds_multilinear_rank(seed: int) -> None:
    W = _tucker_kernel(64, 32, 3, 6, 4, seed, noise=0.05)
    assert tucker2_ranks(W, "vbmf") == (6, 4)


def test_tucker2_ranks_vbmf_at_least_one_on_noise() -> None:
    W = np.random.default_rng(0).standard_normal((16, 8, 3, 3))
    assert tucker2_ranks(W, "vbmf") == (1, 1)


def test_tucker2_ranks_energy_and_fraction() -> None:
    W = _tucker_kernel(10, 7, 3, 3, 2, 0, noise=0.0)
    assert tucker2_ranks(W, "energy", 1.0) == (3, 2)
    assert tucker2_ranks(W, "energy", 1e-6) == (1, 1)
    assert tucker2_ranks(W, "fraction", 0.5) == (5, 4)
    assert tucker2_ranks(W, "fraction", 1.0) == (10, 7)


@pytest.mark.parametrize(
    ("rule", "value"), [("vbmf", 0.5), ("energy", None), ("fraction", 1.5), ("svd", 0.5)]
)
def test_tucker2_ranks_rejects_bad_rule_or_value(rule: str, value: float | None) -> None:
    with pytest.raises(UsageError):
        tucker2_ranks(_kernel((4, 4, 3, 3), 0), rule, value)


# --- CP ---------------------------------------------------------------------------

def _cp_kernel(shape: tuple[int, int, int, int], rank: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    factors = [rng.standard_normal((d, rank)) for d in shape]
    return np.einsum("or,ir,yr,xr->oiyx", *factors)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("shape", [(8, 6, 3, 3), (5, 7, 5, 1), (12, 4, 2, 4)])
def test_cp_recovers_exact_rank_tensor(shape: tuple[int, int, int, int], seed: int) -> None:
    W = _cp_kernel(shape, 4, seed)
    f = cp(W, 4, seed=seed)
    cout, cin, kh, kw = shape
    assert f.first.shape == (4, cin, 1, 1)
    assert f.vertical.shape == (4, 1, kh, 1)
    assert f.horizontal.shape == (4, 1, 1, kw)
    assert f.last.shape == (cout, 4, 1, 1)
    assert cp_relative_error(W, f) < 1e-5
    # Over-parametrised: still fits.
    assert cp_relative_error(W, cp(W, 5, seed=seed)) < 1e-4


def test_cp_underfits_below_rank_and_weights_go_last() -> None:
    W = _cp_kernel((8, 6, 3, 3), 4, 0)
    f = cp(W, 2)
    assert cp_relative_error(W, f) > 1e-2
    # Unit-norm columns everywhere but the last factor, which carries lambda.
    for a in (f.first[:, :, 0, 0], f.vertical[:, 0, :, 0], f.horizontal[:, 0, 0, :]):
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-10)


def test_cp_chain_is_the_conv() -> None:
    # 1x1 -> kh x 1 depthwise (vertical pads) -> 1 x kw depthwise (horizontal pads) -> 1x1.
    rng = np.random.default_rng(2)
    W = rng.standard_normal((6, 5, 3, 5))
    x = rng.standard_normal((5, 9, 8))
    f = cp(W, 7, n_iter_max=50)
    r = f.first.shape[0]
    z = _conv(x, f.first)
    z = _conv(_pad(z, 1, 0), f.vertical, groups=r)
    z = _conv(_pad(z, 0, 2), f.horizontal, groups=r)
    y = _conv(z, f.last)
    np.testing.assert_allclose(y, _conv(_pad(x, 1, 2), reconstruct_cp(f)), atol=1e-10)


@FAST
@given(kernels)
def test_cp_any_shape_gives_valid_factors(k: tuple[int, ...]) -> None:
    cout, cin, kh, kw, seed = k
    W = _kernel((cout, cin, kh, kw), seed)
    max_rank = W.size // max(W.shape)
    rank = int(np.random.default_rng(seed).integers(1, min(max_rank, 6) + 1))
    f = cp(W, rank, n_iter_max=20, seed=seed)
    assert f.first.shape == (rank, cin, 1, 1)
    assert f.vertical.shape == (rank, 1, kh, 1)
    assert f.horizontal.shape == (rank, 1, 1, kw)
    assert f.last.shape == (cout, rank, 1, 1)
    # Every ALS step is a least-squares fit, never worse than a zero factor.
    assert cp_relative_error(W, f) <= 1 + 1e-9
    with pytest.raises(UsageError):
        cp(W, max_rank + 1)


def test_cp_rejects_bad_arguments() -> None:
    W = _kernel((4, 4, 3, 3), 0)
    for bad in (0, -1, 1.5, 37):
        with pytest.raises(UsageError):
            cp(W, bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        cp(W, 2, init="nvecs")


def test_cp_keeps_float32() -> None:
    W = _cp_kernel((6, 4, 3, 3), 2, 0).astype(np.float32)
    f = cp(W, 2)
    assert all(a.dtype == np.float32 for a in f)
    assert cp_relative_error(W, f) < 1e-4


# --- spatial SVD ------------------------------------------------------------------

@FAST
@given(kernels)
def test_spatial_svd_full_rank_is_exact(k: tuple[int, ...]) -> None:
    cout, cin, kh, kw, seed = k
    W = _kernel((cout, cin, kh, kw), seed)
    full = min(cin * kh, cout * kw)
    f = spatial_svd(W, full)
    assert f.vertical.shape == (full, cin, kh, 1)
    assert f.horizontal.shape == (cout, full, 1, kw)
    np.testing.assert_allclose(reconstruct_spatial(f), W, atol=1e-10)


@FAST
@given(kernels)
def test_spatial_svd_error_is_eckart_young(k: tuple[int, ...]) -> None:
    cout, cin, kh, kw, seed = k
    W = _kernel((cout, cin, kh, kw), seed)
    s = np.linalg.svd(W.transpose(1, 2, 0, 3).reshape(cin * kh, cout * kw), compute_uv=False)
    previous = np.inf
    for rank in range(1, s.size + 1):
        err = relative_error(W, reconstruct_spatial(spatial_svd(W, rank)))
        expected = np.sqrt(np.sum(s[rank:] ** 2) / np.sum(s**2))
        assert err == pytest.approx(expected, abs=1e-9)
        assert err <= previous + 1e-12
        previous = err


def test_spatial_svd_separable_kernel_is_rank_one() -> None:
    # W[o,i,y,x] = a[i,y] b[o,x]: one intermediate channel suffices.
    rng = np.random.default_rng(3)
    W = np.einsum("iy,ox->oiyx", rng.standard_normal((4, 3)), rng.standard_normal((5, 3)))
    assert relative_error(W, reconstruct_spatial(spatial_svd(W, 1))) < 1e-12


def test_spatial_svd_chain_is_the_conv() -> None:
    rng = np.random.default_rng(4)
    W = rng.standard_normal((6, 5, 3, 5))
    x = rng.standard_normal((5, 9, 8))
    f = spatial_svd(W, 4)
    y = _conv(_pad(_conv(_pad(x, 1, 0), f.vertical), 0, 2), f.horizontal)
    np.testing.assert_allclose(y, _conv(_pad(x, 1, 2), reconstruct_spatial(f)), atol=1e-10)


def test_spatial_svd_rejects_bad_rank() -> None:
    W = _kernel((4, 3, 3, 3), 0)
    for bad in (0, 10, 2.5):
        with pytest.raises(UsageError):
            spatial_svd(W, bad)  # type: ignore[arg-type]
