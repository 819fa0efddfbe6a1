"""Verification: structure, checker (with its strict inference), onnxruntime session."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxprune import verify as vf
from onnxprune.errors import VerificationError
from onnxprune.testing import make_model, vinfo


def _relu_chain() -> onnx.ModelProto:
    """X ─Relu─▶ a ─Relu─▶ Y."""
    nodes = [helper.make_node("Relu", ["X"], ["a"], name="r1"), helper.make_node("Relu", ["a"], ["Y"], name="r2")]
    return make_model(nodes, [vinfo("X", [1, 4])], [vinfo("Y", [1, 4])])


def test_a_valid_model_passes():
    m = _relu_chain()
    vf.verify(m, m)


def test_two_producers_are_refused():
    m = _relu_chain()
    m.graph.node[1].output[0] = "a"
    with pytest.raises(VerificationError, match="2 producers"):
        vf.check_structure(m)


def test_a_cycle_is_refused():
    m = _relu_chain()
    m.graph.node[0].input[0] = "Y"
    with pytest.raises(VerificationError, match="cycle"):
        vf.check_structure(m)


def test_changed_signature_is_refused():
    ref = _relu_chain()
    m = _relu_chain()
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5
    with pytest.raises(VerificationError, match="output Y changed"):
        vf.check_structure(m, ref)
    m = _relu_chain()
    m.graph.input[0].name = "X2"
    m.graph.node[0].input[0] = "X2"
    with pytest.raises(VerificationError, match="graph inputs changed"):
        vf.check_structure(m, ref)


def test_onnxruntime_catches_what_the_checker_accepts():
    """A Conv bias of the wrong length passes onnx.checker; onnxruntime refuses it."""
    nodes = [helper.make_node("Conv", ["X", "W", "B"], ["Y"], name="conv")]
    m = make_model(nodes, [vinfo("X", [1, 2, 4, 4])], [vinfo("Y", [1, 3, 4, 4])],
                   {"W": np.ones((3, 2, 1, 1), np.float32), "B": np.ones(5, np.float32)})
    onnx.checker.check_model(m, full_check=True)
    with pytest.raises(VerificationError, match="onnxruntime"):
        vf.check_runtime(m)


def test_failure_names_the_pass_and_those_before():
    m = _relu_chain()
    m.graph.node[1].op_type = "NoSuchOp"
    with pytest.raises(VerificationError, match=r"pass 'b' \(after a\) broke the graph"):
        vf.verify(m, _relu_chain(), pass_name="b", previous=["a"])


def test_no_second_shape_inference(monkeypatch):
    """The full check already runs strict inference; verification used to run it again."""
    calls = []
    real = onnx.shape_inference.infer_shapes
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = _relu_chain()
    vf.verify(m, m)
    assert calls == []


def test_big_models_are_checked_as_a_skeleton(monkeypatch):
    """Over the skeleton threshold nothing is serialised whole, and errors still show."""
    import onnxprune.model as om
    import onnxprune.runtime as rt

    monkeypatch.setattr(om, "SKELETON_CHECK_BYTES", 1)
    monkeypatch.setattr(rt, "FILE_SESSION_BYTES", 1)
    serialised = []
    real = onnx.ModelProto.SerializeToString

    def spy(self, *a, **k):
        out = real(self, *a, **k)
        serialised.append(len(out))
        return out

    w = np.ones((64, 64, 3, 3), np.float32)  # 147 KiB, stubbed in the skeleton
    nodes = [helper.make_node("Conv", ["X", "W"], ["Y"], pads=[1, 1, 1, 1], name="conv")]
    m = make_model(nodes, [vinfo("X", [1, 64, 4, 4])], [vinfo("Y", [1, 64, 4, 4])], {"W": w})
    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", spy)
    vf.verify(m, m)
    assert serialised and max(serialised) < w.nbytes  # only skeletons were serialised
    m.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(VerificationError, match="NoSuchOp"):
        vf.verify(m, m)


def _declared_wrong() -> onnx.ModelProto:
    """X ─Conv(4)─BN─▶ Y, Y declared with 5 channels: onnx's full check fails on the input
    itself, onnxruntime runs it."""
    nodes = [helper.make_node("Conv", ["X", "W"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["Y"], name="bn")]
    inits = {"W": np.ones((4, 2, 1, 1), np.float32), "s": np.full(4, 2, np.float32), "b": np.zeros(4, np.float32),
             "m": np.zeros(4, np.float32), "v": np.ones(4, np.float32)}
    return make_model(nodes, [vinfo("X", [1, 2, 3, 3])], [vinfo("Y", [1, 5, 3, 3])], inits)


def test_an_input_failing_the_full_check_does_not_blame_the_pass():
    """fold-bn used to 'break the graph' here: the input's own inference error moved from
    the BatchNormalization to the Conv and no longer matched the input's message."""
    from onnxprune.api import run_passes

    m = _declared_wrong()
    with pytest.raises(onnx.shape_inference.InferenceError):
        onnx.checker.check_model(m, full_check=True)
    out, records = run_passes(m, ["fold-bn"])
    assert records[0].modified and [n.op_type for n in out.graph.node] == ["Conv"]


def test_a_pass_that_breaks_a_valid_input_is_still_caught():
    m = _relu_chain()
    broken = _relu_chain()
    broken.graph.node[1].op_type = "Conv"  # a Conv without weights
    with pytest.raises(VerificationError):
        vf.verify(broken, m, pass_name="x")
