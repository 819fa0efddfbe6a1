"""Channels that reach an If/Loop body are blocked with a reason (they used to raise KeyError)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxprune.api import run_passes
from onnxprune.channels import analyze
from onnxprune.cost import model_cost
from onnxprune.model import Model, normalize
from onnxprune.testing import make_model, random_feeds, run, vinfo


def _if_model() -> onnx.ModelProto:
    """X ─Conv(8)─▶ c1 ─If(cond){then: Relu(c1), else: Sigmoid(c1)}─▶ r ─Conv(4)─▶ Y,
    plus X ─Conv(8)─Relu─Conv(4)─▶ Z beside it, which stays prunable."""
    rng = np.random.default_rng(0)
    then_g = helper.make_graph([helper.make_node("Relu", ["c1"], ["t_out"])], "then", [], [vinfo("t_out", None)])
    else_g = helper.make_graph([helper.make_node("Sigmoid", ["c1"], ["e_out"])], "else", [], [vinfo("e_out", None)])
    nodes = [helper.make_node("Conv", ["X", "W1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("If", ["cond"], ["r"], then_branch=then_g, else_branch=else_g, name="branch"),
             helper.make_node("Conv", ["r", "W2"], ["Y"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Conv", ["X", "W3"], ["c3"], pads=[1, 1, 1, 1], name="conv3"),
             helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
             helper.make_node("Conv", ["r3", "W4"], ["Z"], pads=[1, 1, 1, 1], name="conv4")]
    inits = {"W1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
             "W2": rng.standard_normal((4, 8, 3, 3)).astype(np.float32),
             "W3": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
             "W4": rng.standard_normal((4, 8, 3, 3)).astype(np.float32), "cond": np.array(True)}
    return make_model(nodes, [vinfo("X", [1, 3, 6, 6])], [vinfo("Y", [1, 4, 6, 6]), vinfo("Z", [1, 4, 6, 6])], inits)


def test_group_reaching_an_if_body_is_blocked_with_the_if_named():
    analysis = analyze(Model(normalize(_if_model())))
    reasons = [r for g in analysis.groups if "conv1" in g.sources for _, r in g.blocked]
    assert any("subgraph of If branch" in r for r in reasons), reasons
    prunable = [g for g in analysis.groups if analysis.prunable_atoms(g)]
    assert [g.sources for g in prunable] == [["conv3"]]


def test_prune_channels_prunes_around_an_if_and_stays_exact_elsewhere():
    m = normalize(_if_model())
    out, records = run_passes(m, ["prune-channels:ratio=0.5,round-to=4,latency-guard=false"])
    assert records[0].modified
    dims = {t.name: list(t.dims) for t in out.graph.initializer}
    assert dims["W1"] == [8, 3, 3, 3]  # the If's group is untouched
    feeds = random_feeds(m)
    np.testing.assert_allclose(run(out, feeds)[0], run(m, feeds)[0], rtol=1e-5, atol=1e-5)  # Y unchanged


def test_explain_handles_if(tmp_path):
    from onnxprune.explain import explain_model

    onnx.save(_if_model(), tmp_path / "if.onnx")
    info = explain_model(str(tmp_path / "if.onnx"))
    assert info["n_prunable_groups"] == 1


def test_subgraph_nodes_are_said_not_costed():
    cost = model_cost(normalize(_if_model()))
    assert cost.uncosted_subgraphs == ["branch"]
