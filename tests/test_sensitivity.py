"""Sensitivity sweep and latency model on a small generated CNN (cosine fidelity, random data)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.context import Evaluator, PassContext, Target
from onnxprune.data import load_dataset
from onnxprune.layer_latency import signatures
from onnxprune.runtime import make_session
from onnxprune.sensitivity import (
    SweepSettings,
    apply_specs,
    kept_channels,
    knobs,
    prune_spec,
    sweep,
    table_markdown,
)

SHAPE = (1, 3, 16, 16)


def small_cnn(dead: int = 0, width: int = 32, seed: int = 0) -> onnx.ModelProto:
    """X -Conv3x3(3->w)-Relu-Conv3x3(w->w)-Relu-Conv1x1(w->w)-Relu-GAP-Flatten-Gemm(w->10) -> Y.

    The first ``dead`` filters of conv0 (weights and bias) are zero: their channels are
    zero after the Relu, so pruning them changes nothing."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    x = "X"
    for i, (cin, k) in enumerate([(3, 3), (width, 3), (width, 1)]):
        w = (rng.standard_normal((width, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
        w *= rng.uniform(0.05, 1.5, (width, 1, 1, 1)).astype(np.float32)
        b = (0.1 * rng.standard_normal(width)).astype(np.float32)
        if i == 0 and dead:
            w[:dead] = 0
            b[:dead] = 0
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        nodes += [helper.make_node("Conv", [x, f"W{i}", f"B{i}"], [f"c{i}"], name=f"conv{i}", kernel_shape=[k, k],
                                   pads=[k // 2] * 4),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    inits += [numpy_helper.from_array((rng.standard_normal((10, width)) / np.sqrt(width)).astype(np.float32), "fcW"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fcB")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["g"], name="gap"),
              helper.make_node("Flatten", ["g"], ["f"], name="flat", axis=1),
              helper.make_node("Gemm", ["f", "fcW", "fcB"], ["Y"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3, 16, 16])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def small_ctx(model: onnx.ModelProto, tmp_path=None, workers: int = 1) -> PassContext:
    ds = load_dataset(model, None, limit=16, batch_size=8, seed=1, shapes={"X": SHAPE})
    return PassContext(calib=ds, target=Target.named("avx2"), input_shapes={"X": SHAPE}, workers=workers,
                       cache_dir=tmp_path, evaluator=Evaluator(model, ds), calib_kind="data")


def _valid(proto: onnx.ModelProto) -> None:
    onnx.checker.check_model(proto, full_check=True)
    make_session(proto).run(None, {"X": np.zeros(SHAPE, np.float32)})


def test_sweep_rows_and_cache(tmp_path) -> None:
    m = small_cnn()
    ctx = small_ctx(m, tmp_path)
    s = SweepSettings(ratios=(0.25, 0.5, 0.75), fractions=(0.5,))
    table = sweep(m, ctx, s)
    assert table["metric"] == "cosine" and table["baseline"] == pytest.approx(1.0)
    prune = [r for r in table["candidates"] if r["family"] == "prune"]
    assert {r["key"] for r in prune} == {"conv0", "conv1", "conv2"}
    for r in prune:
        assert r["kept"] == kept_channels(32, r["level"], 8) and r["ok"]
        assert r["drop"] >= -1e-6  # cosine to the original cannot exceed 1
    lowrank = {r["key"] for r in table["candidates"] if r["family"] == "lowrank"}
    assert lowrank <= {"conv0", "conv1", "fc"} and "fc" in lowrank
    again = sweep(m, ctx, s)
    assert again["cached"] and again["candidates"] == json.loads(json.dumps(table["candidates"]))
    assert not sweep(m, ctx, SweepSettings(ratios=(0.5,), families=("prune",)))["cached"]
    assert "| prune:conv0 | 0.25 | 24/32 |" in table_markdown(table)


def test_dead_channels_are_free() -> None:
    # 8 of conv0's 32 filters are dead: pruning a quarter by l1 (no reconstruction) is lossless.
    m = small_cnn(dead=8)
    ctx = small_ctx(m)
    table = sweep(m, ctx, SweepSettings(families=("prune",), ratios=(0.25,), reconstruct="none"))
    row = next(r for r in table["candidates"] if r["key"] == "conv0")
    assert row["ok"] and abs(row["drop"]) < 1e-6
    other = next(r for r in table["candidates"] if r["key"] == "conv1")
    assert other["drop"] > 1e-4  # live channels cost something


def test_candidate_models_and_flops_gains() -> None:
    m = small_cnn()
    ctx = small_ctx(m)
    s = SweepSettings(families=("prune",), ratios=(0.5,))
    spec = prune_spec({"conv1": 0.5}, s, 8)
    assert spec is not None
    pruned, modified = apply_specs(m, [spec], ctx)
    assert modified
    _valid(pruned)
    w1 = next(t for t in pruned.graph.initializer if t.name.startswith("W1") or "conv1" in t.name and len(t.dims) == 4)
    assert list(w1.dims)[0] == 16
    base, new = signatures(m, ctx.input_shapes), signatures(pruned, ctx.input_shapes)
    changed = {k for k in base if base[k]["key"] != new[k]["key"]}
    assert changed == {"conv1", "conv2"}  # conv1 loses filters, conv2 the matching inputs
    table = sweep(m, ctx, s)
    from onnxprune.cost import model_cost

    f0 = model_cost(m, inputs=ctx.input_shapes).flops
    for k in knobs(table, "flops"):
        row = next(r for r in table["candidates"] if f"prune:{r['key']}" == k.key)
        assert k.choices[0].gain == f0 - row["flops"] > 0


def test_pool_matches_inline() -> None:
    m = small_cnn()
    s = SweepSettings(families=("prune",), ratios=(0.5,))
    one = sweep(m, small_ctx(m), s)
    two = sweep(m, small_ctx(m, workers=2), s)
    assert [r["drop"] for r in one["candidates"]] == [r["drop"] for r in two["candidates"]]
    assert two["sweep"]["executor"] == "local"


def test_cli(tmp_path) -> None:
    from onnxprune.cli import main

    m = small_cnn()
    model, data = tmp_path / "m.onnx", tmp_path / "d.npz"
    onnx.save(m, model)
    np.savez(data, X=np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32))
    out, rep = tmp_path / "s.json", tmp_path / "s.html"
    rc = main(["sensitivity", str(model), "--data", str(data), "--passes", "prune-channels", "--ratios", "0.5",
               "--json", str(out), "--report", str(rep), "--cache-dir", str(tmp_path)])
    assert rc == 0
    table = json.loads(out.read_text())
    assert len(table["candidates"]) == 3 and table["layer_ms"]
    from onnxprune.plots import available

    assert ("<svg" in rep.read_text()) == available()
    assert main(["sensitivity", str(model), "--passes", "fold-bn"]) == 2
    # the JSON is reusable by the search (same model only)
    from onnxprune.api import run_passes
    from onnxprune.errors import UsageError

    spec = f"auto:flops=1.3,min-cosine=0.5,sensitivity={out},latency-runs=5,on-miss=best"
    _, rec = run_passes(m, [spec], ctx=small_ctx(m))
    assert rec[0].stats["sensitivity"]["cached"] and rec[0].stats["sensitivity"]["key"] == table["key"]
    with pytest.raises(UsageError, match="different model"):
        run_passes(small_cnn(seed=1), [spec], ctx=small_ctx(small_cnn(seed=1)))


def test_lowrank_candidates_are_whitened_and_old_tables_read_as_plain() -> None:
    from onnxprune.sensitivity import SweepSettings, lowrank_spec

    assert lowrank_spec("fc", "Gemm", 0.5, SweepSettings()) == "lowrank:layers=fc,fraction=0.5,check-latency=false,whiten=true"
    assert "whiten" not in (lowrank_spec("fc", "Gemm", 0.5, SweepSettings(whiten=False)) or "")
    old = SweepSettings(whiten=False).to_dict()
    del old["whiten"]  # a table written before the field
    assert SweepSettings.from_dict(old).whiten is False
    assert SweepSettings.from_dict(SweepSettings().to_dict()).whiten is True
