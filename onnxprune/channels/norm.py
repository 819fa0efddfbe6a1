"""Normalisations.

BatchNormalization and InstanceNormalization normalise each channel on its own: the
output channel c is the input channel c, and the per-channel parameters are sliced.
GroupNormalization normalises within groups: whole groups are tied into one atom and
``num_groups`` shrinks. LayerNormalization that normalises over the channel axis
mixes channels (removing one changes every other's statistics), so it blocks; over
other axes it passes channels through, slicing nothing.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune import ir
from onnxprune.channels.core import Context, Role, register


@register("BatchNormalization", "InstanceNormalization")
class PerChannelNorm:
    def analyze(self, node: gs.Node, ctx: Context, tensor: gs.Tensor, axis: int) -> None:
        sp = ctx.space(tensor, axis)
        if tensor is not node.inputs[0] and tensor is not node.outputs[0]:
            ctx.block(sp, node.name, f"{node.op} parameters depend on activations")
            return
        if axis != 1:
            ctx.block(sp, node.name, f"{node.op} normalises axis 1, channels are on {axis}")
            return
        if any(o.outputs or ctx.is_output(o) for o in node.outputs[1:]):
            ctx.block(sp, node.name, f"{node.op} running statistics are read (training mode)")
            return
        if any(ctx.const(t) is None for t in node.inputs[1:]):
            ctx.block(sp, node.name, f"{node.op} parameters are not constants")
            return
        ctx.tie_identity(ctx.space(node.inputs[0], 1), ctx.space(node.outputs[0], 1))
        gamma = ctx.const(node.inputs[1])
        ctx.member(node, sp, Role.PARAM, np.abs(gamma).reshape(-1, 1) if gamma is not None else None)

    def apply(self, node: gs.Node, ctx: Context, removed: dict[str, np.ndarray]) -> None:
        r = removed.get(node.outputs[0].name)
        if r is None or not len(r):
            return
        for i in range(1, len(node.inputs)):
            c = ctx.const(node.inputs[i])
            assert c is not None
            ir.set_input_constant(ctx.graph, node, i, np.delete(c, r, 0), name=f"{node.name}_in{i}_pruned")


@register("GroupNormalization")
class GroupNorm:
    def analyze(self, node: gs.Node, ctx: Context, tensor: gs.Tensor, axis: int) -> None:
        sp = ctx.space(tensor, axis)
        g = int(node.attrs.get("num_groups", 1))
        if axis != 1 or tensor not in (node.inputs[0], node.outputs[0]) or sp.size % g:
            ctx.block(sp, node.name, "GroupNormalization: channels not on axis 1 or not divisible by groups")
            return
        x_sp, y_sp = ctx.space(node.inputs[0], 1), ctx.space(node.outputs[0], 1)
        ctx.tie_identity(x_sp, y_sp)
        per = sp.size // g
        for k in range(g):
            idx = np.arange(k * per, (k + 1) * per)
            ctx.tie(x_sp, np.repeat(idx[:1], per), x_sp, idx)
        ctx.member(node, sp, Role.PARAM)

    def apply(self, node: gs.Node, ctx: Context, removed: dict[str, np.ndarray]) -> None:
        r = removed.get(node.outputs[0].name)
        if r is None or not len(r):
            return
        sp = ctx.by_tensor[node.outputs[0].name]
        g = int(node.attrs.get("num_groups", 1))
        per = sp.size // g
        gone_groups = np.unique(r // per)
        for i in (1, 2):
            c = ctx.const(node.inputs[i])
            assert c is not None
            # opset 18 keeps one scale per group, opset 21 one per channel
            cut = gone_groups if c.shape[0] == g else r
            ir.set_input_constant(ctx.graph, node, i, np.delete(c, cut, 0), name=f"{node.name}_in{i}_pruned")
        node.attrs["num_groups"] = g - len(gone_groups)


@register("LayerNormalization")
class LayerNorm:
    def analyze(self, node: gs.Node, ctx: Context, tensor: gs.Tensor, axis: int) -> None:
        sp = ctx.space(tensor, axis)
        shape = ctx.shape(node.inputs[0])
        if shape is None or tensor not in (node.inputs[0], node.outputs[0]):
            ctx.block(sp, node.name, "LayerNormalization: rank unknown or channels in its parameters")
            return
        first = int(node.attrs.get("axis", -1)) % len(shape)
        if axis >= first:
            ctx.block(sp, node.name, "LayerNormalization normalises over the channel axis")
            return
        ctx.tie_identity(ctx.space(node.inputs[0], axis), ctx.space(node.outputs[0], axis))
        ctx.member(node, sp, Role.PASS)

    def apply(self, node: gs.Node, ctx: Context, removed: dict[str, np.ndarray]) -> None:
        return None
