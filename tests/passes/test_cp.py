"""cp: exact on kernels of known CP rank over generated convs, the max-error gate, skips, options."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper
from onnxprune.passes import REGISTRY
from onnxprune.passes.cp import cp

from onnxprune.errors import UsageError
from onnxprune.model import normalize
from onnxprune.testing import make_model, vinfo


def cp_weight(rank: int):
    """Kernels ``sum_r a[o,r] b[i,r] c[y,r] d[x,r]`` of CP rank ``rank`` (random factors)."""
    def weights(cout: int, cin: int, kernel: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        a, b, c, d = (rng.standard_normal((n, rank)) for n in (cout, cin, *kernel))
        return np.einsum("or,ir,yr,xr->oiyx", a, b, c, d).astype(np.float32)
    return weights


@settings(max_examples=30, deadline=None, derandomize=True)
@given(data=st.data(), rank=st.integers(1, 3), n_layers=st.integers(1, 2), seed=st.integers(0, 100))
def test_exact_cp_rank_is_reproduced(factor, data, rank, n_layers, seed):
    """Full rank for CP: decomposing at the rank the kernel was built with reproduces it."""
    cin = data.draw(st.integers(rank, 5))
    specs = [data.draw(factor.conv_spec(kernels=(2, 3), channels=range(rank, 7))) for _ in range(n_layers)]
    model = factor.conv_model(cin, specs, seed, weights=cp_weight(rank))
    out, rec = factor.run_pass(
        model, f"cp:rank={rank},only-cheaper=false,check-latency=false,n-iter=500,max-error=1e-4")
    assert rec["modified"] is True, rec["stats"]["layers"]
    convs = [n for n in out.graph.node if n.op_type == "Conv"]
    assert len(convs) == 4 * n_layers
    for i, s in enumerate(specs):
        line = factor.layer(rec, f"c{i}")
        assert line["relative_error"] < 1e-4 and line["ranks"] == {"cp": rank}
        first, vertical, horizontal, last = convs[4 * i: 4 * i + 4]
        attrs = {n.name: {a.name: helper.get_attribute_value(a) for a in n.attribute} for n in (vertical, horizontal)}
        assert attrs[vertical.name]["kernel_shape"] == [s.kernel[0], 1]
        assert attrs[horizontal.name]["kernel_shape"] == [1, s.kernel[1]]
        assert attrs[vertical.name].get("group", 1) == rank == attrs[horizontal.name].get("group", 1)
        assert attrs[vertical.name]["strides"] == [s.strides[0], 1]
        assert attrs[horizontal.name]["dilations"] == [1, s.dilations[1]]
        if s.auto_pad == "NOTSET":
            assert attrs[vertical.name]["pads"] == [s.pads[0], 0, s.pads[2], 0]
            assert attrs[horizontal.name]["pads"] == [0, s.pads[1], 0, s.pads[3]]
    assert factor.max_rel_diff(out, model) < 1e-4


def _one_conv(w: np.ndarray, group: int = 1) -> onnx.ModelProto:
    cin = w.shape[1] * group
    nodes = [helper.make_node("Conv", ["X", "W", "B"], ["Y"], name="conv", group=group, pads=[1, 0, 1, 2])]
    b = np.linspace(-1, 1, w.shape[0]).astype(np.float32)
    return normalize(make_model(nodes, [vinfo("X", ["N", cin, 9, 7])], [vinfo("Y", None)], {"W": w, "B": b}))


def test_cheaper_exact_rewrite_with_defaults(factor):
    """A 32 -> 16 3x3 kernel of CP rank 4: rank=4 passes the cost gate and is exact."""
    w = cp_weight(4)(32, 16, (3, 3), np.random.default_rng(0))
    model = _one_conv(w)
    out, rec = factor.run_pass(model, "cp:rank=4,check-latency=false")
    line = factor.layer(rec, "conv")
    assert line["skipped"] is False
    assert line["params_before"] == 32 * 16 * 9 + 32 and line["params_after"] == 4 * (16 + 3 + 3 + 32) + 32
    assert factor.max_rel_diff(out, model) < 1e-4


def test_too_much_error_is_rejected(factor):
    w = np.random.default_rng(1).standard_normal((16, 8, 3, 3)).astype(np.float32)
    out, rec = factor.run_pass(_one_conv(w), "cp:rank=2,max-error=0.1,check-latency=false")
    assert rec["modified"] is False
    line = factor.layer(rec, "conv")
    # Settled by the SVD bound here (ALS would only do worse than the bound).
    assert "max-error=0.1" in line["reason"] and line["error_lower_bound"] > 0.1
    assert [n.op_type for n in out.graph.node] == ["Conv"]


@pytest.mark.parametrize("shape, group, spec, reason", [
    ((8, 1, 3, 3), 8, "cp:rank=2", "depthwise"),
    ((8, 4, 3, 3), 2, "cp:rank=2", "grouped conv"),
    ((16, 8, 1, 1), 1, "cp:rank=2", "1x1 conv"),
    ((16, 8, 3, 3), 1, "cp:rank=80", "exceeds 72"),
    ((16, 8, 3, 3), 1, "cp:rank=48", "not cheaper"),
    ((16, 8, 3, 3), 1, "cp:rank=2,layers=other", "not matched"),
])
def test_nothing_qualifies(factor, shape, group, spec, reason):
    w = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    _, rec = factor.run_pass(_one_conv(w, group), spec + ",check-latency=false")
    assert rec["modified"] is False
    assert reason in factor.layer(rec, "conv")["reason"]


def test_fraction_rank():
    """fraction is of min(Cin, Cout): 0.5 of min(16, 8) is 4; the default fraction is 0.5."""
    assert REGISTRY.create("cp:fraction=0.5").options.rank_for(16, 8) == 4
    assert REGISTRY.create("cp").options.rank_for(16, 8) == 4
    assert REGISTRY.create("cp:fraction=0.3").options.rank_for(16, 10) == 3
    assert REGISTRY.create("cp:rank=7").options.rank_for(16, 8) == 7


@pytest.mark.parametrize("spec, message", [
    ("cp:rank=2,fraction=0.5", "not both"),
    ("cp:rank=0", "positive integer"),
    ("cp:max-error=0", "out of range"),
    ("cp:n-iter=0", "n-iter"),
])
def test_bad_options(spec, message):
    with pytest.raises(UsageError, match=message):
        REGISTRY.create(spec)


def test_plain_function_twin(factor):
    w = cp_weight(3)(24, 12, (3, 3), np.random.default_rng(3))
    model = _one_conv(w)
    out = cp(model, rank=3, check_latency=False, n_iter=300)
    assert [n.op_type for n in out.graph.node] == ["Conv"] * 4
    assert factor.max_rel_diff(out, model) < 1e-4


def test_hopeless_layer_skipped_without_als(factor, monkeypatch):
    """A dense random 3x3 conv cannot reach max-error=0.3 at rank 16: the SVD bound says so, and ALS
    is never called (issue 10: cp spent minutes of ALS on SqueezeNet and rewrote nothing)."""
    from onnxprune import decomp

    def no_als(*args, **kwargs):
        raise AssertionError("ALS ran")

    monkeypatch.setattr(decomp, "cp", no_als)
    w = np.random.default_rng(0).standard_normal((32, 32, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["X", "W"], ["Y"], name="conv", pads=[1, 1, 1, 1])]
    model = normalize(make_model(nodes, [vinfo("X", [1, 32, 8, 8])], [vinfo("Y", None)], {"W": w}))
    out, rec = factor.run_pass(model, "cp:rank=16,check-latency=false")
    line = factor.layer(rec, "conv")
    assert rec["modified"] is False and "ALS not run" in line["reason"]
    assert line["error_lower_bound"] > 0.3
