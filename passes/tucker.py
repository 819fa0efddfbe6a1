"""tucker: Tucker-2 decomposition of KxK convolutions (Kim et al. 2016).

Before::  X ─Conv(W[Cout, Cin, kh, kw], b; strides, pads, dilations)─▶ Y
After::   X ─Conv 1x1 (first[R_in, Cin])─▶ ─Conv kh x kw (core[R_out, R_in]; the original
          strides, pads, dilations, auto_pad)─▶ ─Conv 1x1 (last[Cout, R_out], b)─▶ Y

The kernel is factored over its two channel modes (:func:`onnxprune.decomp.tucker2`)::

    W[o,i,y,x] ~= sum_{a,b} last[o,a] core[a,b,y,x] first[b,i]

``first`` and ``last`` have orthonormal rows/columns (HOSVD, or HOOI refining it with
``method=hooi``). The 1x1 convs map zero to zero, so padding the input or the first
conv's output is the same and the core conv takes the whole original geometry: the
rewrite is exact at full ranks. The bias moves to the last conv.

Ranks (:func:`onnxprune.decomp.tucker2_ranks` on the mode-0 and mode-1 unfoldings):
``rank=vbmf`` (default: empirical VBMF, the rank the data supports above estimated
noise), ``energy=E`` (smallest ranks keeping a share E of the squared singular values)
or ``fraction=F`` (``ceil(F * Cout)``, ``ceil(F * Cin)``).

Weights: ``R_in Cin + R_out R_in kh kw + Cout R_out`` instead of ``Cout Cin kh kw``.
Applies to 2-D Convs with group=1 and constant weights (and bias); 1x1 convs only with
``include-1x1``; depthwise and grouped convs are skipped with the reason in the stats.
A layer is rewritten only when its FLOPs and params both drop and, with
``check-latency`` (default), the factored chain is faster in onnxruntime.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import onnx
from onnxprune.passes._lowrank_common import OUTPUT, ConvLayer, ConvOptions, Ledger, conv_layer, run_single, shaped

from onnxprune.context import PassContext
from onnxprune.decomp import (
    RankRule,
    Tucker2,
    TuckerMethod,
    reconstruct_tucker2,
    relative_error,
    tucker2,
    tucker2_ranks,
)
from onnxprune.errors import UsageError
from onnxprune.latency import INPUT, Chain, Const, Step
from onnxprune.manager import Pass, PassResult, check_range
from onnxprune.model import Model


@dataclass(frozen=True)
class Options(ConvOptions):
    """``rank`` (vbmf|energy|fraction; default vbmf, or the rule whose value is given),
    ``energy``, ``fraction``, ``method`` (hosvd|hooi), plus the shared layer options.

    rank: the rank rule, vbmf, energy or fraction (default vbmf, or the rule whose value is given)
    energy: share of the squared singular values of each unfolding to keep
    fraction: ranks = ceil(fraction * Cin) and ceil(fraction * Cout)
    method: hosvd (one pass of truncated SVDs) or hooi (iterated from it)
    """

    rank: RankRule | None = None
    energy: float | None = None
    fraction: float | None = None
    method: TuckerMethod = TuckerMethod.HOSVD

    pass_name: ClassVar[str] = "tucker"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "method", TuckerMethod(self.method))
        if self.rank is not None:
            object.__setattr__(self, "rank", RankRule(self.rank))
        self.rule()

    def rule(self) -> tuple[RankRule, float | None]:
        """The rank rule and its value; a rule without its value (or two values) is an error."""
        values = {RankRule.ENERGY: self.energy, RankRule.FRACTION: self.fraction}
        given = [r for r, v in values.items() if v is not None]
        if len(given) > 1:
            raise UsageError("pass tucker: give energy or fraction, not both")
        rule = self.rank if self.rank is not None else (given[0] if given else RankRule.VBMF)
        if given and given[0] is not rule:
            raise UsageError(f"pass tucker: rank={rule.value} does not take {given[0].value}=")
        if rule is RankRule.VBMF:
            return rule, None
        value = values[rule]
        if value is None:
            raise UsageError(f"pass tucker: rank={rule.value} needs {rule.value}=VALUE")
        check_range("tucker", rule.value, value, 0.0, 1.0, lo_open=True)
        return rule, float(value)


def tucker_chain(layer: ConvLayer, t: Tucker2) -> Chain:
    bias = (Const("B", layer.bias),) if layer.bias is not None else ()
    return [
        Step("tucker_first", "Conv", (INPUT, Const("W", t.first)), "t0", {"kernel_shape": [1, 1]}),
        Step("tucker_core", "Conv", ("t0", Const("W", t.core)), "t1", layer.geom.full()),
        Step("tucker_last", "Conv", ("t1", Const("W", t.last)) + bias, OUTPUT, {"kernel_shape": [1, 1]}),
    ]


class TuckerDecompose(Pass):
    """Tucker-2 decomposition of KxK Convs into 1x1 -> KxK -> 1x1 (ranks by VBMF, energy or fraction)."""

    name = "tucker"
    Options = Options

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        o: Options = self.options
        rule, value = o.rule()
        ledger = Ledger(model, o, ctx)
        for node in ledger.candidates(("Conv",)):
            with ledger.layer(node) as rec:
                layer = conv_layer(ledger, node, o.include_1x1)
                w = layer.weight
                cout, cin, kh, kw = w.shape
                r_out, r_in = tucker2_ranks(w, rule, value)
                rec.ranks = {"out": r_out, "in": r_in}
                dt = layer.dtype
                planned = Tucker2(shaped((r_in, cin, 1, 1), dt), shaped((r_out, r_in, kh, kw), dt),
                                  shaped((cout, r_out, 1, 1), dt))
                ledger.require_cheaper(rec, layer, tucker_chain(layer, planned))
                factors = tucker2(w, r_out, r_in, method=o.method)
                rec.relative_error = relative_error(w, reconstruct_tucker2(factors))
                chain = tucker_chain(layer, factors)
                ledger.require_faster(rec, layer, chain)
                ledger.emit(rec, layer, chain)
        return ledger.result()


def tucker(model: onnx.ModelProto, **options: Any) -> onnx.ModelProto:
    """Plain-function twin: ``tucker(model, energy=0.9, check_latency=False)`` -> verified ModelProto."""
    return run_single(TuckerDecompose, model, options)

