"""The pass context: targets, the calibration/evaluation split (never a shared sample), input shapes, the evaluator."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.api import prepare_data
from onnxprune.context import Evaluator, PassContext, Target, TargetKind
from onnxprune.data import Dataset, parse_input_shapes, split_dataset, stacked
from onnxprune.errors import DataError, UsageError


def _gemm(dynamic: bool = False):
    # x[n, 4] ─Gemm(W[3,4]ᵀ)─▶ y[n, 3]
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    shape = ["n", 4, "h", "w"] if dynamic else ["n", 4]
    if dynamic:
        nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),
                 helper.make_node("Gemm", ["m", "W"], ["y"], transB=1)]
    else:
        nodes = [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
                          [numpy_helper.from_array(w, "W")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_targets():
    assert Target.named("avx2").vector_width == 8 and not Target.named("avx2").vnni
    assert Target.named("avx512-vnni").vector_width == 16 and Target.named("avx512-vnni").vnni
    assert Target.named("auto").detected
    assert Target.named("generic", threads=3).to_dict()["threads"] == 3
    with pytest.raises(UsageError, match="--target must be one of"):
        Target.named("sse9")
    assert {k.value for k in TargetKind} >= {"auto", "avx2", "avx512"}


@pytest.mark.parametrize("n, n_calib, step", [(10, 4, 1), (1000, 256, 25), (7, 100, 2), (2, 1, 1)])
def test_split_is_disjoint_and_complete(n, n_calib, step):
    x = np.arange(n, dtype=np.float32)[:, None].repeat(4, 1)
    ds = Dataset([{"x": x[i:i + step]} for i in range(0, n, step)], np.arange(n), "test")
    calib, evaluation = split_dataset(ds, n_calib, seed=3, batch_size=step)
    a, b = stacked(calib)["x"][:, 0], stacked(evaluation)["x"][:, 0]
    assert not set(a) & set(b)
    assert sorted(np.concatenate([a, b]).tolist()) == list(range(n))
    assert len(a) == min(n_calib, n // 2)
    # labels travel with their samples
    assert (calib.labels == a).all() and (evaluation.labels == b).all()
    again, _ = split_dataset(ds, n_calib, seed=3, batch_size=step)
    assert (stacked(again)["x"] == stacked(calib)["x"]).all()  # seeded


def test_split_refuses_one_sample():
    with pytest.raises(DataError):
        split_dataset(Dataset([{"x": np.ones((1, 4), np.float32)}], None, "one"), 1)


def test_prepare_data_split_and_dedup(tmp_path):
    model = _gemm()
    x = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, labels=np.arange(40) % 3)
    plan = prepare_data(model, data=tmp_path / "d.npz", calib_limit=10, batch_size=4)
    assert plan.report["split"]["calibration"] == 10 and plan.report["split"]["evaluation"] == 30
    assert plan.ctx.has_data and plan.ctx.calib.n_samples == 10
    cal = {r.tobytes() for r in stacked(plan.ctx.calib)["x"]}
    assert not cal & {r.tobytes() for r in stacked(plan.evaluation)["x"]}
    # --calib and --data from overlapping files: shared samples leave the evaluation set
    np.savez(tmp_path / "c.npz", x=x[:15])
    plan = prepare_data(model, data=tmp_path / "d.npz", calib=tmp_path / "c.npz", batch_size=4)
    assert plan.report["overlap_dropped"] == 15 and plan.evaluation.n_samples == 25
    np.savez(tmp_path / "same.npz", x=x)
    with pytest.raises(DataError, match="every evaluation sample"):
        prepare_data(model, data=tmp_path / "d.npz", calib=tmp_path / "same.npz")


def test_random_data_is_weak_and_sized():
    model = _gemm(dynamic=True)
    plan = prepare_data(model, input_shapes="x:1x4x64x48")
    assert plan.ctx.calib_kind == "random" and not plan.ctx.has_data
    assert any("weak" in w for w in plan.warnings)
    assert plan.ctx.feed()["x"].shape[1:] == (4, 64, 48)
    assert plan.evaluation.batches[0]["x"].shape[1:] == (4, 64, 48)
    plan = prepare_data(model)
    assert any("dynamic input dims" in w for w in plan.warnings)
    with pytest.raises(UsageError):
        prepare_data(model, input_shapes="x:1x5x64x48")  # fixed dim 4 contradicted
    with pytest.raises(UsageError):
        prepare_data(model, input_shapes="nope:1x4x2x2")
    assert parse_input_shapes("a:1x2 b:3") == {"a": (1, 2), "b": (3,)}
    with pytest.raises(UsageError):
        parse_input_shapes("a:1xq")


def test_evaluator_scores():
    model = _gemm()
    x = np.random.default_rng(0).standard_normal((12, 4)).astype(np.float32)
    ref = x @ (np.arange(12, dtype=np.float32).reshape(3, 4) / 10).T
    ds = Dataset([{"x": x[:6]}, {"x": x[6:]}], ref.argmax(1), "t")
    ev = Evaluator(model, ds)
    assert ev.baseline() == 1.0 and ev.metric == "accuracy"
    assert Evaluator(model, Dataset(ds.batches, None, "t")).baseline() == pytest.approx(1.0)
    worse = _gemm()
    worse.graph.initializer[0].CopyFrom(numpy_helper.from_array(-np.ones((3, 4), np.float32), "W"))
    assert ev.score(worse) < 1.0
    assert PassContext().require_data.__name__ == "require_data"
    with pytest.raises(UsageError, match="needs calibration data"):
        PassContext().require_data("p", "x")


def _softmax(a: np.ndarray) -> np.ndarray:
    z = np.exp(a - a.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def test_soft_accuracy_is_the_true_label_probability():
    model = _gemm()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 10)
    logits = x.astype(np.float64) @ (np.arange(12, dtype=np.float64).reshape(3, 4) / 10).T
    ds = Dataset([{"x": x[:5]}, {"x": x[5:]}], labels, "t")
    ev = Evaluator(model, ds, metric="soft-accuracy")
    want = float(np.mean(_softmax(logits)[np.arange(10), labels]))
    assert ev.baseline() == pytest.approx(want, abs=1e-6) and ev.metric == "soft-accuracy"
    # a model that already ends in Softmax is read as probabilities, not softmaxed twice
    sm = _gemm()
    sm.graph.node[0].output[0] = "logits"
    sm.graph.node.append(helper.make_node("Softmax", ["logits"], ["y"], axis=1))
    assert Evaluator(sm, ds, metric="soft-accuracy").baseline() == pytest.approx(want, abs=1e-6)
    # continuous: a small weight change moves the score although no argmax flips
    nudged = _gemm()
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 10 * 0.98
    nudged.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "W"))
    top1 = Evaluator(model, ds)
    assert top1.score(nudged) == top1.baseline()
    assert ev.score(nudged) != pytest.approx(ev.baseline(), abs=1e-6)
    with pytest.raises(UsageError, match="needs labelled"):
        Evaluator(model, Dataset(ds.batches, None, "t"), metric="soft-accuracy").baseline()
    with pytest.raises(UsageError, match="soft-accuracy"):
        Evaluator(model, ds, metric="soft")
