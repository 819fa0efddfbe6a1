"""Latency signatures of compute nodes whose input shape ONNX inference cannot resolve.

    X [1,T,16] -Shape-Slice[1:2]-> T ─┐
    E [1,512,16] (constant) ──────────Slice(axis 1, 0:T)─> P [1,?,16] -MatMul(W 16x8)-> Y

Exported transformers slice their position embeddings like this (MiniLM): ONNX shape
inference leaves P's dims symbolic, so the MatMul had no signature, no latency and no
low-rank candidate. One onnxruntime run at the given input shapes reads the real ones.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.layer_latency import signatures
from onnxprune.shapes import infer_shapes, tensor_shapes, with_input_shapes


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((1, 512, 16)).astype(np.float32), "E"),
             numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "W"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([2], np.int64), "two"),
             numpy_helper.from_array(np.array([0], np.int64), "zero")]
    nodes = [helper.make_node("Shape", ["X"], ["s"]),
             helper.make_node("Slice", ["s", "one", "two"], ["t"]),
             helper.make_node("Slice", ["E", "zero", "t", "one"], ["P"]),
             helper.make_node("Add", ["P", "X"], ["Q"]),
             helper.make_node("MatMul", ["P", "W"], ["Y"], name="mm")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["b", "T", 16])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["b", "T", 8]),
                           helper.make_tensor_value_info("Q", TensorProto.FLOAT, ["b", "T", 16])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(m, full_check=True)
    return m


def test_symbolic_shapes_read_from_a_run() -> None:
    m = _model()
    inferred = tensor_shapes(infer_shapes(with_input_shapes(m, {"X": (1, 5, 16)})))
    assert not all(isinstance(d, int) for d in inferred["P"])  # the case this is about
    sig = signatures(m, {"X": (1, 5, 16)})
    assert set(sig) == {"mm"}
    assert sig["mm"]["x"] == [1, 5, 16] and sig["mm"]["consts"] == [[[16, 8], TensorProto.FLOAT]]
    assert signatures(m, {"X": (1, 7, 16)})["mm"]["x"] == [1, 7, 16]  # at the shapes asked for


def test_no_shapes_given_runs_at_dims_of_one() -> None:
    # no shapes given: symbolic dims at 1 (as the cost model counts them), read from a run as well
    assert signatures(_model(), {})["mm"]["x"] == [1, 1, 16]
