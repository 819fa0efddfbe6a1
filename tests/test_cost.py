from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cost import ModelCost, model_cost

F = TensorProto.FLOAT
ZOO = Path(__file__).resolve().parents[1].parent / "shared" / "zoo"


def _init(name: str, shape, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ones(shape, dtype), name)


def _model(nodes, inputs: dict, inits=(), opset=17) -> onnx.ModelProto:
    outs = [o for n in nodes for o in n.output]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(k, F, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info(outs[-1], F, None)], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _single(op, inputs: dict, inits=(), n_in=None, **attrs) -> ModelCost:
    names = [*inputs, *(t.name for t in inits)] if n_in is None else n_in
    return model_cost(_model([helper.make_node(op, names, ["y"], **attrs)], inputs, inits))


# --- Conv: x ─Conv(W[,B])─▶ y --------------------------------------------------------

CONV_CASES = {
    # name: (x shape, W shape, attrs, MACs = N·Cout·prod(out)·Cin/g·prod(k), output elements)
    "plain": ((1, 3, 8, 8), (4, 3, 3, 3), dict(pads=[1, 1, 1, 1]), 1 * 4 * 64 * 3 * 9, 256),
    "grouped": ((1, 4, 8, 8), (6, 2, 3, 3), dict(pads=[1, 1, 1, 1], group=2), 6 * 64 * 2 * 9, 384),
    "depthwise": ((1, 4, 8, 8), (4, 1, 3, 3), dict(pads=[1, 1, 1, 1], group=4), 4 * 64 * 9, 256),
    # effective kernel 5 on 9x9, no pad -> 5x5
    "dilated": ((1, 2, 9, 9), (3, 2, 3, 3), dict(dilations=[2, 2]), 3 * 25 * 2 * 9, 75),
    # (8 + 2 - 3) // 2 + 1 = 4
    "strided": ((1, 2, 8, 8), (4, 2, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1]), 4 * 16 * 2 * 9, 64),
    # pad only bottom/right: 5 + 1 - 3 + 1 = 4
    "asym_pads": ((1, 1, 5, 5), (2, 1, 3, 3), dict(pads=[0, 0, 1, 1]), 2 * 16 * 9, 32),
    # 10 - 3 + 1 = 8, batch 2
    "conv1d": ((2, 3, 10), (5, 3, 3), {}, 2 * 5 * 8 * 3 * 3, 80),
    "conv3d": ((1, 2, 4, 4, 4), (3, 2, 2, 2, 2), {}, 3 * 27 * 2 * 8, 81),
}


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("case", CONV_CASES.keys())
def test_conv(case, bias):
    x, w, attrs, macs, out_elems = CONV_CASES[case]
    inits = [_init("W", w)] + ([_init("B", (w[0],))] if bias else [])
    cost = _single("Conv", {"x": x}, inits, **attrs)
    assert cost.macs == macs
    assert cost.flops == 2 * macs + (out_elems if bias else 0)
    assert cost.params == math.prod(w) + (w[0] if bias else 0)
    assert cost.nodes[0].output_bytes == 4 * out_elems
    assert cost.unknown_shape_nodes == []


@pytest.mark.parametrize("group, w, out_channels", [(1, (4, 2, 3, 3), 2), (2, (4, 3, 3, 3), 6)])
def test_conv_transpose_stride2(group, w, out_channels):
    # x[1,4,3,3], stride 2, k 3 -> 7x7; MACs = N·Cin·Hin·Win·(Cout/g)·kh·kw
    macs = 1 * 4 * 9 * w[1] * 9
    inits = [_init("W", w), _init("B", (out_channels,))]
    cost = _single("ConvTranspose", {"x": (1, 4, 3, 3)}, inits, strides=[2, 2], group=group)
    assert cost.macs == macs
    assert cost.flops == 2 * macs + out_channels * 49


# --- Gemm / MatMul / Einsum -------------------------------------------------------------

@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias", [False, True])
def test_gemm(trans_a, trans_b, bias):
    m, k, n = 3, 5, 4
    a = (k, m) if trans_a else (m, k)
    inits = [_init("B", (n, k) if trans_b else (k, n))] + ([_init("C", (n,))] if bias else [])
    cost = _single("Gemm", {"a": a}, inits, transA=trans_a, transB=trans_b, alpha=2.0)
    assert cost.macs == m * n * k
    assert cost.flops == 2 * m * n * k + (m * n if bias else 0)


MATMUL_CASES = {
    "2d": ((3, 5), (5, 4), 3 * 5 * 4),
    "3d_batched": ((2, 3, 5), (2, 5, 4), 2 * 3 * 5 * 4),
    "1d_x_2d": ((5,), (5, 4), 5 * 4),
    "2d_x_1d": ((3, 5), (5,), 3 * 5),
    "attention_4d": ((2, 12, 16, 64), (2, 12, 64, 16), 2 * 12 * 16 * 16 * 64),
    "broadcast": ((2, 1, 3, 5), (4, 5, 6), 2 * 4 * 3 * 6 * 5),
}


@pytest.mark.parametrize("case", MATMUL_CASES.keys())
def test_matmul(case):
    a, b, macs = MATMUL_CASES[case]
    cost = _single("MatMul", {"a": a, "b": b})
    assert (cost.macs, cost.flops, cost.params) == (macs, 2 * macs, 0)


@given(batch_a=st.lists(st.sampled_from([1, 2]), max_size=2), batch_b=st.lists(st.sampled_from([1, 2]), max_size=2),
       m=st.integers(1, 4), k=st.integers(1, 4), n=st.integers(1, 4), a_vec=st.booleans(), b_vec=st.booleans())
@settings(max_examples=25, deadline=None)
def test_matmul_matches_numpy(batch_a, batch_b, m, k, n, a_vec, b_vec):
    # Oracle: size of numpy's own matmul result times the contracted length.
    a = (k,) if a_vec else (*batch_a, m, k)
    b = (k,) if b_vec else (*batch_b, k, n)
    try:
        expected = np.matmul(np.ones(a), np.ones(b)).size * k
    except ValueError:
        assume(False)  # shapes numpy refuses are not a valid MatMul either
    assert _single("MatMul", {"a": a, "b": b}).macs == expected


@pytest.mark.parametrize("equation", ["bij,bjk->bik", "...ij,...jk->...ik"])
def test_einsum(equation):
    cost = _single("Einsum", {"a": (2, 3, 4), "b": (2, 4, 5)}, equation=equation)
    assert cost.macs == 2 * 3 * 4 * 5


def test_lstm():
    # X[seq 5, batch 2, in 3], hidden 4: MACs = seq·batch·(|W| + |R|) = 10·(16·3 + 16·4)
    inits = [_init("W", (1, 16, 3)), _init("R", (1, 16, 4))]
    node = helper.make_node("LSTM", ["x", "W", "R"], ["Y", "Yh"], hidden_size=4)
    cost = model_cost(_model([node], {"x": (5, 2, 3)}, inits))
    assert cost.macs == 10 * (48 + 64)


# --- elementwise, norms, pooling, data movement ----------------------------------------

ELEMENTWISE_CASES = [
    # (op, inputs, inits, attrs, flops)
    ("Add", {"a": (2, 3)}, [_init("b", (3,))], {}, 6),
    ("Relu", {"a": (2, 3, 4)}, [], {}, 24),
    ("Clip", {"a": (2, 3, 4)}, [_init("lo", ()), _init("hi", ())], {}, 24),
    ("Erf", {"a": (7,)}, [], {}, 7),
    ("Sum", {"a": (4,), "b": (4,), "c": (4,)}, [], {}, 8),
    ("Softmax", {"a": (2, 5)}, [], {}, 30),
    ("LayerNormalization", {"a": (2, 5)}, [_init("s", (5,)), _init("b", (5,))], {}, 50),
    ("BatchNormalization", {"a": (1, 3, 4, 4)}, [_init(n, (3,)) for n in "sbmv"], {}, 96),
    ("MaxPool", {"a": (1, 1, 4, 4)}, [], dict(kernel_shape=[2, 2], strides=[2, 2]), 4 * 4),
    ("AveragePool", {"a": (1, 2, 4, 4)}, [], dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), 32 * 9),
    ("GlobalAveragePool", {"a": (1, 3, 4, 4)}, [], {}, 48),
    ("ReduceMean", {"a": (2, 3, 4)}, [], dict(axes=[2]), 24),
    ("Transpose", {"a": (2, 3, 4)}, [], dict(perm=[2, 0, 1]), 0),
]


@pytest.mark.parametrize("op, inputs, inits, attrs, flops", ELEMENTWISE_CASES, ids=[c[0] for c in ELEMENTWISE_CASES])
def test_non_mac_ops(op, inputs, inits, attrs, flops):
    cost = _single(op, inputs, inits, **attrs)
    assert (cost.macs, cost.flops) == (0, flops)
    assert cost.unknown_shape_nodes == []


def test_data_movement_counts_bytes_not_flops():
    shape = _init("shape", (2,), np.int64)
    shape.CopyFrom(numpy_helper.from_array(np.array([4, 6], np.int64), "shape"))
    cost = _single("Reshape", {"x": (2, 3, 4)}, [shape])
    assert cost.flops == 0 and cost.nodes[0].output_bytes == 24 * 4
    assert cost.params == 2 and cost.nodes[0].param_bytes == 16


# --- params, batch, unknown shapes ------------------------------------------------------

def test_shared_initializers_counted_once():
    # x ─Conv(W,B)─▶ a ─Conv(W,B)─▶ b ──Mul─▶ y      S(fp16) ─Mul(S,S)─▶ Cast ─┘
    # "unused" is read by no node but is still a parameter of the model.
    inits = [_init("W", (3, 3, 1, 1)), _init("B", (3,)), _init("S", (1,), np.float16), _init("unused", (10,))]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["a"]), helper.make_node("Conv", ["a", "W", "B"], ["b"]),
             helper.make_node("Mul", ["S", "S"], ["s2"]), helper.make_node("Cast", ["s2"], ["s2f"], to=F),
             helper.make_node("Mul", ["b", "s2f"], ["y"])]
    model = _model(nodes, {"x": (1, 3, 2, 2)}, inits)
    cost = model_cost(model)
    assert [n.params for n in cost.nodes] == [9 + 3, 0, 1, 0, 0]
    assert [n.param_bytes for n in cost.nodes] == [4 * 12, 0, 2, 0, 0]
    assert cost.params == 9 + 3 + 1 + 10
    assert cost.param_bytes == 4 * 22 + 2
    assert cost.size_bytes == len(model.SerializeToString())


def test_symbolic_batch_scales_cost():
    inits = [_init("W", (4, 3, 3, 3))]
    model = _model([helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])], {"x": ("N", 3, 8, 8)}, inits)
    one, four = model_cost(model), model_cost(model, batch=4)
    assert one.macs == 6912 and four.macs == 4 * 6912
    assert four.nodes[0].output_bytes == 4 * one.nodes[0].output_bytes
    assert four.batch == 4
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"  # input untouched


def test_named_dims():
    model = _model([helper.make_node("MatMul", ["x", "W"], ["y"])], {"x": ("B", "S", 8)}, [_init("W", (8, 4))])
    assert model_cost(model, batch=2, dims={"S": 5}).macs == 2 * 5 * 8 * 4


def _flatten_then_matmul() -> onnx.ModelProto:
    # x[N,2,3] ─Shape─▶ Gather/Slice─▶ ReduceProd ─▶ Concat ─▶ Reshape(x) ─▶ y[N,6] ─MatMul(W[6,4])─▶ z
    # ONNX cannot propagate ReduceProd, so y's second dim is unknown statically.
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "axes0"),
             numpy_helper.from_array(np.array([1], np.int64), "start"),
             numpy_helper.from_array(np.array([100], np.int64), "end"), _init("W", (6, 4))]
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
             helper.make_node("Slice", ["s", "start", "end"], ["rest"]),
             helper.make_node("ReduceProd", ["rest"], ["p"], keepdims=1),
             helper.make_node("Concat", ["n1", "p"], ["t"], axis=0), helper.make_node("Reshape", ["x", "t"], ["y"]),
             helper.make_node("MatMul", ["y", "W"], ["z"], name="head")]
    return _model(nodes, {"x": ("N", 2, 3)}, inits)


def test_unknown_shapes_are_listed_not_fatal():
    cost = model_cost(_flatten_then_matmul(), runtime_fallback=False)
    assert "head" in cost.unknown_shape_nodes
    assert cost.nodes[-1].macs == 0


def test_runtime_fallback_fills_unknown_shapes():
    cost = model_cost(_flatten_then_matmul(), batch=3)
    assert cost.unknown_shape_nodes == []
    assert cost.nodes[-1].macs == 3 * 6 * 4


def test_input_of_unknown_rank_is_not_fatal():
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="r")], {"x": None})
    cost = model_cost(model)
    assert cost.unknown_shape_nodes == ["r"] and cost.flops == 0


def test_by_op_and_to_dict():
    cost = model_cost(_flatten_then_matmul())
    rows = cost.by_op()
    assert rows["MatMul"]["macs"] == cost.macs and rows["Shape"]["count"] == 1
    assert sum(r["flops"] for r in rows.values()) == cost.flops
    data = json.loads(json.dumps(cost.to_dict()))
    assert data["macs"] == cost.macs and len(data["nodes"]) == len(cost.nodes)


# --- zoo --------------------------------------------------------------------------------

needs_zoo = pytest.mark.skipif(not (ZOO / "models").is_dir(), reason=f"model zoo not found at {ZOO}")


@pytest.mark.zoo
@needs_zoo
def test_mobilenetv2_matches_published_numbers():
    cost = model_cost(onnx.load(str(ZOO / "models" / "mobilenetv2.onnx")))
    assert cost.macs == pytest.approx(300e6, rel=0.05)  # published: 300 M MACs at 224x224
    assert cost.params == pytest.approx(3.49e6, rel=0.01)
    assert cost.unknown_shape_nodes == []


@pytest.mark.zoo
@needs_zoo
def test_minilm_attention_macs_exact():
    # Per layer at seq 128: QKV + output projection 4·s·384², scores and context
    # 2·12·s²·32, FFN 2·s·384·1536.
    s = 128
    per_layer = 4 * s * 384 * 384 + 2 * 12 * s * s * 32 + 2 * s * 384 * 1536
    cost = model_cost(onnx.load(str(ZOO / "models" / "minilm" / "model.onnx")), dims={"seq": s})
    assert cost.by_op()["MatMul"]["macs"] == 6 * per_layer
    assert cost.unknown_shape_nodes == []
