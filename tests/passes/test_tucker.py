"""tucker: lossless at full rank over generated convs, exact at the true Tucker rank, skips, options."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper
from onnxprune.passes import REGISTRY
from onnxprune.passes.tucker import tucker

from onnxprune.api import run_passes
from onnxprune.decomp import tucker2_ranks
from onnxprune.errors import UsageError
from onnxprune.model import load_model, normalize
from onnxprune.testing import make_model, vinfo

FULL = "tucker:fraction=1.0,only-cheaper=false,check-latency=false,include-1x1=true"


@settings(max_examples=25, deadline=None, derandomize=True)
@given(data=st.data(), cin=st.integers(1, 5), n_layers=st.integers(1, 2), method=st.sampled_from(["hosvd", "hooi"]),
       seed=st.integers(0, 100))
def test_full_rank_is_lossless(factor, data, cin, n_layers, method, seed):
    specs = [data.draw(factor.conv_spec()) for _ in range(n_layers)]
    model = factor.conv_model(cin, specs, seed)
    out, rec = factor.run_pass(model, f"{FULL},method={method}")
    assert rec["modified"] is True
    assert factor.ops(out).count("Conv") == 3 * n_layers
    assert factor.max_rel_diff(out, model) < 1e-4
    for i, s in enumerate(specs):
        line = factor.layer(rec, f"c{i}")
        assert line["skipped"] is False and line["relative_error"] < 1e-5
        assert line["ranks"] == {"out": s.cout, "in": cin if i == 0 else specs[i - 1].cout}


def _tucker_weight(cout: int, cin: int, r_out: int, r_in: int, k: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    core = rng.standard_normal((r_out, r_in, *k))
    a, b = rng.standard_normal((cout, r_out)), rng.standard_normal((cin, r_in))
    return np.einsum("oa,abyx,ib->oiyx", a, core, b).astype(np.float32)


@pytest.mark.parametrize("rule", ["energy=1.0", "fraction=0.25"])
def test_exact_at_true_rank_and_cheaper(factor, rule):
    """W of Tucker rank (4, 2) on 16 -> 8 channels: energy 1.0 finds it; fraction 0.25 asks for it."""
    w = _tucker_weight(16, 8, 4, 2, (3, 3), seed=0)
    x_nodes = [helper.make_node("Conv", ["X", "W", "B"], ["Y"], name="conv", pads=[1, 0, 2, 1], strides=[2, 1])]
    model = normalize(make_model(x_nodes, [vinfo("X", ["N", 8, 12, 10])], [vinfo("Y", None)],
                                 {"W": w, "B": np.arange(16, dtype=np.float32)}))
    out, rec = factor.run_pass(model, f"tucker:{rule},check-latency=false")
    line = factor.layer(rec, "conv")
    assert line["ranks"] == {"out": 4, "in": 2}
    assert line["params_after"] < line["params_before"] and line["flops_after"] < line["flops_before"]
    assert 0 < line["params_reduction"] < 1
    assert rec["stats"]["params_before"] == 16 * 8 * 9 + 16
    assert rec["stats"]["params_after"] == 2 * 8 + 4 * 2 * 9 + 16 * 4 + 16
    assert factor.ops(out) == ["Conv"] * 3
    assert factor.max_rel_diff(out, model) < 1e-4


def _one_conv(w: np.ndarray, group: int = 1, cin: int | None = None, name: str = "conv") -> onnx.ModelProto:
    cin = cin if cin is not None else w.shape[1] * group
    nodes = [helper.make_node("Conv", ["X", "W"], ["Y"], name=name, group=group, pads=[1, 1, 1, 1] if w.shape[2] == 3 else [0] * 4)]
    return normalize(make_model(nodes, [vinfo("X", [1, cin, 8, 8])], [vinfo("Y", None)], {"W": w}))


@pytest.mark.parametrize("case, spec, reason", [
    ("1x1", "tucker:check-latency=false", "1x1 conv"),
    ("depthwise", "tucker:check-latency=false", "depthwise"),
    ("grouped", "tucker:check-latency=false", "grouped conv (group=2)"),
    ("full", "tucker:fraction=1.0,check-latency=false", "not cheaper"),
    ("3x3", "tucker:fraction=0.5,check-latency=false,layers=nothing*", "not matched by layers="),
    ("3x3", "tucker:fraction=0.5,check-latency=false,exclude=con*", "matched by exclude="),
    ("3x3", "tucker:fraction=0.5,check-latency=false,min-params=100000", "fewer than min-params"),
])
def test_nothing_qualifies(factor, case, spec, reason):
    rng = np.random.default_rng(0)
    w = {"1x1": (16, 8, 1, 1), "depthwise": (8, 1, 3, 3), "grouped": (8, 4, 3, 3), "full": (16, 8, 3, 3),
         "3x3": (16, 8, 3, 3)}[case]
    group = {"depthwise": 8, "grouped": 2}.get(case, 1)
    model = _one_conv(rng.standard_normal(w).astype(np.float32), group=group)
    out, rec = factor.run_pass(model, spec)
    assert rec["modified"] is False
    assert reason in factor.layer(rec, "conv")["reason"]
    assert factor.ops(out) == ["Conv"]


def test_include_1x1(factor):
    w = _tucker_weight(16, 8, 2, 2, (1, 1), seed=1)
    model = _one_conv(w)
    out, rec = factor.run_pass(model, "tucker:energy=1.0,include-1x1=true,check-latency=false")
    assert rec["modified"] is True and factor.ops(out) == ["Conv"] * 3
    assert factor.max_rel_diff(out, model) < 1e-4


@pytest.mark.parametrize("rule, value", [("vbmf", None), ("energy", 0.8), ("fraction", 0.5)])
def test_rank_rules_match_decomp(factor, rule, value):
    """The pass uses tucker2_ranks; fraction=0.5 on 16 -> 8 channels is (8, 4)."""
    w = np.random.default_rng(3).standard_normal((16, 8, 3, 3)).astype(np.float32)
    spec = f"tucker:rank={rule},only-cheaper=false,check-latency=false" + (f",{rule}={value}" if value else "")
    _, rec = factor.run_pass(_one_conv(w), spec)
    r_out, r_in = tucker2_ranks(w, rule, value)
    assert factor.layer(rec, "conv")["ranks"] == {"out": r_out, "in": r_in}
    if rule == "fraction":
        assert (r_out, r_in) == (8, 4)


@pytest.mark.parametrize("spec, message", [
    ("tucker:rank=energy", "needs energy="),
    ("tucker:energy=0.5,fraction=0.5", "not both"),
    ("tucker:rank=vbmf,energy=0.5", "does not take"),
    ("tucker:energy=1.5", "out of range"),
    ("tucker:rank=magic", "must be one of"),
    ("tucker:method=als", "must be one of"),
    ("tucker:min-params=-1", "min-params"),
    ("tucker:ratio=0.5", "unknown option"),
])
def test_bad_options(spec, message):
    with pytest.raises(UsageError, match=message):
        REGISTRY.create(spec)


def test_plain_function_twin(factor):
    w = _tucker_weight(16, 8, 4, 2, (3, 3), seed=2)
    model = _one_conv(w)
    out = tucker(model, energy=1.0, check_latency=False, layers=["conv"])
    assert factor.ops(out) == ["Conv"] * 3
    assert factor.max_rel_diff(out, model) < 1e-4


def test_shared_weight_is_skipped(factor):
    """X ─Conv(W)─▶ Y1 ; X ─Conv(W)─▶ Y2: replacing W in one conv would not shrink the model."""
    w = _tucker_weight(16, 8, 4, 2, (3, 3), seed=4)
    nodes = [helper.make_node("Conv", ["X", "W"], ["Y1"], name="a", pads=[1] * 4),
             helper.make_node("Conv", ["X", "W"], ["Y2"], name="b", pads=[1] * 4)]
    model = normalize(make_model(nodes, [vinfo("X", [1, 8, 6, 6])], [vinfo("Y1", None), vinfo("Y2", None)], {"W": w}))
    _, rec = factor.run_pass(model, "tucker:energy=1.0,check-latency=false")
    assert rec["modified"] is False
    assert "shared" in factor.layer(rec, "a")["reason"]


@pytest.mark.zoo
def test_zoo_squeezenet(factor, zoo):
    model = load_model(zoo / "models" / "squeezenet1.1.onnx")
    out, records = run_passes(model, ["tucker:check-latency=false"])
    stats = records[0].stats
    assert records[0].modified and stats["rewritten"] >= 5
    assert stats["params_after"] < stats["params_before"]
    assert sum(int(np.prod(t.dims)) for t in out.graph.initializer) < sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    reasons = {line.get("reason", "").split(":")[0] for line in stats["layers"] if line["skipped"]}
    assert reasons == {"1x1 conv"}
