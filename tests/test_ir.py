"""The safe graph edits: check first, then edit, so a failed edit leaves the graph as it was."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import helper

from onnxprune import ir
from onnxprune.model import Model
from onnxprune.testing import make_model, random_feeds, run, vinfo


def _shared_bias_model() -> Model:
    """X ─Conv(W1, b)─▶ a ─Conv(W2, b)─▶ Y: one zero bias shared by both convs (exporters merge them)."""
    nodes = [helper.make_node("Conv", ["X", "W1", "b"], ["a"], name="c1"),
             helper.make_node("Conv", ["a", "W2", "b"], ["Y"], name="c2")]
    inits = {"W1": np.ones((2, 2, 1, 1), np.float32), "W2": np.ones((2, 2, 1, 1), np.float32),
             "b": np.zeros(2, np.float32)}
    return Model(make_model(nodes, [vinfo("X", [1, 2, 2, 2])], [vinfo("Y", [1, 2, 2, 2])], inits))


def _node(model: Model, name: str) -> gs.Node:
    return next(n for n in model.graph.nodes if n.name == name)


def _snapshot(graph: gs.Graph) -> list[tuple[str, list[str], list[str]]]:
    return [(n.name, [t.name for t in n.inputs], [t.name for t in n.outputs]) for n in graph.nodes]


def test_set_input_constant_copies_a_shared_tensor():
    m = _shared_bias_model()
    c1, c2 = _node(m, "c1"), _node(m, "c2")
    new = ir.set_input_constant(m.graph, c1, 2, np.ones(2, np.float32))
    assert new is not c2.inputs[2] and new.name != "b"
    np.testing.assert_array_equal(c2.inputs[2].values, np.zeros(2))  # the other reader is untouched
    m.touch()
    feeds = random_feeds(m.to_onnx())
    out = run(m.to_onnx(), feeds)[0]
    # a = ΣX + 1 (c1's own bias), Y = Σa + 0 (c2 still reads the zeros) = 2 (ΣX + 1)
    want = np.broadcast_to(2 * (feeds["X"].sum(axis=1, keepdims=True) + 1), out.shape)
    np.testing.assert_allclose(out, want, rtol=1e-5)


def test_set_input_constant_writes_in_place_for_the_only_reader():
    m = _shared_bias_model()
    c1 = _node(m, "c1")
    w = c1.inputs[1]
    assert ir.set_input_constant(m.graph, c1, 1, np.full((2, 2, 1, 1), 3, np.float32)) is w
    np.testing.assert_array_equal(w.values, 3)


def test_set_input_constant_out_of_range_changes_nothing():
    m = _shared_bias_model()
    before = _snapshot(m.graph)
    with pytest.raises(ir.EditError):
        ir.set_input_constant(m.graph, _node(m, "c1"), 7, np.ones(2, np.float32))
    assert _snapshot(m.graph) == before


def test_remove_nodes_refuses_a_node_still_read():
    m = _shared_bias_model()
    before = _snapshot(m.graph)
    with pytest.raises(ir.EditError, match="still read"):
        ir.remove_nodes(m.graph, [_node(m, "c1")])
    assert _snapshot(m.graph) == before
    with pytest.raises(ir.EditError, match="still read"):  # c2 writes a graph output
        ir.remove_nodes(m.graph, [_node(m, "c2")])


def test_reroute_output_keeps_the_tensor_name_and_checks_first():
    """X ─Relu─▶ a ─Identity─▶ Y  becomes  X ─Relu─▶ Y."""
    nodes = [helper.make_node("Relu", ["X"], ["a"], name="relu"), helper.make_node("Identity", ["a"], ["Y"], name="id")]
    m = Model(make_model(nodes, [vinfo("X", [2])], [vinfo("Y", [2])]))
    ir.reroute_output(m.graph, _node(m, "relu"), _node(m, "id"))
    m.touch()
    out = m.to_onnx()
    assert [(n.op_type, list(n.output)) for n in out.graph.node] == [("Relu", ["Y"])]
    # precondition: the producer's output must be read by the dropped node only
    nodes = [helper.make_node("Relu", ["X"], ["a"], name="relu"), helper.make_node("Identity", ["a"], ["Y"], name="id"),
             helper.make_node("Neg", ["a"], ["Z"], name="neg")]
    m = Model(make_model(nodes, [vinfo("X", [2])], [vinfo("Y", [2]), vinfo("Z", [2])]))
    before = _snapshot(m.graph)
    with pytest.raises(ir.EditError, match="read by more than"):
        ir.reroute_output(m.graph, _node(m, "relu"), _node(m, "id"))
    assert _snapshot(m.graph) == before


def test_replace_node_must_produce_the_old_outputs():
    nodes = [helper.make_node("Relu", ["X"], ["Y"], name="relu")]
    m = Model(make_model(nodes, [vinfo("X", [2])], [vinfo("Y", [2])]))
    old = _node(m, "relu")
    x, y = old.inputs[0], old.outputs[0]
    stray = gs.Variable("stray", dtype=np.float32)
    before = _snapshot(m.graph)
    with pytest.raises(ir.EditError, match="does not produce Y"):
        ir.replace_node(m.graph, old, [gs.Node("Neg", "neg", inputs=[x], outputs=[stray])])
    assert _snapshot(m.graph) == before
    mid = gs.Variable("mid", dtype=np.float32)
    ir.replace_node(m.graph, old, [gs.Node("Neg", "neg", inputs=[x], outputs=[mid]),
                                   gs.Node("Neg", "neg2", inputs=[mid], outputs=[y])])
    m.touch()
    feeds = {"X": np.array([-1.0, 2.0], np.float32)}
    np.testing.assert_array_equal(run(m.to_onnx(), feeds)[0], feeds["X"])


def test_insert_chain_after_a_graph_output_keeps_its_name():
    """X ─Relu─▶ Y  becomes  X ─Relu─▶ · ─Neg─▶ Y."""
    nodes = [helper.make_node("Relu", ["X"], ["Y"], name="relu")]
    m = Model(make_model(nodes, [vinfo("X", [2])], [vinfo("Y", [2])]))
    y = _node(m, "relu").outputs[0]
    out = gs.Variable("neg_out", dtype=np.float32, shape=[2])
    ir.insert_chain_after(m.graph, y, [gs.Node("Neg", "neg", inputs=[y], outputs=[out])], out)
    m.touch()
    proto = m.to_onnx()
    assert [o.name for o in proto.graph.output] == ["Y"]
    feeds = {"X": np.array([-1.0, 2.0], np.float32)}
    np.testing.assert_array_equal(run(proto, feeds)[0], [0.0, -2.0])


def test_unique_name_and_constant_value():
    m = _shared_bias_model()
    assert ir.unique_name(m.graph, "fresh") == "fresh"
    assert ir.unique_name(m.graph, "b") == "b_1"
    assert ir.unique_name(m.graph, "c1") == "c1_1"
    np.testing.assert_array_equal(ir.constant_value(_node(m, "c1").inputs[2]), np.zeros(2))
    assert ir.constant_value(_node(m, "c1").inputs[0]) is None
