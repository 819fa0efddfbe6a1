"""latency: tiny single-layer models, interleaved timing, the JSON cache (no timing thresholds)."""
from __future__ import annotations

import json
import logging

import numpy as np
import onnxruntime as ort
from onnx import helper

from onnxprune import latency
from onnxprune.api import run_passes
from onnxprune.latency import Const, LatencyCache, Step, chain_model, chain_text, compare
from onnxprune.model import normalize
from onnxprune.testing import make_model, random_feeds, run, vinfo


def _dense(w: np.ndarray) -> list[Step]:
    return [Step("conv", "Conv", ("x", Const("W", w)), "y", {"pads": [1, 1, 1, 1]})]


def _factored(cout: int, cin: int, r: int) -> list[Step]:
    rng = np.random.default_rng(0)
    return [Step("a", "Conv", ("x", Const("W", rng.standard_normal((r, cin, 1, 1)).astype(np.float32))), "t0"),
            Step("b", "Conv", ("t0", Const("W", rng.standard_normal((r, r, 3, 3)).astype(np.float32))), "t1",
                 {"pads": [1, 1, 1, 1]}),
            Step("c", "Conv", ("t1", Const("W", rng.standard_normal((cout, r, 1, 1)).astype(np.float32))), "y")]


def test_chain_model_runs_and_keeps_values():
    w = np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32)
    model = chain_model(_dense(w), [1, 3, 5, 5])
    x = np.random.default_rng(2).standard_normal((1, 3, 5, 5)).astype(np.float32)
    ref = normalize(make_model([helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])],
                               [vinfo("x", [1, 3, 5, 5])], [vinfo("y", None)], {"W": w}))
    np.testing.assert_allclose(run(model, {"x": x})[0], run(ref, {"x": x})[0], rtol=1e-5)
    random = chain_model(_dense(w), [1, 3, 5, 5], weights="random")
    assert not np.allclose(run(random, {"x": x})[0], run(ref, {"x": x})[0])
    shapes_only = chain_model(_dense(w), [1, 3, 5, 5], weights="inputs")
    assert [i.name for i in shapes_only.graph.input][0] == "x" and len(shapes_only.graph.initializer) == 0


def test_chain_text_ignores_names_and_values_of_weights():
    w1 = np.zeros((4, 3, 3, 3), np.float32)
    w2 = np.ones((4, 3, 3, 3), np.float32)
    a = [Step("one", "Conv", ("x", Const("W", w1)), "foo", {"pads": [1, 1, 1, 1]})]
    b = [Step("two", "Conv", ("x", Const("K", w2)), "bar", {"pads": [1, 1, 1, 1]})]
    assert chain_text(a) == chain_text(b)
    s1 = [Step("s", "Slice", ("x", Const("e", np.array([3], np.int64))), "y")]
    s2 = [Step("s", "Slice", ("x", Const("e", np.array([4], np.int64))), "y")]
    assert chain_text(s1) != chain_text(s2)  # integer constants are configuration


def test_compare_measures_and_caches(tmp_path):
    """One real measurement, then the cache answers; the file is keyed by ort version, CPU and threads."""
    path = tmp_path / "sub" / "latency.json"
    w = np.random.default_rng(0).standard_normal((16, 16, 3, 3)).astype(np.float32)
    cache = LatencyCache(path)
    first = compare(_dense(w), _factored(16, 16, 4), [1, 16, 12, 12], cache=cache, budget_s=0.05)
    assert first.dense_ms > 0 and first.factored_ms > 0 and first.runs >= 5 and not first.cached
    assert isinstance(first.faster, bool)
    data = json.loads(path.read_text())
    env = latency.environment_key(1)
    assert ort.__version__ in env and latency.cpu_model() in env and env.endswith("threads=1")
    (entry,) = data["environments"][env].values()
    assert entry["input"] == [1, 16, 12, 12] and entry["dense"].startswith("Conv(x, float32[16, 16, 3, 3])")
    again = compare(_dense(w), _factored(16, 16, 4), [1, 16, 12, 12], cache=LatencyCache(path))
    assert again.cached and (again.dense_ms, again.factored_ms) == (first.dense_ms, first.factored_ms)
    other_shape = compare(_dense(w), _factored(16, 16, 4), [1, 16, 10, 10], cache=LatencyCache(path), budget_s=0.05)
    assert not other_shape.cached


def test_unreadable_cache_is_replaced(tmp_path, caplog):
    path = tmp_path / "latency.json"
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        cache = LatencyCache(path)
    assert "unreadable" in caplog.text
    cache.store("env", "key", {"dense_ms": 1.0, "factored_ms": 0.5, "runs": 5})
    assert json.loads(path.read_text())["environments"]["env"]["key"]["runs"] == 5


def test_pass_with_latency_check_records_timing(tmp_path):
    """check-latency (the default) measures each candidate; rewritten or not, the stats say why."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 4)) @ rng.standard_normal((4, 64))).astype(np.float32)
    model = normalize(make_model([helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")],
                                 [vinfo("X", ["N", 64])], [vinfo("Y", None)], {"W": w}))
    cache = tmp_path / "lat.json"
    out, records = run_passes(model, [f"lowrank:rank=4,latency-cache={cache}"])
    (line,) = records[0].stats["layers"]
    assert set(line["latency"]) >= {"dense_ms", "factored_ms", "speedup", "runs"}
    assert line["skipped"] == (not line["latency"]["factored_ms"] < line["latency"]["dense_ms"])
    if line["skipped"]:
        assert line["reason"].startswith("not faster in onnxruntime")
    assert cache.exists()
    feeds = random_feeds(model)
    np.testing.assert_allclose(run(out, feeds)[0], run(model, feeds)[0], rtol=1e-4, atol=1e-4)
    _, records = run_passes(model, [f"lowrank:rank=4,latency-cache={cache}"])
    assert records[0].stats["layers"][0]["latency"]["cached"] is True
