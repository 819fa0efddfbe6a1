"""fp16: float16 weights and activations, float32 inputs/outputs, unsafe ops kept in float32."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxprune.api import run_passes
from onnxprune.errors import UnsupportedError
from onnxprune.testing import make_model, run, vinfo

# float16 keeps 11 significant bits: relative rounding 2^-11 ≈ 4.9e-4 per value; a few
# layers of accumulation stay well inside 1e-2 of the output's scale.
FP16_RTOL = 1e-2


def cnn() -> onnx.ModelProto:
    """x ─Conv─ Relu ─Conv─ Exp ─ GlobalAveragePool ─ Flatten ─ Gemm ─▶ y"""
    rng = np.random.default_rng(0)
    inits = {"w1": (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32),
             "b1": (rng.standard_normal(8) * 0.1).astype(np.float32),
             "w2": (rng.standard_normal((8, 8, 3, 3)) * 0.1).astype(np.float32),
             "wf": (rng.standard_normal((10, 8)) * 0.3).astype(np.float32),
             "bf": np.zeros(10, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Exp", ["c2"], ["e"]),
             helper.make_node("GlobalAveragePool", ["e"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1)]
    return make_model(nodes, [vinfo("x", ["N", 3, 10, 10])], [vinfo("y", ["N", 10])], inits, opset=13)


def test_fp16_runs_and_matches():
    m = cnn()
    out, rec = run_passes(m, ["fp16"])
    assert rec[0].modified
    onnx.checker.check_model(out, full_check=True)
    assert out.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    kinds = {t.name: t.data_type for t in out.graph.initializer}
    assert sum(k == onnx.TensorProto.FLOAT16 for k in kinds.values()) >= 4
    assert rec[0].stats["size_bytes"][1] < 0.7 * rec[0].stats["size_bytes"][0]  # weights halve; graph text does not
    assert "Exp" in rec[0].stats["kept_float32_ops"]
    # the Exp reads a float32 tensor (a Cast to float32 in front of it)
    producers = {o: n for n in out.graph.node for o in n.output}
    exp = next(n for n in out.graph.node if n.op_type == "Exp")
    cast = producers[exp.input[0]]
    assert cast.op_type == "Cast" and next(a.i for a in cast.attribute if a.name == "to") == onnx.TensorProto.FLOAT
    x = np.random.default_rng(1).standard_normal((3, 3, 10, 10)).astype(np.float32)
    ya, yb = run(m, {"x": x})[0], run(out, {"x": x})[0]
    assert yb.dtype == np.float32
    assert np.max(np.abs(ya - yb)) <= FP16_RTOL * np.max(np.abs(ya))


def test_fp16_nothing_to_convert():
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    m = make_model(nodes, [vinfo("x", [2], onnx.TensorProto.INT32)], [vinfo("y", [2], onnx.TensorProto.INT32)], {},
                   opset=13)
    _, rec = run_passes(m, ["fp16"])
    assert rec[0].modified is False


def test_fp16_refuses_io_change():
    with pytest.raises(UnsupportedError, match="keep-io-types"):
        run_passes(cnn(), ["fp16:keep-io-types=false"])


def test_fp16_keep_float32_option():
    out, rec = run_passes(cnn(), ["fp16:keep-float32=Gemm"])
    assert "Gemm" in rec[0].stats["kept_float32_ops"]
    kinds = {t.name: t.data_type for t in out.graph.initializer}
    gemm = next(n for n in out.graph.node if n.op_type == "Gemm")
    assert kinds[gemm.input[1]] == onnx.TensorProto.FLOAT
