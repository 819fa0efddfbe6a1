"""fp16: float16 weights and activations, float32 graph inputs/outputs kept.

Before::  X(fp32) ─Conv(W fp32)─▶ Relu ─▶ … ─▶ Y(fp32)
After::   X(fp32) ─Cast(fp16)─▶ Conv(W fp16) ─▶ Relu ─▶ … ─Cast(fp32)─▶ Y(fp32)

The conversion is onnxruntime's own ``onnxruntime.transformers.float16``
(``convert_float_to_float16``), chosen over onnxconverter-common's copy of the same code
because it ships inside onnxruntime, which onnxprune already requires (no new dependency),
and is maintained with the runtime whose kernels it targets. Initializers are rounded to
the nearest float16, values beyond ±65504 clamped and nonzero values below 5.96e-8 in
magnitude raised to it (the converter's bounds).

Kept in float32 (``Cast`` nodes around them): onnxruntime's default block list (ops with
no float16 kernel: TopK, Range, CumSum, Min, Max, Upsample …) plus the ops whose range or
precision float16 cannot hold safely (``UNSAFE_OPS``: Exp, Pow, Log, Reciprocal, Softplus
and reductions of squares, products or exponentials, whose results overflow 65504 or lose
small terms), and any op types in ``keep_float32`` (``|``-separated). ``keep_io_types=false``
is refused with one line: onnxprune never changes a model's input/output signature.

When: halves the file and memory; onnxruntime's CPU kernels gain nothing from float16 on
x86 (it is usually slower: measure), GPUs and ARM cores do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx

from onnxprune.context import PassContext
from onnxprune.errors import UnsupportedError
from onnxprune.manager import Pass, PassResult
from onnxprune.model import Model, model_size_bytes
from onnxprune.quantized import adopt

UNSAFE_OPS = ("Exp", "Pow", "Log", "Reciprocal", "Softplus", "ReduceSumSquare", "ReduceProd", "ReduceL2",
              "ReduceLogSumExp", "ReduceLogSum")


@dataclass(frozen=True)
class Options:
    """Options of the fp16 pass.

    keep-io-types: keep float32 graph inputs/outputs with Casts (default true; false is refused)
    keep-float32: extra |-separated op types kept in float32, on top of the built-in block list (default none)
    """

    keep_io_types: bool = True
    keep_float32: str = ""


class Float16(Pass):
    """Convert weights and activations to float16 (onnxruntime's converter); float32 inputs/outputs kept."""

    name = "fp16"
    Options = Options

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        opts: Options = self.options
        if not opts.keep_io_types:
            raise UnsupportedError("pass fp16: keep-io-types=false would change the graph's input/output types, "
                                   "which onnxprune keeps as they are; cast outside the model instead")
        proto = model.to_onnx()
        floats = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
        if not floats and not any(_is_float(v) for v in proto.graph.input):
            return PassResult(False, {"reason": "no float32 weights or inputs to convert"})
        extra = [p.strip() for p in opts.keep_float32.split("|") if p.strip()]
        block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(UNSAFE_OPS) | set(extra))
        before = model_size_bytes(proto)
        out = convert_float_to_float16(proto, keep_io_types=opts.keep_io_types, op_block_list=block)
        kept = sorted({n.op_type for n in proto.graph.node if n.op_type in block})
        adopt(model, out)  # the converter appends its Casts at the end: Model's export sorts them
        after = model.to_onnx()
        halves = sum(1 for t in after.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
        stats = {"size_bytes": [before, model_size_bytes(after)], "float16_initializers": halves,
                 "kept_float32_ops": kept, "keep_io_types": opts.keep_io_types,
                 "casts": sum(1 for n in after.graph.node if n.op_type == "Cast")}
        return PassResult(True, stats)


def _is_float(v: onnx.ValueInfoProto) -> bool:
    return v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def fp16(proto: onnx.ModelProto, *, ctx: PassContext | None = None, **options: Any) -> onnx.ModelProto:
    """Library twin: ``fp16(proto)`` → float16 ModelProto with float32 inputs/outputs."""
    from onnxprune.api import run_passes

    result, _ = run_passes(proto, [Float16(Options(**options))], ctx=ctx)
    return result
