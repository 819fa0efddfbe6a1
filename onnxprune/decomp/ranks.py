"""Rank selection rules for the low-rank passes.

Three rules, all returning a rank ``r`` for a matrix (or one unfolding of a tensor):

- :func:`rank_by_fraction`: ``r = ceil(fraction * full_rank)``, clamped to
  ``[1, full_rank]``.
- :func:`rank_by_energy`: the smallest ``r`` that keeps a share ``energy`` of the
  *squared* singular values, ``sum(s[:r]**2) / sum(s**2) >= energy``.
- :func:`vbmf_rank`: empirical variational Bayesian matrix factorisation (EVBMF),
  the analytic global solution of Nakajima, Sugiyama, Babacan and Tomioka (JMLR
  2013, "Global analytic solution of fully-observed variational Bayesian matrix
  factorization"), with the noise variance estimated from the data; Kim et al.
  (ICLR 2016) use it on the mode-0/mode-1 unfoldings of a conv kernel to choose
  Tucker-2 ranks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from onnxprune.errors import UsageError

# Slack for float round-off in the cumulative-energy and ceil comparisons, so that
# energy=1.0 or fraction*full_rank == integer give the rank a human would compute.
_EPS = 1e-12


def rank_by_fraction(full_rank: int, fraction: float) -> int:
    """Rank ``ceil(fraction * full_rank)`` clamped to ``[1, full_rank]``.

    ``fraction`` must lie in ``(0, 1]``. The product is rounded up after removing
    float round-off, so ``fraction=0.3, full_rank=10`` gives 3, not 4.
    """
    if isinstance(full_rank, bool) or int(full_rank) != full_rank or full_rank < 1:
        raise UsageError(f"full rank must be a positive integer, got {full_rank!r}")
    if not (0.0 < fraction <= 1.0):
        raise UsageError(f"rank fraction must be in (0, 1], got {fraction!r}")
    full_rank = int(full_rank)
    r = math.ceil(fraction * full_rank - 1e-9)
    return max(1, min(full_rank, r))


def rank_by_energy(singular_values: np.ndarray, energy: float) -> int:
    """Smallest ``r`` with ``sum(s[:r]**2) / sum(s**2) >= energy``.

    Energy is measured on the *squared* singular values (the Frobenius norm
    captured by a rank-``r`` truncation is ``sqrt(sum(s[:r]**2))``). The values are
    sorted in decreasing order first. ``energy`` must lie in ``(0, 1]``; ``1.0``
    gives the numerical rank (trailing zeros dropped). An all-zero spectrum gives 1,
    because a factorised layer needs at least one channel.
    """
    if not (0.0 < energy <= 1.0):
        raise UsageError(f"energy must be in (0, 1], got {energy!r}")
    s = np.sort(np.abs(np.asarray(singular_values, dtype=np.float64).ravel()))[::-1]
    if s.size == 0:
        raise UsageError("rank_by_energy needs at least one singular value")
    cumulative = np.cumsum(s**2)
    total = cumulative[-1]
    if total <= 0.0:
        return 1
    kept = cumulative / total >= energy - _EPS
    return int(np.argmax(kept)) + 1


@dataclass(frozen=True)
class VBMFResult:
    """Outcome of :func:`vbmf_rank`.

    ``rank``: number of singular values above ``threshold``. ``sigma2``: the noise
    variance used (estimated unless given). ``threshold``: the EVB singular-value
    threshold ``sqrt(M * x_bar * sigma2)``. ``singular_values``: the spectrum of Y,
    decreasing. ``estimates``: the EVB-shrunk singular values (zero past ``rank``).
    """

    rank: int
    sigma2: float
    threshold: float
    singular_values: np.ndarray
    estimates: np.ndarray


def _tau_bar(alpha: float) -> float:
    """Positive root of ``log(tau + 1) + alpha * log(tau / alpha + 1) - tau = 0``.

    Close to ``2.5129 * sqrt(alpha)``; solved exactly rather than approximated.
    """

    def f(t: float) -> float:
        return math.log1p(t) + alpha * math.log1p(t / alpha) - t

    lo = 1e-6 * math.sqrt(alpha)
    hi = 10.0 * math.sqrt(alpha) + 1.0
    while f(hi) > 0.0:
        hi *= 2.0
    return float(brentq(f, lo, hi, xtol=1e-14, rtol=1e-14))


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    """``tau(x; alpha) = (x - (1 + alpha) + sqrt((x - (1 + alpha))**2 - 4 alpha)) / 2``."""
    b = x - (1.0 + alpha)
    return 0.5 * (b + np.sqrt(np.maximum(b * b - 4.0 * alpha, 0.0)))


def _evb_objective(sigma2: float, s2: np.ndarray, M: int, alpha: float, x_bar: float) -> float:
    """EVB free energy as a function of the noise variance, up to constants.

    With ``x_h = gamma_h**2 / (M sigma2)`` the paper's objective is
    ``sum_h psi(x_h)``, ``psi(x) = x - log x + [x > x_bar] psi1(x)``,
    ``psi1(x) = log(tau + 1) + alpha log(tau / alpha + 1) - tau``, ``tau = tau(x)``.
    ``-log x_h = log sigma2 + const``: written that way so a zero singular value
    (rank-deficient Y) does not make the objective infinite.
    """
    x = s2 / (M * sigma2)
    value = float(np.sum(x) + x.size * math.log(sigma2))
    big = x > x_bar
    if np.any(big):
        t = _tau(x[big], alpha)
        value += float(np.sum(np.log1p(t) + alpha * np.log1p(t / alpha) - t))
    return value


def _evb_sigma2(s: np.ndarray, L: int, M: int, alpha: float, x_bar: float) -> float:
    """Minimise :func:`_evb_objective` over ``sigma2`` inside the paper's bounds.

    Bounds: ``sigma2 <= ||Y||_F**2 / (L M)`` and
    ``sigma2 >= max(gamma_{Hb+1}**2 / (M x_bar), sum_{h>Hb} gamma_h**2 / (M (L - Hb)))``
    with ``Hb = min(ceil(L / (1 + alpha)) - 1, H)``; here ``H = L`` (every component
    may be signal), so ``Hb <= L - 1`` and the tail is never empty. The objective can have more than
    one local minimum, so a log-spaced grid picks the basin and a bounded Brent
    search refines it.
    """
    s2 = s**2
    upper = float(np.sum(s2)) / (L * M)
    h_bar = max(min(math.ceil(L / (1.0 + alpha)) - 1, L - 1), 0)
    lower = max(float(s2[h_bar]) / (M * x_bar), float(np.mean(s2[h_bar:])) / M)
    if not (0.0 < lower < upper):
        # Degenerate spectra (a rank-deficient Y, a single entry): widen the bracket.
        lower = upper * 1e-6
    grid = np.geomspace(lower, upper, 64)
    values = [_evb_objective(v, s2, M, alpha, x_bar) for v in grid]
    best = int(np.argmin(values))
    lo = grid[max(best - 1, 0)]
    hi = grid[min(best + 1, grid.size - 1)]
    if hi <= lo:
        return float(grid[best])
    res = minimize_scalar(
        _evb_objective,
        bounds=(lo, hi),
        args=(s2, M, alpha, x_bar),
        method="bounded",
        options={"xatol": 1e-10 * hi},
    )
    return float(res.x) if res.fun <= values[best] else float(grid[best])


def vbmf_rank(Y: np.ndarray, sigma2: float | None = None) -> VBMFResult:
    r"""Rank of ``Y`` by empirical VBMF (Nakajima et al. 2013), analytic solution.

    Model: ``Y = B A^T + E``, ``E`` i.i.d. ``N(0, sigma2)``, Gaussian priors on the
    columns of A and B whose variances are estimated (empirical Bayes). Let Y be
    ``L x M`` with ``L <= M`` (transposed otherwise), ``alpha = L / M`` and
    ``gamma_1 >= ... >= gamma_L`` its singular values.

    - ``tau_bar`` is the positive root of
      ``log(tau + 1) + alpha log(tau / alpha + 1) = tau`` (about ``2.5129 sqrt(alpha)``),
      and ``x_bar = (1 + tau_bar)(1 + alpha / tau_bar)``.
    - A component is kept iff ``gamma_h > gamma_EVB = sqrt(M x_bar sigma2)``, so
      ``rank = #{h : gamma_h**2 / (M sigma2) > x_bar}``.
    - Kept components are shrunk to
      ``gamma_hat = gamma/2 (1 - (L+M) sigma2/gamma**2
      + sqrt((1 - (L+M) sigma2/gamma**2)**2 - 4 L M sigma2**2/gamma**4))``.
    - If ``sigma2`` is not given it minimises
      ``Omega(sigma2) = sum_h psi(gamma_h**2 / (M sigma2))`` with
      ``psi(x) = x - log x + [x > x_bar] (log(tau(x)+1) + alpha log(tau(x)/alpha+1) - tau(x))``,
      ``tau(x) = (x - 1 - alpha + sqrt((x - 1 - alpha)**2 - 4 alpha)) / 2``,
      a bounded scalar minimisation (see :func:`_evb_sigma2`).

    An all-zero ``Y`` gives rank 0 and ``sigma2 = 0``.
    """
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim != 2 or Y.size == 0:
        raise UsageError(f"vbmf_rank needs a non-empty matrix, got shape {Y.shape}")
    if sigma2 is not None and not (sigma2 > 0.0 and math.isfinite(sigma2)):
        raise UsageError(f"noise variance must be positive and finite, got {sigma2!r}")
    if not np.all(np.isfinite(Y)):
        raise UsageError("vbmf_rank: matrix has non-finite entries")
    L, M = sorted(Y.shape)
    s = np.linalg.svd(Y, compute_uv=False)  # length L, decreasing
    if s[0] == 0.0:
        zeros = np.zeros_like(s)
        return VBMFResult(0, 0.0 if sigma2 is None else float(sigma2), 0.0, s, zeros)
    alpha = L / M
    tau_bar = _tau_bar(alpha)
    x_bar = (1.0 + tau_bar) * (1.0 + alpha / tau_bar)
    if sigma2 is None:
        sigma2 = _evb_sigma2(s, L, M, alpha, x_bar)
    threshold = math.sqrt(M * x_bar * sigma2)
    keep = s > threshold
    estimates = np.zeros_like(s)
    g = s[keep]
    a = 1.0 - (L + M) * sigma2 / g**2
    disc = np.maximum(a * a - 4.0 * L * M * sigma2**2 / g**4, 0.0)
    estimates[keep] = 0.5 * g * (a + np.sqrt(disc))
    return VBMFResult(int(np.count_nonzero(keep)), float(sigma2), threshold, s, estimates)
