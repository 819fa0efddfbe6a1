"""MatMul weight approximations: low rank, diagonal, diagonal plus low rank."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxprune.decomp import (
    apply_diagonal,
    diagonal,
    diagonal_matrix,
    diagonal_plus_lowrank,
    diagonal_plus_lowrank_steps,
    lowrank_svd,
    reconstruct_diag_lowrank,
    relative_error,
)
from onnxprune.errors import UsageError

FAST = settings(derandomize=True, max_examples=40, deadline=None)

matrices = st.tuples(st.integers(1, 20), st.integers(1, 20), st.integers(0, 2**16))


def _matrix(k: int, n: int, seed: int, dtype: type = np.float64) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((k, n)).astype(dtype)


# --- low rank ---------------------------------------------------------------------

@FAST
@given(matrices)
def test_lowrank_full_rank_exact_and_monotone(m: tuple[int, int, int]) -> None:
    k, n, seed = m
    W = _matrix(k, n, seed)
    s = np.linalg.svd(W, compute_uv=False)
    previous = np.inf
    for rank in range(1, min(k, n) + 1):
        U, V = lowrank_svd(W, rank)
        assert U.shape == (k, rank) and V.shape == (rank, n)
        err = relative_error(W, U @ V)
        # Eckart-Young: the error is the discarded spectrum.
        assert err == pytest.approx(np.sqrt(np.sum(s[rank:] ** 2) / np.sum(s**2)), abs=1e-9)
        assert err <= previous + 1e-12
        previous = err
    np.testing.assert_allclose(U @ V, W, atol=1e-10)


def test_lowrank_factors_are_balanced() -> None:
    W = _matrix(30, 12, 0) * np.logspace(0, 4, 12)[None, :]
    U, V = lowrank_svd(W, 5)
    s = np.linalg.svd(W, compute_uv=False)[:5]
    np.testing.assert_allclose(np.linalg.norm(U, axis=0), np.sqrt(s), rtol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(V, axis=1), np.sqrt(s), rtol=1e-10)


def test_lowrank_keeps_float32_and_emitted_form() -> None:
    W = _matrix(16, 8, 1, np.float32)
    U, V = lowrank_svd(W, 8)
    assert U.dtype == V.dtype == np.float32
    x = _matrix(3, 16, 2, np.float32)
    np.testing.assert_allclose((x @ U) @ V, x @ W, atol=1e-4)


@pytest.mark.parametrize("rank", [0, 9, 2.5, True])
def test_lowrank_rejects_bad_rank(rank: object) -> None:
    with pytest.raises(UsageError):
        lowrank_svd(_matrix(8, 10, 0), rank)  # type: ignore[arg-type]


def test_lowrank_rejects_non_matrix() -> None:
    with pytest.raises(UsageError):
        lowrank_svd(np.ones((2, 2, 2)), 1)
    with pytest.raises(UsageError):
        lowrank_svd(np.full((2, 2), np.inf), 1)


# --- diagonal ---------------------------------------------------------------------

@FAST
@given(matrices)
def test_diagonal_is_best_and_apply_matches_matmul(m: tuple[int, int, int]) -> None:
    k, n, seed = m
    W = _matrix(k, n, seed)
    d = diagonal(W)
    assert d.shape == (min(k, n),)
    D = diagonal_matrix(d, k, n)
    best = relative_error(W, D)
    rng = np.random.default_rng(seed)
    for _ in range(3):
        assert relative_error(W, diagonal_matrix(d + 0.01 * rng.standard_normal(d.shape), k, n)) > best
    x = rng.standard_normal((2, 3, k))
    y = apply_diagonal(x, d, n)
    assert y.shape == (2, 3, n)
    np.testing.assert_allclose(y, x @ D, atol=1e-12)


def test_apply_diagonal_forms() -> None:
    x = np.array([[1.0, 2.0, 3.0]])
    # K >= N: slice then scale.
    np.testing.assert_array_equal(apply_diagonal(x, np.array([10.0, 100.0]), 2), [[10.0, 200.0]])
    # K < N: scale then pad with zeros at the end.
    np.testing.assert_array_equal(
        apply_diagonal(x, np.array([1.0, 2.0, 3.0]), 5), [[1.0, 4.0, 9.0, 0.0, 0.0]]
    )
    with pytest.raises(UsageError):
        apply_diagonal(x, np.ones(3), 2)


def test_diagonal_of_diagonal_matrix_is_exact() -> None:
    W = diagonal_matrix(np.array([1.0, -2.0, 3.0]), 5, 3)
    assert relative_error(W, diagonal_matrix(diagonal(W), 5, 3)) == 0.0


# --- diagonal plus low rank -------------------------------------------------------

@FAST
@given(matrices, st.integers(1, 20))
def test_dplr_error_never_increases(m: tuple[int, int, int], rank: int) -> None:
    k, n, seed = m
    rank = min(rank, k, n)
    W = _matrix(k, n, seed)
    steps = diagonal_plus_lowrank_steps(W, rank, n_iter=15, tol=0.0)
    errors = [relative_error(W, reconstruct_diag_lowrank(s)) for s in steps]
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:]))
    # The first sweep is already no worse than the plain truncated SVD.
    U, V = lowrank_svd(W, rank)
    assert errors[0] <= relative_error(W, U @ V) + 1e-12
    final = diagonal_plus_lowrank(W, rank, n_iter=15, tol=0.0)
    assert relative_error(W, reconstruct_diag_lowrank(final)) == pytest.approx(errors[-1])


@FAST
@given(matrices)
def test_dplr_full_rank_is_exact(m: tuple[int, int, int]) -> None:
    k, n, seed = m
    W = _matrix(k, n, seed)
    f = diagonal_plus_lowrank(W, min(k, n))
    assert f.d.shape == (min(k, n),) and f.U.shape[0] == k and f.V.shape[1] == n
    np.testing.assert_allclose(reconstruct_diag_lowrank(f), W, atol=1e-10)


@pytest.mark.parametrize("seed", range(3))
def test_dplr_recovers_diagonal_plus_lowrank(seed: int) -> None:
    rng = np.random.default_rng(seed)
    W = diagonal_matrix(rng.uniform(1, 3, 30), 40, 30)
    W += rng.standard_normal((40, 3)) @ rng.standard_normal((3, 30))
    f = diagonal_plus_lowrank(W, 3, n_iter=200, tol=0.0)
    U, V = lowrank_svd(W, 3)
    assert relative_error(W, U @ V) > 0.1  # low rank alone cannot
    assert relative_error(W, diagonal_matrix(diagonal(W), 40, 30)) > 0.5  # nor the diagonal
    assert relative_error(W, reconstruct_diag_lowrank(f)) < 1e-6


def test_dplr_emitted_form_and_dtype() -> None:
    W = _matrix(12, 20, 5, np.float32)
    f = diagonal_plus_lowrank(W, 4)
    assert f.d.dtype == f.U.dtype == f.V.dtype == np.float32
    x = _matrix(3, 12, 6, np.float32)
    y = apply_diagonal(x, f.d, 20) + (x @ f.U) @ f.V
    np.testing.assert_allclose(y, x @ reconstruct_diag_lowrank(f), atol=1e-4)


def test_dplr_rejects_bad_arguments() -> None:
    W = _matrix(6, 4, 0)
    with pytest.raises(UsageError):
        diagonal_plus_lowrank(W, 5)
    with pytest.raises(UsageError):
        diagonal_plus_lowrank(W, 2, n_iter=0)


def test_relative_error_edge_cases() -> None:
    assert relative_error(np.zeros((2, 2)), np.zeros((2, 2))) == 0.0
    assert relative_error(np.zeros((2, 2)), np.ones((2, 2))) == np.inf
    assert relative_error(np.eye(2), np.zeros((2, 2))) == 1.0
