"""Approximations of a dense weight ``W [K, N]`` as used by MatMul (``y = x @ W``).

- Low rank: ``W ~= U V``, ``U [K, r]``, ``V [r, N]``; emitted as two MatMuls
  ``y = (x @ U) @ V``.
- Diagonal: ``W ~= D``, ``D[i, i] = d_i`` for ``i < min(K, N)``, zero elsewhere;
  emitted as an elementwise product (see :func:`apply_diagonal`).
- Diagonal plus low rank: ``W ~= D + U V``, emitted as ``apply_diagonal(x) + (x @ U) @ V``.

Arithmetic is float64; results come back in the weight's float dtype.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from onnxprune.errors import UsageError


class LowRank(NamedTuple):
    """``W ~= U @ V`` with ``U [K, r]`` and ``V [r, N]``."""

    U: np.ndarray
    V: np.ndarray


class DiagLowRank(NamedTuple):
    """``W ~= diagonal_matrix(d, K, N) + U @ V``; ``d`` has length ``min(K, N)``."""

    d: np.ndarray
    U: np.ndarray
    V: np.ndarray


def _weight(W: np.ndarray) -> tuple[np.ndarray, np.dtype]:
    W = np.asarray(W)
    if W.ndim != 2 or 0 in W.shape:
        raise UsageError(f"expected a matrix [K, N], got shape {W.shape}")
    if not np.all(np.isfinite(W)):
        raise UsageError("weight matrix has non-finite entries")
    dtype = W.dtype if np.issubdtype(W.dtype, np.floating) else np.dtype(np.float64)
    return W.astype(np.float64), dtype


def _check_rank(rank: int, full: int) -> int:
    if isinstance(rank, bool) or int(rank) != rank or not (1 <= rank <= full):
        raise UsageError(f"rank must be an integer in [1, {full}], got {rank!r}")
    return int(rank)


def relative_error(W: np.ndarray, approx: np.ndarray) -> float:
    """``||W - approx||_F / ||W||_F``; 0 if both are zero, inf if only W is."""
    W = np.asarray(W, dtype=np.float64)
    diff = float(np.linalg.norm(W - np.asarray(approx, dtype=np.float64)))
    norm = float(np.linalg.norm(W))
    if norm == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / norm


def _truncated_svd(W: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    U, s, Vt = np.linalg.svd(W, full_matrices=False)
    # Splitting s as sqrt(s) into both factors keeps U and V on the same scale, so
    # neither float32 factor carries the whole dynamic range of W (and x @ U does
    # not over- or underflow when s spans many decades).
    root = np.sqrt(s[:rank])
    return U[:, :rank] * root[None, :], root[:, None] * Vt[:rank]


def lowrank_svd(W: np.ndarray, rank: int) -> LowRank:
    """Best rank-``r`` approximation (Eckart-Young): ``U = U_r sqrt(S_r)``, ``V = sqrt(S_r) V_r^T``.

    Exact at ``r = min(K, N)``.
    """
    W64, dtype = _weight(W)
    rank = _check_rank(rank, min(W64.shape))
    U, V = _truncated_svd(W64, rank)
    return LowRank(U.astype(dtype), V.astype(dtype))


def diagonal(W: np.ndarray) -> np.ndarray:
    """Best diagonal approximation in Frobenius norm: ``d_i = W[i, i]``, ``i < min(K, N)``.

    Only the ``(i, i)`` entries of a rectangular diagonal ``D [K, N]`` are free, and
    ``||W - D||_F**2 = sum_i (W_ii - d_i)**2 + (off-diagonal terms)``, minimised by
    ``d_i = W_ii``. See :func:`apply_diagonal` for the emitted form.
    """
    W64, dtype = _weight(W)
    return np.diagonal(W64).astype(dtype)


def diagonal_matrix(d: np.ndarray, k: int, n: int) -> np.ndarray:
    """The ``[k, n]`` matrix with ``d`` on its main diagonal (``len(d) == min(k, n)``)."""
    d = np.asarray(d)
    if d.ndim != 1 or d.shape[0] != min(k, n):
        raise UsageError(f"diagonal of length {d.shape} does not fit a {k}x{n} matrix")
    D = np.zeros((k, n), dtype=d.dtype)
    D[np.arange(d.shape[0]), np.arange(d.shape[0])] = d
    return D


def apply_diagonal(x: np.ndarray, d: np.ndarray, n_out: int) -> np.ndarray:
    """``x @ diagonal_matrix(d, K, n_out)`` without the matrix, ``K = x.shape[-1]``.

    If ``K >= n_out``: ``y = x[..., :n_out] * d`` (a Slice then a Mul).
    If ``K < n_out``: ``y = pad(x * d, n_out - K zeros at the end of the last axis)``
    (a Mul then a Pad).
    """
    x = np.asarray(x)
    d = np.asarray(d)
    k = x.shape[-1]
    if d.ndim != 1 or d.shape[0] != min(k, n_out):
        raise UsageError(f"diagonal of length {d.shape} does not fit {k} -> {n_out}")
    if k >= n_out:
        return x[..., :n_out] * d
    widths = [(0, 0)] * (x.ndim - 1) + [(0, n_out - k)]
    return np.pad(x * d, widths)


def reconstruct_diag_lowrank(f: DiagLowRank) -> np.ndarray:
    """``diagonal_matrix(d, K, N) + U @ V``."""
    k, n = f.U.shape[0], f.V.shape[1]
    return diagonal_matrix(f.d, k, n) + f.U @ f.V


def diagonal_plus_lowrank_steps(
    W: np.ndarray, rank: int, n_iter: int = 20, tol: float = 1e-7
) -> list[DiagLowRank]:
    """Iterates of the alternating fit of ``W ~= D + U V``, one per sweep.

    Start from ``D = 0``; each sweep sets ``(U, V) = svd_r(W - D)`` (the best rank-``r``
    fit for this ``D``) and then ``d = diag(W - U V)`` (the best diagonal for these
    factors). Each half-step minimises the error over its own block with the other
    fixed, so ``||W - D - U V||_F`` never increases; the first iterate is already no
    worse than :func:`lowrank_svd` at the same rank. Stops early when a sweep gains
    less than ``tol * ||W||_F``.
    """
    W64, dtype = _weight(W)
    k, n = W64.shape
    rank = _check_rank(rank, min(k, n))
    if n_iter < 1:
        raise UsageError(f"n_iter must be at least 1, got {n_iter!r}")
    idx = np.arange(min(k, n))
    norm = float(np.linalg.norm(W64))
    residual = W64.copy()  # W - D
    steps: list[DiagLowRank] = []
    previous = math.inf
    for _ in range(n_iter):
        U, V = _truncated_svd(residual, rank)
        lowrank = U @ V
        d = W64[idx, idx] - lowrank[idx, idx]
        residual = W64.copy()
        residual[idx, idx] -= d
        steps.append(DiagLowRank(d.astype(dtype), U.astype(dtype), V.astype(dtype)))
        error = float(np.linalg.norm(residual - lowrank))
        if previous - error <= tol * norm:
            break
        previous = error
    return steps


def diagonal_plus_lowrank(
    W: np.ndarray, rank: int, n_iter: int = 20, tol: float = 1e-7
) -> DiagLowRank:
    """``W ~= D + U V`` by alternating minimisation (see :func:`diagonal_plus_lowrank_steps`).

    Exact at ``rank = min(K, N)`` (the first SVD already reproduces W and ``d = 0``).
    """
    return diagonal_plus_lowrank_steps(W, rank, n_iter=n_iter, tol=tol)[-1]
