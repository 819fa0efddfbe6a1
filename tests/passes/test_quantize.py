"""quantize: static QDQ and dynamic int8 through onnxruntime, the odd inputs, the manager hook."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxprune.api import run_passes
from onnxprune.context import Evaluator, PassContext
from onnxprune.data import Dataset
from onnxprune.errors import UnsupportedError, UsageError
from onnxprune.quantized import quantized_ops
from onnxprune.testing import make_model, run, vinfo

# Relative L2 error of the int8 model's logits against float on the test data (random
# weights and inputs, minmax calibration on the same distribution). Measured ≈ 0.01-0.03.
INT8_BOUND = 0.08


def small_cnn(opset: int = 13, seed: int = 0) -> onnx.ModelProto:
    """x[N,3,12,12] ─Conv 3x3─ Relu ─Conv dw 3x3─ Clip(0,6) ─Conv 1x1─ GAP ─ Flatten ─ Gemm ─▶ y[N,10]"""
    rng = np.random.default_rng(seed)
    w = {"w1": rng.standard_normal((8, 3, 3, 3)) * 0.3, "b1": rng.standard_normal(8) * 0.1,
         "w2": rng.standard_normal((8, 1, 3, 3)) * 0.3, "b2": rng.standard_normal(8) * 0.1,
         "w3": rng.standard_normal((16, 8, 1, 1)) * 0.3, "b3": rng.standard_normal(16) * 0.1,
         "wf": rng.standard_normal((10, 16)) * 0.3, "bf": rng.standard_normal(10) * 0.1}
    inits = {k: v.astype(np.float32) for k, v in w.items()}
    clip = (helper.make_node("Clip", ["c2"], ["a2"], min=0.0, max=6.0) if opset < 11
            else helper.make_node("Clip", ["c2", "lo", "hi"], ["a2"]))
    if opset >= 11:
        inits["lo"], inits["hi"] = np.array(0.0, np.float32), np.array(6.0, np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=8),
        clip,
        helper.make_node("Conv", ["a2", "w3", "b3"], ["c3"], kernel_shape=[1, 1]),
        helper.make_node("GlobalAveragePool", ["c3"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1),
    ]
    m = make_model(nodes, [vinfo("x", ["N", 3, 12, 12])], [vinfo("y", ["N", 10])], inits, opset=opset)
    if opset < 9:
        m.ir_version = 4
    return m


def calib_ctx(model: onnx.ModelProto, n: int = 32, seed: int = 1) -> PassContext:
    rng = np.random.default_rng(seed)
    batches = [{"x": rng.standard_normal((4, 3, 12, 12)).astype(np.float32)} for _ in range(n // 4)]
    ds = Dataset(batches, None, "test noise")
    return PassContext(calib=ds, calib_kind="data", evaluator=Evaluator(model, ds))


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def check_close(ref: onnx.ModelProto, got: onnx.ModelProto, bound: float = INT8_BOUND) -> float:
    onnx.checker.check_model(got, full_check=True)
    x = np.random.default_rng(7).standard_normal((4, 3, 12, 12)).astype(np.float32)
    err = rel_err(run(ref, {"x": x})[0], run(got, {"x": x})[0])
    assert err < bound
    return err


def test_static_qdq_valid_and_close():
    m = small_cnn()
    out, rec = run_passes(m, ["quantize:calibrate=minmax,exclude=none"], ctx=calib_ctx(m))
    assert rec[0].modified
    assert "QDQ" in (quantized_ops(out) or "")
    assert out.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert rec[0].stats["activations"] == "uint8"
    check_close(m, out)
    # per-channel weights: the Conv weights' DequantizeLinear carry an axis and one scale per channel
    scales = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    dq_w = [n for n in out.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in scales
            and scales[n.input[0]].ndim == 4]
    assert dq_w and all(scales[n.input[1]].size == scales[n.input[0]].shape[0] for n in dq_w)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_calibration_methods(method):
    m = small_cnn()
    out, rec = run_passes(m, [f"quantize:calibrate={method},exclude=none"], ctx=calib_ctx(m))
    assert rec[0].stats["calibrate"] == method
    check_close(m, out, 0.25)  # histogram methods clip outliers by design: looser on random data


def test_opset7_upgraded_and_checked():
    m = small_cnn(opset=7)
    onnx.checker.check_model(m)
    out, rec = run_passes(m, ["quantize:calibrate=minmax,exclude=none"], ctx=calib_ctx(m))
    assert rec[0].stats["prepared"]["opset"] == [7, 13]
    assert next(o.version for o in out.opset_import if o.domain in ("", "ai.onnx")) >= 13
    check_close(m, out)


def test_ir3_initializers_as_inputs():
    m = small_cnn(opset=7)
    m.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in m.graph.initializer)
    m.ir_version = 3
    onnx.checker.check_model(m)
    out, rec = run_passes(m, ["quantize:calibrate=minmax,exclude=none"], ctx=calib_ctx(m))
    assert rec[0].modified
    inits = {t.name for t in out.graph.initializer}
    assert not [i.name for i in out.graph.input if i.name in inits]
    assert [i.name for i in out.graph.input] == ["x"]
    check_close(m, out)


def test_already_qdq_reported_not_skipped():
    m = small_cnn()
    ctx = calib_ctx(m)
    q, _ = run_passes(m, ["quantize:calibrate=minmax,exclude=none"], ctx=ctx)
    again, rec = run_passes(q, ["quantize"], ctx=ctx)
    assert rec[0].modified is False
    assert "QDQ" in rec[0].stats["already_quantized"]
    assert "already quantized" in rec[0].stats["reason"]


def test_qlinear_reported(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    m = small_cnn()
    ctx = calib_ctx(m)
    src, dst = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(m, str(src))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(ctx.calib.batches)  # type: ignore[union-attr]

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QOperator)
    q = onnx.load(str(dst))
    _, rec = run_passes(q, ["quantize"], ctx=ctx)
    assert rec[0].modified is False and "QLinear" in rec[0].stats["already_quantized"]
    with pytest.raises(UnsupportedError, match="QLinear") as exc:
        run_passes(q, ["prune-channels:ratio=0.2"], ctx=ctx)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("after", ["prune-channels:ratio=0.2", "fold-bn", "equalize", "fp16"])
def test_structural_pass_after_quantize_refuses(after):
    m = small_cnn()
    with pytest.raises(UnsupportedError) as exc:
        run_passes(m, ["quantize:calibrate=minmax,exclude=none", after], ctx=calib_ctx(m))
    msg = str(exc.value)
    assert "\n" not in msg and "quantized" in msg and "after quantize" in msg
    assert exc.value.exit_code == 6


def test_static_needs_real_data():
    m = small_cnn()
    with pytest.raises(UsageError, match="calibration data"):
        run_passes(m, ["quantize"])
    noise = calib_ctx(m).replace(calib_kind="random")
    with pytest.raises(UsageError, match="random data"):
        run_passes(m, ["quantize"], ctx=noise)


def test_exclude_pattern_keeps_nodes_float():
    m = small_cnn()
    out, rec = run_passes(m, ["quantize:calibrate=minmax,exclude=Gemm"], ctx=calib_ctx(m))
    assert len(rec[0].stats["excluded"]) == 1
    gemm = next(n for n in out.graph.node if n.op_type == "Gemm")
    producers = {o: n.op_type for n in out.graph.node for o in n.output}
    # the Gemm reads float weights directly, not a DequantizeLinear of int8 ones
    assert producers.get(gemm.input[1]) != "DequantizeLinear"
    check_close(m, out)
    with pytest.raises(UsageError, match="matches no node"):
        run_passes(m, ["quantize:exclude=NoSuchOp"], ctx=calib_ctx(m))


def test_exclude_auto_measures_and_stays_valid():
    m = small_cnn()
    out, rec = run_passes(m, ["quantize:calibrate=minmax,exclude=auto,max-excluded=2,search-samples=8,max-drop=0"],
                          ctx=calib_ctx(m))
    st = rec[0].stats
    search = st["exclusion_search"]
    assert search["candidates"] >= 4
    assert len(st["excluded"]) <= 2
    assert search["error_final"] <= search["error_all_quantized"]
    check_close(m, out)


def test_exclude_auto_skips_when_within_max_drop():
    m = small_cnn()
    _, rec = run_passes(m, ["quantize:calibrate=minmax,exclude=auto"], ctx=calib_ctx(m))
    assert rec[0].stats["excluded"] == []
    assert "within max-drop" in rec[0].stats["exclusion_search"]["skipped"]


def test_dynamic_matmul_without_data():
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 32)).astype(np.float32)
    w2 = rng.standard_normal((32, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    m = make_model(nodes, [vinfo("x", ["B", "S", 16])], [vinfo("y", ["B", "S", 8])], {"w1": w1, "w2": w2}, opset=14)
    out, rec = run_passes(m, ["quantize:mode=dynamic"])
    assert rec[0].modified and quantized_ops(out)
    onnx.checker.check_model(out, full_check=True)
    x = rng.standard_normal((2, 5, 16)).astype(np.float32)
    assert rel_err(run(m, {"x": x})[0], run(out, {"x": x})[0]) < 0.05


def test_options_checked():
    m = small_cnn()
    with pytest.raises(UsageError):
        run_passes(m, ["quantize:calibrate=max"], ctx=calib_ctx(m))
    with pytest.raises(UsageError):
        run_passes(m, ["quantize:latency-budget=0.5"], ctx=calib_ctx(m))


def test_compositions():
    m = small_cnn()
    ctx = calib_ctx(m)
    out, rec = run_passes(m, ["prune-channels:ratio=0.2", "quantize:calibrate=minmax,exclude=none"], ctx=ctx)
    assert rec[-1].modified and quantized_ops(out)
    onnx.checker.check_model(out, full_check=True)
    out2, rec2 = run_passes(m, ["equalize", "quantize:calibrate=minmax,exclude=none"], ctx=ctx)
    assert rec2[0].modified and rec2[1].modified
    check_close(m, out2)


@pytest.mark.zoo
@pytest.mark.slow
def test_zoo_squeezenet_opset7_quantized_close(zoo):
    """The zoo's opset-7 IR-3 SqueezeNet: upgraded, quantized, valid, and within 2 points of float top-1
    on 96 images it was not calibrated on (measured: within 0.5 on the 744-image split)."""
    from onnxprune.api import prepare_data
    from onnxprune.model import load_model

    m = load_model(zoo / "models" / "squeezenet1.1.onnx")
    plan = prepare_data(m, data=zoo / "data" / "imagenet-sample", recipe="caffe-bgr", calib_limit=32, limit=128, seed=0)
    out, rec = run_passes(m, ["quantize:calibrate=minmax,exclude=none"], ctx=plan.ctx)
    assert rec[0].stats["prepared"]["opset"] == [7, 13]
    onnx.checker.check_model(out, full_check=True)
    ev = Evaluator(m, plan.evaluation)
    assert ev.score(out) >= ev.baseline() - 0.02


@pytest.mark.zoo
@pytest.mark.slow
def test_zoo_mobilenetv2_equalize_exact(zoo):
    """Equalization with clip=exact leaves MobileNetV2's logits unchanged (float rounding only)."""
    from onnxprune.model import load_model

    m = load_model(zoo / "models" / "mobilenetv2.onnx")
    out, rec = run_passes(m, ["equalize:bias-correction=none"])
    assert rec[0].stats["pairs"] >= 30
    x = np.random.default_rng(0).uniform(-2, 2, (2, 3, 224, 224)).astype(np.float32)
    a, b = run(m, {"input": x})[0], run(out, {"input": x})[0]
    assert np.max(np.abs(a - b)) <= 1e-3 * np.max(np.abs(a))


def test_lowrank_then_dynamic():
    """lowrank → quantize:mode=dynamic: the factor MatMuls are quantized too."""
    rng = np.random.default_rng(3)
    u, v = rng.standard_normal((64, 8)), rng.standard_normal((8, 64))
    w = (u @ v + 0.01 * rng.standard_normal((64, 64))).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    m = make_model(nodes, [vinfo("x", ["B", 64])], [vinfo("y", ["B", 64])], {"w": w}, opset=14)
    out, rec = run_passes(m, ["lowrank:rank=8,check-latency=false", "quantize:mode=dynamic"])
    assert rec[0].modified and rec[1].modified
    onnx.checker.check_model(out, full_check=True)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    assert rel_err(run(m, {"x": x})[0], run(out, {"x": x})[0]) < 0.05


def test_matmul_head_with_2d_bias_quantizes_and_runs(capsys):
    # x[N,3,12,12] ─Conv─ Relu ─GAP─ Flatten ─MatMul(W[8,10])─ Add(B[1,10]) ─▶ y   (mnist-8's head form)
    rng = np.random.default_rng(3)
    inits = {"w": (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32),
             "W": (rng.standard_normal((8, 10)) * 0.3).astype(np.float32),
             "B": (rng.standard_normal((1, 10)) * 0.1).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["a"]),
             helper.make_node("GlobalAveragePool", ["a"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "W"], ["m"]),
             helper.make_node("Add", ["m", "B"], ["y"])]
    m = make_model(nodes, [vinfo("x", ["N", 3, 12, 12])], [vinfo("y", ["N", 10])], inits, opset=13)
    out, rec = run_passes(m, ["quantize:calibrate=minmax"], ctx=calib_ctx(m))
    assert rec[0].modified and rec[0].stats["prepared"].get("bias_adds_flattened") == 1
    check_close(m, out)
    assert "Collecting" not in capsys.readouterr().out  # onnxruntime's calibration prints stay out of stdout


def test_calibration_is_chunked_and_minmax_ranges_unchanged():
    """onnxruntime keeps every intermediate output of the data it gets before reducing it:
    the reader hands it at most CALIB_CHUNK samples at a time (mobilenetv2 with 256 samples
    at once went past 14 GB), and MinMax ranges merged over chunks equal the whole-set ones."""
    from onnxprune.passes import quantize as q

    r = q._Reader([{"x": np.zeros((40, 3, 12, 12), np.float32)}, {"x": np.zeros((3, 3, 12, 12), np.float32)}], {"x"})
    assert [b["x"].shape[0] for b in r.batches] == [16, 16, 8, 3]
    m = small_cnn()
    x = np.random.default_rng(3).standard_normal((48, 3, 12, 12)).astype(np.float32)
    outs = []
    for batches in ([{"x": x}], [{"x": x[i:i + 4]} for i in range(0, 48, 4)]):
        ds = Dataset(batches, None, "t")
        out, _ = run_passes(m, ["quantize:calibrate=minmax,exclude=none"],
                            ctx=PassContext(calib=ds, calib_kind="data", evaluator=Evaluator(m, ds)))
        outs.append({t.name: numpy_helper.to_array(t) for t in out.graph.initializer})
    assert outs[0].keys() == outs[1].keys()
    for k in outs[0]:
        np.testing.assert_array_equal(outs[0][k], outs[1][k], err_msg=k)


def _conv_head(m: onnx.ModelProto) -> onnx.ModelProto:
    """small_cnn cut after its 1x1 conv: the graph output is a Conv's (stays quantized)."""
    cut = onnx.ModelProto()
    cut.CopyFrom(m)
    nodes = [n for n in cut.graph.node if n.op_type not in ("GlobalAveragePool", "Flatten", "Gemm")]
    del cut.graph.node[:]
    cut.graph.node.extend(nodes)
    del cut.graph.output[:]
    cut.graph.output.extend([vinfo("c3", ["N", 16, 12, 12])])
    keep = [t for t in cut.graph.initializer if t.name not in ("wf", "bf")]
    del cut.graph.initializer[:]
    cut.graph.initializer.extend(keep)
    return cut


def test_float_outputs_removes_the_output_pair_and_only_it():
    m = small_cnn()
    ctx = calib_ctx(m)
    freed, rec = run_passes(m, ["quantize:calibrate=minmax"], ctx=ctx)
    kept, _ = run_passes(m, ["quantize:calibrate=minmax,float-outputs=false"], ctx=ctx)
    assert rec[0].stats["float_outputs"] == ["y"]
    producers = {("freed" if g is freed else "kept"): next(n.op_type for n in g.graph.node if "y" in n.output)
                 for g in (freed, kept)}
    assert producers == {"freed": "Gemm", "kept": "DequantizeLinear"}
    # exactly one Q/DQ pair fewer; everything upstream identical
    count = lambda g, op: sum(n.op_type == op for n in g.graph.node)  # noqa: E731
    assert count(kept, "QuantizeLinear") - count(freed, "QuantizeLinear") == 1
    assert count(kept, "DequantizeLinear") - count(freed, "DequantizeLinear") == 1
    x = np.random.default_rng(7).standard_normal((4, 3, 12, 12)).astype(np.float32)
    ref = run(m, {"x": x})[0]
    # the freed model's logits are the kept model's before their 8-bit rounding
    e_freed, e_kept = rel_err(ref, run(freed, {"x": x})[0]), rel_err(ref, run(kept, {"x": x})[0])
    assert e_freed <= e_kept + 1e-6
    check_close(m, freed)
    # a Conv's output keeps its pair (onnxruntime's QLinearConv needs the output Q)
    c = _conv_head(m)
    out, rec = run_passes(c, ["quantize:calibrate=minmax"], ctx=calib_ctx(c))
    assert rec[0].stats["float_outputs"] == []
    assert next(n.op_type for n in out.graph.node if "c3" in n.output) == "DequantizeLinear"
    onnx.checker.check_model(out, full_check=True)
