"""Factorisations of a conv kernel ``W[o, i, y, x]`` (shape ``[Cout, Cin, kh, kw]``, groups=1).

Each turns one Conv into a chain of smaller Convs whose composition is the
approximated kernel. The chains have no bias and no non-linearity in between, so
the original bias goes on the last Conv of the chain.

- Tucker-2 (Kim et al. 2016), ``1x1 -> kh x kw -> 1x1``::

      W[o,i,y,x] ~= sum_{a,b} last[o,a] core[a,b,y,x] first[b,i]

  ``first`` is the mode-1 factor transposed, ``last`` the mode-0 factor. Stride,
  pads and dilations go on the core Conv; the 1x1 Convs map zero to zero, so
  padding before or after them is the same.
- CP (Lebedev et al. 2015), ``1x1 -> kh x 1 depthwise -> 1 x kw depthwise -> 1x1``::

      W[o,i,y,x] ~= sum_r last[o,r] horizontal[r,x] vertical[r,y] first[r,i]

  with the CP weights (lambda) folded into ``last``. Vertical stride/pads/dilation
  go on the ``kh x 1`` Conv, horizontal ones on the ``1 x kw`` Conv.
- Spatial SVD (the vertical-then-horizontal scheme of Jaderberg et al. 2014, in the
  closed form of Tai et al. 2016), ``kh x 1 -> 1 x kw``::

      M[(i,y), (o,x)] = W[o,i,y,x],   M ~= P Q,
      vertical[r,i,y,0] = P[(i,y), r],   horizontal[o,r,0,x] = Q[r, (o,x)]
      W[o,i,y,x] = sum_r horizontal[o,r,0,x] vertical[r,i,y,0]

  exact at ``R = min(Cin kh, Cout kw)``.

Arithmetic is float64; results come back in the kernel's float dtype.
"""
from __future__ import annotations

import warnings
from enum import Enum
from typing import NamedTuple

import numpy as np
import tensorly as tl
from tensorly.decomposition import parafac, partial_tucker

from onnxprune.decomp.matrix import relative_error
from onnxprune.decomp.ranks import rank_by_energy, rank_by_fraction, vbmf_rank
from onnxprune.errors import UnsupportedError, UsageError


class TuckerMethod(str, Enum):
    """HOSVD: truncated SVDs of the unfoldings (one pass). HOOI: iterate from it."""

    HOSVD = "hosvd"
    HOOI = "hooi"


class RankRule(str, Enum):
    """How :func:`tucker2_ranks` picks ranks from the mode-0/mode-1 unfoldings."""

    VBMF = "vbmf"
    ENERGY = "energy"
    FRACTION = "fraction"


class Tucker2(NamedTuple):
    """``first [R_in, Cin, 1, 1]``, ``core [R_out, R_in, kh, kw]``, ``last [Cout, R_out, 1, 1]``."""

    first: np.ndarray
    core: np.ndarray
    last: np.ndarray


class CPFactors(NamedTuple):
    """``first [R, Cin, 1, 1]``, ``vertical [R, 1, kh, 1]``, ``horizontal [R, 1, 1, kw]``
    (both depthwise, groups=R) and ``last [Cout, R, 1, 1]`` (carries the CP weights)."""

    first: np.ndarray
    vertical: np.ndarray
    horizontal: np.ndarray
    last: np.ndarray


class SpatialSVD(NamedTuple):
    """``vertical [R, Cin, kh, 1]`` then ``horizontal [Cout, R, 1, kw]``."""

    vertical: np.ndarray
    horizontal: np.ndarray


def _kernel(W: np.ndarray) -> tuple[np.ndarray, np.dtype]:
    W = np.asarray(W)
    if W.ndim != 4 or 0 in W.shape:
        raise UsageError(f"expected a conv kernel [Cout, Cin, kh, kw], got shape {W.shape}")
    if not np.all(np.isfinite(W)):
        raise UsageError("conv kernel has non-finite entries")
    dtype = W.dtype if np.issubdtype(W.dtype, np.floating) else np.dtype(np.float64)
    return W.astype(np.float64), dtype


def _check_rank(name: str, rank: int, full: int) -> int:
    if isinstance(rank, bool) or int(rank) != rank or not (1 <= rank <= full):
        raise UsageError(f"{name} must be an integer in [1, {full}], got {rank!r}")
    return int(rank)


def _unfold(W: np.ndarray, mode: int) -> np.ndarray:
    """Mode-``mode`` unfolding: that axis becomes rows, the others (in order) columns."""
    return np.moveaxis(W, mode, 0).reshape(W.shape[mode], -1)


def tucker2(
    W: np.ndarray,
    rank_out: int,
    rank_in: int,
    method: TuckerMethod | str = TuckerMethod.HOSVD,
    n_iter_max: int = 50,
    seed: int = 0,
) -> Tucker2:
    """Tucker-2 of ``W`` over its two channel modes: ``W ~= core x_0 U_out x_1 U_in``.

    ``U_out [Cout, R_out]`` and ``U_in [Cin, R_in]`` have orthonormal columns and
    ``core = W x_0 U_out^T x_1 U_in^T``. HOSVD takes them from truncated SVDs of
    the mode-0/mode-1 unfoldings; HOOI (``tensorly`` ``partial_tucker``) refines
    them alternately, never increasing the error. Full ranks reproduce ``W``.
    """
    W64, dtype = _kernel(W)
    cout, cin = W64.shape[:2]
    rank_out = _check_rank("rank_out", rank_out, cout)
    rank_in = _check_rank("rank_in", rank_in, cin)
    try:
        method = TuckerMethod(method)
    except ValueError:
        raise UsageError(f"unknown Tucker method {method!r} (hosvd, hooi)") from None
    # partial_tucker with zero iterations returns its SVD initialisation: the HOSVD.
    iters = 0 if method is TuckerMethod.HOSVD else int(n_iter_max)
    with tl.backend_context("numpy"), warnings.catch_warnings():
        # A channel mode larger than the other modes' product leaves the SVD short;
        # tensorly warns and completes the factor with orthonormal columns: fine.
        warnings.filterwarnings("ignore", message=".*n_eigenvecs.*", category=UserWarning)
        # tensorly 0.10 returns ((core, factors), rec_errors).
        (core, factors), _ = partial_tucker(
            W64, rank=[rank_out, rank_in], modes=[0, 1], n_iter_max=iters,
            init="svd", tol=1e-10, random_state=seed,
        )
    u_out, u_in = (np.asarray(f) for f in factors)
    first = u_in.T[:, :, None, None]
    last = u_out[:, :, None, None]
    return Tucker2(first.astype(dtype), np.asarray(core).astype(dtype), last.astype(dtype))


def reconstruct_tucker2(t: Tucker2) -> np.ndarray:
    """``W[o,i,y,x] = sum_{a,b} last[o,a] core[a,b,y,x] first[b,i]``."""
    # optimize: contract one rank index at a time (31 s -> 0.03 s on a 256x256x3x3 layer)
    return np.einsum("oa,abyx,bi->oiyx", t.last[:, :, 0, 0], t.core, t.first[:, :, 0, 0], optimize=True)


def tucker2_ranks(
    W: np.ndarray, rule: RankRule | str, value: float | None = None
) -> tuple[int, int]:
    """``(rank_out, rank_in)`` for :func:`tucker2` from the mode-0 and mode-1 unfoldings.

    ``vbmf``: EVBMF rank of each unfolding (Kim et al. 2016); ``value`` must be None.
    ``energy``: :func:`rank_by_energy` on each unfolding's singular values.
    ``fraction``: :func:`rank_by_fraction` of ``Cout`` and ``Cin``.
    Ranks are at least 1 (a VBMF rank of 0 means "all noise", but the layer must
    keep a channel).
    """
    W64, _ = _kernel(W)
    try:
        rule = RankRule(rule)
    except ValueError:
        raise UsageError(f"unknown rank rule {rule!r} (vbmf, energy, fraction)") from None
    unfoldings = (_unfold(W64, 0), _unfold(W64, 1))
    if rule is RankRule.VBMF:
        if value is not None:
            raise UsageError("the vbmf rank rule takes no value")
        ranks = [vbmf_rank(m).rank for m in unfoldings]
    elif value is None:
        raise UsageError(f"the {rule.value} rank rule needs a value in (0, 1]")
    elif rule is RankRule.ENERGY:
        ranks = [rank_by_energy(np.linalg.svd(m, compute_uv=False), value) for m in unfoldings]
    else:
        ranks = [rank_by_fraction(m.shape[0], value) for m in unfoldings]
    return max(1, ranks[0]), max(1, ranks[1])


def cp(
    W: np.ndarray,
    rank: int,
    n_iter_max: int = 500,
    init: str = "svd",
    seed: int = 0,
    tol: float = 1e-9,
) -> CPFactors:
    """Rank-``R`` CP of ``W`` by ALS (``tensorly`` ``parafac``).

    ``W[o,i,y,x] ~= sum_r lambda_r U_o[o,r] U_i[i,r] U_y[y,r] U_x[x,r]`` with unit-norm
    factor columns; ``lambda`` is folded into ``last``. ALS is not guaranteed to
    reach the best rank-``R`` fit (it may stall or the best fit may not exist):
    check :func:`cp_relative_error`.
    """
    W64, dtype = _kernel(W)
    # Each ALS step solves an R x R system whose matrix is a Hadamard product of the
    # other modes' Gram matrices, of rank <= the product of their sizes: past
    # prod(shape) / max(shape) it is always singular.
    max_rank = W64.size // max(W64.shape)
    if isinstance(rank, bool) or int(rank) != rank or not (1 <= rank <= max_rank):
        raise UsageError(f"CP rank must be an integer in [1, {max_rank}], got {rank!r}")
    if init not in ("svd", "random"):
        raise UsageError(f"unknown CP init {init!r} (svd, random)")
    try:
        weights, factors = _parafac(W64, int(rank), n_iter_max, init, seed, tol)
    except np.linalg.LinAlgError:
        # A degenerate start (repeated SVD columns) can still make a step singular;
        # a seeded random start almost never does.
        try:
            weights, factors = _parafac(W64, int(rank), n_iter_max, "random", seed, tol)
        except np.linalg.LinAlgError:
            raise UnsupportedError(
                f"CP-ALS hit a singular system at rank {rank} for a kernel of shape "
                f"{W64.shape}; use a lower rank"
            ) from None
    u_o, u_i, u_y, u_x = (np.asarray(f) for f in factors)
    lam = np.asarray(weights).copy()
    # tensorly's last ALS sweep can leave the columns slightly off unit norm:
    # renormalise so that every scale lives in `last`, as documented.
    for u in (u_i, u_y, u_x):
        norms = np.linalg.norm(u, axis=0)
        norms[norms == 0.0] = 1.0
        u /= norms[None, :]
        lam *= norms
    r = int(rank)
    return CPFactors(
        first=u_i.T.reshape(r, -1, 1, 1).astype(dtype),
        vertical=u_y.T.reshape(r, 1, -1, 1).astype(dtype),
        horizontal=u_x.T.reshape(r, 1, 1, -1).astype(dtype),
        last=(u_o * lam[None, :])[:, :, None, None].astype(dtype),
    )


def _parafac(
    W: np.ndarray, rank: int, n_iter_max: int, init: str, seed: int, tol: float
) -> tuple[np.ndarray, list[np.ndarray]]:
    with tl.backend_context("numpy"), warnings.catch_warnings():
        # When R exceeds a mode's size (kh, kw are tiny) tensorly warns that it
        # truncates the SVD and pads the init with random columns: expected here.
        warnings.filterwarnings("ignore", message=".*n_eigenvecs.*", category=UserWarning)
        weights, factors = parafac(
            W, rank, n_iter_max=int(n_iter_max), init=init, tol=tol,
            random_state=seed, normalize_factors=True,
        )
    return np.asarray(weights), [np.asarray(f) for f in factors]


def cp_error_lower_bound(W: np.ndarray, rank: int) -> float:
    """A lower bound on ``||W - W_cp|| / ||W||`` for *every* rank-``R`` CP of ``W``, from SVDs only.

    A CP of rank R has every unfolding of matrix rank <= R, so its error is at least that of
    the best rank-R approximation of each unfolding (Eckart-Young)::

        ||W - W_cp||_F >= max_n sqrt(sum_{j > R} s_j(W_(n))^2)

    Cheap (four small SVDs) next to ALS, and it settles ``max-error`` for kernels that are
    far from low CP rank without running ALS at all.
    """
    W64, _ = _kernel(W)
    norm = float(np.linalg.norm(W64))
    if norm == 0.0:
        return 0.0
    worst = 0.0
    for mode in range(W64.ndim):
        s = np.linalg.svd(_unfold(W64, mode), compute_uv=False)
        worst = max(worst, float(np.sqrt(np.sum(s[int(rank):] ** 2))))
    return worst / norm


def reconstruct_cp(f: CPFactors) -> np.ndarray:
    """``W[o,i,y,x] = sum_r last[o,r] first[r,i] vertical[r,y] horizontal[r,x]``."""
    return np.einsum(
        "or,ri,ry,rx->oiyx",
        f.last[:, :, 0, 0], f.first[:, :, 0, 0], f.vertical[:, 0, :, 0], f.horizontal[:, 0, 0, :],
    )


def cp_relative_error(W: np.ndarray, f: CPFactors) -> float:
    """``||W - reconstruct_cp(f)||_F / ||W||_F`` (0 for a zero ``W`` reproduced exactly)."""
    return relative_error(W, reconstruct_cp(f))


def spatial_svd(W: np.ndarray, rank: int) -> SpatialSVD:
    """Separable ``kh x 1 -> 1 x kw`` factorisation by truncated SVD of ``M[(i,y),(o,x)]``.

    ``M ~= (U_R sqrt(S_R)) (sqrt(S_R) V_R^T)``: the best rank-``R`` fit of M, hence
    of W in Frobenius norm. Exact at ``R = min(Cin kh, Cout kw)``.
    """
    W64, dtype = _kernel(W)
    cout, cin, kh, kw = W64.shape
    rank = _check_rank("spatial SVD rank", rank, min(cin * kh, cout * kw))
    M = W64.transpose(1, 2, 0, 3).reshape(cin * kh, cout * kw)
    U, s, Vt = np.linalg.svd(M, full_matrices=False)
    # sqrt(s) on both sides keeps the two kernels on the same scale (see matrix.py).
    root = np.sqrt(s[:rank])
    P = U[:, :rank] * root[None, :]
    Q = root[:, None] * Vt[:rank]
    vertical = P.T.reshape(rank, cin, kh, 1)
    horizontal = Q.reshape(rank, cout, 1, kw).transpose(1, 0, 2, 3)
    return SpatialSVD(vertical.astype(dtype), horizontal.astype(dtype))


def reconstruct_spatial(f: SpatialSVD) -> np.ndarray:
    """``W[o,i,y,x] = sum_r horizontal[o,r,0,x] vertical[r,i,y,0]``."""
    return np.einsum("orx,riy->oiyx", f.horizontal[:, :, 0, :], f.vertical[:, :, :, 0])

