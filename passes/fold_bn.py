"""fold-bn: fold BatchNormalization, and per-channel constant Mul/Add/Sub/Div, into the
preceding Conv, ConvTranspose or Gemm.

Before::   X ─Conv(W, b)─▶ Y ─BatchNormalization(γ, β, μ, σ², ε)─▶ Z
After::    X ─Conv(W', b')─▶ Z

With s = γ / sqrt(σ² + ε) and t = β − μ·s (one value per output channel c):

* Conv            W'[c, ...]                    = W[c, ...] · s[c]
* ConvTranspose   W[i, j, ...] for group g, out channel c = g·(Cout/G) + j: W'[i, j] = W[i, j] · s[c]
* Gemm            B' = α·B·s along N (rows of B when transB, columns otherwise), α' = 1
* bias            b' = b·s + t   (Gemm: C' = β·C·s + t, β' = 1)

A following ``Mul`` by a per-channel constant c is the affine map (s, t) = (c, 0); ``Add``
is (1, c); ``x − c`` is (1, −c); ``x / c`` is (1/c, 0). The pass repeats until nothing
more folds, so Conv→BN→Mul→Add chains collapse to one Conv. Exact up to float rounding.

A fold is skipped (and the reason recorded for BatchNormalization) when the producer's
output is read elsewhere or is a graph output, the weights are not constant, the BN is
in training mode or non-spatial, or the constant is not per-channel.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune import ir
from onnxprune.context import PassContext
from onnxprune.manager import Pass, PassResult
from onnxprune.model import Model

PRODUCERS = ("Conv", "ConvTranspose", "Gemm")
AFFINE_OPS = ("BatchNormalization", "Mul", "Add", "Sub", "Div")


class Skip(Exception):
    """This fold does not apply; the message says why."""


@dataclass(frozen=True)
class Options:
    """fold-bn has no options: every foldable BatchNormalization, Mul, Add, Sub and Div is folded."""

    pass


class FoldBatchNorm(Pass):
    """Fold BatchNormalization and per-channel Mul/Add into the preceding Conv/ConvTranspose/Gemm."""

    name = "fold-bn"
    Options = Options

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        folded: Counter[str] = Counter()
        skipped: dict[str, str] = {}
        changed = True
        while changed:
            changed = False
            for node in list(graph.nodes):
                if node.op not in AFFINE_OPS or node not in graph.nodes:
                    continue
                try:
                    prod, data_index = _producer(graph, node)
                    s, t = _affine(node, data_index, _channels(prod))
                    _fold(graph, prod, s, t)
                except Skip as why:
                    if node.op == "BatchNormalization":
                        skipped[node.name] = str(why)
                    continue
                ir.reroute_output(graph, prod, node)
                folded[node.op] += 1
                skipped.pop(node.name, None)
                changed = True
        stats = {"folded": dict(folded), "not_folded": [{"node": k, "reason": v} for k, v in skipped.items()]}
        return PassResult(modified=sum(folded.values()) > 0, stats=stats)


def _producer(graph: gs.Graph, node: gs.Node) -> tuple[gs.Node, int]:
    for index, tensor in enumerate(node.inputs[:2] if node.op != "BatchNormalization" else node.inputs[:1]):
        prod = ir.producer(tensor)
        if prod is not None and prod.op in PRODUCERS and not prod.domain:
            if ir.readers_elsewhere(graph, tensor, node):
                raise Skip(f"{prod.name}'s output is also read by other nodes")
            return prod, index
    raise Skip("input is not produced by Conv, ConvTranspose or Gemm")


def _channels(prod: gs.Node) -> int:
    w = ir.constant_value(prod.inputs[1])
    if w is None:
        raise Skip(f"{prod.name}: weight is not a constant")
    if prod.op == "Conv":
        return w.shape[0]
    if prod.op == "ConvTranspose":
        return w.shape[1] * int(prod.attrs.get("group", 1))
    if int(prod.attrs.get("transA", 0)) and w.ndim != 2:
        raise Skip(f"{prod.name}: unexpected Gemm weight rank")
    return w.shape[0] if int(prod.attrs.get("transB", 0)) else w.shape[1]


def _affine(node: gs.Node, data_index: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel (scale, shift) that ``node`` applies, or Skip."""
    if any(o.outputs for o in node.outputs[1:]):
        raise Skip("training-mode outputs (running statistics) are read")
    if node.op == "BatchNormalization":
        if int(node.attrs.get("training_mode", 0)):
            raise Skip("BatchNormalization in training mode")
        if int(node.attrs.get("spatial", 1)) == 0:
            raise Skip("non-spatial BatchNormalization")
        values = [ir.constant_value(t) for t in node.inputs[1:5]]
        if any(v is None for v in values):
            raise Skip("BatchNormalization parameters are not constants")
        gamma, beta, mean, var = (np.asarray(v, dtype=np.float64).reshape(-1) for v in values)  # type: ignore[union-attr]
        eps = float(node.attrs.get("epsilon", 1e-5))
        s = gamma / np.sqrt(var + eps)
        t = beta - mean * s
        if s.shape != (channels,):
            raise Skip(f"BatchNormalization has {s.shape[0]} channels, producer has {channels}")
        return s, t
    other = node.inputs[1 - data_index]
    c = ir.constant_value(other)
    if c is None:
        raise Skip("other operand is not a constant")
    if c.dtype.kind != "f":
        raise Skip("constant is not floating point")
    vec = _per_channel(c, node.inputs[data_index], channels)
    ones, zeros = np.ones(channels), np.zeros(channels)
    if node.op == "Mul":
        return vec, zeros
    if node.op == "Add":
        return ones, vec
    if node.op == "Sub" and data_index == 0:
        return ones, -vec
    if node.op == "Div" and data_index == 0 and np.all(vec != 0):
        return 1.0 / vec, zeros
    raise Skip(f"{node.op} with the data as operand {data_index} is not affine per channel")


def _per_channel(c: np.ndarray, data: gs.Tensor, channels: int) -> np.ndarray:
    """``c`` as a length-``channels`` vector, if broadcasting it against ``data`` is per channel (axis 1)."""
    rank = len(data.shape) if data.shape is not None else None
    if rank is None:
        # Without the data's rank a [C,1,1] constant could still broadcast oddly; only accept scalars.
        if c.size == 1:
            return np.full(channels, float(c.reshape(-1)[0]))
        raise Skip("data rank unknown")
    if c.ndim > rank:
        raise Skip("constant has a higher rank than the data")
    shape = (1,) * (rank - c.ndim) + tuple(c.shape)
    if rank < 2 or any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        raise Skip(f"constant of shape {list(c.shape)} is not per-channel")
    return np.broadcast_to(np.asarray(c, dtype=np.float64).reshape(-1), (channels,)).copy()


def _fold(graph: gs.Graph, prod: gs.Node, s: np.ndarray, t: np.ndarray) -> None:
    w = ir.constant_value(prod.inputs[1])
    assert w is not None
    dtype = w.dtype
    w64 = w.astype(np.float64)
    bias_in = prod.inputs[2] if len(prod.inputs) > 2 and prod.inputs[2].name else None
    b = None
    if bias_in is not None:
        b = ir.constant_value(bias_in)
        if b is None:
            raise Skip(f"{prod.name}: bias is not a constant")
        b = b.astype(np.float64)
    if prod.op == "Conv":
        w_new = w64 * s.reshape((-1,) + (1,) * (w.ndim - 1))
        b_new = (b if b is not None else 0.0) * s + t
    elif prod.op == "ConvTranspose":
        g = int(prod.attrs.get("group", 1))
        cin, cout_g = w.shape[0], w.shape[1]
        grouped = w64.reshape((g, cin // g, cout_g) + w.shape[2:])
        w_new = (grouped * s.reshape((g, 1, cout_g) + (1,) * (w.ndim - 2))).reshape(w.shape)
        b_new = (b if b is not None else 0.0) * s + t
    else:  # Gemm
        alpha = float(prod.attrs.get("alpha", 1.0))
        beta = float(prod.attrs.get("beta", 1.0))
        trans_b = int(prod.attrs.get("transB", 0))
        w_new = alpha * w64 * (s[:, None] if trans_b else s[None, :])
        b_new = (beta * b * s + t) if b is not None else t
    if not np.all(np.isfinite(w_new)) or not np.all(np.isfinite(b_new)):
        raise Skip("folding would produce non-finite weights")
    if prod.op == "Gemm":
        prod.attrs["alpha"] = 1.0
        prod.attrs["beta"] = 1.0
    ir.set_input_constant(graph, prod, 1, w_new.astype(dtype), name=f"{prod.name}_W_folded")
    ir.set_input_constant(graph, prod, 2, np.asarray(b_new, dtype=dtype), name=f"{prod.name}_B_folded")
