"""spatial-svd: split KxK convolutions into a kh x 1 and a 1 x kw conv (Jaderberg et al. 2014,
closed form of Tai et al. 2016).

Before::  X ─Conv(W[Cout, Cin, kh, kw], b)─▶ Y
After::   X ─Conv kh x 1 (vertical[R, Cin])─▶ ─Conv 1 x kw (horizontal[Cout, R], b)─▶ Y

With ``M[(i,y), (o,x)] = W[o,i,y,x]`` and its truncated SVD ``M ~= P Q``
(:func:`onnxprune.decomp.spatial_svd`)::

    vertical[r,i,y,0] = P[(i,y), r],   horizontal[o,r,0,x] = Q[r, (o,x)]
    W[o,i,y,x] ~= sum_r horizontal[o,r,0,x] vertical[r,i,y,0]

the best rank-R fit in Frobenius norm, exact at ``R = min(Cin kh, Cout kw)``. The
vertical conv takes the H stride, top/bottom pads and H dilation, the horizontal conv
the W ones (exact, as in :mod:`onnxprune.passes.cp`; ``auto_pad`` carries over to both).
The bias moves to the horizontal conv.

Rank: ``energy=E`` (default 0.9: smallest R keeping a share E of M's squared singular
values), ``fraction=F`` (``ceil(F * min(Cin kh, Cout kw))``) or ``rank=R``.
Weights: ``R (Cin kh + Cout kw)`` instead of ``Cout Cin kh kw``.

Applies to 2-D Convs with group=1 and constant weights; 1x1 convs only with
``include-1x1`` (then it is a plain channel bottleneck); depthwise and grouped convs are
skipped. A layer is rewritten only when its FLOPs and params both drop and, with
``check-latency`` (default), the factored chain is faster in onnxruntime.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnx
from onnxprune.passes._lowrank_common import (
    OUTPUT,
    ConvLayer,
    ConvOptions,
    Ledger,
    RankKind,
    conv_layer,
    matrix_rank_rule,
    pick_rank,
    run_single,
    shaped,
)

from onnxprune import decomp
from onnxprune.context import PassContext
from onnxprune.decomp import SpatialSVD, reconstruct_spatial, relative_error
from onnxprune.latency import INPUT, Chain, Const, Step
from onnxprune.manager import Pass, PassResult
from onnxprune.model import Model


@dataclass(frozen=True)
class Options(ConvOptions):
    """One of ``rank``, ``fraction``, ``energy`` (default energy=0.9), plus the shared layer options.

    rank: a fixed rank R of the kh x 1 -> 1 x kw pair
    fraction: R = ceil(fraction * min(Cin kh, Cout kw))
    energy: smallest R keeping this share of the squared singular values; default 0.9
    """

    rank: int | None = None
    fraction: float | None = None
    energy: float | None = None

    pass_name: ClassVar[str] = "spatial-svd"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.rule()

    def rule(self) -> tuple[RankKind, float]:
        return matrix_rank_rule(self.pass_name, self.rank, self.fraction, self.energy, (RankKind.ENERGY, 0.9))


def spatial_chain(layer: ConvLayer, f: SpatialSVD) -> Chain:
    bias = (Const("B", layer.bias),) if layer.bias is not None else ()
    return [
        Step("svd_vertical", "Conv", (INPUT, Const("W", f.vertical)), "t0", layer.geom.vertical()),
        Step("svd_horizontal", "Conv", ("t0", Const("W", f.horizontal)) + bias, OUTPUT, layer.geom.horizontal()),
    ]


class SpatialSVDDecompose(Pass):
    """Spatial SVD of KxK Convs into a Kx1 conv then a 1xK conv (rank by energy, fraction or value)."""

    name = "spatial-svd"
    Options = Options

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        o: Options = self.options
        rule = o.rule()
        ledger = Ledger(model, o, ctx)
        for node in ledger.candidates(("Conv",)):
            with ledger.layer(node) as rec:
                layer = conv_layer(ledger, node, o.include_1x1)
                w = layer.weight
                cout, cin, kh, kw = w.shape
                full = min(cin * kh, cout * kw)
                s = None
                if rule[0] is RankKind.ENERGY:
                    m = w.astype(np.float64).transpose(1, 2, 0, 3).reshape(cin * kh, cout * kw)
                    s = np.linalg.svd(m, compute_uv=False)
                rank = pick_rank(rule, full, s)
                rec.ranks = {"svd": rank}
                dt = layer.dtype
                planned = SpatialSVD(shaped((rank, cin, kh, 1), dt), shaped((cout, rank, 1, kw), dt))
                ledger.require_cheaper(rec, layer, spatial_chain(layer, planned))
                factors = decomp.spatial_svd(w, rank)
                rec.relative_error = relative_error(w, reconstruct_spatial(factors))
                chain = spatial_chain(layer, factors)
                ledger.require_faster(rec, layer, chain)
                ledger.emit(rec, layer, chain)
        return ledger.result()


def spatial_svd(model: onnx.ModelProto, **options: Any) -> onnx.ModelProto:
    """Plain-function twin: ``spatial_svd(model, energy=0.95)`` -> verified ModelProto."""
    return run_single(SpatialSVDDecompose, model, options)
