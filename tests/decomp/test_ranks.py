"""Rank rules: fraction and energy on hand-made spectra, EVBMF on synthetic low rank + noise."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxprune.decomp.ranks import _tau_bar, rank_by_energy, rank_by_fraction, vbmf_rank
from onnxprune.errors import UsageError

# --- fraction ---------------------------------------------------------------------

@pytest.mark.parametrize(
    ("full", "fraction", "expected"),
    [
        (10, 0.3, 3),  # 0.3 * 10 is 3.0000000000000004 in floats: still 3
        (10, 0.31, 4),
        (10, 1.0, 10),
        (10, 0.01, 1),  # at least 1
        (7, 0.5, 4),
        (1, 0.2, 1),
        (64, 0.25, 16),
        (3, 2 / 3, 2),
    ],
)
def test_rank_by_fraction(full: int, fraction: float, expected: int) -> None:
    assert rank_by_fraction(full, fraction) == expected


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.01, float("nan")])
def test_rank_by_fraction_rejects_out_of_range(fraction: float) -> None:
    with pytest.raises(UsageError):
        rank_by_fraction(10, fraction)


@pytest.mark.parametrize("full", [0, -3, 2.5, True])
def test_rank_by_fraction_rejects_bad_full_rank(full: object) -> None:
    with pytest.raises(UsageError):
        rank_by_fraction(full, 0.5)  # type: ignore[arg-type]


@settings(derandomize=True, max_examples=100, deadline=None)
@given(st.integers(1, 500), st.floats(1e-3, 1.0))
def test_rank_by_fraction_bounds(full: int, fraction: float) -> None:
    r = rank_by_fraction(full, fraction)
    assert 1 <= r <= full
    assert r >= fraction * full - 1e-6
    assert r == 1 or r - 1 < fraction * full + 1e-6


# --- energy -----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("s", "energy", "expected"),
    [
        # squares 16, 9, 0: total 25
        ([4.0, 3.0, 0.0], 0.64, 1),  # 16/25 = 0.64 exactly
        ([4.0, 3.0, 0.0], 0.65, 2),
        ([4.0, 3.0, 0.0], 1.0, 2),  # trailing zero dropped
        ([3.0, 4.0], 0.5, 1),  # sorted first: 16/25 >= 0.5
        # squares 9, 4, 1, 1, 1: total 16 (energy is on squares, not on s: 3/8 vs 9/16)
        ([3.0, 2.0, 1.0, 1.0, 1.0], 0.5, 1),
        ([3.0, 2.0, 1.0, 1.0, 1.0], 0.8, 2),  # 13/16 = 0.8125
        ([3.0, 2.0, 1.0, 1.0, 1.0], 0.82, 3),  # 14/16 = 0.875
        ([3.0, 2.0, 1.0, 1.0, 1.0], 0.95, 5),  # 15/16 = 0.9375
        ([1.0] * 10, 0.9, 9),
        ([1.0] * 10, 0.91, 10),
        ([0.0, 0.0], 0.5, 1),  # nothing to keep: one channel anyway
    ],
)
def test_rank_by_energy(s: list[float], energy: float, expected: int) -> None:
    assert rank_by_energy(np.array(s), energy) == expected


@pytest.mark.parametrize("energy", [0.0, 1.5, -1.0])
def test_rank_by_energy_rejects_out_of_range(energy: float) -> None:
    with pytest.raises(UsageError):
        rank_by_energy(np.ones(3), energy)


@settings(derandomize=True, max_examples=100, deadline=None)
@given(
    st.lists(st.floats(0.0, 100.0), min_size=1, max_size=30),
    st.floats(0.01, 1.0),
)
def test_rank_by_energy_is_smallest(s: list[float], energy: float) -> None:
    arr = np.sort(np.array(s))[::-1]
    r = rank_by_energy(arr, energy)
    total = float(np.sum(arr**2))
    assert 1 <= r <= arr.size
    if total > 0:
        assert np.sum(arr[:r] ** 2) >= energy * total * (1 - 1e-9)
        if r > 1:
            assert np.sum(arr[: r - 1] ** 2) < energy * total


# --- VBMF -------------------------------------------------------------------------

def test_tau_bar_matches_published_constant() -> None:
    # The paper approximates tau_bar by 2.5129 sqrt(alpha); at alpha = 1 it is the
    # root of 2 log(1 + t) = t.
    t1 = _tau_bar(1.0)
    assert abs(t1 - 2.5129) < 1e-3
    assert abs(2 * math.log1p(t1) - t1) < 1e-10
    for alpha in (0.01, 0.05, 0.25, 0.6):
        t = _tau_bar(alpha)
        assert abs(math.log1p(t) + alpha * math.log1p(t / alpha) - t) < 1e-10
        # The approximation is good near alpha = 1 and drifts for thin matrices.
        tolerance = 0.02 if alpha >= 0.25 else 0.15
        assert abs(t / (2.5129 * math.sqrt(alpha)) - 1) < tolerance


def _low_rank_plus_noise(
    m: int, n: int, r: int, seed: int, snr: float = 3.0
) -> tuple[np.ndarray, float]:
    """``Y = A B^T + E``: A, B Gaussian, E ~ N(0, sigma2).

    The signal is scaled so that its RMS singular value is ``snr`` times the noise
    edge ``sigma (sqrt(m) + sqrt(n))`` (moderate: the weakest signal component
    lands around 1-2x the EVB threshold).
    """
    rng = np.random.default_rng(seed)
    sigma = float(rng.uniform(0.1, 3.0))
    signal = rng.standard_normal((m, r)) @ rng.standard_normal((n, r)).T
    edge = sigma * (math.sqrt(m) + math.sqrt(n))
    signal *= snr * edge * math.sqrt(r) / np.linalg.norm(signal)
    return signal + sigma * rng.standard_normal((m, n)), sigma**2


SHAPES = [(100, 80), (200, 50), (64, 576)]
RANKS = [3, 8, 12, 20]
SEEDS = range(12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("true_rank", RANKS)
def test_vbmf_recovers_rank_and_noise(shape: tuple[int, int], true_rank: int) -> None:
    m, n = shape
    exact = 0
    for seed in SEEDS:
        Y, sigma2 = _low_rank_plus_noise(m, n, true_rank, seed)
        res = vbmf_rank(Y)
        assert abs(res.rank - true_rank) <= 1, (seed, res.rank)
        exact += res.rank == true_rank
        # EVB overestimates the noise a little as the rank grows (the unexplained
        # part of weak components looks like noise): ~10% at r = 20, L = 50.
        bound = 0.08 if true_rank <= 12 else 0.2
        assert abs(res.sigma2 / sigma2 - 1) < bound, (seed, res.sigma2, sigma2)
    assert exact >= len(SEEDS) - 1


@pytest.mark.parametrize("shape", SHAPES + [(30, 30), (1000, 10)])
@pytest.mark.parametrize("seed", range(4))
def test_vbmf_pure_noise_is_rank_zero(shape: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    sigma = float(rng.uniform(0.01, 10.0))
    res = vbmf_rank(sigma * rng.standard_normal(shape))
    assert res.rank == 0
    assert abs(res.sigma2 / sigma**2 - 1) < 0.15
    assert np.all(res.estimates == 0)


def test_vbmf_known_noise_uses_evb_threshold() -> None:
    Y, sigma2 = _low_rank_plus_noise(100, 80, 6, seed=7)
    res = vbmf_rank(Y, sigma2=sigma2)
    assert res.rank == 6
    assert res.sigma2 == sigma2
    L, M = 80, 100
    alpha = L / M
    t = _tau_bar(alpha)
    assert res.threshold == pytest.approx(math.sqrt(M * (1 + t) * (1 + alpha / t) * sigma2))
    assert np.all(res.singular_values[: res.rank] > res.threshold)
    assert np.all(res.singular_values[res.rank :] <= res.threshold)
    # Kept components are shrunk, never enlarged, and the shrinkage is the EVB formula.
    g = res.singular_values[:6]
    a = 1 - (L + M) * sigma2 / g**2
    expected = g / 2 * (a + np.sqrt(a * a - 4 * L * M * sigma2**2 / g**4))
    np.testing.assert_allclose(res.estimates[:6], expected, rtol=1e-12)
    assert np.all(res.estimates[:6] < g)
    # A much larger assumed noise hides every component.
    assert vbmf_rank(Y, sigma2=1e4 * sigma2).rank == 0


def test_vbmf_invariant_to_scale_and_transpose() -> None:
    Y, _ = _low_rank_plus_noise(120, 40, 5, seed=3)
    base = vbmf_rank(Y)
    scaled = vbmf_rank(1e3 * Y)
    transposed = vbmf_rank(Y.T)
    assert base.rank == scaled.rank == transposed.rank == 5
    assert scaled.sigma2 == pytest.approx(1e6 * base.sigma2, rel=1e-6)
    assert transposed.sigma2 == pytest.approx(base.sigma2, rel=1e-6)


def test_vbmf_noise_free_low_rank() -> None:
    # Rank-deficient Y (exact zeros in the spectrum) must not break the objective.
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((40, 4)) @ rng.standard_normal((4, 30))
    res = vbmf_rank(Y)
    assert res.rank == 4


def test_vbmf_zero_matrix_and_bad_input() -> None:
    res = vbmf_rank(np.zeros((5, 7)))
    assert res.rank == 0
    with pytest.raises(UsageError):
        vbmf_rank(np.ones(5))
    with pytest.raises(UsageError):
        vbmf_rank(np.ones((3, 3)), sigma2=-1.0)
    with pytest.raises(UsageError):
        vbmf_rank(np.full((3, 3), np.nan))
