"""Reconstruction after pruning (onnxprune.reconstruct, prune-channels:reconstruct=...)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

from _support.graphgen import random_cnn
from onnxprune import reconstruct as rc
from onnxprune.activations import Gram
from onnxprune.api import run_passes
from onnxprune.context import PassContext
from onnxprune.data import Dataset, load_dataset
from onnxprune.errors import UsageError
from onnxprune.model import normalize
from onnxprune.testing import make_model, run, vinfo

C = 8  # channels of the pruned tensor h; channel DEP is an exact combination of channels 0 and 1
DEP = 5


def _combo_weight(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Producer weight whose output channel DEP = 0.3·ch0 − 0.2·ch1 (and the smallest by variance)."""
    w = rng.standard_normal(shape).astype(np.float32)
    w[DEP] = 0.3 * w[0] - 0.2 * w[1]
    return w


def _model(consumer: str) -> onnx.ModelProto:
    """X ─producer (no bias, no activation)─▶ h[C] ─consumer─▶ Y

    conv1x1 / conv3x3: X[N,4,6,6] ─Conv 3x3─▶ h ─Conv(1x1 | 3x3 pads 1, bias)─▶ Y[N,5,6,6]
    gemm / matmul:     X[N,4]     ─MatMul─▶ h ─(Gemm transB | MatMul)─▶ Y[N,5]
    """
    rng = np.random.default_rng(3)
    if consumer.startswith("conv"):
        k = {"conv1x1": 1, "conv2x2same": 2}.get(consumer, 3)
        inits = {"wp": _combo_weight(rng, (C, 4, 3, 3)),
                 "wc": rng.standard_normal((5, C, k, k)).astype(np.float32), "bc": rng.standard_normal(5).astype(np.float32)}
        # *same: auto_pad SAME_* (CNTK/TF exports, mnist-8), rewritten as explicit pads for the refit
        pad = ({"auto_pad": "SAME_LOWER"} if consumer == "conv2x2same" else {"auto_pad": "SAME_UPPER"}
               if consumer == "conv3x3same" else {"pads": [k // 2] * 4})
        nodes = [helper.make_node("Conv", ["X", "wp"], ["h"], name="prod", pads=[1] * 4),
                 helper.make_node("Conv", ["h", "wc", "bc"], ["Y"], name="cons", kernel_shape=[k, k], **pad)]
        return normalize(make_model(nodes, [vinfo("X", ["N", 4, 6, 6])], [vinfo("Y", ["N", 5, 6, 6])], inits))
    inits = {"wp": _combo_weight(rng, (C, 4)).T.copy()}
    if consumer == "gemm":
        inits.update(wc=rng.standard_normal((5, C)).astype(np.float32), bc=rng.standard_normal(5).astype(np.float32))
        last = helper.make_node("Gemm", ["h", "wc", "bc"], ["Y"], name="cons", transB=1, alpha=0.5)
    else:
        inits.update(wc=rng.standard_normal((C, 5)).astype(np.float32))
        last = helper.make_node("MatMul", ["h", "wc"], ["Y"], name="cons")
    nodes = [helper.make_node("MatMul", ["X", "wp"], ["h"], name="prod"), last]
    return normalize(make_model(nodes, [vinfo("X", ["N", 4])], [vinfo("Y", ["N", 5])], inits))


def _ctx(model: onnx.ModelProto, n: int = 64, batch: int = 8, seed: int = 0) -> PassContext:
    data = load_dataset(model, None, limit=n, batch_size=batch, seed=seed)
    return PassContext(calib=data, calib_kind="data")


def _max_rel(a: onnx.ModelProto, b: onnx.ModelProto, feed: dict) -> float:
    ya, yb = run(a, feed)[0], run(b, feed)[0]
    return float(np.abs(ya - yb).max() / np.abs(yb).max())


@pytest.mark.parametrize("consumer", ["conv1x1", "conv3x3", "conv3x3same", "conv2x2same", "gemm", "matmul"])
def test_dependent_channel_pruned_losslessly(consumer):
    model = _model(consumer)
    ctx = _ctx(model)
    spec = "prune-channels:ratio=0.125,round-to=1,latency-guard=false,criterion=variance,reconstruct=ls,ridge=0"
    out, rec = run_passes(model, [spec], ctx=ctx)
    onnx.checker.check_model(out, full_check=True)
    st_ = rec[0].stats
    assert st_["channels_removed"] == 1 and st_["per_group"][0]["sources"] == ["prod"]
    w = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    prod_w = next(v for k, v in w.items() if k.startswith("prod") or k == "wp")
    assert C - 1 in prod_w.shape
    layer = st_["reconstruction"]["layers"][0]
    assert layer["name"] == "cons" and layer["rel_error_before"] > 1e-3 and layer["rel_error_after"] < 1e-8
    # fresh data, not the calibration batches: the refit is exact, not merely fitted
    feed = load_dataset(model, None, limit=4, batch_size=4, seed=99).batches[0]
    assert _max_rel(out, model, feed) < 1e-4
    # without the refit the same removal is far off
    plain, _ = run_passes(model, [spec.replace("reconstruct=ls", "reconstruct=none")], ctx=ctx)
    assert _max_rel(plain, model, feed) > 1e-3


def test_lasso_drops_the_channel_its_consumer_ignores():
    """Channel 3 has the largest filters (l1 keeps it) but its consumer barely reads it: LASSO on the
    consumer's output (He et al. 2017) drops it, and the output error is lower than l1's choice."""
    model = _model("conv1x1")
    inits = {t.name: onnx.numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    inits["wp"][3] *= 10.0
    inits["wc"][:, 3] *= 0.001
    del model.graph.initializer[:]
    model.graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in inits.items())
    ctx = _ctx(model)
    spec = "prune-channels:ratio=0.125,round-to=1,latency-guard=false,criterion=l1,ridge=0,reconstruct="
    out, rec = run_passes(model, [spec + "lasso"], ctx=ctx)
    l1, _ = run_passes(model, [spec + "ls"], ctx=ctx)
    assert rec[0].stats["lasso_groups"] == 1

    def prod_rows(m):
        node = next(n for n in m.graph.node if n.name == "prod")
        return {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}[node.input[1]]

    kept = prod_rows(out)
    assert kept.shape[0] == C - 1 and not any(np.allclose(r, inits["wp"][3]) for r in kept)
    assert any(np.allclose(r, inits["wp"][3]) for r in prod_rows(l1))
    feed = load_dataset(model, None, limit=4, batch_size=4, seed=7).batches[0]
    assert _max_rel(out, model, feed) < 0.01 < _max_rel(l1, model, feed)


def test_bias_correction_matches_channel_means():
    """A SAME-padded consumer at unknown spatial size is not refit (its pads are not known until run
    time); its output's per-channel mean is moved back onto the original's."""
    rng = np.random.default_rng(1)
    inits = {"wp": rng.standard_normal((C, 4, 3, 3)).astype(np.float32),
             "wc": rng.standard_normal((5, C, 3, 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["X", "wp"], ["a"], name="prod", pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["h"]),
             helper.make_node("Conv", ["h", "wc"], ["Y"], name="cons", auto_pad="SAME_UPPER")]
    model = normalize(make_model(nodes, [vinfo("X", ["N", 4, "H", "W"])], [vinfo("Y", ["N", 5, "H", "W"])], inits))
    data = load_dataset(model, None, limit=64, batch_size=8, seed=0, shapes={"X": (1, 4, 6, 6)})
    ctx = PassContext(calib=data, calib_kind="data")
    out, rec = run_passes(model, ["prune-channels:ratio=0.5,round-to=1,latency-guard=false,reconstruct=ls"], ctx=ctx)
    layer = rec[0].stats["reconstruction"]["layers"][0]
    assert layer["fit"] == "bias" and layer["mean_shift"] > 0
    x = np.concatenate([b["X"] for b in ctx.calib.batches])
    mean_new = run(out, {"X": x})[0].mean(axis=(0, 2, 3))
    mean_old = run(model, {"X": x})[0].mean(axis=(0, 2, 3))
    np.testing.assert_allclose(mean_new, mean_old, rtol=1e-4, atol=1e-4)


def test_solve_ridge_and_rel_error_are_consistent():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 6))
    theta_true = rng.standard_normal((7, 3))
    y = np.hstack([x, np.ones((500, 1))]) @ theta_true
    g = Gram()
    g.update(x[:200], y[:200])
    g.update(x[200:], y[200:])
    theta = rc.solve_ridge(g, 0.0)
    np.testing.assert_allclose(theta, theta_true, atol=1e-8)
    assert rc.rel_error(g, theta) < 1e-12
    zero = np.zeros_like(theta)
    assert rc.rel_error(g, zero) == pytest.approx(1.0)


def test_error_curve_is_the_refit_residual():
    """error_curve's Schur complement equals the residual of an explicit least-squares refit."""
    rng = np.random.default_rng(2)
    model = _model("conv1x1")
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    node = next(n for n in graph.nodes if n.name == "cons")
    x = rng.standard_normal((400, C)) @ rng.standard_normal((C, C))
    g = Gram()
    g.update(x)
    theta = rc.theta_of(node, rc.FitKind.CONV)
    y = np.hstack([x, np.ones((400, 1))]) @ theta
    gone = np.array([2, 6])
    keep = np.setdiff1d(np.arange(C), gone)
    xa = np.hstack([x[:, keep], np.ones((400, 1))])
    resid = y - xa @ np.linalg.lstsq(xa, y, rcond=None)[0]
    expect = float((resid ** 2).sum() / ((y - y.mean(0)) ** 2).sum())
    got = rc.error_curve(g, node, [np.array([], dtype=np.int64), gone])
    assert got[0] == 0.0 and got[1] == pytest.approx(expect, rel=1e-5)
    # too few rows to refit (rows < 4 per feature): the estimate is the removed part's variance
    few = Gram()
    few.update(x[:20])
    ys = np.hstack([x[:20], np.ones((20, 1))]) @ theta
    removed = x[:20, gone] @ theta[gone]
    expect = float(((removed - removed.mean(0)) ** 2).sum() / ((ys - ys.mean(0)) ** 2).sum())
    assert not rc.determined(few) and rc.error_curve(few, node, [gone])[0] == pytest.approx(expect, rel=1e-6)


def test_needs_data():
    model = _model("conv1x1")
    with pytest.raises(UsageError, match="reconstruct=ls needs calibration data"):
        run_passes(model, ["prune-channels:ratio=0.5,round-to=1,latency-guard=false,reconstruct=ls"])
    with pytest.raises(UsageError, match="scope=error needs calibration data"):
        run_passes(model, ["prune-channels:ratio=0.5,round-to=1,latency-guard=false,scope=error,reconstruct=none"])
    # auto without data: no refit, the pass still prunes
    _, rec = run_passes(model, ["prune-channels:ratio=0.5,round-to=1,latency-guard=false"])
    assert rec[0].stats["reconstruct"] == "none" and "reconstruction" not in rec[0].stats


def _calib_mse(a: onnx.ModelProto, ref: onnx.ModelProto, data: Dataset) -> float:
    return float(np.mean([np.mean((run(a, b)[0] - run(ref, b)[0]) ** 2) for b in data.batches]))


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), ratio=st.sampled_from([0.25, 0.5]), method=st.sampled_from(["ls", "lasso"]),
       scope=st.sampled_from(["local", "error"]))
def test_refit_never_worse_than_none_on_calibration_data(seed, ratio, method, scope):
    model = normalize(random_cnn(seed, max_blocks=2))
    ctx = _ctx(model, n=16, batch=8, seed=seed)
    base = f"prune-channels:ratio={ratio},round-to=1,latency-guard=false,criterion=variance,scope={scope}"
    plain, _ = run_passes(model, [base + ",reconstruct=none"], ctx=ctx)
    fit, rec = run_passes(model, [base + f",reconstruct={method}"], ctx=ctx)
    onnx.checker.check_model(fit, full_check=True)
    for line in rec[0].stats.get("reconstruction", {}).get("layers", []):
        if "rel_error_after" in line:
            assert line["rel_error_after"] <= line["rel_error_before"] + 1e-12
    if method == "ls" and scope == "local":  # same channels removed: the refit must not lose to plain slicing
        assert _calib_mse(fit, model, ctx.calib) <= 1.02 * _calib_mse(plain, model, ctx.calib) + 1e-9


def test_refit_scoring_lower_on_calibration_is_not_kept(monkeypatch):
    """The pass keeps a refit only when the evaluator (calibration data) does not score it lower."""
    from onnxprune import reconstruct as rc_mod
    from onnxprune.context import Evaluator

    model = _model("conv3x3")
    ctx = _ctx(model)
    ctx = PassContext(calib=ctx.calib, calib_kind="data", evaluator=Evaluator(model, ctx.calib))
    real = rc_mod.reconstruct

    def sabotage(m, *args, **kw):  # a "refit" that wrecks the consumer
        report = real(m, *args, **kw)
        cons = next(n for n in m.graph.nodes if n.name == "cons")
        cons.inputs[1].values = cons.inputs[1].values * -3.0
        return report

    spec = "prune-channels:ratio=0.125,round-to=1,latency-guard=false,criterion=variance,reconstruct=ls"
    monkeypatch.setattr(rc_mod, "reconstruct", sabotage)
    out, rec = run_passes(model, [spec], ctx=ctx)
    r = rec[0].stats["reconstruction"]
    assert r["calibration_score"]["refit"] < r["calibration_score"]["none"] and r["kept"].startswith("none")
    plain, _ = run_passes(model, [spec.replace("reconstruct=ls", "reconstruct=none")], ctx=ctx)
    feed = load_dataset(model, None, limit=4, batch_size=4, seed=5).batches[0]
    np.testing.assert_array_equal(run(out, feed)[0], run(plain, feed)[0])
