"""auto's quantize-only point is cross-fitted: ranges fitted on the fit part and scored on
the check part, then fitted on the check part and scored on the fit part; the drop is the
two pooled. Checked against an independent recomputation of the second fold."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from onnxprune.api import run_passes
from onnxprune.context import Evaluator, PassContext, Target
from onnxprune.data import load_dataset, split_dataset

_spec = importlib.util.spec_from_file_location("_sens_helpers", Path(__file__).with_name("test_sensitivity.py"))
assert _spec and _spec.loader
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)

QOPTS = "calibrate=minmax;exclude=none"


def _ctx(m, tmp_path):
    ds = load_dataset(m, None, limit=64, batch_size=8, seed=1, shapes={"X": _helpers.SHAPE})
    return PassContext(calib=ds, target=Target.named("avx2"), input_shapes={"X": _helpers.SHAPE}, cache_dir=tmp_path,
                       evaluator=Evaluator(m, ds), calib_kind="data")


def test_quantize_point_pools_both_folds(tmp_path) -> None:
    m = _helpers.small_cnn()
    ctx = _ctx(m, tmp_path)
    spec = (f"auto:speedup=1.05,min-cosine=0.5,methods=quantize,on-miss=best,latency-runs=5,"
            f"quantize-options={QOPTS}")
    _, rec = run_passes(m, [spec], ctx=ctx)
    st = rec[0].stats
    q = next(p for p in st["points"] if p["label"] == "quantize only")
    assert q["cross_fit"] and st["holdout"] == {"fit": 32, "check": 32, "seed": 0}
    # the second fold, recomputed here: ranges from the check part, scored on the fit part
    check, fit = split_dataset(ctx.calib, 32, seed=0, batch_size=ctx.calib.batch_step)
    other, _ = run_passes(m, ["quantize:calibrate=minmax,exclude=none"], ctx=ctx.replace(calib=check))
    ev_fit = Evaluator(m, fit)
    expected = ev_fit.baseline() - ev_fit.score(other)
    assert abs(q["drop_cross"] - expected) < 1e-9
    assert abs(q["drop"] - (q["drop_check"] * 32 + expected * 32) / 64) < 1e-9
    assert q["holds_quality"] == (q["drop"] <= st["budget"] + 1e-9)
    assert st["quantize"]["drop"] == max(q["drop"], 0.0)
    assert any("pooled over 64 samples" in n for n in st["notes"])


def test_no_cross_fit_without_holdout(tmp_path) -> None:
    m = _helpers.small_cnn()
    spec = (f"auto:speedup=1.05,min-cosine=0.5,methods=quantize,on-miss=best,latency-runs=5,holdout=0,"
            f"quantize-options={QOPTS}")
    _, rec = run_passes(m, [spec], ctx=_ctx(m, tmp_path))
    q = next(p for p in rec[0].stats["points"] if p["label"] == "quantize only")
    assert "cross_fit" not in q


def test_a_point_that_holds_the_budget_is_confirmed_on_the_other_fold(tmp_path) -> None:
    m = _helpers.small_cnn()
    spec = "auto:flops=1.2,min-cosine=0.5,ratios=0.25|0.5,latency-runs=5,reconstruct=none,on-miss=best"
    out, rec = run_passes(m, [spec], ctx=_ctx(m, tmp_path))
    st = rec[0].stats
    rounds = [p for p in st["points"] if p["label"].startswith("round")]
    assert rounds
    for p in rounds:
        if "cross_fit" in p:  # confirmed: pooled over both folds of 32
            assert abs(p["drop"] - (p["drop_check"] + p["drop_cross"]) / 2) < 1e-12
            assert p["holds_quality"] == (p["drop"] <= st["budget"] + 1e-9)
        else:  # only points that held the budget on the check part are confirmed
            assert not p["holds_quality"] or not p["levels"]
    assert st["chosen"] is not None and st["chosen"].get("cross_fit")
