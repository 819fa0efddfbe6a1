"""Concat, Split and Slice: channels as index ranges with offsets.

Concat on the channel axis places input i's channel c at ``offset_i + c``; Split is the
inverse; Slice with step 1 maps output channel j to input channel ``start + j``. When
they work on another axis they pass channels through, tying every operand. After
pruning, split sizes and slice bounds are rewritten to the kept counts.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune import ir
from onnxprune.channels.core import Context, Role, Space, register

INT64_MAX = np.iinfo(np.int64).max


def _dim(ctx: Context, t: gs.Tensor, axis: int) -> int | None:
    shape = ctx.shape(t)
    d = shape[axis] if shape is not None and axis < len(shape) else None
    return d if isinstance(d, int) else None


def _offsets(sizes: list[int]) -> list[int]:
    return [int(x) for x in np.concatenate([[0], np.cumsum(sizes)[:-1]])]


@register("Concat")
class ConcatHandler:
    def analyze(self, node: gs.Node, ctx: Context, tensor: gs.Tensor, axis: int) -> None:
        sp = ctx.space(tensor, axis)
        y = node.outputs[0]
        rank = len(ctx.shape(y) or ctx.shape(tensor) or [])
        cat_axis = int(node.attrs["axis"]) % rank if rank else None
        found = [_dim(ctx, t, axis) for t in node.inputs]
        sizes = [s for s in found if s is not None]
        if cat_axis is None or len(sizes) != len(found):
            ctx.block(sp, node.name, "Concat: operand shapes unknown")
            return
        y_sp = ctx.space(y, axis, sum(sizes) if cat_axis == axis else None)
        ctx.member(node, y_sp, Role.PASS)
        for t, size, off in zip(node.inputs, sizes, _offsets(sizes)):
            if ctx.const(t) is not None:
                continue  # constant channels are sliced in apply
            x_sp = ctx.space(t, axis)
            idx = np.arange(size)
            ctx.tie(x_sp, idx, y_sp, idx + off if cat_axis == axis else idx)

    def apply(self, node: gs.Node, ctx: Context, removed: dict[str, np.ndarray]) -> None:
        y_sp = ctx.by_tensor[node.outputs[0].name]
        r = removed.get(y_sp.tensor)
        if r is None or not len(r):
            return
        rank = len(ctx.shape(node.outputs[0]) or [])
        along = int(node.attrs["axis"]) % rank == y_sp.axis
        sizes = [_dim(ctx, t, y_sp.axis) or 0 for t in node.inputs]  # all known: analysis checked
        for i, (t, size, off) in enumerate(zip(node.inputs, sizes, _offsets(sizes))):
            c = ctx.const(t)
            if c is None:
                continue
            local = r[(r >= off) & (r < off + size)] - off if along else r
            if len(local):
                ir.set_input_constant(ctx.graph, node, i, np.delete(c, local, y_sp.axis), name=f"{node.name}_in{i}_pruned")


def split_sizes(node: gs.Node, ctx: Context, total: int) -> list[int] | None:
    if "split" in node.attrs:
        return [int(s) for s in node.attrs["split"]]
    if len(node.inputs) > 1 and node.inputs[1].name:
        value = ctx.const(node.inputs[1])
        return None if value is None else [int(s) for s in value.reshape(-1)]
    n = int(node.attrs.get("num_outputs", len(node.outputs)))
    size = -(-total // n)  # ceil: the last part may be smaller (opset 18)
    return [size] * (n - 1) + [total - size * (n - 1)]


@register("Split")
class SplitHandler:
    def analyze(self, node: gs.Node, ctx: Context, tensor: gs.Tensor, axis: int) -> None:
        sp = ctx.space(tensor, axis)
        x = node.inputs[0]
        rank = len(ctx.shape(x) or [])
        total = _dim(ctx, x, axis)
        if not rank or total is None or (tensor is not x and tensor not in node.outputs):
            ctx.block(sp, node.name, "Split: shapes unknown or channels in its sizes")
            return
        split_axis = int(node.attrs.get("axis", 0)) % rank
        x_sp = ctx.space(x, axis)
        if split_axis != axis:
            for o in node.outputs:
                ctx.tie_identity(x_sp, ctx.space(o, axis))
            ctx.member(node, x_sp, Role.PASS)
            return
        sizes = split_sizes(node, ctx, total)
        if sizes is None:
            ctx.block(sp, node.name, "Split: sizes computed at run time")
            return
        for o, size, off in zip(node.outputs, sizes, _offsets(sizes)):
            idx = np.arange(size)
            ctx.tie(x_sp, idx + off, ctx.space(o, axis, size), idx)
        ctx.member(node, x_sp, Role.PASS)

    def apply(self, node: gs.Node, ctx: Context, removed: dict[str, np.ndarray]) -> None:
        x_sp = ctx.by_tensor[node.inputs[0].name]
        r = removed.get(x_sp.tensor)
        rank = len(ctx.shape(node.inputs[0]) or [])
        if r is None or not len(r) or int(node.attrs.get("axis", 0)) % rank != x_sp.axis:
            return
        sizes = split_sizes(node, ctx, x_sp.size)
        assert sizes is not None
        new = [size - int(((r >= off) & (r < off + size)).sum()) for size, off in zip(sizes, _offsets(sizes))]
        if "split" in node.attrs or ctx.graph.opset < 13:
            node.attrs["split"] = new
        else:
            node.attrs.pop("num_outputs", None)
            ir.set_input_constant(ctx.graph, node, 1, np.array(new, dtype=np.int64), name=f"{node.name}_split_pruned")


def slice_params(node: gs.Node, ctx: Context, rank: int) -> dict[int, tuple[int, int, int]] | None:
    """axis -> (start, end, step) as written (not clamped); None when not constant."""
    if "starts" in node.attrs:  # opset < 10
        starts, ends = node.attrs["starts"], node.attrs["ends"]
        axes = node.attrs.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        vals = [ctx.const(t) if t.name else None for t in node.inputs[1:]]
        if any(v is None for v in vals[:2]) or (len(vals) > 2 and node.inputs[3].name and vals[2] is None) or \
                (len(vals) > 3 and node.inputs[4].name and vals[3] is None):
            return None
        starts, ends = vals[0].reshape(-1).tolist(), vals[1].reshape(-1).tolist()  # type: ignore[union-attr]
        axes = vals[2].reshape(-1).tolist() if len(vals) > 2 and vals[2] is not None else list(range(len(starts)))
        steps = vals[3].reshape(-1).tolist() if len(vals) > 3 and vals[3] is not None else [1] * len(starts)
    return {int(a) % rank: (int(s), int(e), int(st)) for a, s, e, st in zip(axes, starts, ends, steps)}


def _clamp(start: int, end: int, size: int) -> tuple[int, int]:
    start = start + size if start < 0 else start
    end = end + size if end < 0 else end
    return max(0, min(start, size)), max(0, min(end, size))


@register("Slice")
class SliceHandler:
    def analyze(self, node: gs.Node, ctx: Context, tensor: gs.Tensor, axis: int) -> None:
        sp = ctx.space(tensor, axis)
        x, y = node.inputs[0], node.outputs[0]
        rank = len(ctx.shape(x) or [])
        params = slice_params(node, ctx, rank) if rank else None
        if params is None or tensor not in (x, y):
            ctx.block(sp, node.name, "Slice: bounds computed at run time")
            return
        if axis not in params:
            ctx.tie_identity(ctx.space(x, axis), ctx.space(y, axis))
            ctx.member(node, sp, Role.PASS)
            return
        start, end, step = params[axis]
        total = _dim(ctx, x, axis)
        if step != 1 or total is None:
            ctx.block(sp, node.name, "Slice on the channel axis with a step other than 1")
            return
        s, e = _clamp(start, end, total)
        x_sp = ctx.space(x, axis)
        y_sp: Space = ctx.space(y, axis, max(e - s, 0))
        idx = np.arange(y_sp.size)
        ctx.tie(x_sp, idx + s, y_sp, idx)
        ctx.member(node, x_sp, Role.PASS)

    def apply(self, node: gs.Node, ctx: Context, removed: dict[str, np.ndarray]) -> None:
        x_sp = ctx.by_tensor[node.inputs[0].name]
        r = removed.get(x_sp.tensor)
        rank = len(ctx.shape(node.inputs[0]) or [])
        params = slice_params(node, ctx, rank)
        if r is None or not len(r) or params is None or x_sp.axis not in params:
            return
        start, end, _ = params[x_sp.axis]
        s, e = _clamp(start, end, x_sp.size)
        new_s = s - int((r < s).sum())
        new_e = new_s + (e - s) - int(((r >= s) & (r < e)).sum())
        if "starts" in node.attrs:
            axes = node.attrs.get("axes", list(range(len(node.attrs["starts"]))))
            k = [int(a) % rank for a in axes].index(x_sp.axis)
            node.attrs["starts"] = [new_s if i == k else v for i, v in enumerate(node.attrs["starts"])]
            node.attrs["ends"] = [new_e if i == k else v for i, v in enumerate(node.attrs["ends"])]
            return
        axes_t = ctx.const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
        axes = axes_t.reshape(-1).tolist() if axes_t is not None else list(range(len(params)))
        k = [int(a) % rank for a in axes].index(x_sp.axis)
        for i, value in ((1, new_s), (2, new_e)):
            arr = ctx.const(node.inputs[i]).copy()  # type: ignore[union-attr]
            arr.reshape(-1)[k] = value
            ir.set_input_constant(ctx.graph, node, i, arr, name=f"{node.name}_in{i}_pruned")
