"""The library entry points (``onnxprune.api``): make_passes, run_passes, compress, prepare_data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.api import make_passes, prepare_data, run_passes
from onnxprune.errors import UsageError
from onnxprune.runtime import make_session

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "models" / "mnist-8.onnx"
SAMPLE = ROOT / "models" / "mnist-test-1000.npz"


def _outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = make_session(model)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_make_passes_accepts_specs_and_objects():
    ready = make_passes(["fold-bn"])[0]
    passes = make_passes(["prune-channels:ratio=0.2,round-to=4", ready])
    assert passes[0].options.ratio == 0.2 and passes[0].options.round_to == 4 and passes[1] is ready
    with pytest.raises(UsageError, match="did you mean 'fold-bn'"):
        make_passes(["fold-bm"])


def test_run_passes_records_and_exactness():
    proto = onnxprune.load_model(MNIST)
    out, records = run_passes(proto, ["fold-bn"], cost=lambda m: {"nodes": len(m.graph.node)})
    assert [r.name for r in records] == ["fold-bn"] and records[0].modified
    assert records[0].cost_after["nodes"] < len(proto.graph.node)
    onnx.checker.check_model(out, full_check=True)
    x = np.load(SAMPLE)["Input3"][:1].astype(np.float32)
    np.testing.assert_allclose(_outputs(out, x), _outputs(proto, x), rtol=1e-4, atol=1e-3)


def test_compress_from_a_path_with_data(tmp_path):
    small = onnxprune.compress(str(MNIST), ["prune-channels:ratio=0.5,round-to=4,latency-guard=false"],
                               data=str(SAMPLE), limit=100, calib_limit=50)
    w = {t.name: t for t in small.graph.initializer}
    conv_out = sorted(t.dims[0] for t in w.values() if len(t.dims) == 4)
    assert conv_out == [4, 8]  # 8 -> 4 and 16 -> 8 filters
    path = onnxprune.save_model(small, tmp_path / "s.onnx")
    onnx.checker.check_model(onnx.load(path), full_check=True)


def test_prepare_data_without_evaluation():
    plan = prepare_data(onnxprune.load_model(MNIST), data=str(SAMPLE), limit=60, calib_limit=20, need_eval=False)
    assert plan.evaluation is None and plan.ctx.calib.n_samples == 20 and plan.ctx.has_data
    assert plan.report["split"]["evaluation"] == 40 and plan.ctx.input_shapes == {"Input3": (1, 1, 28, 28)}


def test_prepare_data_random_uses_input_shapes():
    from tests.test_gate import ocr_model

    plan = prepare_data(ocr_model(), input_shapes=["x:1x3x40x56"], samples=3)
    assert plan.ctx.calib_kind == "random" and not plan.ctx.has_data
    assert plan.evaluation.batches[0]["x"].shape == (1, 3, 40, 56)
    assert any("weak" in w for w in plan.warnings)
