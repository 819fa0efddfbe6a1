"""Flatten, Reshape, Squeeze/Unsqueeze and Transpose: following the channel axis.

A reshape that keeps the channel axis whole maps channel c to channel c (at a new
axis). A reshape that merges the channel axis with neighbours (Flatten before a
classifier, ``[N, C, H, W] → [N, C·H·W]``) maps channel c to the flat positions whose
index along the channel axis is c: a block of H·W features when C leads, an interleaved
set when it does not (NHWC). A reshape that splits the channel axis, or merges it with
the batch axis, blocks. Symbolic dims are replaced by distinct large primes so that
the same symbol cancels on both sides.
"""
from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune import ir
from onnxprune.channels.core import Context, Role, register

_PRIMES = [1000003, 1000033, 1000037, 1000039, 1000081, 1000099]


def _concrete(shape: list, symbols: dict[str, int]) -> list[int] | None:
    out = []
    for d in shape:
        if isinstance(d, int) and d >= 0:
            out.append(d)
        elif isinstance(d, str):
            if d not in symbols:
                if len(symbols) >= len(_PRIMES):
                    return None
                symbols[d] = _PRIMES[len(symbols)]
            out.append(symbols[d])
        else:
            return None
    return out


def merge_map(in_shape: list[int], axis: int, out_shape: list[int]) -> tuple[int, list[int], int] | None:
    """Where input ``axis`` lands: (output axis j, merged input dims, position of axis in them)."""
    p_in = [math.prod(in_shape[:i]) for i in range(len(in_shape) + 1)]
    p_out = [math.prod(out_shape[:j]) for j in range(len(out_shape) + 1)]
    for i0 in range(axis, -1, -1):
        js = [j for j in range(len(out_shape)) if p_out[j] == p_in[i0] and (j == len(out_shape) - 1 or out_shape[j] != 1 or in_shape[axis] == 1)]
        for j in reversed(js):
            for i1 in range(axis, len(in_shape)):
                if p_in[i1 + 1] == p_out[j + 1] and math.prod(in_shape[i0:i1 + 1]) == out_shape[j]:
                    return j, in_shape[i0:i1 + 1], axis - i0
    return None


def channel_positions(merged: list[int], pos: int, channel: int) -> np.ndarray:
    """Flat indices (within the merged dim) whose coordinate at ``pos`` is ``channel``."""
    return np.arange(math.prod(merged)).reshape(merged).take(channel, axis=pos).ravel()


def _tie_through(node: gs.Node, ctx: Context, tensor: gs.Tensor, axis: int, out_shape_raw: list | None) -> bool:
    """Relate input 0 and output 0 of a shape-changing node; False (blocked) when it cannot."""
    x, y = node.inputs[0], node.outputs[0]
    sp = ctx.space(tensor, axis)
    symbols: dict[str, int] = {}
    xs = _concrete(ctx.shape(x) or [None], symbols)
    ys = _concrete(out_shape_raw or [None], symbols)
    if xs is None or ys is None or math.prod(xs) != math.prod(ys):
        ctx.block(sp, node.name, f"{node.op}: shapes not known statically")
        return False
    if tensor is y and x.name in ctx.by_tensor:
        return True  # related when the input side was analysed
    if tensor is y:
        # find the input axis that lands on output axis `axis` unmerged
        cands = [a for a in range(len(xs)) if (m := merge_map(xs, a, ys)) is not None and m[0] == axis]
        cands = [a for a in cands if xs[a] > 1] or cands
        if len(cands) != 1 or merge_map(xs, cands[0], ys)[1] != [xs[cands[0]]]:  # type: ignore[index]
            ctx.block(sp, node.name, f"{node.op} merges several axes into the channel axis")
            return False
        x_axis = cands[0]
    else:
        x_axis = axis
    m = merge_map(xs, x_axis, ys)
    if m is None:
        ctx.block(sp, node.name, f"{node.op} splits the channel axis")
        return False
    j, merged, pos = m
    if any(d in _PRIMES for i, d in enumerate(merged) if i != pos):
        ctx.block(sp, node.name, f"{node.op} merges the channel axis with the batch axis")
        return False
    x_sp = ctx.space(x, x_axis)
    y_sp = ctx.space(y, j, ys[j])
    c = x_sp.size
    pairs_y = np.concatenate([channel_positions(merged, pos, k) for k in range(c)])
    pairs_x = np.repeat(np.arange(c), len(pairs_y) // c)
    ctx.tie(x_sp, pairs_x, y_sp, pairs_y)
    ctx.member(node, x_sp, Role.PASS)
    return True


def _shape_pieces(node: gs.Node, ctx: Context) -> list | None:
    """The Reshape target as a list of ints and ('dim', tensor, index) references, if traceable."""
    t = node.inputs[1]
    value = ctx.const(t)
    if value is not None:
        return [int(v) for v in value.reshape(-1)]
    prod = ir.producer(t)
    if prod is None or prod.op != "Concat":
        return None
    pieces: list = []
    for part in prod.inputs:
        v = ctx.const(part)
        if v is not None:
            pieces += [int(x) for x in v.reshape(-1)]
            continue
        p = ir.producer(part)
        if p is not None and p.op == "Unsqueeze":
            p = ir.producer(p.inputs[0])
        shape_op = ir.producer(p.inputs[0]) if p is not None and p.op == "Gather" else None
        if p is None or shape_op is None or shape_op.op != "Shape":
            return None
        idx = ctx.const(p.inputs[1])
        src = shape_op.inputs[0]
        if idx is None:
            return None
        pieces += [("dim", src, int(i)) for i in idx.reshape(-1)]
    return pieces


def reshape_target(node: gs.Node, ctx: Context) -> list | None:
    """Reshape's output shape with symbolic dims kept, resolving 0 and -1."""
    x_shape = ctx.shape(node.inputs[0])
    pieces = _shape_pieces(node, ctx)
    if x_shape is None or pieces is None or int(node.attrs.get("allowzero", 0)):
        return ctx.shape(node.outputs[0])
    dims: list = []
    for i, p in enumerate(pieces):
        if isinstance(p, tuple):
            src_shape = ctx.shape(p[1])
            dims.append(src_shape[p[2]] if src_shape is not None and p[2] < len(src_shape) else None)
        elif p == 0:
            dims.append(x_shape[i] if i < len(x_shape) else None)
        else:
            dims.append(p)
    if dims.count(-1) == 1:
        symbols: dict[str, int] = {}
        xs = _concrete(x_shape, symbols)
        known = _concrete([d for d in dims if d != -1], symbols)
        if xs is None or known is None or math.prod(known) == 0 or math.prod(xs) % math.prod(known):
            return ctx.shape(node.outputs[0])
        rest = math.prod(xs) // math.prod(known)
        inverse = {v: k for k, v in symbols.items()}
        dims[dims.index(-1)] = inverse.get(rest, rest)
    return dims


@register("Reshape")
class ReshapeHandler:
    def analyze(self, node: gs.Node, ctx: Context, tensor: gs.Tensor, axis: int) -> None:
        if tensor is not node.inputs[0] and tensor is not node.outputs[0]:
            ctx.block(ctx.space(tensor, axis), node.name, "Reshape: channels in its shape input")
            return
        target = reshape_target(node, ctx)
        if target is not None and node.outputs[0].shape is None:
            node.outputs[0].shape = target  # annotate for the ops after it
        if not _tie_through(node, ctx, tensor, axis, target):
            return
        pieces = _shape_pieces(node, ctx)
        j = ctx.by_tensor[node.outputs[0].name].axis
        if pieces is None:
            ctx.block(ctx.space(tensor, axis), node.name, "Reshape: target shape is computed in a way onnxprune cannot rewrite")
        elif ctx.const(node.inputs[1]) is None and not (isinstance(pieces[j], tuple) or pieces[j] == -1):
            ctx.block(ctx.space(tensor, axis), node.name, "Reshape: computed target shape names the channel count")

    def apply(self, node: gs.Node, ctx: Context, removed: dict[str, np.ndarray]) -> None:
        y_sp = ctx.by_tensor[node.outputs[0].name]
        r = removed.get(y_sp.tensor)
        value = ctx.const(node.inputs[1])
        if r is None or not len(r) or value is None:
            return
        value = value.copy()
        if value[y_sp.axis] > 0:
            value[y_sp.axis] -= len(r)
            ir.set_input_constant(ctx.graph, node, 1, value, name=f"{node.name}_shape_pruned")


@register("Flatten", "Squeeze", "Unsqueeze")
class FlattenHandler:
    def analyze(self, node: gs.Node, ctx: Context, tensor: gs.Tensor, axis: int) -> None:
        if tensor is not node.inputs[0] and tensor is not node.outputs[0]:
            ctx.block(ctx.space(tensor, axis), node.name, f"{node.op}: channels in its axes input")
            return
        out = ctx.shape(node.outputs[0])
        x_shape = ctx.shape(node.inputs[0])
        if out is None and node.op == "Flatten" and x_shape is not None:
            a = int(node.attrs.get("axis", 1)) % (len(x_shape) or 1)
            symbols: dict[str, int] = {}
            xs = _concrete(x_shape, symbols)
            if xs is not None:
                inverse = {v: k for k, v in symbols.items()}
                out = [inverse.get(math.prod(xs[:a]), math.prod(xs[:a])), inverse.get(math.prod(xs[a:]), math.prod(xs[a:]))]
        _tie_through(node, ctx, tensor, axis, out)

    def apply(self, node: gs.Node, ctx: Context, removed: dict[str, np.ndarray]) -> None:
        return None


@register("Transpose")
class TransposeHandler:
    def analyze(self, node: gs.Node, ctx: Context, tensor: gs.Tensor, axis: int) -> None:
        sp = ctx.space(tensor, axis)
        shape = ctx.shape(node.inputs[0])
        if shape is None:
            ctx.block(sp, node.name, "Transpose: rank unknown")
            return
        perm = list(node.attrs.get("perm", list(range(len(shape)))[::-1]))
        x_axis = axis if tensor is node.inputs[0] else perm[axis]
        ctx.tie_identity(ctx.space(node.inputs[0], x_axis), ctx.space(node.outputs[0], perm.index(x_axis)))
        ctx.member(node, sp, Role.PASS)

    def apply(self, node: gs.Node, ctx: Context, removed: dict[str, np.ndarray]) -> None:
        return None


@register("Shape")
class ShapeHandler:
    """Reading a tensor's shape is harmless unless the channel count itself is used."""

    def analyze(self, node: gs.Node, ctx: Context, tensor: gs.Tensor, axis: int) -> None:
        sp = ctx.space(tensor, axis)
        rank = len(ctx.shape(tensor) or [])
        start = int(node.attrs.get("start", 0)) % (rank or 1)
        end = int(node.attrs.get("end", rank)) if "end" in node.attrs else rank
        end = end % (rank + 1) if end < 0 else min(end, rank)
        for reader in node.outputs[0].outputs:
            idx = ctx.const(reader.inputs[1]) if reader.op == "Gather" and len(reader.inputs) > 1 else None
            if idx is None or any(int(i) % (end - start) + start == axis for i in idx.reshape(-1)):
                ctx.block(sp, node.name, "Shape: the channel count is read at run time")
                return
        if ctx.is_output(node.outputs[0]):
            ctx.block(sp, node.name, "Shape is a model output")
            return
        ctx.member(node, sp, Role.PASS)

    def apply(self, node: gs.Node, ctx: Context, removed: dict[str, np.ndarray]) -> None:
        return None
