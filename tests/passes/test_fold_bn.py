"""fold-bn: lossless over generated Conv/ConvTranspose/Gemm + BN/Mul/Add chains."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from onnxprune.api import run_passes
from onnxprune.model import normalize
from onnxprune.testing import make_model, random_feeds, run, vinfo


def _bn(name: str, x: str, y: str, c: int, rng: np.random.Generator, inits: dict) -> onnx.NodeProto:
    inits[f"{name}_g"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    inits[f"{name}_b"] = rng.standard_normal(c).astype(np.float32)
    inits[f"{name}_m"] = rng.standard_normal(c).astype(np.float32)
    inits[f"{name}_v"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
    return helper.make_node("BatchNormalization", [x, f"{name}_g", f"{name}_b", f"{name}_m", f"{name}_v"], [y],
                            name=name, epsilon=1e-3)


def _conv_model(kind: str, groups: int, bias: bool, tail: list[str], seed: int) -> onnx.ModelProto:
    """X ─Conv|ConvTranspose(groups, bias?)─▶ ─tail ops (BN, Mul, Add, Sub, Div)─▶ ─Relu─▶ Y"""
    rng = np.random.default_rng(seed)
    cin, cout = 2 * groups, 3 * groups
    inits: dict[str, np.ndarray] = {}
    if kind == "Conv":
        inits["W"] = rng.standard_normal((cout, cin // groups, 3, 3)).astype(np.float32)
        attrs = dict(group=groups, pads=[1, 0, 1, 2], strides=[2, 1])
    else:
        inits["W"] = rng.standard_normal((cin, cout // groups, 3, 3)).astype(np.float32)
        attrs = dict(group=groups, strides=[2, 2])
    ins = ["X", "W"]
    if bias:
        inits["B"] = rng.standard_normal(cout).astype(np.float32)
        ins.append("B")
    nodes = [helper.make_node(kind, ins, ["t0"], name="conv", **attrs)]
    for i, op in enumerate(tail):
        x, y = f"t{i}", f"t{i + 1}"
        if op == "BN":
            nodes.append(_bn(f"bn{i}", x, y, cout, rng, inits))
        else:
            shape = [(cout, 1, 1), (1, cout, 1, 1), (1,), ()][i % 4]
            c = rng.uniform(0.5, 2.0, shape).astype(np.float32)
            inits[f"c{i}"] = c
            nodes.append(helper.make_node(op, [x, f"c{i}"], [y], name=f"{op}{i}"))
    nodes.append(helper.make_node("Relu", [f"t{len(tail)}"], ["Y"], name="relu"))
    return make_model(nodes, [vinfo("X", ["N", cin, 7, 6])], [vinfo("Y", None)], inits)


def _check_lossless(model: onnx.ModelProto, expect_left: set[str]) -> dict:
    model = normalize(model)
    out, records = run_passes(model, ["fold-bn"])
    feeds = random_feeds(model, seed=1)
    np.testing.assert_allclose(run(out, feeds)[0], run(model, feeds)[0], rtol=1e-4, atol=1e-4)
    ops = {n.op_type for n in out.graph.node}
    assert ops == expect_left, ops
    onnx.checker.check_model(out, full_check=True)
    return records[0].to_dict()


@settings(max_examples=40, deadline=None, derandomize=True)
@given(kind=st.sampled_from(["Conv", "ConvTranspose"]), groups=st.sampled_from([1, 2, 3]), bias=st.booleans(),
       tail=st.lists(st.sampled_from(["BN", "Mul", "Add", "Sub", "Div"]), min_size=1, max_size=4),
       seed=st.integers(0, 1000))
def test_fold_chain_is_lossless(kind, groups, bias, tail, seed):
    rec = _check_lossless(_conv_model(kind, groups, bias, tail, seed), {kind, "Relu"})
    assert rec["modified"] is True
    assert sum(rec["stats"]["folded"].values()) == len(tail)


def test_depthwise_conv_bn():
    rec = _check_lossless(_conv_model("Conv", 4, False, ["BN"], 3), {"Conv", "Relu"})
    assert rec["stats"]["folded"] == {"BatchNormalization": 1}


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias", [False, True])
def test_gemm_bn(trans_b, bias):
    """X[N,5] ─Gemm(alpha=0.5, beta=2)─▶ BN ─▶ Y"""
    rng = np.random.default_rng(0)
    inits = {"W": rng.standard_normal((4, 5) if trans_b else (5, 4)).astype(np.float32)}
    ins = ["X", "W"]
    if bias:
        inits["C"] = rng.standard_normal(4).astype(np.float32)
        ins.append("C")
    nodes = [helper.make_node("Gemm", ins, ["t"], name="gemm", transB=trans_b, alpha=0.5, beta=2.0),
             _bn("bn", "t", "Y", 4, rng, inits)]
    model = make_model(nodes, [vinfo("X", ["N", 5])], [vinfo("Y", ["N", 4])], inits)
    _check_lossless(model, {"Gemm"})


def test_shared_weight_gets_own_copy():
    """X ─Conv(W)─▶ BN ─▶ Y1 ;  X ─Conv(W)─▶ Y2 : the second conv must keep the unscaled W."""
    rng = np.random.default_rng(0)
    inits = {"W": rng.standard_normal((3, 2, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["X", "W"], ["a"], name="c1"), _bn("bn", "a", "Y1", 3, rng, inits),
             helper.make_node("Conv", ["X", "W"], ["Y2"], name="c2")]
    model = make_model(nodes, [vinfo("X", [1, 2, 4, 4])], [vinfo("Y1", None), vinfo("Y2", None)], inits)
    _check_lossless(model, {"Conv"})


def test_not_folded_when_conv_output_read_twice():
    """X ─Conv─▶ t ─BN─▶ Y1 and t ─▶ Y2 (graph output): nothing may change."""
    rng = np.random.default_rng(0)
    inits = {"W": rng.standard_normal((3, 2, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["X", "W"], ["t"], name="c1"), _bn("bn", "t", "Y1", 3, rng, inits),
             helper.make_node("Relu", ["t"], ["Y2"], name="r")]
    model = make_model(nodes, [vinfo("X", [1, 2, 4, 4])], [vinfo("Y1", None), vinfo("Y2", None)], inits)
    rec = _check_lossless(model, {"Conv", "BatchNormalization", "Relu"})
    assert rec["modified"] is False
    assert rec["stats"]["not_folded"][0]["node"] == "bn"
    assert "read by other nodes" in rec["stats"]["not_folded"][0]["reason"]


def test_non_per_channel_constant_left_alone():
    """Conv ─▶ Mul by a [1,1,4,4] spatial mask: not per-channel, must stay."""
    rng = np.random.default_rng(0)
    inits = {"W": rng.standard_normal((3, 2, 1, 1)).astype(np.float32), "m": rng.standard_normal((1, 1, 4, 4)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["X", "W"], ["t"], name="c1"), helper.make_node("Mul", ["t", "m"], ["Y"], name="mul")]
    model = make_model(nodes, [vinfo("X", [1, 2, 4, 4])], [vinfo("Y", None)], inits)
    rec = _check_lossless(model, {"Conv", "Mul"})
    assert rec["modified"] is False


def test_bn_after_add_reported_not_folded():
    rng = np.random.default_rng(0)
    inits: dict = {}
    nodes = [helper.make_node("Add", ["X", "X"], ["t"], name="add"), _bn("bn", "t", "Y", 2, rng, inits)]
    model = make_model(nodes, [vinfo("X", [1, 2, 4, 4])], [vinfo("Y", None)], inits)
    rec = _check_lossless(model, {"Add", "BatchNormalization"})
    assert rec["stats"]["not_folded"] == [{"node": "bn", "reason": "input is not produced by Conv, ConvTranspose or Gemm"}]
