"""lowrank: lossless at full rank on 3-D MatMuls and Gemms, exact at the true rank, skips, options, MiniLM."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper
from onnxprune.passes import REGISTRY
from onnxprune.passes.lowrank import lowrank

from onnxprune.api import run_passes
from onnxprune.decomp import rank_by_energy
from onnxprune.errors import UsageError
from onnxprune.model import load_model, normalize
from onnxprune.testing import make_model, run, vinfo

FULL = "lowrank:fraction=1.0,only-cheaper=false,check-latency=false"


def _matmul_model(dims: list[int], seed: int, weights=None) -> onnx.ModelProto:
    """X[N, S, d0] ─MatMul(W0)─▶ ─Add(b0)─▶ Relu ─▶ MatMul(W1) ─▶ Add(b1) ... ─▶ Y"""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], {}, "X"
    for i, (k, n) in enumerate(zip(dims, dims[1:])):
        inits[f"W{i}"] = weights(k, n, rng) if weights else rng.standard_normal((k, n)).astype(np.float32)
        inits[f"b{i}"] = rng.standard_normal(n).astype(np.float32)
        last = i == len(dims) - 2
        nodes += [helper.make_node("MatMul", [x, f"W{i}"], [f"m{i}"], name=f"mm{i}"),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], ["Y" if last else f"a{i}"], name=f"add{i}")]
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    return normalize(make_model(nodes, [vinfo("X", ["N", "S", dims[0]])], [vinfo("Y", None)], inits))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(dims=st.lists(st.integers(1, 12), min_size=2, max_size=3), seed=st.integers(0, 100))
def test_matmul_full_rank_is_lossless(factor, dims, seed):
    model = _matmul_model(dims, seed)
    out, rec = factor.run_pass(model, FULL)
    assert rec["modified"] is True
    assert factor.ops(out).count("MatMul") == 2 * (len(dims) - 1)
    assert factor.ops(out).count("Add") == len(dims) - 1
    for i, (k, n) in enumerate(zip(dims, dims[1:])):
        line = factor.layer(rec, f"mm{i}")
        assert line["ranks"] == {"r": min(k, n)} and line["relative_error"] < 1e-5
        assert line["input_shape"] == [1, 32, k]
    assert factor.max_rel_diff(out, model) < 1e-4


def _gemm_model(k: int, n: int, trans_b: int, alpha: float, beta: float, bias: str | None, seed: int,
                weight: np.ndarray | None = None) -> onnx.ModelProto:
    """X[M, k] ─Gemm(B, C; transB, alpha, beta)─▶ Y"""
    rng = np.random.default_rng(seed)
    w = weight if weight is not None else rng.standard_normal((k, n)).astype(np.float32)
    inits = {"B": np.ascontiguousarray(w.T) if trans_b else w}
    ins = ["X", "B"]
    if bias is not None:
        inits["C"] = rng.standard_normal({"vector": (n,), "row": (1, n), "scalar": ()}[bias]).astype(np.float32)
        ins.append("C")
    nodes = [helper.make_node("Gemm", ins, ["Y"], name="gemm", transB=trans_b, alpha=alpha, beta=beta)]
    return normalize(make_model(nodes, [vinfo("X", ["M", k])], [vinfo("Y", ["M", n])], inits))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(k=st.integers(1, 10), n=st.integers(1, 10), trans_b=st.sampled_from([0, 1]),
       alpha=st.sampled_from([1.0, 0.5, -2.0]), beta=st.sampled_from([1.0, 0.25, 3.0]),
       bias=st.sampled_from([None, "vector", "row", "scalar"]), seed=st.integers(0, 100))
def test_gemm_full_rank_is_lossless(factor, k, n, trans_b, alpha, beta, bias, seed):
    model = _gemm_model(k, n, trans_b, alpha, beta, bias, seed)
    out, rec = factor.run_pass(model, FULL)
    assert factor.ops(out) == ["Gemm", "Gemm"]
    second = out.graph.node[1]
    assert len(second.input) == (3 if bias else 2)
    assert factor.layer(rec, "gemm")["ranks"] == {"r": min(k, n)}
    assert factor.max_rel_diff(out, model) < 1e-4


@pytest.mark.parametrize("rule", ["energy=1.0", "rank=3", "fraction=0.2"])
def test_exact_at_true_rank_and_cheaper(factor, rule):
    """W = P Q of rank 3 on 16 -> 12 (full rank 12): every rule picks 3, and it is exact."""
    model = _matmul_model([16, 12], 0, weights=lambda k, n, rng: (rng.standard_normal((k, 3)) @ rng.standard_normal((3, n))).astype(np.float32))
    out, rec = factor.run_pass(model, f"lowrank:{rule},check-latency=false,round-to=1")
    line = factor.layer(rec, "mm0")
    assert line["ranks"] == {"r": 3}
    assert (line["params_before"], line["params_after"]) == (16 * 12, 3 * (16 + 12))
    assert line["flops_before"] == 2 * 32 * 16 * 12 and line["flops_after"] == 2 * 32 * 3 * (16 + 12)
    assert factor.max_rel_diff(out, model) < 1e-4


def test_fraction_and_energy_ranks(factor):
    """fraction=0.5 on a 16x8 weight keeps ceil(0.5 * 8) = 4; energy follows rank_by_energy."""
    w = np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32)
    model = _matmul_model([16, 8], 0, weights=lambda *a: w)
    _, rec = factor.run_pass(model, "lowrank:fraction=0.5,check-latency=false,round-to=1")
    assert factor.layer(rec, "mm0")["ranks"] == {"r": 4}
    _, rec = factor.run_pass(model, "lowrank:fraction=0.3,check-latency=false,round-to=4")
    assert factor.layer(rec, "mm0")["ranks"] == {"r": 4}  # ceil(0.3 * 8) = 3, rounded up to 4
    _, rec = factor.run_pass(model, "lowrank:energy=0.6,only-cheaper=false,check-latency=false,round-to=1")
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    assert factor.layer(rec, "mm0")["ranks"] == {"r": rank_by_energy(s, 0.6)}


@pytest.mark.parametrize("case, spec, reason", [
    ("transA", "lowrank:rank=1", "transA=1"),
    ("full", "lowrank:fraction=1.0", "not cheaper"),
    ("full", "lowrank:rank=5", "not cheaper"),
    ("full", "lowrank:rank=1,layers=enc*", "not matched by layers="),
    ("full", "lowrank:rank=1,min-params=1000", "min-params=1000"),
    ("dynamic", "lowrank:rank=1", "not a constant"),
    ("shared", "lowrank:rank=1", "shared"),
])
def test_nothing_qualifies(factor, case, spec, reason):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 6)).astype(np.float32)
    if case == "transA":
        nodes = [helper.make_node("Gemm", ["X", "W"], ["Y"], name="gemm", transA=1)]
        model = make_model(nodes, [vinfo("X", [8, "M"])], [vinfo("Y", None)], {"W": w})
    elif case == "dynamic":
        nodes = [helper.make_node("MatMul", ["X", "X2"], ["Y"], name="gemm")]
        model = make_model(nodes, [vinfo("X", [2, 8]), vinfo("X2", [8, 6])], [vinfo("Y", None)])
    elif case == "shared":
        nodes = [helper.make_node("MatMul", ["X", "W"], ["Y"], name="gemm"),
                 helper.make_node("MatMul", ["X", "W"], ["Y2"], name="other")]
        model = make_model(nodes, [vinfo("X", [2, 8])], [vinfo("Y", None), vinfo("Y2", None)], {"W": w})
    else:
        nodes = [helper.make_node("Gemm", ["X", "W"], ["Y"], name="gemm")]
        model = make_model(nodes, [vinfo("X", ["M", 8])], [vinfo("Y", None)], {"W": w})
    out, rec = factor.run_pass(normalize(model), spec + ",check-latency=false")
    assert rec["modified"] is False
    assert reason in factor.layer(rec, "gemm")["reason"]


@pytest.mark.parametrize("spec, message", [
    ("lowrank:rank=3,fraction=0.5", "at most one"),
    ("lowrank:energy=0", "out of range"),
    ("lowrank:latency-threads=0", "latency-threads"),
    ("lowrank:check-latency=sometimes", "must be bool"),
])
def test_bad_options(spec, message):
    with pytest.raises(UsageError, match=message):
        REGISTRY.create(spec)


def test_plain_function_twin(factor):
    model = _gemm_model(12, 10, 1, 0.5, 2.0, "vector", seed=3,
                        weight=(np.random.default_rng(3).standard_normal((12, 2)) @ np.ones((2, 10))).astype(np.float32))
    out = lowrank(model, energy=1.0, check_latency=False, round_to=1)
    assert factor.ops(out) == ["Gemm", "Gemm"]
    assert factor.max_rel_diff(out, model) < 1e-4


@pytest.mark.zoo
def test_zoo_minilm_energy_09(zoo):
    model = load_model(zoo / "models" / "minilm" / "model.onnx")
    out, records = run_passes(model, ["lowrank:energy=0.9,check-latency=false"])
    stats = records[0].stats
    assert records[0].modified and stats["rewritten"] >= 30
    assert stats["params_after"] < stats["params_before"] and stats["flops_after"] < stats["flops_before"]
    assert sum(int(np.prod(t.dims)) for t in out.graph.initializer) < sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    skipped = {line["reason"] for line in stats["layers"] if line["skipped"]}
    assert all("not a constant" in r or "not cheaper" in r for r in skipped)
    ids = np.random.default_rng(0).integers(1000, 30000, (2, 16))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    assert all(np.isfinite(o).all() for o in run(out, feeds))


def test_head_after_shape_reshape_is_costed_at_batch_1(factor):
    """X[N,C,2,2] ─GlobalAveragePool─▶ Reshape(to [N, -1] computed by Shape→Gather→Concat) ─MatMul(W)─▶ Y:
    shape inference loses the MatMul input's shape; the layer is costed at its runtime shape [1, C]
    (batch 1), not at a nominal [32, C] (mobilenetv2's head, issue 7 note)."""
    c, m = 24, 40
    w = np.random.default_rng(0).standard_normal((c, m)).astype(np.float32)
    nodes = [helper.make_node("GlobalAveragePool", ["X"], ["p"], name="gap"),
             helper.make_node("Shape", ["X"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
             helper.make_node("Unsqueeze", ["n"], ["n1"], name="unsq", axes=[0]),  # opset 12, as exported
             helper.make_node("Concat", ["n1", "minus1"], ["target"], name="cat", axis=0),
             helper.make_node("Reshape", ["p", "target"], ["flat"], name="reshape"),
             helper.make_node("MatMul", ["flat", "W"], ["Y"], name="head")]
    inits = {"W": w, "zero": np.array(0, dtype=np.int64), "minus1": np.array([-1], dtype=np.int64)}
    model = normalize(make_model(nodes, [vinfo("X", ["N", c, 2, 2])], [vinfo("Y", ["N", m])], inits, opset=12))
    from onnxprune.model import Model

    assert [n.inputs[0].shape for n in Model(model).graph.nodes if n.op == "MatMul"] == [None]
    out, rec = factor.run_pass(model, "lowrank:rank=4,check-latency=false")
    line = factor.layer(rec, "head")
    assert line["input_shape"] == [1, c]
    assert line["flops_before"] == 2 * c * m and line["flops_after"] == 2 * 4 * (c + m)
