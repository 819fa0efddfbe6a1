"""Conv and ConvTranspose: filters are sources, input channels are consumed.

Conv weight W[Cout, Cin/g, k...]; ConvTranspose weight W[Cin, Cout/g, k...].
With g = 1 the input and output channels are independent. With g > 1 each group's
input and output channels are tied into one atom (whole groups go or stay); a
depthwise conv (g = Cin) ties input channel i to its Cout/Cin outputs, so removing
channel i removes its filters and ``group`` shrinks with it.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune import ir
from onnxprune.channels.core import Context, Role, register


def _group_ties(ctx: Context, x_sp, y_sp, g: int) -> None:
    cin, cout = x_sp.size, y_sp.size
    if cin % g or cout % g:
        raise ValueError("channels not divisible by group")
    ci, co = cin // g, cout // g
    for k in range(g):
        xs = np.arange(k * ci, (k + 1) * ci)
        ys = np.arange(k * co, (k + 1) * co)
        # every channel of group k, in and out, in one atom
        ctx.tie(x_sp, np.repeat(xs[:1], len(xs)), x_sp, xs)
        ctx.tie(y_sp, np.repeat(ys[:1], len(ys)), y_sp, ys)
        ctx.tie(x_sp, xs[:1], y_sp, ys[:1])


@register("Conv", "ConvTranspose")
class ConvHandler:
    def seed(self, node: gs.Node, ctx: Context) -> None:
        w = ctx.const(node.inputs[1])
        if node.domain:
            return
        if w is None:
            # e.g. NFNet's weight standardisation left as nodes (a model too large to fold)
            ctx.not_sources.append((node.name, "weight computed at run time, not a constant"))
            return
        if len(node.inputs) > 2 and node.inputs[2].name and ctx.const(node.inputs[2]) is None:
            ctx.not_sources.append((node.name, "bias computed at run time, not a constant"))
            return
        g = int(node.attrs.get("group", 1))
        # grouped: the input's channels are tied to the output's, so its space comes first
        # (a Conflict here, e.g. an unknown input channel count, leaves the conv unseeded)
        x_sp = ctx.space(node.inputs[0], 1) if g > 1 else None
        y = node.outputs[0]
        sp = ctx.space(y, 1, self._cout(node, w))
        ctx.member(node, sp, Role.SOURCE, self._out_rows(node, w))
        if x_sp is not None:
            _group_ties(ctx, x_sp, sp, g)

    @staticmethod
    def _cout(node: gs.Node, w: np.ndarray) -> int:
        return w.shape[0] if node.op == "Conv" else w.shape[1] * int(node.attrs.get("group", 1))

    @staticmethod
    def _out_rows(node: gs.Node, w: np.ndarray) -> np.ndarray:
        if node.op == "Conv":
            return w.reshape(w.shape[0], -1)
        g = int(node.attrs.get("group", 1))
        cin, cog = w.shape[0], w.shape[1]
        # [g, Cin/g, Cout/g, k] -> [g, Cout/g, Cin/g * k] -> rows per output channel
        return np.moveaxis(w.reshape((g, cin // g, cog, -1)), 2, 1).reshape(g * cog, -1)

    @staticmethod
    def _in_rows(node: gs.Node, w: np.ndarray) -> np.ndarray | None:
        if int(node.attrs.get("group", 1)) != 1:
            return None
        # channels first as a view: reshaping this one to rows would copy the whole weight
        return np.moveaxis(w, 1, 0) if node.op == "Conv" else w

    def analyze(self, node: gs.Node, ctx: Context, tensor: gs.Tensor, axis: int) -> None:
        w = ctx.const(node.inputs[1])
        sp = ctx.space(tensor, axis)
        if w is None:
            ctx.block(sp, node.name, f"{node.op} weight is not a constant")
            return
        if axis != 1:
            ctx.block(sp, node.name, f"{node.op} reads channels on axis {axis}, expected 1")
            return
        if tensor is not node.inputs[0]:
            if tensor is node.outputs[0]:
                g = int(node.attrs.get("group", 1))
                if g > 1:  # whole groups, in and out, whichever side was reached first
                    _group_ties(ctx, ctx.space(node.inputs[0], 1), sp, g)
                return
            ctx.block(sp, node.name, f"{node.op} bias or weight depends on activations")
            return
        g = int(node.attrs.get("group", 1))
        ctx.member(node, sp, Role.CONSUMER, self._in_rows(node, w))
        if g > 1:
            y_sp = ctx.space(node.outputs[0], 1, self._cout(node, w))
            _group_ties(ctx, sp, y_sp, g)

    def apply(self, node: gs.Node, ctx: Context, removed: dict[str, np.ndarray]) -> None:
        w = ctx.const(node.inputs[1])
        assert w is not None
        g = int(node.attrs.get("group", 1))
        r_in = removed.get(node.inputs[0].name, np.empty(0, np.int64))
        r_out = removed.get(node.outputs[0].name, np.empty(0, np.int64))
        if not len(r_in) and not len(r_out):
            return
        if g == 1:
            in_axis, out_axis = (1, 0) if node.op == "Conv" else (0, 1)
            w = np.delete(np.delete(w, r_in, in_axis), r_out, out_axis)
        else:
            # whole groups (or depthwise channels) go: drop the filters of removed outputs
            cin = ctx.space(node.inputs[0], 1).size
            cout = self._cout(node, ctx.const(node.inputs[1]))  # type: ignore[arg-type]
            removed_groups = len(r_in) // (cin // g)
            assert len(r_out) == removed_groups * (cout // g), f"{node.name}: partial group removal"
            if node.op == "Conv":
                w = np.delete(w, r_out, 0)
            else:
                w = np.delete(w, r_in, 0)
            node.attrs["group"] = g - removed_groups
        ir.set_input_constant(ctx.graph, node, 1, w, name=f"{node.name}_W_pruned")
        if len(node.inputs) > 2 and node.inputs[2].name and len(r_out):
            b = ctx.const(node.inputs[2])
            assert b is not None
            ir.set_input_constant(ctx.graph, node, 2, np.delete(b, r_out, 0), name=f"{node.name}_B_pruned")
