"""Resize/Upsample and Pad: spatial ops that carry channels through unchanged.

They pass channels when they leave the channel axis alone (scale 1, no padding on it).
A constant ``sizes`` input of Resize names the channel count and is rewritten.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune import ir
from onnxprune.channels.core import Context, Role, register


@register("Resize", "Upsample")
class ResizeHandler:
    def analyze(self, node: gs.Node, ctx: Context, tensor: gs.Tensor, axis: int) -> None:
        sp = ctx.space(tensor, axis)
        if tensor not in (node.inputs[0], node.outputs[0]):
            ctx.block(sp, node.name, f"{node.op}: channels in its scales or sizes")
            return
        names = ["roi", "scales", "sizes"] if node.op == "Resize" and len(node.inputs) > 2 else ["scales"]
        for name, t in zip(names, node.inputs[1:]):
            if not t.name or name == "roi":
                continue
            value = ctx.const(t)
            if value is None or value.size == 0:
                if value is None:
                    ctx.block(sp, node.name, f"{node.op}: {name} is computed at run time")
                    return
                continue
            if name == "scales" and float(value.reshape(-1)[axis]) != 1.0:
                ctx.block(sp, node.name, f"{node.op} scales the channel axis")
                return
        if "scales" in node.attrs and float(node.attrs["scales"][axis]) != 1.0:
            ctx.block(sp, node.name, f"{node.op} scales the channel axis")
            return
        ctx.tie_identity(ctx.space(node.inputs[0], axis), ctx.space(node.outputs[0], axis))
        ctx.member(node, sp, Role.PASS)

    def apply(self, node: gs.Node, ctx: Context, removed: dict[str, np.ndarray]) -> None:
        r = removed.get(node.outputs[0].name)
        if r is None or not len(r) or node.op != "Resize" or len(node.inputs) < 4 or not node.inputs[3].name:
            return
        sizes = ctx.const(node.inputs[3]).copy()  # type: ignore[union-attr]
        axis = ctx.by_tensor[node.outputs[0].name].axis
        sizes[axis] -= len(r)
        ir.set_input_constant(ctx.graph, node, 3, sizes, name=f"{node.name}_sizes_pruned")


@register("Pad")
class PadHandler:
    def analyze(self, node: gs.Node, ctx: Context, tensor: gs.Tensor, axis: int) -> None:
        sp = ctx.space(tensor, axis)
        shape = ctx.shape(node.inputs[0])
        if tensor not in (node.inputs[0], node.outputs[0]) or shape is None:
            ctx.block(sp, node.name, "Pad: rank unknown or channels in its pads")
            return
        rank = len(shape)
        pads = node.attrs.get("pads")
        if pads is None:
            value = ctx.const(node.inputs[1]) if len(node.inputs) > 1 else None
            if value is None:
                ctx.block(sp, node.name, "Pad: pads computed at run time")
                return
            pads = value.reshape(-1).tolist()
            if len(node.inputs) > 3 and node.inputs[3].name:
                ax = ctx.const(node.inputs[3])
                if ax is None:
                    ctx.block(sp, node.name, "Pad: axes computed at run time")
                    return
                full = [0] * (2 * rank)
                axes = [int(a) % rank for a in ax.reshape(-1)]
                for i, a in enumerate(axes):
                    full[a], full[a + rank] = pads[i], pads[i + len(axes)]
                pads = full
        if pads[axis] != 0 or pads[axis + rank] != 0:
            ctx.block(sp, node.name, "Pad pads the channel axis")
            return
        ctx.tie_identity(ctx.space(node.inputs[0], axis), ctx.space(node.outputs[0], axis))
        ctx.member(node, sp, Role.PASS)

    def apply(self, node: gs.Node, ctx: Context, removed: dict[str, np.ndarray]) -> None:
        return None
