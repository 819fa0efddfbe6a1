"""Unary and broadcasting binary ops: channels pass through, tied across operands.

A unary op maps channel c to channel c. For a broadcasting op (Add, Mul, Where, ...),
each operand is aligned to the output from the right: an operand with the full channel
count on the aligned axis is tied to the output when it is an activation, or sliced
when it is a constant; an operand with size 1 there (or lower rank) broadcasts and
carries no channels.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune import ir
from onnxprune.channels.core import Context, Role, register

UNARY = ("Relu", "LeakyRelu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "Erf", "Elu", "Selu", "Celu",
         "Softplus", "Softsign", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Identity", "Cast", "Gelu",
         "Mish", "Floor", "Ceil", "Round", "Sign", "ThresholdedRelu", "Sin", "Cos", "Not", "IsNaN", "Dropout")
BROADCAST = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "PRelu", "Equal", "Less",
             "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "BitShift")


@register(*UNARY)
class UnaryHandler:
    def analyze(self, node: gs.Node, ctx: Context, tensor: gs.Tensor, axis: int) -> None:
        sp = ctx.space(tensor, axis)
        x, y = node.inputs[0], node.outputs[0]
        if any(o.outputs or ctx.is_output(o) for o in node.outputs[1:]):
            ctx.block(sp, node.name, f"{node.op}'s extra outputs (mask) are read")
            return
        if tensor is not x and tensor is not y:
            ctx.block(sp, node.name, f"{node.op} parameter depends on activations")
            return
        ctx.tie_identity(ctx.space(x, axis), ctx.space(y, axis))
        ctx.member(node, sp, Role.PASS)

    def apply(self, node: gs.Node, ctx: Context, removed: dict[str, np.ndarray]) -> None:
        return None  # no per-channel parameters


def aligned_axis(out_rank: int, axis: int, operand_rank: int) -> int:
    return axis - (out_rank - operand_rank)


@register(*BROADCAST)
class BroadcastHandler:
    def analyze(self, node: gs.Node, ctx: Context, tensor: gs.Tensor, axis: int) -> None:
        sp = ctx.space(tensor, axis)
        y = node.outputs[0]
        found = [ctx.shape(t) for t in node.inputs]
        shapes = [s for s in found if s is not None]
        y_shape = ctx.shape(y)
        if y_shape is None or len(shapes) != len(found):
            ctx.block(sp, node.name, f"{node.op}: operand ranks unknown")
            return
        out_rank = len(y_shape)
        out_axis = axis if tensor is y else axis + (out_rank - len(ctx.shape(tensor) or []))
        y_sp = ctx.space(y, out_axis)
        ctx.member(node, y_sp, Role.PASS)
        for t, shape in zip(node.inputs, shapes):
            a = aligned_axis(out_rank, out_axis, len(shape))
            if a < 0 or shape[a] == 1:
                continue  # broadcasts over the channels
            if shape[a] != y_sp.size:
                ctx.block(y_sp, node.name, f"{node.op}: operand {t.name} has {shape[a]} channels, output {y_sp.size}")
                return
            if ctx.const(t) is not None:
                ctx.member(node, y_sp, Role.PARAM)
                continue  # sliced in apply
            ctx.tie_identity(ctx.space(t, a), y_sp)

    def apply(self, node: gs.Node, ctx: Context, removed: dict[str, np.ndarray]) -> None:
        y = node.outputs[0]
        r = removed.get(y.name)
        if r is None or not len(r):
            return
        y_sp = ctx.by_tensor[y.name]
        out_rank = len(ctx.shape(y) or [])
        for i, t in enumerate(node.inputs):
            c = ctx.const(t)
            if c is None:
                continue
            a = aligned_axis(out_rank, y_sp.axis, c.ndim)
            if a < 0 or c.shape[a] == 1:
                continue
            ir.set_input_constant(ctx.graph, node, i, np.delete(c, r, a), name=f"{node.name}_in{i}_pruned")
