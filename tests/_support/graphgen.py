"""Random CNN architectures for property tests and fuzzing of the channel analysis.

``random_cnn(seed)`` draws a small model that mixes the patterns structured pruning
must survive: residual Add, Concat (fire modules), Split and Slice on channels, grouped
and depthwise Conv, BatchNorm, per-channel constants, SE blocks (GAP→Conv→Relu→Conv→
Sigmoid→Mul), pooling, and one of four heads (GAP→Flatten→Gemm, Flatten→Gemm over
spatial features, Reshape→MatMul+Add with a constant shape, Reshape through
Shape→Gather→Concat). Weights are scaled by 1/sqrt(fan-in) to keep activations O(1).
Only activations with f(0) = 0 sit on the main path, so zeroed channels stay zero.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BLOCKS = ("conv", "residual", "fire", "split", "grouped", "depthwise", "se", "slice", "pool", "bias")
HEADS = ("gap_gemm", "flatten_gemm", "reshape_matmul", "shape_reshape")
ACTS = ("Relu", "Clip6", "LeakyRelu", "HardSwish", "Tanh", "Identity")


@dataclass
class _Builder:
    rng: np.random.Generator
    nodes: list = field(default_factory=list)
    inits: dict = field(default_factory=dict)
    n: int = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def const(self, base: str, value: np.ndarray) -> str:
        nm = self.name(base)
        self.inits[nm] = np.asarray(value)
        return nm

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower() + "_out")
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 3, group: int = 1, stride: int = 1, bias: bool = True) -> str:
        w = (self.rng.standard_normal((cout, cin // group, k, k)) / np.sqrt(cin // group * k * k)).astype(np.float32)
        ins = [x, self.const("W", w)]
        if bias:
            ins.append(self.const("B", (0.1 * self.rng.standard_normal(cout)).astype(np.float32)))
        pad = k // 2
        return self.node("Conv", ins, kernel_shape=[k, k], pads=[pad] * 4, group=group, strides=[stride, stride])

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        ins = [x, self.const("g", r.uniform(0.5, 1.5, c).astype(np.float32)),
               self.const("b", (0.1 * r.standard_normal(c)).astype(np.float32)),
               self.const("m", (0.1 * r.standard_normal(c)).astype(np.float32)),
               self.const("v", r.uniform(0.5, 1.5, c).astype(np.float32))]
        return self.node("BatchNormalization", ins, epsilon=1e-5)

    def act(self, x: str) -> str:
        kind = ACTS[int(self.rng.integers(len(ACTS)))]
        if kind == "Clip6":
            return self.node("Clip", [x, self.const("lo", np.array(0, np.float32)), self.const("hi", np.array(6, np.float32))])
        if kind == "LeakyRelu":
            return self.node("LeakyRelu", [x], alpha=0.1)
        return self.node(kind, [x])


def random_cnn(seed: int, *, max_blocks: int = 5) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    b = _Builder(rng)
    size = 8
    c = int(rng.choice([8, 12, 16]))
    x = b.conv("X", 3, c)
    if rng.random() < 0.5:
        x = b.bn(x, c)
    x = b.act(x)
    for _ in range(int(rng.integers(2, max_blocks + 1))):
        kind = BLOCKS[int(rng.integers(len(BLOCKS)))]
        if kind == "conv":
            cout = int(rng.choice([8, 12, 16, 24]))
            stride = 2 if size >= 4 and rng.random() < 0.3 else 1
            x = b.conv(x, c, cout, k=int(rng.choice([1, 3])), stride=stride, bias=rng.random() < 0.7)
            size = (size + stride - 1) // stride
            c = cout
            if rng.random() < 0.5:
                x = b.bn(x, c)
            x = b.act(x)
        elif kind == "residual":
            y = b.act(b.conv(x, c, c))
            y = b.conv(y, c, c)
            x = b.act(b.node("Add", [x, y] if rng.random() < 0.5 else [y, x]))
        elif kind == "fire":
            s = int(rng.choice([4, 8]))
            sq = b.act(b.conv(x, c, s, k=1))
            c1, c2 = int(rng.choice([4, 8])), int(rng.choice([4, 8, 12]))
            x = b.node("Concat", [b.act(b.conv(sq, s, c1, k=1)), b.act(b.conv(sq, s, c2, k=3))], axis=1)
            c = c1 + c2
        elif kind == "split":
            c1 = int(rng.choice([4, 8]))
            c2 = int(rng.choice([4, 8]))
            y = b.conv(x, c, c1 + c2, k=1)
            parts = [b.name("split_a"), b.name("split_b")]
            b.nodes.append(helper.make_node("Split", [y, b.const("sizes", np.array([c1, c2], np.int64))], parts,
                                            name=b.name("Split"), axis=1))
            left = b.act(b.conv(parts[0], c1, c1))
            x = b.node("Concat", [left, b.act(parts[1])], axis=1)
            c = c1 + c2
        elif kind == "grouped":
            g = int(rng.choice([2, 4]))
            if c % g == 0:
                cout = c * int(rng.choice([1, 2]))
                x = b.act(b.conv(x, c, cout, group=g))
                c = cout
        elif kind == "depthwise":
            x = b.act(b.conv(x, c, c, group=c, bias=rng.random() < 0.5))
        elif kind == "se":
            r = int(rng.choice([2, 4]))
            s = b.node("GlobalAveragePool", [x]) if rng.random() < 0.5 else \
                b.node("ReduceMean", [x], axes=[2, 3], keepdims=1)
            s = b.node("Relu", [b.conv(s, c, r, k=1)])
            s = b.node("Sigmoid", [b.conv(s, r, c, k=1)])
            x = b.node("Mul", [x, s])
        elif kind == "slice":
            keep = c // 2
            if keep >= 2:
                start = int(rng.integers(0, c - keep + 1))
                x = b.node("Slice", [x, b.const("st", np.array([start], np.int64)),
                                     b.const("en", np.array([start + keep], np.int64)),
                                     b.const("ax", np.array([1], np.int64))])
                c = keep
        elif kind == "pool":
            if size >= 2:
                op = "MaxPool" if rng.random() < 0.5 else "AveragePool"
                x = b.node(op, [x], kernel_shape=[2, 2], strides=[2, 2])
                size //= 2
        elif kind == "bias":
            x = b.node("Add", [x, b.const("pc", (0.1 * rng.standard_normal((c, 1, 1))).astype(np.float32))])
    head = HEADS[int(rng.integers(len(HEADS)))]
    classes = 5
    if head == "gap_gemm":
        f = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
        feat = c
    elif head == "flatten_gemm":
        f = b.node("Flatten", [x], axis=1)
        feat = c * size * size
    elif head == "reshape_matmul":
        f = b.node("Reshape", [x, b.const("shape", np.array([0, -1], np.int64))])
        feat = c * size * size
    else:
        shp = b.node("Shape", [x])
        n = b.node("Unsqueeze", [b.node("Gather", [shp, b.const("i0", np.array(0, np.int64))], axis=0),
                                 b.const("ax0", np.array([0], np.int64))])
        tgt = b.node("Concat", [n, b.const("m1", np.array([-1], np.int64))], axis=0)
        f = b.node("Reshape", [x, tgt])
        feat = c * size * size
    w = (rng.standard_normal((feat, classes)) / np.sqrt(feat)).astype(np.float32)
    if head in ("gap_gemm", "flatten_gemm"):
        trans = rng.random() < 0.5
        out = b.node("Gemm", [f, b.const("fcW", w.T.copy() if trans else w), b.const("fcB", np.zeros(classes, np.float32))],
                     transB=int(trans))
    else:
        out = b.node("Add", [b.node("MatMul", [f, b.const("fcW", w)]), b.const("fcB", np.zeros(classes, np.float32))])
    b.nodes.append(helper.make_node("Identity", [out], ["Y"], name="output"))
    graph = helper.make_graph(
        b.nodes, f"random_cnn_{seed}",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(v, k) for k, v in b.inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model
