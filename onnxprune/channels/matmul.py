"""Gemm and MatMul with a constant weight: output columns are sources, the contracted
axis is consumed.

Gemm: Y = α·A'·B' + β·C with A' = Aᵀ if transA, B' = Bᵀ if transB. The channels of A
on its K axis index the rows of B'; the columns of B' (and C's last axis) are output
channels. MatMul X[..., K] @ W[K, N] likewise; channels on a leading axis of X pass
through to the same axis of Y.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune import ir
from onnxprune.channels.core import Context, Role, register


def _weight_kn(node: gs.Node, w: np.ndarray) -> np.ndarray:
    """The weight as B'[K, N]."""
    return w.T if node.op == "Gemm" and int(node.attrs.get("transB", 0)) else w


@register("Gemm", "MatMul")
class MatMulHandler:
    def seed(self, node: gs.Node, ctx: Context) -> None:
        w = ctx.const(node.inputs[1])
        if w is None or w.ndim != 2 or ctx.const(node.inputs[0]) is not None:
            return
        if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name and ctx.const(node.inputs[2]) is None:
            return
        y = node.outputs[0]
        shape = ctx.shape(y)
        if node.op == "MatMul" and shape is None:
            x_shape = ctx.shape(node.inputs[0])
            if x_shape is None:
                return
            shape = list(x_shape[:-1]) + [w.shape[1]]
            y.shape = shape
        kn = _weight_kn(node, w)
        sp = ctx.space(y, 1 if node.op == "Gemm" else len(shape) - 1, kn.shape[1])  # type: ignore[arg-type]
        ctx.member(node, sp, Role.SOURCE, kn.T)

    def analyze(self, node: gs.Node, ctx: Context, tensor: gs.Tensor, axis: int) -> None:
        sp = ctx.space(tensor, axis)
        a, y = node.inputs[0], node.outputs[0]
        w = ctx.const(node.inputs[1])
        if tensor is y and w is not None and w.ndim == 2:
            return  # seeded as a source
        if tensor is not a or w is None or w.ndim != 2:
            ctx.block(sp, node.name, f"{node.op} of two activations (or with a batched weight)")
            return
        rank = len(ctx.shape(a) or [])
        k_axis = (0 if int(node.attrs.get("transA", 0)) else 1) if node.op == "Gemm" else rank - 1
        if axis == k_axis:
            ctx.member(node, sp, Role.CONSUMER, _weight_kn(node, w))
            return
        if node.op == "MatMul" and 0 <= axis < rank - 1 and rank >= 2 and axis != rank - 2:
            y_shape = ctx.shape(y)
            ctx.tie_identity(sp, ctx.space(y, axis + (len(y_shape) - rank if y_shape else 0)))
            ctx.member(node, sp, Role.PASS)
            return
        ctx.block(sp, node.name, f"{node.op} carries these channels on its row axis")

    def apply(self, node: gs.Node, ctx: Context, removed: dict[str, np.ndarray]) -> None:
        w = ctx.const(node.inputs[1])
        if w is None:
            return
        a_sp = ctx.by_tensor.get(node.inputs[0].name)
        rank = len(ctx.shape(node.inputs[0]) or [])
        k_axis = (0 if int(node.attrs.get("transA", 0)) else 1) if node.op == "Gemm" else rank - 1
        r_in = removed.get(node.inputs[0].name) if a_sp is not None and a_sp.axis == k_axis else None
        y_sp = ctx.by_tensor.get(node.outputs[0].name)
        seeded = y_sp is not None and any(m.node == node.name and m.role is Role.SOURCE for m in ctx.members)
        r_out = removed.get(node.outputs[0].name) if seeded else None
        trans_b = node.op == "Gemm" and int(node.attrs.get("transB", 0))
        k_w, n_w = (1, 0) if trans_b else (0, 1)
        changed = False
        if r_in is not None and len(r_in):
            w = np.delete(w, r_in, k_w)
            changed = True
        if r_out is not None and len(r_out):
            w = np.delete(w, r_out, n_w)
            changed = True
            if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name:
                c = ctx.const(node.inputs[2])
                assert c is not None
                if c.ndim >= 1 and c.shape[-1] > 1:
                    ir.set_input_constant(ctx.graph, node, 2, np.delete(c, r_out, c.ndim - 1), name=f"{node.name}_C_pruned")
        if changed:
            ir.set_input_constant(ctx.graph, node, 1, w, name=f"{node.name}_W_pruned")
