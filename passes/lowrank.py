"""lowrank: truncated-SVD factorisation of MatMul and Gemm weights.

Before::  X[..., K] ─MatMul(W[K, N])─▶ Y              X[M, K] ─Gemm(B, C; alpha, beta, transB)─▶ Y
After::   X ─MatMul(U[K, r])─▶ ─MatMul(V[r, N])─▶ Y   X ─Gemm(U)─▶ ─Gemm(V, beta C)─▶ Y

With ``W = alpha (B^T if transB else B)`` for Gemm (the weight as ``y = x @ W`` reads it)
and its SVD ``W = U_full S V_full^T`` (:func:`onnxprune.decomp.lowrank_svd`)::

    W ~= U V,   U = U_r sqrt(S_r),   V = sqrt(S_r) V_r^T

the best rank-r fit (Eckart-Young), exact at ``r = min(K, N)``. MatMul activations may
have any rank (``[batch, seq, K] @ [K, N]`` in transformers): both MatMuls broadcast the
same way as the original. A bias Add after a MatMul stays where it is; a Gemm's bias
goes, scaled by beta, on the second Gemm (alpha and beta become 1).

Rank: ``energy=E`` (default 0.9: smallest r keeping a share E of the squared singular
values), ``fraction=F`` (``ceil(F * min(K, N))``) or ``rank=r``. Weights ``r (K + N)``
instead of ``K N``: a rewrite pays only when ``r < K N / (K + N)``, and is done only when
FLOPs and params both drop and, with ``check-latency`` (default), two MatMuls are
faster in onnxruntime than one.

Whitened (``whiten=true``, SVD-LLM / ASVD; needs calibration data): the input
second moment ``C = E[x xᵀ]`` of every candidate is streamed over the calibration data
(:func:`~onnxprune.passes._lowrank_common.input_moments`; padded tokens left out), ``C + λI
= L Lᵀ`` (``λ = ridge * mean(diag C)``), and the truncation is that of ``Lᵀ W = U S Vᵀ``
(:mod:`onnxprune.decomp.whiten`)::

    W ~= U' V',   U' = L⁻ᵀ U_r sqrt(S_r),   V' = sqrt(S_r) V_r^T

which minimises the output error ``E ||x (W - U'V')||²`` rather than the weight error;
``energy=`` then counts *output* energy (the squared singular values of ``Lᵀ W``). Exact at
full rank. Stats per layer: ``output_energy`` kept and ``output_error`` (relative, on the
calibration rows). Output energy is much more concentrated than weight energy (in MiniLM
a few outlier features carry most of ``E ||x W||²``): ``whiten=true,energy=0.9`` cuts far
deeper than plain ``energy=0.9``; useful whitened thresholds are 0.99 and up, or give
``fraction=`` (see docs/benchmarks/minilm.md).

Ranks from ``energy`` and ``fraction`` are rounded up to a multiple of ``round-to``
(default: the target's vector width; ``round-to=1`` keeps them as computed): such widths
run on onnxruntime's fast path, and layers of one shape then share a latency
measurement (MiniLM's 36 layers have 3 shapes). A fixed ``rank=`` is used as given.

Applies to MatMul whose second operand is a constant 2-D matrix and Gemm with a
constant B (and C); Gemm with transA=1 and weights shared with other nodes are skipped
with the reason in the stats.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnxprune.passes._lowrank_common import (
    OUTPUT,
    Layer,
    LayerOptions,
    Ledger,
    RankKind,
    Skip,
    input_moments,
    matrix_layer,
    matrix_rank_rule,
    pick_rank,
    require_real_data,
    round_rank,
    run_single,
    shaped,
)

from onnxprune import ir
from onnxprune.context import PassContext
from onnxprune.decomp import (
    LowRank,
    output_energy,
    output_error,
    relative_error,
    whitened_factors,
    whitened_svd,
)
from onnxprune.errors import UsageError
from onnxprune.latency import INPUT, Chain, Const, Step
from onnxprune.manager import Pass, PassResult, check_range
from onnxprune.model import Model


@dataclass(frozen=True)
class Options(LayerOptions):
    """One of ``rank``, ``fraction``, ``energy`` (default energy=0.9); ``whiten`` (SVD in the
    input-whitened space, needs data) with its ``ridge``; ``round-to`` (ranks rounded up to a
    multiple of it; default the target's vector width); plus the shared layer options.

    rank: a fixed rank for every layer (used as given, not rounded)
    fraction: rank = ceil(fraction * min(K, N)), rounded up to round-to
    energy: smallest rank keeping this share of the squared singular values (of L^T W with whiten); default 0.9
    whiten: truncate in the input-whitened space so the cut minimises output error (needs calibration data)
    ridge: with whiten, lambda = ridge * mean(diag C) added to the input covariance before Cholesky
    round-to: round energy/fraction ranks up to a multiple of this (default: the target's vector width)
    """

    rank: int | None = None
    fraction: float | None = None
    energy: float | None = None
    whiten: bool = False
    ridge: float = 1e-4
    round_to: int | None = None

    pass_name: ClassVar[str] = "lowrank"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.rule()
        check_range(self.pass_name, "ridge", self.ridge, 0.0, 1.0)
        if self.round_to is not None and (isinstance(self.round_to, bool) or int(self.round_to) != self.round_to
                                          or self.round_to < 1):
            raise UsageError(f"pass {self.pass_name}: round-to must be a positive integer, got {self.round_to!r}")

    def rule(self) -> tuple[RankKind, float]:
        return matrix_rank_rule(self.pass_name, self.rank, self.fraction, self.energy, (RankKind.ENERGY, 0.9))


def lowrank_chain(layer: Layer, f: LowRank) -> Chain:
    if layer.node.op == "Gemm":
        bias = (Const("C", layer.bias),) if layer.bias is not None else ()
        return [Step("lowrank_u", "Gemm", (INPUT, Const("U", f.U)), "t0"),
                Step("lowrank_v", "Gemm", ("t0", Const("V", f.V)) + bias, OUTPUT)]
    return [Step("lowrank_u", "MatMul", (INPUT, Const("U", f.U)), "t0"),
            Step("lowrank_v", "MatMul", ("t0", Const("V", f.V)), OUTPUT)]


class LowRankFactorize(Pass):
    """Truncated-SVD factorisation of MatMul/Gemm weights into two MatMuls/Gemms (rank by energy, fraction or value)."""

    name = "lowrank"
    Options = Options

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        o: Options = self.options
        rule = o.rule()
        multiple = 1 if rule[0] is RankKind.RANK else (o.round_to or ctx.target.vector_width)
        ledger = Ledger(model, o, ctx)
        candidates = ledger.candidates(("MatMul", "Gemm"))
        moments: dict[str, tuple[np.ndarray, int]] = {}
        data_stats = None
        if o.whiten:
            require_real_data(ctx, self.name, "whiten=true")
            wanted = [n.inputs[0].name for n in candidates if len(n.inputs) > 1
                      and isinstance(n.inputs[0], gs.Variable) and ir.constant_value(n.inputs[1]) is not None]
            if wanted:
                moments, data_stats = input_moments(model, wanted, ctx)
        for node in candidates:
            with ledger.layer(node) as rec:
                layer = matrix_layer(ledger, node)
                w = layer.weight
                k, n = w.shape
                full = min(k, n)
                if o.whiten:
                    got = moments.get(node.inputs[0].name)
                    if got is None:
                        raise Skip("no calibration statistics for its input")
                    cov, rows = got
                    wsvd = whitened_svd(w, cov, o.ridge)
                    s: np.ndarray | None = wsvd.s
                else:
                    u_full, s, vt_full = np.linalg.svd(w.astype(np.float64), full_matrices=False)
                rank = round_rank(pick_rank(rule, full, s), full, multiple)
                rec.ranks = {"r": rank}
                ledger.require_cheaper(rec, layer, lowrank_chain(layer, LowRank(shaped((k, rank), w.dtype),
                                                                                shaped((rank, n), w.dtype))))
                if o.whiten:
                    factors = whitened_factors(wsvd, rank, w.dtype)
                    approx = factors.U.astype(np.float64) @ factors.V
                    rec.extra = {"output_energy": round(output_energy(wsvd.s, rank), 6),
                                 "output_error": round(output_error(w, approx, cov), 6),
                                 "calibration_rows": rows}
                else:
                    assert s is not None
                    root = np.sqrt(s[:rank])
                    factors = LowRank((u_full[:, :rank] * root[None, :]).astype(w.dtype),
                                      (root[:, None] * vt_full[:rank]).astype(w.dtype))
                    approx = factors.U.astype(np.float64) @ factors.V
                rec.relative_error = relative_error(w, approx)
                chain = lowrank_chain(layer, factors)
                ledger.require_faster(rec, layer, chain)
                ledger.emit(rec, layer, chain)
        result = ledger.result()
        if data_stats is not None:
            result.stats["calibration"] = data_stats
        return result


def lowrank(model: onnx.ModelProto, **options: Any) -> onnx.ModelProto:
    """Plain-function twin: ``lowrank(model, energy=0.9)`` -> verified ModelProto.

    ``whiten=True`` needs calibration data: pass ``ctx=`` (a :class:`PassContext`, e.g.
    ``onnxprune.api.prepare_data(model, data=...).ctx``).
    """
    ctx = options.pop("ctx", None)
    if ctx is None:
        return run_single(LowRankFactorize, model, options)
    from onnxprune.api import run_passes

    out, _ = run_passes(model, [LowRankFactorize(Options(**options))], ctx=ctx)
    return out
