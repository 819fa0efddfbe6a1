"""cp: CP (canonical polyadic) decomposition of KxK convolutions (Lebedev et al. 2015).

Before::  X ─Conv(W[Cout, Cin, kh, kw], b)─▶ Y
After::   X ─Conv 1x1 (first[R, Cin])─▶ ─Conv kh x 1 depthwise (vertical[R], group=R)─▶
          ─Conv 1 x kw depthwise (horizontal[R], group=R)─▶ ─Conv 1x1 (last[Cout, R], b)─▶ Y

A rank-R CP of the kernel by ALS (:func:`onnxprune.decomp.cp`), with the CP weights
folded into ``last``::

    W[o,i,y,x] ~= sum_r last[o,r] horizontal[r,x] vertical[r,y] first[r,i]

Geometry: the separable kernel ``vertical[r,y] horizontal[r,x]`` is applied as two
convs. The vertical (``kh x 1``) conv takes the H stride, the top/bottom pads and the H
dilation; the horizontal (``1 x kw``) conv the W stride, left/right pads and W
dilation. Zero padding commutes with the split (a row of zeros stays zero through the
vertical conv), so this is exact for any strides, asymmetric pads and dilations.
``auto_pad`` SAME_UPPER/SAME_LOWER/VALID is carried to both depthwise convs as it is:
ONNX derives each axis' padding from that axis alone, and the other axis (kernel 1,
stride 1) pads nothing. The 1x1 convs run at the input and output resolution and map
zero to zero. The bias moves to the last conv.

Rank: ``rank=R``, or ``fraction=F`` for ``R = ceil(F * min(Cin, Cout))`` (default
F = 0.5); R is capped at what ALS can solve, ``Cout Cin kh kw / max(Cout, Cin, kh, kw)``.
Weights: ``R (Cin + kh + kw + Cout)`` instead of ``Cout Cin kh kw``.

ALS is not guaranteed to find a good fit, and trained dense kernels are far from low
CP rank (relative errors of 0.6 to 0.9 on SqueezeNet's 3x3 convs even at
``R = min(Cin, Cout)``): CP pays off on layers fine-tuned afterwards. A layer whose
relative weight error ``||W - W_cp|| / ||W||`` exceeds ``max-error`` (default 0.3) is
skipped with the error in the stats. Before ALS runs, a bound from SVDs alone settles
most such layers: every unfolding of a rank-R CP has rank <= R, so its error is at least
the best rank-R fit's of each unfolding (:func:`onnxprune.decomp.cp_error_lower_bound`);
a layer whose bound exceeds ``max-error`` is skipped without ALS. Applies to 2-D Convs with group=1 and constant
weights; 1x1 convs only with ``include-1x1``; depthwise and grouped convs are skipped.
A layer is rewritten only when its FLOPs and params both drop and, with
``check-latency`` (default), the factored chain is faster in onnxruntime.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import onnx
from onnxprune.passes._lowrank_common import (
    OUTPUT,
    ConvLayer,
    ConvOptions,
    Ledger,
    Skip,
    conv_layer,
    run_single,
    shaped,
)

from onnxprune import decomp
from onnxprune.context import PassContext
from onnxprune.decomp import CPFactors, rank_by_fraction
from onnxprune.errors import UnsupportedError, UsageError
from onnxprune.latency import INPUT, Chain, Const, Step
from onnxprune.manager import Pass, PassResult, check_range
from onnxprune.model import Model


@dataclass(frozen=True)
class Options(ConvOptions):
    """``rank`` or ``fraction`` (of min(Cin, Cout); default 0.5), ``max-error``, ``n-iter``
    (ALS sweeps), plus the shared layer options.

    rank: CP rank R of every layer
    fraction: R = ceil(fraction * min(Cin, Cout)); default 0.5
    max-error: skip a layer whose relative weight error exceeds this (checked by an SVD bound before ALS)
    n-iter: ALS sweeps at most
    """

    rank: int | None = None
    fraction: float | None = None
    max_error: float = 0.3
    n_iter: int = 100

    pass_name: ClassVar[str] = "cp"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank is not None and self.fraction is not None:
            raise UsageError("pass cp: give rank or fraction, not both")
        if self.rank is not None and (isinstance(self.rank, bool) or int(self.rank) != self.rank or self.rank < 1):
            raise UsageError(f"pass cp: rank must be a positive integer, got {self.rank!r}")
        if self.fraction is not None:
            check_range("cp", "fraction", self.fraction, 0.0, 1.0, lo_open=True)
        check_range("cp", "max-error", self.max_error, 0.0, math.inf, lo_open=True)
        if isinstance(self.n_iter, bool) or int(self.n_iter) != self.n_iter or self.n_iter < 1:
            raise UsageError(f"pass cp: n-iter must be a positive integer, got {self.n_iter!r}")

    def rank_for(self, cout: int, cin: int) -> int:
        if self.rank is not None:
            return int(self.rank)
        return rank_by_fraction(min(cout, cin), self.fraction if self.fraction is not None else 0.5)


def cp_chain(layer: ConvLayer, f: CPFactors) -> Chain:
    r = f.first.shape[0]
    bias = (Const("B", layer.bias),) if layer.bias is not None else ()
    return [
        Step("cp_first", "Conv", (INPUT, Const("W", f.first)), "t0", {"kernel_shape": [1, 1]}),
        Step("cp_vertical", "Conv", ("t0", Const("W", f.vertical)), "t1", layer.geom.vertical(group=r)),
        Step("cp_horizontal", "Conv", ("t1", Const("W", f.horizontal)), "t2", layer.geom.horizontal(group=r)),
        Step("cp_last", "Conv", ("t2", Const("W", f.last)) + bias, OUTPUT, {"kernel_shape": [1, 1]}),
    ]


class CPDecompose(Pass):
    """CP decomposition of KxK Convs into 1x1 -> Kx1 depthwise -> 1xK depthwise -> 1x1."""

    name = "cp"
    Options = Options

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        o: Options = self.options
        ledger = Ledger(model, o, ctx)
        for node in ledger.candidates(("Conv",)):
            with ledger.layer(node) as rec:
                layer = conv_layer(ledger, node, o.include_1x1)
                w = layer.weight
                cout, cin, kh, kw = w.shape
                rank = o.rank_for(cout, cin)
                max_rank = w.size // max(w.shape)
                if rank > max_rank:
                    raise Skip(f"CP rank {rank} exceeds {max_rank}, the most ALS can solve for this kernel")
                rec.ranks = {"cp": rank}
                dt = layer.dtype
                planned = CPFactors(shaped((rank, cin, 1, 1), dt), shaped((rank, 1, kh, 1), dt),
                                    shaped((rank, 1, 1, kw), dt), shaped((cout, rank, 1, 1), dt))
                ledger.require_cheaper(rec, layer, cp_chain(layer, planned))
                # No rank-R CP can beat the best rank-R fit of any unfolding: when that already
                # misses max-error, ALS (minutes on a 3x3 of 256 channels) cannot pass it.
                bound = decomp.cp_error_lower_bound(w, rank)
                rec.extra = {"error_lower_bound": round(bound, 6)}
                if bound > o.max_error:
                    raise Skip(f"relative weight error is at least {bound:.3g} (unfolding SVD bound), "
                               f"over max-error={o.max_error}: ALS not run")
                try:
                    factors = decomp.cp(w, rank, n_iter_max=o.n_iter)
                except UnsupportedError as exc:
                    raise Skip(str(exc)) from None
                rec.relative_error = decomp.cp_relative_error(w, factors)
                if not rec.relative_error <= o.max_error:
                    raise Skip(f"relative weight error {rec.relative_error:.3g} exceeds max-error={o.max_error}")
                chain = cp_chain(layer, factors)
                ledger.require_faster(rec, layer, chain)
                ledger.emit(rec, layer, chain)
        return ledger.result()


def cp(model: onnx.ModelProto, **options: Any) -> onnx.ModelProto:
    """Plain-function twin: ``cp(model, rank=8, max_error=0.1)`` -> verified ModelProto."""
    return run_single(CPDecompose, model, options)
