"""auto:sweep-metric=soft-accuracy: the sweep measures the true label's probability while
acceptance stays top-1; a drop in the table moves with every candidate (no ties at 0)."""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from onnxprune.api import run_passes
from onnxprune.context import Evaluator
from onnxprune.data import Dataset
from onnxprune.errors import UsageError
from onnxprune.runtime import make_session
from onnxprune.sensitivity import SweepSettings, sweep

_spec = importlib.util.spec_from_file_location("_sens_helpers", Path(__file__).with_name("test_sensitivity.py"))
assert _spec and _spec.loader
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)


def labelled_ctx(tmp_path):
    m = _helpers.small_cnn()
    ctx = _helpers.small_ctx(m, tmp_path)
    sess = make_session(m)
    labels = np.concatenate([sess.run(None, dict(b))[0].reshape(len(next(iter(b.values()))), -1).argmax(1)
                             for b in ctx.calib.batches])
    ds = Dataset(ctx.calib.batches, labels, "labelled by the model itself")
    return m, dataclasses.replace(ctx, calib=ds, evaluator=Evaluator(m, ds))


def test_soft_sweep_is_continuous_and_acceptance_stays_top1(tmp_path) -> None:
    m, ctx = labelled_ctx(tmp_path)
    s = SweepSettings(families=("prune",), ratios=(0.25, 0.5, 0.75), reconstruct="none")
    soft = sweep(m, ctx, s, metric="soft-accuracy")
    top1 = sweep(m, ctx, s, metric="accuracy")
    assert soft["metric"] == "soft-accuracy" and soft["unit"] == "points of true-label probability"
    assert soft["key"] != top1["key"]  # cached apart
    ok = [r for r in soft["candidates"] if r["ok"]]
    assert ok and all(r["drop"] != 0.0 for r in ok)
    # deeper cuts of one group cost more true-label probability
    by = {}
    for r in ok:
        by.setdefault(r["key"], []).append((r["level"], r["drop"]))
    assert any(len(v) > 1 for v in by.values())
    for v in by.values():
        drops = [d for _, d in sorted(v)]
        assert drops[-1] >= drops[0] - 1e-9
    out, rec = run_passes(m, ["auto:flops=1.2,max-drop=100,sweep-metric=soft-accuracy,ratios=0.25|0.5,"
                              "latency-runs=5,reconstruct=none"], ctx=ctx)
    st = rec[0].stats
    assert st["metric"] == "accuracy" and st["sensitivity"]["unit"] == "points of true-label probability"
    with pytest.raises(UsageError, match="sweep-metric"):
        run_passes(m, ["auto:flops=1.2,sweep-metric=top5"], ctx=ctx)


def test_quantize_over_budget_retries_with_float_nodes(tmp_path) -> None:
    """Quantization alone over the budget: auto asks the quantize pass's measured search
    which nodes to keep float, measures that, and reuses the names for later builds."""
    m = _helpers.small_cnn()
    ctx = _helpers.small_ctx(m, tmp_path)
    spec = "auto:speedup=1.05,min-cosine=0.999999,methods=prune|quantize,on-miss=best,ratios=0.25,latency-runs=5"
    _, rec = run_passes(m, [spec], ctx=ctx)
    st = rec[0].stats
    labels = [p["label"] for p in st["points"]]
    plain = next(p for p in st["points"] if p["label"] == "quantize only")
    assert plain["drop"] > st["budget"]
    retried = [n for n in st["notes"] if "quantization alone dropped" in n or "kept no node in float" in n]
    assert retried, st["notes"]
    # on this model the search keeps the classifier Gemm in float and halves the drop
    floats = [p for p in st["points"] if p["label"].startswith("quantize, ")]
    assert floats and "float node" in floats[0]["label"]
    assert labels.index(floats[0]["label"]) == labels.index("quantize only") + 1
    assert floats[0]["drop"] < plain["drop"]


def test_search_checks_on_samples_no_fit_saw(tmp_path) -> None:
    """auto holds part of the calibration data out of every fit and checks on it."""
    from onnxprune.context import PassContext, Target
    from onnxprune.data import load_dataset

    m = _helpers.small_cnn()
    ds = load_dataset(m, None, limit=64, batch_size=8, seed=1, shapes={"X": _helpers.SHAPE})
    ctx = PassContext(calib=ds, target=Target.named("avx2"), input_shapes={"X": _helpers.SHAPE}, cache_dir=tmp_path,
                      evaluator=Evaluator(m, ds), calib_kind="data")
    _, rec = run_passes(m, ["auto:flops=1.3,min-cosine=0.5,ratios=0.25|0.5,latency-runs=5,reconstruct=none"], ctx=ctx)
    st = rec[0].stats
    assert st["holdout"] == {"fit": 32, "check": 32, "seed": 0}
    assert st["sensitivity"]["samples"] == 32  # candidates scored on the 32 held-out samples
    _, rec0 = run_passes(m, ["auto:flops=1.3,min-cosine=0.5,ratios=0.25|0.5,latency-runs=5,reconstruct=none,"
                             "holdout=0"], ctx=ctx)
    assert rec0[0].stats["holdout"] is None and rec0[0].stats["sensitivity"]["samples"] == 64
    assert any("optimistic" in n for n in rec0[0].stats["notes"])


def test_quantized_point_of_an_old_opset_model_keeps_its_new_opset(tmp_path) -> None:
    """auto returning a quantized point of an opset-7 model: the QDQ nodes need the opset
    the quantize pass raised the graph to (Model.reset kept 7; the checker refused it)."""
    import onnx
    from onnx import helper

    from onnxprune.context import PassContext
    from onnxprune.data import Dataset
    from onnxprune.testing import make_model, vinfo

    # a wide MLP: int8 must make it smaller than float, or auto rightly returns the float original
    rng = np.random.default_rng(0)
    w = {"w1": (rng.standard_normal((256, 64)) * 0.1).astype(np.float32), "b1": np.zeros(256, np.float32),
         "w2": (rng.standard_normal((10, 256)) * 0.1).astype(np.float32), "b2": np.zeros(10, np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)]
    m = make_model(nodes, [vinfo("x", ["N", 64])], [vinfo("y", ["N", 10])], w, opset=7)
    m.ir_version = 4
    ds = Dataset([{"x": rng.standard_normal((4, 64)).astype(np.float32)} for _ in range(8)], None, "test noise")
    ctx = PassContext(calib=ds, calib_kind="data", evaluator=Evaluator(m, ds), cache_dir=tmp_path)
    out, rec = run_passes(m, ["auto:size=2,min-cosine=0.5,methods=quantize,rounds=1,on-miss=best,"
                              "latency-runs=5,quantize-options=calibrate=minmax"], ctx=ctx)
    if rec[0].modified:
        assert any(n.op_type == "DequantizeLinear" for n in out.graph.node)
        assert max(o.version for o in out.opset_import if o.domain in ("", "ai.onnx")) >= 13
        onnx.checker.check_model(out, full_check=True)
    else:  # the only way the test can pass without a quantized point: say why
        pytest.fail(f"auto kept the float model: {rec[0].stats['notes']}")
