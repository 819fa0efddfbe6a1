"""Pooling and reductions: per-channel when they reduce other axes, blocking otherwise.

MaxPool/AveragePool/LpPool and the Global* pools work on spatial axes, so channel c
in is channel c out. Reduce* ops and Softmax-like ops pass channels through when the
channel axis is not among the reduced (normalised) axes; with ``keepdims=0`` the
channel axis moves left by the number of reduced axes before it. When they reduce over
channels, removing a channel changes every result (a mean's denominator, a softmax's
sum), so they block.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.channels.core import Context, Role, register

POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "MaxRoiPool")
REDUCES = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


@register(*POOLS)
class PoolHandler:
    def analyze(self, node: gs.Node, ctx: Context, tensor: gs.Tensor, axis: int) -> None:
        sp = ctx.space(tensor, axis)
        if axis > 1 or tensor not in (node.inputs[0], node.outputs[0]):
            ctx.block(sp, node.name, f"{node.op} pools over axis {axis}")
            return
        if any(o.outputs or ctx.is_output(o) for o in node.outputs[1:]):
            ctx.block(sp, node.name, f"{node.op} indices output is read")
            return
        ctx.tie_identity(ctx.space(node.inputs[0], axis), ctx.space(node.outputs[0], axis))
        ctx.member(node, sp, Role.PASS)

    def apply(self, node: gs.Node, ctx: Context, removed: dict[str, np.ndarray]) -> None:
        return None


def reduce_axes(node: gs.Node, ctx: Context, rank: int) -> list[int] | None:
    """The reduced axes (normalised), [] for 'all', None when not known."""
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
        value = ctx.const(node.inputs[1])
        if value is None:
            return None
        axes = value.reshape(-1).tolist()
    if not axes:
        return [] if not int(node.attrs.get("noop_with_empty_axes", 0)) else None
    return sorted(int(a) % rank for a in axes)


@register(*REDUCES)
class ReduceHandler:
    def analyze(self, node: gs.Node, ctx: Context, tensor: gs.Tensor, axis: int) -> None:
        sp = ctx.space(tensor, axis)
        x, y = node.inputs[0], node.outputs[0]
        shape = ctx.shape(x)
        axes = reduce_axes(node, ctx, len(shape)) if shape is not None else None
        if axes is None or tensor not in (x, y):
            ctx.block(sp, node.name, f"{node.op}: reduced axes not known")
            return
        keep = int(node.attrs.get("keepdims", 1))
        if not axes:
            ctx.block(sp, node.name, f"{node.op} reduces every axis, channels included")
            return
        if tensor is y and not keep:
            ctx.block(sp, node.name, f"{node.op}: cannot map output axis back without keepdims")
            return
        if axis in axes:
            ctx.block(sp, node.name, f"{node.op} reduces over the channel axis")
            return
        out_axis = axis if keep else axis - sum(a < axis for a in axes)
        ctx.tie_identity(ctx.space(x, axis), ctx.space(y, out_axis))
        ctx.member(node, sp, Role.PASS)

    def apply(self, node: gs.Node, ctx: Context, removed: dict[str, np.ndarray]) -> None:
        return None


@register("Softmax", "LogSoftmax", "Hardmax")
class SoftmaxHandler:
    def analyze(self, node: gs.Node, ctx: Context, tensor: gs.Tensor, axis: int) -> None:
        sp = ctx.space(tensor, axis)
        shape = ctx.shape(node.inputs[0])
        if shape is None:
            ctx.block(sp, node.name, f"{node.op}: rank unknown")
            return
        opset13 = ctx.graph.opset >= 13
        soft_axis = int(node.attrs.get("axis", -1 if opset13 else 1)) % len(shape)
        # before opset 13 the input is coerced to 2-D at `axis`: every later axis is normalised too
        if axis == soft_axis or (not opset13 and axis >= soft_axis):
            ctx.block(sp, node.name, f"{node.op} normalises over the channel axis")
            return
        ctx.tie_identity(ctx.space(node.inputs[0], axis), ctx.space(node.outputs[0], axis))
        ctx.member(node, sp, Role.PASS)

    def apply(self, node: gs.Node, ctx: Context, removed: dict[str, np.ndarray]) -> None:
        return None
