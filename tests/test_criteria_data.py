"""Data-driven criteria: apoz, variance, activation (onnxprune.criteria_data)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxprune.api import run_passes
from onnxprune.channels import analyze
from onnxprune.context import PassContext
from onnxprune.criteria import CRITERIA, get_criterion
from onnxprune.data import load_dataset
from onnxprune.errors import UsageError
from onnxprune.model import Model, normalize
from onnxprune.testing import make_model, vinfo

DEAD, CONST, QUIET = 1, 4, 6  # channel roles in _model


def _model() -> onnx.ModelProto:
    """X[N,3,6,6] ─Conv 'p' (8 filters)─▶ Relu ─▶ h ─Conv 1x1 'c' (4)─▶ Y

    filter DEAD is zero with bias −1 (always 0 after Relu: APoZ 1), filter CONST is zero
    with bias +2 (always 2: variance 0), filter QUIET is small (low variance), and the
    consumer reads channel QUIET with a large weight (so 'activation' keeps it).
    """
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b = np.full(8, 0.1, np.float32)
    w[DEAD], b[DEAD] = 0.0, -1.0
    w[CONST], b[CONST] = 0.0, 2.0
    w[QUIET] *= 0.05
    wc = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    wc[:, QUIET] *= 400.0
    nodes = [helper.make_node("Conv", ["X", "w", "b"], ["a"], name="p", pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["h"], name="relu"),
             helper.make_node("Conv", ["h", "wc"], ["Y"], name="c")]
    return normalize(make_model(nodes, [vinfo("X", ["N", 3, 6, 6])], [vinfo("Y", ["N", 4, 6, 6])],
                                {"w": w, "b": b, "wc": wc}))


def _scores(criterion: str) -> np.ndarray:
    """Per channel of h (the atoms of the producer's group, in channel order)."""
    proto = _model()
    model = Model(proto)
    analysis = analyze(model)
    ctx = PassContext(calib=load_dataset(proto, None, limit=24, batch_size=8), calib_kind="data")
    scores, stats = get_criterion(criterion).score(analysis, model, ctx)
    assert stats["activation_stats"]["samples"] == 24
    space = analysis.ctx.by_tensor["h"]
    return scores[analysis.atom_of[space.id]]


def test_registered_and_need_data():
    for name in ("apoz", "variance", "activation"):
        assert name in CRITERIA and CRITERIA[name].needs_data


def test_apoz_dead_channel_scores_zero():
    s = _scores("apoz")
    assert s[DEAD] == 0.0  # APoZ = 1
    assert s[CONST] == 1.0  # never zero
    assert np.all(s[[i for i in range(8) if i != DEAD]] > 0)


def test_variance_constant_channel_scores_zero():
    s = _scores("variance")
    assert s[CONST] == pytest.approx(0.0, abs=1e-12) and s[DEAD] == 0.0
    live = [i for i in range(8) if i not in (DEAD, CONST)]
    assert np.all(s[live] > 0) and s[QUIET] == min(s[live])


def test_activation_weighs_the_consumer():
    """QUIET is the weakest activation but its consumer amplifies it 400x: it is not the first to go."""
    s = _scores("activation")
    assert s[DEAD] == 0.0
    live = [i for i in range(8) if i not in (DEAD, CONST)]
    assert s[QUIET] > np.median(s[live])
    # the formula: ||W_c[:, j]|| * sqrt(E[x_j^2])
    proto = _model()
    wc = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}["wc"]
    assert s[CONST] == pytest.approx(float(np.linalg.norm(wc[:, CONST])) * 2.0, rel=1e-5)


@pytest.mark.parametrize("criterion", ["apoz", "variance", "activation"])
def test_pass_removes_dead_and_constant_first(criterion):
    proto = _model()
    ctx = PassContext(calib=load_dataset(proto, None, limit=16, batch_size=8), calib_kind="data")
    out, rec = run_passes(proto, [f"prune-channels:ratio=0.25,round-to=1,latency-guard=false,criterion={criterion},"
                                  "reconstruct=none"], ctx=ctx)
    assert rec[0].modified and rec[0].stats["channels_removed"] == 2
    w = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    node = next(n for n in out.graph.node if n.name == "p")
    kept_bias = w[node.input[2]]
    assert -1.0 not in kept_bias.tolist()  # the dead filter went in every criterion
    if criterion != "apoz":
        assert 2.0 not in kept_bias.tolist()  # and the constant one (apoz cannot tell it from a live one)


@pytest.mark.parametrize("criterion", ["apoz", "variance", "activation"])
def test_no_data_is_a_one_line_usage_error(criterion):
    with pytest.raises(UsageError) as info:
        run_passes(_model(), [f"prune-channels:ratio=0.25,criterion={criterion},reconstruct=none"])
    msg = str(info.value)
    assert "\n" not in msg and f"criterion={criterion} needs calibration data" in msg
    assert info.value.exit_code == 2


def test_nothing_to_remove_is_not_modified():
    proto = _model()
    ctx = PassContext(calib=load_dataset(proto, None, limit=8, batch_size=8), calib_kind="data")
    _, rec = run_passes(proto, ["prune-channels:ratio=0.0,criterion=apoz,latency-guard=false"], ctx=ctx)
    assert rec[0].modified is False and rec[0].stats["channels_removed"] == 0
