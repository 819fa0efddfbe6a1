"""diagonal: replace MatMul/Gemm weights by a diagonal, or diagonal plus low rank, approximation.

Before::  X[..., K] ─MatMul(W[K, N])─▶ Y             (Gemm: X[M, K], W = alpha B or alpha B^T, bias beta C)
After (rank=0)::   X ─[Slice :N if K > N]─▶ ─Mul(d)─▶ ─[Pad to N if K < N]─▶ (─Add(beta C)─▶) Y
After (rank=r)::   X ─[Slice]─▶ ─Mul(d)─▶ ─[Pad]─▶ ─Add─▶ (─Add(beta C)─▶) Y
                   X ─MatMul(U[K, r])─▶ ─MatMul(V[r, N])─────┘

``D`` is the ``[K, N]`` matrix with ``d`` (length ``min(K, N)``) on its main diagonal, so
``x @ D`` is the first ``min(K, N)`` features times ``d``, zero-padded to N when
``K < N`` (:func:`onnxprune.decomp.apply_diagonal`)::

    rank 0:  W ~= D,        d_i = W_ii                          (best diagonal in Frobenius norm)
    rank r:  W ~= D + U V,  alternating: (U, V) = svd_r(W - D), d = diag(W - U V)

(:func:`onnxprune.decomp.diagonal`, :func:`onnxprune.decomp.diagonal_plus_lowrank`;
exact at ``r = min(K, N)``). Weights: ``min(K, N) + r (K + N)`` instead of ``K N``.

Where it is useful: layers whose weight *is* close to diagonal plus low rank, because
they were trained or fine-tuned in that form (diagonal-plus-low-rank parametrisations,
adapters and residual scalings near a scaled identity, layers regularised towards it)
or that come from such a factorisation. Where it is not: dense pretrained layers. Their
weights spread their energy over all entries, so the diagonal holds about
``min(K, N) / (K N)`` of it; on MiniLM's 384x384 attention weights the relative error
``||W - D|| / ||W||`` is about 0.99 at rank 0, i.e. the layer is gone. The stats report
each layer's error; ``max-error`` (default 1.0: no limit) skips layers above it.

Applies to MatMul with a constant 2-D second operand and Gemm with constant B (and C),
transA=0. ``K != N`` needs opset >= 11 (Slice and Pad take their bounds as inputs) and,
for the Pad, a known input rank. A layer is rewritten only when its FLOPs and params
both drop and, with ``check-latency`` (default), the replacement is faster in
onnxruntime.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnx
from onnxprune.passes._lowrank_common import OUTPUT, Layer, LayerOptions, Ledger, Skip, matrix_layer, run_single, shaped

from onnxprune.context import PassContext
from onnxprune.decomp import diagonal as best_diagonal
from onnxprune.decomp import diagonal_matrix, diagonal_plus_lowrank, relative_error
from onnxprune.errors import UsageError
from onnxprune.latency import INPUT, Chain, Const, Step
from onnxprune.manager import Pass, PassResult, check_range
from onnxprune.model import Model


@dataclass(frozen=True)
class Options(LayerOptions):
    """``rank`` of the low-rank part (default 0: diagonal only), ``max-error``, ``n-iter``
    (alternating sweeps), plus the shared layer options.

    rank: rank of the low-rank part added to the diagonal (0: diagonal only)
    max-error: skip a layer whose relative weight error exceeds this
    n-iter: alternating sweeps at most (diagonal + low rank)
    """

    rank: int = 0
    max_error: float = 1.0
    n_iter: int = 20

    pass_name: ClassVar[str] = "diagonal"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.rank, bool) or int(self.rank) != self.rank or self.rank < 0:
            raise UsageError(f"pass diagonal: rank must be a non-negative integer, got {self.rank!r}")
        check_range("diagonal", "max-error", self.max_error, 0.0, math.inf, lo_open=True)
        if isinstance(self.n_iter, bool) or int(self.n_iter) != self.n_iter or self.n_iter < 1:
            raise UsageError(f"pass diagonal: n-iter must be a positive integer, got {self.n_iter!r}")


def diagonal_chain(layer: Layer, d: np.ndarray, u: np.ndarray | None, v: np.ndarray | None, x_rank: int) -> Chain:
    """The steps for ``x @ (D + U V) (+ bias)``; ``u``/``v`` None for the diagonal alone."""
    k, n = layer.weight.shape
    i64 = np.int64
    steps: list[Step] = []
    src = INPUT
    if k > n:
        steps.append(Step("diag_slice", "Slice", (INPUT, Const("starts", np.array([0], i64)),
                                                  Const("ends", np.array([n], i64)),
                                                  Const("axes", np.array([x_rank - 1], i64))), "sliced"))
        src = "sliced"
    steps.append(Step("diag_mul", "Mul", (src, Const("d", d)), "scaled"))
    out = "scaled"
    if k < n:
        pads = np.zeros(2 * x_rank, dtype=i64)
        pads[2 * x_rank - 1] = n - k
        steps.append(Step("diag_pad", "Pad", ("scaled", Const("pads", pads)), "padded"))
        out = "padded"
    if u is not None and v is not None:
        steps.append(Step("diag_u", "MatMul", (INPUT, Const("U", u)), "xu"))
        steps.append(Step("diag_v", "MatMul", ("xu", Const("V", v)), "xuv"))
        steps.append(Step("diag_add", "Add", (out, "xuv"), "sum"))
    if layer.bias is not None:
        steps.append(Step("diag_bias", "Add", (steps[-1].output, Const("C", layer.bias)), "biased"))
    steps[-1] = dataclasses.replace(steps[-1], output=OUTPUT)
    return steps


class DiagonalApproximate(Pass):
    """Approximate MatMul/Gemm weights by a diagonal (or diagonal + low-rank) matrix, as Mul (+ MatMul + Add)."""

    name = "diagonal"
    Options = Options

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        o: Options = self.options
        ledger = Ledger(model, o, ctx)
        for node in ledger.candidates(("MatMul", "Gemm")):
            with ledger.layer(node) as rec:
                layer = matrix_layer(ledger, node)
                w = layer.weight
                k, n = w.shape
                rank = min(o.rank, k, n)
                x_rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
                if k != n and ledger.opset < 11:
                    raise Skip(f"K={k} != N={n} needs Slice/Pad with input bounds (opset >= 11), model has {ledger.opset}")
                if k != n and x_rank is None:
                    raise Skip("input rank unknown: cannot place the Slice/Pad")
                x_rank = x_rank or len(layer.x_shape)
                rec.ranks = {"diagonal": min(k, n), "r": rank}
                dt = w.dtype
                lr = (shaped((k, rank), dt), shaped((rank, n), dt)) if rank else (None, None)
                ledger.require_cheaper(rec, layer, diagonal_chain(layer, shaped((min(k, n),), dt), *lr, x_rank))
                if rank:
                    f = diagonal_plus_lowrank(w, rank, n_iter=o.n_iter)
                    d, u, v = f.d, f.U, f.V
                    approx = diagonal_matrix(d.astype(np.float64), k, n) + u.astype(np.float64) @ v
                else:
                    d, u, v = best_diagonal(w), None, None
                    approx = diagonal_matrix(d.astype(np.float64), k, n)
                rec.relative_error = relative_error(w, approx)
                if not rec.relative_error <= o.max_error:
                    raise Skip(f"relative weight error {rec.relative_error:.3g} exceeds max-error={o.max_error}")
                chain = diagonal_chain(layer, d, u, v, x_rank)
                ledger.require_faster(rec, layer, chain)
                ledger.emit(rec, layer, chain)
        return ledger.result()


def diagonal(model: onnx.ModelProto, **options: Any) -> onnx.ModelProto:
    """Plain-function twin: ``diagonal(model, rank=8)`` -> verified ModelProto."""
    return run_single(DiagonalApproximate, model, options)
