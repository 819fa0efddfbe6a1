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

Applies to MatMul whose second operand is a constant 2-D matrix and Gemm with a
constant B (and C); Gemm with transA=1 and weights shared with other nodes are skipped
with the reason in the stats.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnx
from onnxprune.passes._lowrank_common import (
    OUTPUT,
    Layer,
    LayerOptions,
    Ledger,
    RankKind,
    matrix_layer,
    matrix_rank_rule,
    pick_rank,
    run_single,
    shaped,
)

from onnxprune.context import PassContext
from onnxprune.decomp import LowRank, lowrank_svd, relative_error
from onnxprune.latency import INPUT, Chain, Const, Step
from onnxprune.manager import Pass, PassResult
from onnxprune.model import Model


@dataclass(frozen=True)
class Options(LayerOptions):
    """One of ``rank``, ``fraction``, ``energy`` (default energy=0.9), plus the shared layer options."""

    rank: int | None = None
    fraction: float | None = None
    energy: float | None = None

    pass_name: ClassVar[str] = "lowrank"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.rule()

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
        ledger = Ledger(model, o, ctx)
        for node in ledger.candidates(("MatMul", "Gemm")):
            with ledger.layer(node) as rec:
                layer = matrix_layer(ledger, node)
                w = layer.weight
                k, n = w.shape
                s = np.linalg.svd(w.astype(np.float64), compute_uv=False) if rule[0] is RankKind.ENERGY else None
                rank = pick_rank(rule, min(k, n), s)
                rec.ranks = {"r": rank}
                ledger.require_cheaper(rec, layer, lowrank_chain(layer, LowRank(shaped((k, rank), w.dtype),
                                                                                shaped((rank, n), w.dtype))))
                factors = lowrank_svd(w, rank)
                rec.relative_error = relative_error(w, factors.U.astype(np.float64) @ factors.V)
                chain = lowrank_chain(layer, factors)
                ledger.require_faster(rec, layer, chain)
                ledger.emit(rec, layer, chain)
        return ledger.result()


def lowrank(model: onnx.ModelProto, **options: Any) -> onnx.ModelProto:
    """Plain-function twin: ``lowrank(model, energy=0.9)`` -> verified ModelProto."""
    return run_single(LowRankFactorize, model, options)
