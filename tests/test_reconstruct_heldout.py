"""The held-out ridge choice of the refit (onnxprune.reconstruct.held_out_ridge)."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxprune import reconstruct as rc
from onnxprune.activations import Gram


def _gram(x: np.ndarray, y: np.ndarray) -> Gram:
    g = Gram()
    g.update(x, y)
    return g


def _theta(w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.vstack([w, b[None]])


def test_merged_is_the_gram_of_all_rows():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 6)), rng.normal(size=(50, 3))
    both, parts = _gram(x, y), rc.merged(_gram(x[:20], y[:20]), _gram(x[20:], y[20:]))
    assert parts.rows == both.rows == 50
    for f in ("xtx", "xty", "xsum", "ysum", "yty_diag"):
        np.testing.assert_allclose(getattr(parts, f), getattr(both, f), rtol=1e-12, atol=1e-12)


def test_determined_layer_gets_a_weak_ridge_and_the_true_weights():
    """Many rows per feature, the truth far from the sliced weights: the weak end of the grid wins
    and the refit on both folds recovers the true layer."""
    rng = np.random.default_rng(1)
    f, n = 24, 3000
    w, b = rng.normal(size=(f, 5)), rng.normal(size=5)
    theta0 = _theta(rng.normal(size=(f, 5)), np.zeros(5))
    xs = [rng.normal(size=(n, f)) for _ in range(2)]
    folds = [_gram(x, x @ w + b) for x in xs]
    ridge, held = rc.held_out_ridge(folds, 1e-3, theta0)
    assert ridge is not None and ridge <= 1e-3
    assert held < 1e-4
    theta = rc.solve_ridge(rc.merged(*folds), ridge, theta0)
    np.testing.assert_allclose(theta, _theta(w, b), atol=1e-3)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), shift=st.floats(-2.0, 2.0))
def test_under_determined_layer_is_not_memorised(seed, shift):
    """Fewer rows than features, the truth = the sliced weights with a mean shift, plus noise: the
    choice is bias correction or a strong ridge, and on fresh rows it is no worse than bias
    correction alone nor than the weakest ridge (which memorises the calibration rows)."""
    rng = np.random.default_rng(seed)
    f, n = 120, 40
    w0 = rng.normal(size=(f, 4)) / np.sqrt(f)
    theta0 = _theta(w0, np.zeros(4))

    def rows(m: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(size=(m, f))
        return x, x @ w0 + shift + 0.3 * rng.normal(size=(m, 4))

    folds = [_gram(*rows(n)) for _ in range(2)]
    ridge, _ = rc.held_out_ridge(folds, 1e-3, theta0)
    assert ridge is None or ridge >= 1e-1
    g = rc.merged(*folds)
    fresh = _gram(*rows(4000))
    chosen = rc.sq_error(fresh, rc._candidate(g, theta0, ridge))
    weakest = rc.sq_error(fresh, rc.solve_ridge(g, 1e-4, theta0))
    bias_only = rc.sq_error(fresh, rc.bias_corrected(g, theta0))
    assert chosen <= 1.05 * bias_only
    assert chosen < weakest


def test_held_out_error_is_the_cross_fitted_error():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(200, 8)), rng.normal(size=(200, 2))
    folds = [_gram(x[:100], y[:100]), _gram(x[100:], y[100:])]
    theta0 = _theta(rng.normal(size=(8, 2)), np.zeros(2))
    ridge, held = rc.held_out_ridge(folds, 1e-2, theta0)
    err = sum(rc.sq_error(v, rc._candidate(t, theta0, ridge)) for t, v in ((folds[0], folds[1]), (folds[1], folds[0])))
    assert np.isclose(held, err / float((y ** 2).sum()))
    for r in (None, *(1e-2 * m for m in rc.RIDGE_GRID)):  # and it is the smallest of the grid
        other = sum(rc.sq_error(v, rc._candidate(t, theta0, r)) for t, v in ((folds[0], folds[1]), (folds[1], folds[0])))
        assert err <= other + 1e-9
