"""prune-weights: per-layer sparsity is exact, the q·std rule holds, N:M patterns hold,
shared weights are copied before an edit, and a no-op says so."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper
from onnxprune.passes import REGISTRY

from onnxprune.api import run_passes
from onnxprune.errors import UsageError
from onnxprune.model import normalize
from onnxprune.testing import make_model, random_feeds, run, vinfo


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def layer(rec: dict, name: str) -> dict:
    return next(line for line in rec["stats"]["layers"] if line["name"] == name)


def prune(model: onnx.ModelProto, spec: str) -> tuple[onnx.ModelProto, dict]:
    out, records = run_passes(model, [spec])
    onnx.checker.check_model(out, full_check=True)
    run(out, random_feeds(out))
    return out, records[0].to_dict()


def mixed_model(cin: int = 8, c1: int = 12, k: int = 3, seed: int = 0) -> onnx.ModelProto:
    """X[N,cin,9,9] ─Conv c1─▶ Relu ─GlobalAveragePool─▶ Flatten ─Gemm(transB)─▶ ─MatMul─▶ Y[N,6]"""
    rng = np.random.default_rng(seed)
    inits = {
        "W0": rng.standard_normal((c1, cin, k, k)).astype(np.float32),
        "B0": rng.standard_normal(c1).astype(np.float32),
        "W1": rng.standard_normal((16, c1)).astype(np.float32),  # Gemm transB: [N, K]
        "B1": rng.standard_normal(16).astype(np.float32),
        "W2": rng.standard_normal((16, 6)).astype(np.float32),  # MatMul B: [K, N]
    }
    nodes = [
        helper.make_node("Conv", ["X", "W0", "B0"], ["c0"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r0"], ["p0"], name="gap"),
        helper.make_node("Flatten", ["p0"], ["f0"], name="flat"),
        helper.make_node("Gemm", ["f0", "W1", "B1"], ["g0"], name="gemm", transB=1),
        helper.make_node("MatMul", ["g0", "W2"], ["Y"], name="matmul"),
    ]
    return normalize(make_model(nodes, [vinfo("X", ["N", cin, 9, 9])], [vinfo("Y", None)], inits))


@settings(max_examples=25, deadline=None)
@given(s=st.floats(0.0, 0.99), seed=st.integers(0, 1000))
def test_sparsity_is_exact_per_layer(s: float, seed: int) -> None:
    model = mixed_model(seed=seed)
    out, rec = prune(model, f"prune-weights:sparsity={s}")
    before, after = weights(model), weights(out)
    for node, tensor in (("conv", "W0"), ("gemm", "W1"), ("matmul", "W2")):
        w = before[tensor]
        new = next(v for k, v in after.items() if v.shape == w.shape and k.startswith(tensor))
        k = int(round(s * w.size))
        assert int((new == 0).sum()) == k
        assert layer(rec, node)["zeros_after"] == k
        kept = new != 0
        np.testing.assert_array_equal(new[kept], w[kept])  # survivors untouched
        if 0 < k < w.size:  # the zeros are the smallest magnitudes
            assert np.abs(w[~kept]).max() <= np.abs(w[kept]).min()
    assert rec["modified"] is (round(s * 12 * 8 * 9) > 0)


@pytest.mark.parametrize("q", [0.0, 0.3, 1.0, 2.5])
def test_threshold_rule_is_q_times_std(q: float) -> None:
    model = mixed_model(seed=3)
    out, rec = prune(model, f"prune-weights:threshold={q}")
    before = weights(model)
    after = weights(out)
    for tensor in ("W0", "W1", "W2"):
        w = before[tensor]
        new = next(v for k, v in after.items() if v.shape == w.shape and k.startswith(tensor))
        expect = np.abs(w) < q * np.std(w.astype(np.float64))
        np.testing.assert_array_equal(new == 0, expect)
        np.testing.assert_array_equal(new[~expect], w[~expect])
    assert rec["modified"] is (q > 0)
    assert rec["stats"]["rule"] == {"threshold": q}


def groups_along(w: np.ndarray, axis: int, m: int) -> np.ndarray:
    return np.moveaxis(w, axis, -1).reshape(-1, m)


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8"])
def test_n_m_pattern_holds_along_the_input_axis(pattern: str) -> None:
    n, m = (int(v) for v in pattern.split(":"))
    model = mixed_model(cin=8, c1=16, seed=5)
    out, rec = prune(model, f"prune-weights:pattern={pattern}")
    before, after = weights(model), weights(out)
    for tensor, axis in (("W0", 1), ("W1", 1), ("W2", 0)):  # Conv Cin, Gemm transB K, MatMul K
        w = before[tensor]
        new = next(v for k, v in after.items() if v.shape == w.shape and k.startswith(tensor))
        g_old, g_new = groups_along(w, axis, m), groups_along(new, axis, m)
        assert ((g_new != 0).sum(1) == n).all()
        # the kept ones are the n largest of their group
        kept_min = np.where(g_new != 0, np.abs(g_old), np.inf).min(1)
        dropped_max = np.where(g_new == 0, np.abs(g_old), -np.inf).max(1)
        assert (kept_min >= dropped_max).all()
    assert rec["stats"]["sparsity"] == pytest.approx(1 - n / m)


def test_pattern_skips_layers_whose_input_axis_does_not_divide() -> None:
    model = mixed_model(cin=3, c1=12, seed=1)  # conv has Cin = 3
    out, rec = prune(model, "prune-weights:pattern=2:4")
    reasons = {s["name"]: s["reason"] for s in rec["stats"]["skipped"]}
    assert "not a multiple of 4" in reasons["conv"]
    np.testing.assert_array_equal(weights(out)["W0"], weights(model)["W0"])


def shared_model() -> onnx.ModelProto:
    """X[N,8] ─MatMul(W)─▶ a ;  X ─MatMul(W)─▶ b ;  Y = a + b   (W tied)"""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["X", "W"], ["a"], name="left"),
             helper.make_node("MatMul", ["X", "W"], ["b"], name="right"),
             helper.make_node("Sub", ["a", "b"], ["Y"], name="sub")]
    return normalize(make_model(nodes, [vinfo("X", ["N", 8])], [vinfo("Y", None)],
                                {"W": rng.standard_normal((8, 8)).astype(np.float32)}))


def test_shared_weight_read_by_an_excluded_node_is_copied() -> None:
    model = shared_model()
    out, rec = prune(model, "prune-weights:sparsity=0.5,exclude=right")
    ws = weights(out)
    assert len(ws) == 2 and rec["stats"]["layers"][0]["copied"]
    np.testing.assert_array_equal(ws["W"], weights(model)["W"])  # the excluded reader keeps its weight
    assert (ws[next(k for k in ws if k != "W")] == 0).sum() == 32
    x = random_feeds(out)
    assert np.abs(run(out, x)[0]).max() > 0  # left and right now differ


def test_tied_weight_read_only_by_selected_nodes_stays_one_tensor() -> None:
    model = shared_model()
    out, rec = prune(model, "prune-weights:sparsity=0.5")
    assert len(weights(out)) == 1 and not rec["stats"]["layers"][0]["copied"]
    assert rec["stats"]["layers"][0]["name"] == "left,right"
    np.testing.assert_array_equal(run(out, random_feeds(out))[0], 0)  # still tied


@pytest.mark.parametrize("spec", ["prune-weights:sparsity=0", "prune-weights:threshold=0",
                                  "prune-weights:sparsity=0.5,layers=nothing*"])
def test_nothing_to_prune_is_not_modified(spec: str) -> None:
    model = mixed_model()
    out, rec = prune(model, spec)
    assert rec["modified"] is False
    assert weights(out).keys() == weights(model).keys()


def test_biases_are_never_pruned_and_stats_say_dense() -> None:
    model = mixed_model()
    out, rec = prune(model, "prune-weights:sparsity=0.9")
    np.testing.assert_array_equal(weights(out)["B0"], weights(model)["B0"])
    assert "dense" in rec["stats"]["storage"]
    assert rec["stats"]["params"] == 12 * 8 * 9 + 16 * 12 + 16 * 6


@pytest.mark.parametrize("spec", ["prune-weights:sparsity=0.5,threshold=1", "prune-weights:pattern=4:2",
                                  "prune-weights:pattern=2", "prune-weights:sparsity=1.0",
                                  "prune-weights:threshold=-1", "prune-weights:min-params=-1"])
def test_bad_options_are_one_line_usage_errors(spec: str) -> None:
    with pytest.raises(UsageError) as err:
        REGISTRY.create(spec)
    assert "\n" not in str(err.value)


def test_library_twin() -> None:
    from onnxprune.passes.prune_weights import prune_weights

    out = prune_weights(mixed_model(), sparsity=0.5)
    assert int((weights(out)["W0"] == 0).sum()) == round(0.5 * 12 * 8 * 9)


def test_depthwise_convs_are_left_alone_unless_asked() -> None:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["X", "W0"], ["a"], name="pw"),
             helper.make_node("Conv", ["a", "W1"], ["Y"], name="dw", group=8, pads=[1, 1, 1, 1])]
    inits = {"W0": rng.standard_normal((8, 8, 1, 1)).astype(np.float32),
             "W1": rng.standard_normal((8, 1, 3, 3)).astype(np.float32)}
    model = normalize(make_model(nodes, [vinfo("X", ["N", 8, 6, 6])], [vinfo("Y", None)], inits))
    out, rec = prune(model, "prune-weights:sparsity=0.5")
    assert [line["name"] for line in rec["stats"]["layers"]] == ["pw"]
    assert "depthwise" in rec["stats"]["skipped"][0]["reason"]
    np.testing.assert_array_equal(weights(out)["W1"], inits["W1"])
    _, rec = prune(model, "prune-weights:sparsity=0.5,depthwise=true")
    assert [line["name"] for line in rec["stats"]["layers"]] == ["pw", "dw"]
