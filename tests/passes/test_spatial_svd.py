"""spatial-svd: lossless at full rank over generated convs, exact at the true rank, skips, options."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper
from onnxprune.passes import REGISTRY
from onnxprune.passes.spatial_svd import spatial_svd

from onnxprune.decomp import rank_by_energy
from onnxprune.errors import UsageError
from onnxprune.model import normalize
from onnxprune.testing import make_model, vinfo

FULL = "spatial-svd:fraction=1.0,only-cheaper=false,check-latency=false,include-1x1=true"


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@settings(max_examples=40, deadline=None, derandomize=True)
@given(data=st.data(), cin=st.integers(1, 5), n_layers=st.integers(1, 2), seed=st.integers(0, 100))
def test_full_rank_is_lossless(factor, data, cin, n_layers, seed):
    specs = [data.draw(factor.conv_spec()) for _ in range(n_layers)]
    model = factor.conv_model(cin, specs, seed)
    out, rec = factor.run_pass(model, FULL)
    assert rec["modified"] is True
    convs = [n for n in out.graph.node if n.op_type == "Conv"]
    assert len(convs) == 2 * n_layers
    c = cin
    for i, s in enumerate(specs):
        line = factor.layer(rec, f"c{i}")
        assert line["skipped"] is False and line["relative_error"] < 1e-5
        assert line["ranks"] == {"svd": min(c * s.kernel[0], s.cout * s.kernel[1])}
        vertical, horizontal = (_attrs(n) for n in convs[2 * i: 2 * i + 2])
        assert vertical["kernel_shape"] == [s.kernel[0], 1] and horizontal["kernel_shape"] == [1, s.kernel[1]]
        assert vertical["strides"] == [s.strides[0], 1] and horizontal["strides"] == [1, s.strides[1]]
        assert vertical["dilations"] == [s.dilations[0], 1] and horizontal["dilations"] == [1, s.dilations[1]]
        if s.auto_pad == "NOTSET":
            assert vertical["pads"] == [s.pads[0], 0, s.pads[2], 0]
            assert horizontal["pads"] == [0, s.pads[1], 0, s.pads[3]]
        else:
            assert vertical["auto_pad"] == horizontal["auto_pad"] == s.auto_pad.encode()
        c = s.cout
    assert factor.max_rel_diff(out, model) < 1e-4


def _separable(cout: int, cin: int, rank: int, k: tuple[int, int], seed: int) -> np.ndarray:
    """W with M[(i,y),(o,x)] of rank ``rank``."""
    rng = np.random.default_rng(seed)
    p, q = rng.standard_normal((cin * k[0], rank)), rng.standard_normal((rank, cout * k[1]))
    return (p @ q).reshape(cin, k[0], cout, k[1]).transpose(2, 0, 1, 3).astype(np.float32)


def _one_conv(w: np.ndarray, group: int = 1, **attrs) -> onnx.ModelProto:
    cin = w.shape[1] * group
    b = np.linspace(-1, 1, w.shape[0]).astype(np.float32)
    nodes = [helper.make_node("Conv", ["X", "W", "B"], ["Y"], name="conv", group=group, **attrs)]
    return normalize(make_model(nodes, [vinfo("X", ["N", cin, 10, 9])], [vinfo("Y", None)], {"W": w, "B": b}))


@pytest.mark.parametrize("rule", ["energy=1.0", "rank=5", "fraction=0.1"])
def test_exact_at_true_rank_and_cheaper(factor, rule):
    """M of rank 5 for a 16 -> 16 3x3 conv (full rank 48): each rule picks 5, the rewrite is exact."""
    w = _separable(16, 16, 5, (3, 3), seed=0)
    model = _one_conv(w, pads=[1, 2, 1, 0], strides=[1, 2])
    out, rec = factor.run_pass(model, f"spatial-svd:{rule},check-latency=false")
    line = factor.layer(rec, "conv")
    assert line["ranks"] == {"svd": 5}
    assert line["params_after"] == 5 * (16 * 3 + 16 * 3) + 16 < line["params_before"] == 16 * 16 * 9 + 16
    assert line["flops_after"] < line["flops_before"]
    assert factor.max_rel_diff(out, model) < 1e-4


def test_energy_rank_is_documented_rule(factor):
    w = np.random.default_rng(5).standard_normal((8, 6, 3, 3)).astype(np.float32)
    _, rec = factor.run_pass(_one_conv(w, pads=[1] * 4), "spatial-svd:energy=0.7,only-cheaper=false,check-latency=false")
    s = np.linalg.svd(w.astype(np.float64).transpose(1, 2, 0, 3).reshape(18, 24), compute_uv=False)
    assert factor.layer(rec, "conv")["ranks"] == {"svd": rank_by_energy(s, 0.7)}


@pytest.mark.parametrize("shape, group, spec, reason", [
    ((8, 1, 3, 3), 8, "spatial-svd", "depthwise"),
    ((8, 4, 3, 3), 2, "spatial-svd", "grouped conv"),
    ((16, 8, 1, 1), 1, "spatial-svd", "1x1 conv"),
    ((16, 8, 3, 3), 1, "spatial-svd:fraction=1.0", "not cheaper"),
    ((16, 8, 3, 3), 1, "spatial-svd:exclude=conv", "matched by exclude="),
])
def test_nothing_qualifies(factor, shape, group, spec, reason):
    w = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    sep = ":" if ":" not in spec else ","
    _, rec = factor.run_pass(_one_conv(w, group, pads=[1] * 4), spec + sep + "check-latency=false")
    assert rec["modified"] is False
    assert reason in factor.layer(rec, "conv")["reason"]


@pytest.mark.parametrize("spec, message", [
    ("spatial-svd:rank=3,energy=0.5", "at most one"),
    ("spatial-svd:fraction=0", "out of range"),
    ("spatial-svd:rank=-2", "positive integer"),
    ("spatial-svd:include-1x1=maybe", "must be bool"),
])
def test_bad_options(spec, message):
    with pytest.raises(UsageError, match=message):
        REGISTRY.create(spec)


def test_plain_function_twin(factor):
    w = _separable(12, 8, 3, (3, 5), seed=1)
    model = _one_conv(w, pads=[1, 2, 1, 2])
    out = spatial_svd(model, rank=3, check_latency=False)
    assert [n.op_type for n in out.graph.node] == ["Conv", "Conv"]
    assert factor.max_rel_diff(out, model) < 1e-4
