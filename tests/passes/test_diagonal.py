"""diagonal: exact on diagonal (+ low-rank) weights, lossless at full rank, the error gate, skips, options."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper
from onnxprune.passes import REGISTRY
from onnxprune.passes.diagonal import diagonal

from onnxprune.errors import UsageError
from onnxprune.model import normalize
from onnxprune.testing import make_model, vinfo


def _model(k: int, n: int, w: np.ndarray, op: str = "MatMul", opset: int = 17, trans_b: int = 0,
           alpha: float = 1.0, beta: float = 1.0, bias: bool = False) -> onnx.ModelProto:
    """MatMul: X[N, S, k] ─MatMul(W)─▶ Y.   Gemm: X[M, k] ─Gemm(B, C; transB, alpha, beta)─▶ Y"""
    rng = np.random.default_rng(0)
    if op == "MatMul":
        nodes = [helper.make_node("MatMul", ["X", "W"], ["Y"], name="layer")]
        return normalize(make_model(nodes, [vinfo("X", ["N", "S", k])], [vinfo("Y", None)], {"W": w}, opset=opset))
    inits = {"W": np.ascontiguousarray(w.T) if trans_b else w}
    ins = ["X", "W"]
    if bias:
        inits["C"] = rng.standard_normal(n).astype(np.float32)
        ins.append("C")
    nodes = [helper.make_node("Gemm", ins, ["Y"], name="layer", transB=trans_b, alpha=alpha, beta=beta)]
    return normalize(make_model(nodes, [vinfo("X", ["M", k])], [vinfo("Y", None)], inits, opset=opset))


def _diag(k: int, n: int, seed: int, rank: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = np.zeros((k, n))
    m = min(k, n)
    w[np.arange(m), np.arange(m)] = rng.uniform(0.5, 2.0, m)
    if rank:
        w += rng.standard_normal((k, rank)) @ rng.standard_normal((rank, n))
    return w.astype(np.float32)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(k=st.integers(1, 9), n=st.integers(1, 9), op=st.sampled_from(["MatMul", "Gemm"]),
       trans_b=st.sampled_from([0, 1]), alpha=st.sampled_from([1.0, -0.5]), beta=st.sampled_from([1.0, 2.0]),
       bias=st.booleans(), seed=st.integers(0, 100))
def test_full_rank_is_lossless(factor, k, n, op, trans_b, alpha, beta, bias, seed):
    w = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)
    model = _model(k, n, w, op, trans_b=trans_b, alpha=alpha, beta=beta, bias=bias)
    out, rec = factor.run_pass(model, f"diagonal:rank={min(k, n)},only-cheaper=false,check-latency=false")
    ops = factor.ops(out)
    assert ops.count("Slice") == (k > n) and ops.count("Pad") == (k < n)
    assert ops.count("Mul") == 1 and ops.count("MatMul") == 2
    assert ops.count("Add") == 1 + (op == "Gemm" and bias)
    line = factor.layer(rec, "layer")
    assert line["ranks"] == {"diagonal": min(k, n), "r": min(k, n)} and line["relative_error"] < 1e-5
    assert factor.max_rel_diff(out, model) < 1e-4


@pytest.mark.parametrize("k, n, extra", [(12, 12, []), (16, 10, ["Slice"]), (10, 16, ["Pad"])])
def test_exact_diagonal(factor, k, n, extra):
    model = _model(k, n, _diag(k, n, seed=k))
    out, rec = factor.run_pass(model, "diagonal:check-latency=false")
    assert sorted(factor.ops(out)) == sorted(["Mul", *extra])
    line = factor.layer(rec, "layer")
    assert line["relative_error"] < 1e-7
    assert (line["params_before"], line["params_after"]) == (k * n, min(k, n))
    assert factor.max_rel_diff(out, model) < 1e-5


def test_exact_diagonal_plus_low_rank_gemm(factor):
    """Gemm(transB, alpha, beta, bias) whose alpha*B^T is diagonal + rank 2: rank=2 reproduces it."""
    w = _diag(24, 20, seed=1, rank=2)
    model = _model(24, 20, w / 0.5, "Gemm", trans_b=1, alpha=0.5, beta=2.0, bias=True)
    out, rec = factor.run_pass(model, "diagonal:rank=2,check-latency=false,n-iter=100")
    line = factor.layer(rec, "layer")
    assert line["skipped"] is False and line["relative_error"] < 1e-4
    assert line["params_after"] == 20 + 2 * (24 + 20) + 20
    assert factor.max_rel_diff(out, model) < 1e-4


def test_dense_pretrained_like_weight_has_large_error(factor):
    """A dense weight loses nearly everything (documented): error ~ sqrt(1 - 1/K) for K x K."""
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    _, rec = factor.run_pass(_model(64, 64, w), "diagonal:check-latency=false")
    assert factor.layer(rec, "layer")["relative_error"] > 0.95
    _, rec = factor.run_pass(_model(64, 64, w), "diagonal:max-error=0.5,check-latency=false")
    assert rec["modified"] is False
    assert "exceeds max-error=0.5" in factor.layer(rec, "layer")["reason"]


@pytest.mark.parametrize("k, n, opset, spec, reason", [
    (16, 10, 10, "diagonal", "opset >= 11"),
    (8, 8, 17, "diagonal:rank=8", "not cheaper"),
    (8, 8, 17, "diagonal:layers=other", "not matched by layers="),
])
def test_nothing_qualifies(factor, k, n, opset, spec, reason):
    model = _model(k, n, _diag(k, n, seed=0), opset=opset)
    sep = "," if ":" in spec else ":"
    _, rec = factor.run_pass(model, spec + sep + "check-latency=false")
    assert rec["modified"] is False
    assert reason in factor.layer(rec, "layer")["reason"]


@pytest.mark.parametrize("spec, message", [
    ("diagonal:rank=-1", "non-negative"),
    ("diagonal:max-error=0", "out of range"),
    ("diagonal:n-iter=0", "n-iter"),
])
def test_bad_options(spec, message):
    with pytest.raises(UsageError, match=message):
        REGISTRY.create(spec)


def test_plain_function_twin(factor):
    model = _model(10, 10, _diag(10, 10, seed=3))
    out = diagonal(model, check_latency=False)
    assert factor.ops(out) == ["Mul"]
    assert factor.max_rel_diff(out, model) < 1e-5
