"""prune-channels: options, safeguards, and validity over generated graphs."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper
from onnxprune.passes import REGISTRY
from onnxprune.passes import prune_channels as pc

from _support.graphgen import random_cnn
from onnxprune.api import run_passes
from onnxprune.errors import UsageError
from onnxprune.model import normalize
from onnxprune.testing import make_model, random_feeds, run, vinfo


def _chain(c1=16, c2=32, bn=False, small=()):
    """X ─Conv(3→c1, 'c1')─▶ [BN] ─▶ Relu ─▶ Conv(c1→c2, 'c2') ─▶ Relu ─▶ GAP ─▶ Flatten ─▶ Gemm(c2→4) ─▶ Y"""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((c1, 3, 3, 3)).astype(np.float32)
    for i in small:
        w1[i] *= 0.01
    inits = {"w1": w1, "b1": np.zeros(c1, np.float32), "w2": rng.standard_normal((c2, c1, 3, 3)).astype(np.float32) * 0.1,
             "fc": rng.standard_normal((4, c2)).astype(np.float32), "fcb": np.zeros(4, np.float32)}
    nodes = [helper.make_node("Conv", ["X", "w1", "b1"], ["a"], name="c1", pads=[1] * 4)]
    x = "a"
    if bn:
        gamma = np.ones(c1, np.float32)
        gamma[list(small)] = 0.001
        inits.update(g=gamma, be=np.zeros(c1, np.float32), m=np.zeros(c1, np.float32), v=np.ones(c1, np.float32))
        nodes.append(helper.make_node("BatchNormalization", ["a", "g", "be", "m", "v"], ["abn"], name="bn"))
        x = "abn"
    nodes += [helper.make_node("Relu", [x], ["r"]), helper.make_node("Conv", ["r", "w2"], ["b"], name="c2", pads=[1] * 4),
              helper.make_node("Relu", ["b"], ["r2"]), helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
              helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "fc", "fcb"], ["Y"], name="fc", transB=1)]
    m = make_model(nodes, [vinfo("X", ["batch", 3, 8, 8])], [vinfo("Y", ["batch", 4])], inits)
    m.producer_name = "unit-test"
    m.metadata_props.add(key="author", value="me")
    return normalize(m)


def _prune(model, spec):
    out, records = run_passes(model, [spec])
    return out, records[0]


def _weight(m: onnx.ModelProto, node: str) -> np.ndarray:
    n = next(n for n in m.graph.node if n.name == node)
    init = {t.name: t for t in m.graph.initializer}
    return onnx.numpy_helper.to_array(init[n.input[1]])


def test_local_ratio_and_group_report():
    out, rec = _prune(_chain(), "prune-channels:ratio=0.5,round-to=1,latency-guard=false")
    assert rec.modified
    assert _weight(out, "c1").shape == (8, 3, 3, 3) and _weight(out, "c2").shape == (16, 8, 3, 3)
    assert _weight(out, "fc").shape == (4, 16)
    assert sorted((g["channels"], g["removed"]) for g in rec.stats["per_group"]) == [(16, 8), (32, 16)]


def test_round_to_and_min_channels():
    out, _ = _prune(_chain(), "prune-channels:ratio=0.3,round-to=8,latency-guard=false")
    # 16*0.7=11.2 -> keep 12 -> rounded up to 16 (unchanged); 32*0.7=22.4 -> 23 -> 24
    assert _weight(out, "c1").shape[0] == 16 and _weight(out, "c2").shape[0] == 24
    out, _ = _prune(_chain(), "prune-channels:ratio=0.9,round-to=1,min-channels=5,latency-guard=false")
    assert _weight(out, "c1").shape[0] == 5 and _weight(out, "c2").shape[0] == 5


def test_never_to_zero_and_io_kept():
    model = _chain()
    out, _ = _prune(model, "prune-channels:ratio=0.99,round-to=1,latency-guard=false")
    assert _weight(out, "c1").shape[0] >= 1 and _weight(out, "c2").shape[0] >= 1
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert out.graph.output[0].type.tensor_type.shape == model.graph.output[0].type.tensor_type.shape
    assert out.opset_import == model.opset_import and out.producer_name == "unit-test"
    assert out.metadata_props[0].value == "me"
    feeds = random_feeds(out, batch=3)
    assert run(out, feeds)[0].shape == (3, 4)


def test_l1_removes_the_smallest_filters():
    small = (1, 4, 6, 9, 11, 12, 13, 15)
    out, _ = _prune(_chain(small=small), "prune-channels:ratio=0.5,round-to=1,protect=fc,latency-guard=false")
    kept = _weight(out, "c1")
    full = _weight(_chain(small=small), "c1")
    keep_idx = [i for i in range(16) if i not in small]
    np.testing.assert_array_equal(kept, full[keep_idx])


def test_bn_scale_uses_gamma_and_reports_fallback():
    small = (0, 2, 3, 5)
    out, rec = _prune(_chain(bn=True, small=small), "prune-channels:ratio=0.25,round-to=1,criterion=bn-scale,protect=fc,latency-guard=false")
    keep_idx = [i for i in range(16) if i not in small]
    np.testing.assert_array_equal(_weight(out, "c1"), _weight(_chain(bn=True, small=small), "c1")[keep_idx])
    _, rec2 = _prune(_chain(), "prune-channels:ratio=0.25,round-to=1,criterion=bn-scale,latency-guard=false")
    assert rec2.stats["bn_scale_fallback_groups"] >= 1


def test_protect_keeps_layer_untouched():
    model = _chain()
    out, rec = _prune(model, "prune-channels:ratio=0.5,round-to=1,protect=c2,latency-guard=false")
    # c2 is protected: neither its filters nor its input channels may change
    np.testing.assert_array_equal(_weight(out, "c2"), _weight(model, "c2"))
    assert not rec.modified


@pytest.mark.parametrize("criterion", ["l1", "l2", "fpgm", "bn-scale"])
@pytest.mark.parametrize("scope", ["local", "global"])
def test_criteria_and_scopes_run(criterion, scope):
    out, rec = _prune(_chain(bn=True), f"prune-channels:ratio=0.4,round-to=1,criterion={criterion},scope={scope},latency-guard=false")
    assert rec.modified and rec.stats["channels_removed"] > 0


def test_global_scope_total():
    _, rec = _prune(_chain(), "prune-channels:ratio=0.5,round-to=1,scope=global,latency-guard=false")
    assert rec.stats["channels_removed"] == 24  # half of 16 + 32 atoms


def test_latency_guard_reverts_when_slower(monkeypatch):
    monkeypatch.setattr(pc, "_latency_ratio", lambda before, after, ctx, runs: 1.5)
    model = _chain()
    out, rec = _prune(model, "prune-channels:ratio=0.5,round-to=1")
    assert rec.modified is False and "reverted" in rec.stats
    assert [t["round_to"] for t in rec.stats["latency_tried"]] == [1, 2, 4, 8, 16]  # then round-to 32 removes nothing
    np.testing.assert_array_equal(_weight(out, "c1"), _weight(model, "c1"))


def test_latency_guard_measures_for_real():
    _, rec = _prune(_chain(), "prune-channels:ratio=0.5,round-to=1,guard-runs=5")
    assert rec.stats["latency_tried"] and rec.stats["latency_tried"][0]["latency_ratio"] > 0


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), ratio=st.sampled_from([0.1, 0.3, 0.5, 0.8]),
       criterion=st.sampled_from(["l1", "l2", "fpgm"]), scope=st.sampled_from(["local", "global"]),
       round_to=st.sampled_from([1, 2, 4]))
def test_random_graphs_stay_valid(seed, ratio, criterion, scope, round_to):
    model = normalize(random_cnn(seed))
    out, rec = _prune(model, f"prune-channels:ratio={ratio},criterion={criterion},scope={scope},round-to={round_to},"
                             "latency-guard=false")
    feeds = random_feeds(model, batch=2)
    assert run(out, feeds)[0].shape == run(model, feeds)[0].shape


def test_group_ratios_override_one_group():
    out, rec = _prune(_chain(), "prune-channels:ratio=0.0,round-to=1,latency-guard=false,group-ratios=c1=0.5|nope=0.3")
    assert rec.modified and _weight(out, "c1").shape[0] == 8 and _weight(out, "c2").shape[0] == 32
    assert rec.stats["group_ratios_unmatched"] == ["nope"]


@pytest.mark.parametrize("spec, message", [
    ("prune-channels:ratio=1.0", "ratio=1.0 is out of range [0.0, 1.0)"),
    ("prune-channels:ratio=-0.1", "out of range"),
    ("prune-channels:round-to=0", "round-to=0 is out of range"),
    ("prune-channels:criterion=l3", "criterion must be one of l1, l2, fpgm, bn-scale"),
    ("prune-channels:scope=world", "scope must be one of local, global"),
    ("prune-channels:group-ratios=c1", "group-ratios entries are SOURCE=RATIO"),
    ("prune-channels:group-ratios=c1=1.5", "group-ratios entries are SOURCE=RATIO"),
    ("prune-channels:reconstruct=magic", "reconstruct must be one of auto, ls, lasso, none"),
    ("prune-channels:ridge=-1", "ridge=-1.0 is out of range"),
    ("prune-channels:calib-rows=3", "calib-rows=3 is out of range"),
    ("prune-channels:scope=everywhere", "scope must be one of local, global, error"),
])
def test_bad_options(spec, message):
    with pytest.raises(UsageError) as info:
        REGISTRY.create(spec)
    assert message in str(info.value) and "\n" not in str(info.value)
