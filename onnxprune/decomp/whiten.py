"""Low rank in the space of a layer's inputs (SVD-LLM / ASVD): the rank cut minimises the
error of the layer's *output* on calibration data, not the error of its weight.

For ``y = x @ W`` (``W [K, N]``) and calibration rows ``X [n, K]`` with second moment
``C = XᵀX / n = E[x xᵀ]``, the output error of an approximation ``Ŵ`` is::

    E ||x (W - Ŵ)||² = tr((W - Ŵ)ᵀ C (W - Ŵ)) = ||Lᵀ (W - Ŵ)||_F²,   C = L Lᵀ (Cholesky)

so the best rank-r ``Ŵ`` is ``L⁻ᵀ`` times the best rank-r fit of ``M = Lᵀ W``. With
``M = U S Vᵀ``::

    Ŵ = (L⁻ᵀ U_r S_r) V_rᵀ,   emitted as  U' = L⁻ᵀ U_r sqrt(S_r),  V' = sqrt(S_r) V_rᵀ

exact at ``r = min(K, N)`` (then ``U' V' = L⁻ᵀ M = W``). The *output energy* of rank r
is ``sum(s[:r]²) / sum(s²)``: the share of ``E ||x W||²`` the truncation keeps.

``C`` is rarely well conditioned (dead features, a constant feature, fewer rows than
``K``), so a ridge ``λ I`` with ``λ = ridge * mean(diag C)`` is added before the
Cholesky factorisation, and increased tenfold until it succeeds. The error reported by
:func:`output_error` uses the covariance as measured (no ridge).

Arithmetic is float64; factors come back in the weight's float dtype.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.linalg import solve_triangular

from onnxprune.decomp.matrix import LowRank
from onnxprune.errors import UsageError


class WhitenedSVD(NamedTuple):
    """The SVD of ``Lᵀ W`` and the factor ``L`` it was taken with; ``ridge`` is the λ used."""

    U: np.ndarray  # [K, m]
    s: np.ndarray  # [m], decreasing
    Vt: np.ndarray  # [m, N]
    L: np.ndarray  # [K, K], lower triangular, L Lᵀ = C + λ I
    ridge: float


def cholesky_ridge(C: np.ndarray, ridge: float = 1e-6) -> tuple[np.ndarray, float]:
    """``L`` with ``L Lᵀ = C + λ I``, ``λ = ridge * mean(diag C)`` (raised until C + λI is
    positive definite); and the λ used."""
    C = np.asarray(C, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] != C.shape[1] or C.size == 0:
        raise UsageError(f"covariance must be a non-empty square matrix, got shape {C.shape}")
    if not np.all(np.isfinite(C)):
        raise UsageError("covariance has non-finite entries")
    if ridge < 0 or not math.isfinite(ridge):
        raise UsageError(f"ridge must be a non-negative finite number, got {ridge!r}")
    C = 0.5 * (C + C.T)
    scale = float(np.mean(np.diag(C)))
    scale = scale if scale > 0 else 1.0
    lam = ridge * scale
    eye = np.eye(C.shape[0])
    for _ in range(20):
        try:
            return np.linalg.cholesky(C + lam * eye), lam
        except np.linalg.LinAlgError:
            lam = max(lam * 10.0, 1e-10 * scale)
    raise UsageError("covariance is not positive definite even with a large ridge")


def whitened_svd(W: np.ndarray, C: np.ndarray, ridge: float = 1e-6) -> WhitenedSVD:
    """SVD of ``Lᵀ W`` with ``L`` the ridged Cholesky factor of ``C`` (see the module doc)."""
    W64 = np.asarray(W, dtype=np.float64)
    if W64.ndim != 2 or 0 in W64.shape:
        raise UsageError(f"expected a matrix [K, N], got shape {W64.shape}")
    if C.shape != (W64.shape[0], W64.shape[0]):
        raise UsageError(f"covariance {C.shape} does not match the weight's input dim {W64.shape[0]}")
    L, lam = cholesky_ridge(C, ridge)
    U, s, Vt = np.linalg.svd(L.T @ W64, full_matrices=False)
    return WhitenedSVD(U, s, Vt, L, lam)


def whitened_factors(w: WhitenedSVD, rank: int, dtype: np.dtype | type = np.float32) -> LowRank:
    """``U' = L⁻ᵀ U_r sqrt(S_r)``, ``V' = sqrt(S_r) V_rᵀ`` (so ``U' V' = L⁻ᵀ M_r``)."""
    full = len(w.s)
    if isinstance(rank, bool) or int(rank) != rank or not (1 <= rank <= full):
        raise UsageError(f"rank must be an integer in [1, {full}], got {rank!r}")
    root = np.sqrt(w.s[:rank])
    # L⁻ᵀ (U_r sqrt S_r): one triangular solve with Lᵀ (upper), no explicit inverse.
    left = solve_triangular(w.L.T, w.U[:, :rank] * root[None, :], lower=False)
    return LowRank(left.astype(dtype), (root[:, None] * w.Vt[:rank]).astype(dtype))


def whitened_lowrank(W: np.ndarray, C: np.ndarray, rank: int, ridge: float = 1e-6) -> LowRank:
    """The rank-``rank`` factors minimising ``tr((W - U V)ᵀ (C + λI) (W - U V))``."""
    dtype = W.dtype if np.issubdtype(np.asarray(W).dtype, np.floating) else np.dtype(np.float64)
    return whitened_factors(whitened_svd(W, C, ridge), rank, dtype)


def output_energy(s: np.ndarray, rank: int) -> float:
    """``sum(s[:rank]²) / sum(s²)`` (1 for an all-zero spectrum)."""
    s2 = np.asarray(s, dtype=np.float64) ** 2
    total = float(s2.sum())
    return 1.0 if total <= 0 else float(s2[:rank].sum()) / total


def output_error(W: np.ndarray, approx: np.ndarray, C: np.ndarray) -> float:
    """Relative output error ``sqrt(tr(Δᵀ C Δ) / tr(Wᵀ C W))``, ``Δ = W - approx``: on the rows
    ``C`` was measured on, ``||X Δ||_F / ||X W||_F``. 0 when both are zero, inf if only W's is."""
    W64 = np.asarray(W, dtype=np.float64)
    D = W64 - np.asarray(approx, dtype=np.float64)
    C = np.asarray(C, dtype=np.float64)
    num = float(np.einsum("kn,kj,jn->", D, C, D))
    den = float(np.einsum("kn,kj,jn->", W64, C, W64))
    num = max(num, 0.0)
    if den <= 0:
        return 0.0 if num == 0 else math.inf
    return math.sqrt(num / den)
