"""Whitened SVD (SVD-LLM): exact at full rank, never worse than plain SVD in output error, the
reported output error equals the measured one, and a singular covariance is handled."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxprune.decomp import lowrank_svd, output_energy, output_error, whitened_lowrank, whitened_svd
from onnxprune.errors import UsageError


def correlated_rows(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Rows x = z A with z standard normal and A a random mixing with decaying scales: strongly
    correlated, unevenly scaled features, as transformer activations are."""
    scales = np.geomspace(10.0, 0.01, k)
    mix = rng.standard_normal((k, k)) * scales[:, None]
    return rng.standard_normal((n, k)) @ mix


@settings(max_examples=40, deadline=None, derandomize=True)
@given(k=st.integers(2, 14), n=st.integers(2, 14), seed=st.integers(0, 1000))
def test_full_rank_is_exact_and_never_worse_than_plain(k, n, seed):
    rng = np.random.default_rng(seed)
    X = correlated_rows(200, k, rng)
    W = rng.standard_normal((k, n))
    C = X.T @ X / len(X)
    full = min(k, n)
    f = whitened_lowrank(W, C, full, ridge=1e-9)
    np.testing.assert_allclose(f.U @ f.V, W, rtol=1e-6, atol=1e-6 * np.abs(W).max())
    for r in range(1, full):
        white = whitened_lowrank(W, C, r, ridge=1e-9)
        plain = lowrank_svd(W, r)
        e_white = np.linalg.norm(X @ (W - white.U @ white.V))
        e_plain = np.linalg.norm(X @ (W - plain.U @ plain.V))
        # Optimal for C + λI with a tiny λ: no worse than plain SVD, up to round-off.
        assert e_white <= e_plain * (1 + 1e-6) + 1e-9


def test_beats_plain_svd_on_correlated_inputs():
    rng = np.random.default_rng(0)
    X = correlated_rows(500, 32, rng)
    W = rng.standard_normal((32, 24))
    C = X.T @ X / len(X)
    for r in (2, 4, 8, 16):
        white = whitened_lowrank(W, C, r)
        plain = lowrank_svd(W, r)
        e_white = output_error(W, white.U @ white.V, C)
        e_plain = output_error(W, plain.U @ plain.V, C)
        assert e_white < 0.7 * e_plain  # decaying input scales: a clear margin, not round-off


def test_output_error_and_energy_match_the_rows():
    rng = np.random.default_rng(1)
    X = correlated_rows(300, 10, rng)
    W = rng.standard_normal((10, 7))
    C = X.T @ X / len(X)
    w = whitened_svd(W, C, ridge=0.0)
    f = whitened_lowrank(W, C, 3, ridge=0.0)
    approx = f.U @ f.V
    measured = np.linalg.norm(X @ (W - approx)) / np.linalg.norm(X @ W)
    assert output_error(W, approx, C) == pytest.approx(measured, rel=1e-8)
    # Without a ridge the energy left out is exactly the squared output error.
    assert 1 - output_energy(w.s, 3) == pytest.approx(measured ** 2, rel=1e-6)


def test_singular_covariance_gets_a_ridge():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((50, 6))
    X[:, 3] = 0.0  # a dead feature: C is singular
    C = X.T @ X / len(X)
    w = whitened_svd(rng.standard_normal((6, 4)), C, ridge=0.0)
    assert w.ridge > 0 and np.all(np.isfinite(w.s))
    with pytest.raises(UsageError, match="does not match"):
        whitened_svd(np.ones((5, 4)), C)
