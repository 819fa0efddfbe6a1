"""The auto pass on a small generated CNN: a reachable target is met, an unreachable one
is reported with exit code 7 (QualityError) and the best point; local and Ray agree."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.api import run_passes
from onnxprune.context import PassContext
from onnxprune.errors import QualityError, UsageError
from onnxprune.runtime import make_session

_spec = importlib.util.spec_from_file_location("_sens_helpers", Path(__file__).with_name("test_sensitivity.py"))
assert _spec and _spec.loader
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
small_cnn, small_ctx, SHAPE = _helpers.small_cnn, _helpers.small_ctx, _helpers.SHAPE

FAST = "ratios=0.25|0.5|0.75,fractions=0.5,latency-runs=5,reconstruct=none"


def _valid(proto: onnx.ModelProto) -> None:
    onnx.checker.check_model(proto, full_check=True)
    make_session(proto).run(None, {"X": np.zeros(SHAPE, np.float32)})


def test_reachable_flops_target(tmp_path) -> None:
    m = small_cnn()
    # the default reconstruction (least squares on the calibration data) once, here
    out, rec = run_passes(m, [f"auto:flops=1.5,min-cosine=0.9,{FAST.replace(',reconstruct=none', '')}"],
                          ctx=small_ctx(m, tmp_path))
    st = rec[0].stats
    assert rec[0].modified and st["target_met"]
    assert st["chosen"]["flops_factor"] >= 1.5 and st["chosen"]["drop"] <= 0.1 + 1e-9
    assert st["chosen"]["levels"] and st["points"][0]["label"] == "original"
    _valid(out)
    assert set(st["plots"]) == {"sensitivity", "pareto_latency", "pareto_size", "predicted_vs_measured"}
    assert st["sensitivity"]["candidates"] > 0


def test_speedup_target_reports_prediction(tmp_path) -> None:
    # No timing assertion: only that the search predicted and measured every point.
    m = small_cnn()
    out, rec = run_passes(m, [f"auto:speedup=1.2,min-cosine=0.5,on-miss=best,{FAST}"], ctx=small_ctx(m, tmp_path))
    st = rec[0].stats
    assert all(p["speedup"] > 0 for p in st["points"])
    assert all(p["predicted_speedup"] for p in st["points"] if p["label"].startswith("round"))
    assert st["sensitivity"]["latency_model"]["signatures"] > 0
    assert "reconstruct=none" in st["sensitivity"]["backend"]  # "none" reaches prune-channels, not the default
    _valid(out)


def test_unreachable_target_exit_7(tmp_path) -> None:
    m = small_cnn()
    ctx = small_ctx(m, tmp_path)
    with pytest.raises(QualityError) as info:
        run_passes(m, [f"auto:flops=50,min-cosine=0.999,{FAST}"], ctx=ctx)
    err = info.value
    assert err.exit_code == 7 and "cannot reach flops x50" in str(err)
    assert err.stats["target_met"] is False and err.stats["points"]  # type: ignore[attr-defined]
    # on-miss=best returns the best point, saying the target was missed
    out, rec = run_passes(m, [f"auto:flops=50,min-cosine=0.999,on-miss=best,{FAST}"], ctx=ctx)
    st = rec[0].stats
    assert st["target_met"] is False
    if st["chosen"] is not None:
        assert st["chosen"]["drop"] <= st["budget"] + 1e-9
        _valid(out)


def test_cli_exit_code(tmp_path) -> None:
    from onnxprune.cli import main

    model, data = tmp_path / "m.onnx", tmp_path / "d.npz"
    onnx.save(small_cnn(), model)
    np.savez(data, X=np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32))
    rc = main([str(model), "--passes", f"auto:flops=50,min-cosine=0.999,{FAST}", "-o", str(tmp_path / "o.onnx"),
               "--data", str(data), "--batch-size", "8", "-q"])
    assert rc == 7


def test_bad_options_and_no_data() -> None:
    m = small_cnn()
    for spec in ("auto:speedup=1.5,flops=2", "auto:methods=prune|magic", "auto:speedup=0.5", "auto:executor=dask"):
        with pytest.raises(UsageError):
            run_passes(m, [spec], ctx=small_ctx(m))
    with pytest.raises(UsageError, match="calibration data"):
        run_passes(m, ["auto"], ctx=PassContext())


@pytest.mark.slow
def test_ray_and_local_choose_the_same(tmp_path) -> None:
    ray = pytest.importorskip("ray")
    m = small_cnn()
    spec = f"auto:flops=1.5,min-cosine=0.9,{FAST}"
    _, local = run_passes(m, [spec + ",workers=2"], ctx=small_ctx(m))
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        _, on_ray = run_passes(m, [spec + ",workers=2,executor=ray"], ctx=small_ctx(m))
    finally:
        ray.shutdown()
    assert on_ray[0].stats["chosen"]["levels"] == local[0].stats["chosen"]["levels"]
    assert on_ray[0].stats["sensitivity"]["rows"] == local[0].stats["sensitivity"]["rows"]
    assert on_ray[0].stats["sensitivity"]["sweep"]["executor"] == "ray"


def test_quantize_last(tmp_path) -> None:
    # prune first, quantize last; the quantized original is measured first (its drop and speed-up)
    m = small_cnn()
    spec = f"auto:speedup=1.1,min-cosine=0.5,methods=prune|quantize,on-miss=best,quantize-options=exclude=none,{FAST}"
    out, rec = run_passes(m, [spec], ctx=small_ctx(m, tmp_path))
    st = rec[0].stats
    assert not [n for n in st["notes"] if "quantize failed" in n]
    assert st["quantize"]["used"] and any(p["label"] == "quantize only" for p in st["points"])
    if rec[0].modified:
        assert any(n.op_type in ("QuantizeLinear", "QLinearConv") for n in out.graph.node)
        _valid(out)
