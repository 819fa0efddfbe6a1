from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import shapes
from onnxprune.errors import DataError, VerificationError
from onnxprune.shapes import (
    concrete_input_shapes,
    infer_shapes,
    runtime_shapes,
    tensor_dtypes,
    tensor_shapes,
)

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # what the installed onnxruntime certainly loads
    return model


def _conv_model() -> onnx.ModelProto:
    # x[N,3,8,8] -> Conv(W[4,3,3,3], pad 1) -> y -> Relu -> z
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "W")
    return _model(
        [helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["y"], ["z"])],
        [helper.make_tensor_value_info("x", F, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("z", F, None)],
        [w],
    )


def _flatten_model() -> onnx.ModelProto:
    # The flatten pattern some exporters emit; ONNX does not propagate ReduceProd:
    #   x[N,2,3] ─Shape─▶ s ─Gather(0)─▶ Unsqueeze ─┐
    #                      └─Slice(1:)─▶ ReduceProd ─┴─Concat─▶ Reshape(x) ─▶ y ─MatMul(W[6,4])─▶ z
    inits = [
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([0], np.int64), "axes0"),
        numpy_helper.from_array(np.array([1], np.int64), "start"),
        numpy_helper.from_array(np.array([100], np.int64), "end"),
        numpy_helper.from_array(np.ones((6, 4), np.float32), "W"),
    ]
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Slice", ["s", "start", "end"], ["rest"]),
        helper.make_node("ReduceProd", ["rest"], ["p"], keepdims=1),
        helper.make_node("Concat", ["n1", "p"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
        helper.make_node("MatMul", ["y", "W"], ["z"]),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", F, ["N", 2, 3])],
                  [helper.make_tensor_value_info("z", F, None)], inits)


def test_symbolic_batch_is_kept_and_input_untouched():
    model = _conv_model()
    before = model.SerializeToString()
    inferred = infer_shapes(model)
    assert model.SerializeToString() == before
    got = tensor_shapes(inferred)
    assert got["x"] == ("N", 3, 8, 8)
    assert got["y"] == ("N", 4, 8, 8)
    assert got["z"] == ("N", 4, 8, 8)
    assert got["W"] == (4, 3, 3, 3)
    dim = next(v for v in inferred.graph.value_info if v.name == "y").type.tensor_type.shape.dim[0]
    assert dim.dim_param == "N" and not dim.HasField("dim_value")


def _unresolved(shape) -> bool:
    # ONNX leaves an unknown dim empty or names it "unk__N": either way, not a number.
    return shape is None or any(not isinstance(d, int) for d in shape)


def test_unknown_dim_stays_unknown_and_dtypes():
    model = _model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT16)],
                   [helper.make_tensor_value_info("x", TensorProto.INT64, [None, 5])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)])
    inferred = infer_shapes(model)
    assert tensor_shapes(inferred)["x"] == (None, 5)
    y = tensor_shapes(inferred)["y"]
    assert y[1] == 5 and not isinstance(y[0], int)
    dtypes = tensor_dtypes(inferred)
    assert dtypes["x"] == np.int64 and dtypes["y"] == np.float16


def test_strict_error_is_one_line_verification_error():
    # MatMul of [N,60] by [64,32]: inner dims disagree.
    model = _model([helper.make_node("MatMul", ["x", "W"], ["y"])],
                   [helper.make_tensor_value_info("x", F, ["N", 60])],
                   [helper.make_tensor_value_info("y", F, None)],
                   [numpy_helper.from_array(np.ones((64, 32), np.float32), "W")])
    with pytest.raises(VerificationError) as info:
        infer_shapes(model, strict=True)
    assert "\n" not in str(info.value) and "MatMul" in str(info.value)
    infer_shapes(model)  # lenient mode gives what it can


def test_type_error_lenient_does_not_raise():
    model = _model([helper.make_node("Add", ["x", "W"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.INT64, [2])],
                   [helper.make_tensor_value_info("y", F, None)],
                   [numpy_helper.from_array(np.ones(2, np.float32), "W")])
    with pytest.raises(VerificationError):
        infer_shapes(model, strict=True)
    assert isinstance(infer_shapes(model), onnx.ModelProto)


def test_large_model_path_matches_in_memory(monkeypatch):
    # Pretend the protobuf limit is tiny so the >2 GB branch (skeleton inference) runs.
    model = _conv_model()
    expected = tensor_shapes(infer_shapes(model))
    monkeypatch.setattr(shapes, "_STUB_ABOVE_BYTES", 16)
    monkeypatch.setattr(shapes, "PROTOBUF_LIMIT", 64)
    inferred = infer_shapes(model)
    assert tensor_shapes(inferred) == expected
    w = numpy_helper.to_array(inferred.graph.initializer[0])  # payload survived the graft
    assert w.shape == (4, 3, 3, 3) and float(w.sum()) == 108.0


def test_concrete_input_shapes_rules():
    model = _model([helper.make_node("Add", ["a", "b"], ["c"])],
                   [helper.make_tensor_value_info("a", F, ["B", "S", 4]),
                    helper.make_tensor_value_info("b", F, [1, "B", None])],
                   [helper.make_tensor_value_info("c", F, None)])
    assert concrete_input_shapes(model, batch=3) == {"a": (3, 1, 4), "b": (1, 3, 1)}
    assert concrete_input_shapes(model, batch=3, dims={"S": 7}) == {"a": (3, 7, 4), "b": (1, 3, 1)}


def test_runtime_shapes_fill_what_static_inference_cannot():
    model = _flatten_model()
    static = tensor_shapes(infer_shapes(model))
    assert _unresolved(static.get("y")) and _unresolved(static.get("z"))
    got = runtime_shapes(model)
    assert got["x"] == (1, 2, 3) and got["y"] == (1, 6) and got["z"] == (1, 4)
    assert runtime_shapes(model, dims={"N": 3})["y"] == (3, 6)


def test_runtime_shapes_with_feeds_for_a_shape_input():
    # Reshape target is a graph input: only a real value can tell the output shape.
    model = _model([helper.make_node("Reshape", ["x", "shape"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
                   [helper.make_tensor_value_info("x", F, [2, 6]),
                    helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                   [helper.make_tensor_value_info("z", F, None)])
    assert _unresolved(tensor_shapes(infer_shapes(model)).get("y"))
    feeds = {"x": np.zeros((2, 6), np.float32), "shape": np.array([3, 4], np.int64)}
    got = runtime_shapes(model, feeds)
    assert got["y"] == (3, 4) and got["z"] == (3, 4)
    with pytest.raises(DataError):
        runtime_shapes(model, {"nope": np.zeros(1)})


def test_runtime_shapes_external_data_branch(monkeypatch):
    monkeypatch.setattr(shapes, "PROTOBUF_LIMIT", 64)
    assert runtime_shapes(_conv_model(), dims={"N": 2})["z"] == (2, 4, 8, 8)


def test_skeleton_drops_payloads_but_infers_the_same():
    model = _conv_model()
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(50_000, np.float32), "big_unused"))
    skel = shapes._skeleton(model)
    big = next(t for t in skel.graph.initializer if t.name == "big_unused")
    assert big.data_location == TensorProto.EXTERNAL and not big.raw_data and list(big.dims) == [50_000]
    assert skel.ByteSize() < 10_000 < model.ByteSize()
    assert tensor_shapes(infer_shapes(skel)) == tensor_shapes(infer_shapes(model))


def test_runtime_shapes_keeps_given_feeds_and_fills_the_rest():
    # a[N,4] + b[N,4]: feed a with N=3; b gets a dummy with N=1 and broadcasts.
    model = _model([helper.make_node("Add", ["a", "b"], ["c"])],
                   [helper.make_tensor_value_info("a", F, ["N", 4]), helper.make_tensor_value_info("b", F, [1, 4])],
                   [helper.make_tensor_value_info("c", F, None)])
    got = runtime_shapes(model, {"a": np.zeros((3, 4), np.float32)})
    assert got["a"] == (3, 4) and got["b"] == (1, 4) and got["c"] == (3, 4)


def test_input_of_unknown_rank():
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [helper.make_tensor_value_info("x", F, None)],
                   [helper.make_tensor_value_info("y", F, None)])
    assert concrete_input_shapes(model) == {}
    with pytest.raises(DataError):
        runtime_shapes(model)
    assert runtime_shapes(model, {"x": np.zeros((2, 5), np.float32)})["y"] == (2, 5)
