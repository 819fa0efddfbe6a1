"""Loading, normalising and atomic saving."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxprune.errors import ModelError, UnsupportedError
from onnxprune.model import Model, load_model, normalize, save_model
from onnxprune.testing import make_model, random_feeds, run, vinfo


def _const_identity_model() -> onnx.ModelProto:
    """X ─Conv(W from Constant node, via Identity)─▶ Y, plus an unused initializer."""
    w = np.arange(12, dtype=np.float32).reshape(3, 1, 2, 2) / 10
    nodes = [
        helper.make_node("Constant", [], ["w0"], value=numpy_helper.from_array(w)),
        helper.make_node("Identity", ["w0"], ["w1"]),
        helper.make_node("Conv", ["X", "w1"], ["Y"]),
    ]
    return make_model(nodes, [vinfo("X", [1, 1, 4, 4])], [vinfo("Y", [1, 3, 3, 3])], {"unused": np.zeros(3, np.float32)})


def test_normalize_constants_identity_unused():
    m = _const_identity_model()
    n = normalize(m)
    assert [node.op_type for node in n.graph.node] == ["Conv"]
    assert [t.name for t in n.graph.initializer] == ["w0"]
    assert all(node.name for node in n.graph.node)
    feeds = random_feeds(m)
    np.testing.assert_array_equal(run(n, feeds)[0], run(m, feeds)[0])
    assert len(m.graph.node) == 3  # the argument is untouched


def test_ir3_initializers_as_inputs_lifted():
    m = make_model([helper.make_node("Add", ["X", "b"], ["Y"])], [vinfo("X", [2]), vinfo("b", [2])],
                   [vinfo("Y", [2])], {"b": np.ones(2, np.float32)}, opset=7)
    m.ir_version = 3
    n = normalize(m)
    assert n.ir_version == 4 and [i.name for i in n.graph.input] == ["X"]


def test_load_errors(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        load_model(tmp_path / "missing.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        load_model(tmp_path / "empty.onnx")
    (tmp_path / "text.onnx").write_text("hello, I am not a model\n" * 10)
    with pytest.raises(ModelError, match="not an ONNX model"):
        load_model(tmp_path / "text.onnx")
    good = _const_identity_model().SerializeToString()
    (tmp_path / "trunc.onnx").write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelError):
        load_model(tmp_path / "trunc.onnx")
    old = make_model([helper.make_node("Relu", ["X"], ["Y"])], [vinfo("X", [2])], [vinfo("Y", [2])], opset=6)
    onnx.save(old, tmp_path / "old.onnx")
    with pytest.raises(UnsupportedError, match="opset 6"):
        load_model(tmp_path / "old.onnx")


def test_save_atomic_and_external_roundtrip(tmp_path):
    m = normalize(_const_identity_model())
    p = save_model(m, tmp_path / "a.onnx")
    assert onnx.load(p).SerializeToString() == m.SerializeToString()
    q = save_model(m, tmp_path / "b.onnx", external_data=True)
    assert (tmp_path / "b.onnx.data").exists()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".onnxprune-")]  # no temp leftovers
    back = load_model(q)
    feeds = random_feeds(m)
    np.testing.assert_array_equal(run(back, feeds)[0], run(m, feeds)[0])
    # the in-memory model is unchanged by saving with external data
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in m.graph.initializer)


def test_external_data_missing_is_model_error(tmp_path):
    m = normalize(_const_identity_model())
    save_model(m, tmp_path / "b.onnx", external_data=True)
    os.remove(tmp_path / "b.onnx.data")
    with pytest.raises(ModelError, match="external data"):
        load_model(tmp_path / "b.onnx")


def test_model_roundtrip_keeps_metadata():
    m = normalize(_const_identity_model())
    m.producer_name = "me"
    m.metadata_props.add(key="k", value="v")
    out = Model(m).to_onnx()
    assert out.producer_name == "me" and out.metadata_props[0].value == "v"
    assert out.opset_import == m.opset_import and out.ir_version == m.ir_version


def test_zoo_models_load(zoo):
    for name in ["squeezenet1.1", "mobilenetv2", "efficientnet-lite0", "mnist-8", "minilm/model"]:
        m = load_model(zoo / "models" / f"{name}.onnx")
        assert not any(n.op_type == "Constant" and n.attribute[0].name == "value" for n in m.graph.node)
