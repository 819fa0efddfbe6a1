"""The OCR lesson (issue 7) and the quality gate (issue 10, items 10-11).

On PaddleOCR, prune-channels made the recogniser read nothing while validation on
random 32x32 noise said cosine 0.9999. The model below is built to fail the same way:

    x[N,3,H,W] ─Conv 3x3 (4 ch)─▶ Relu ─▶ ReduceMean(H) ─▶ Squeeze ─▶ Transpose ─▶ MatMul[4,2] ─▶ y[N,W,2]

Channel 0 is a wide local mean with bias -0.3: silent on standard-normal noise, strongly
on for real (bright, smooth) images, and it alone votes for class 0. It has the
smallest L1 norm, so ``prune-channels:ratio=0.25,round-to=1`` removes exactly it. On
noise at 32x32 the pruned model's outputs are the same (cosine > 0.99, per-position
argmax agreement 100 %); on real 64x96 images every position changes its argmax.
Validation with real data must say so, the collapse warning must lead the report, and
``--min-fidelity`` must fail the run (exit 7) with nothing written.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import cli, gate
from onnxprune.data import Dataset
from onnxprune.validate import validate

PRUNE = "prune-channels:ratio=0.25,round-to=1,latency-guard=false,criterion=l1"


def ocr_model(sequence: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)) * 0.3
    w[1:] -= w[1:].mean(axis=(1, 2, 3), keepdims=True)  # blind to a constant image
    w[0] = 0.02  # a local mean: off on noise (std 0.1 < 0.3), on for bright images
    b = np.array([-0.3, 0.0, 0.0, 0.0])
    head = np.array([[0.5, 0.0], [0.2, 0.5], [0.2, 0.5], [0.2, 0.5]])  # channel 0 votes for class 0
    inits = [numpy_helper.from_array(w.astype(np.float32), "w"), numpy_helper.from_array(b.astype(np.float32), "b"),
             numpy_helper.from_array(head.astype(np.float32), "head")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu")]
    if sequence:
        inits.append(numpy_helper.from_array(np.array([2], np.int64), "axis_h"))
        nodes += [helper.make_node("ReduceMean", ["r"], ["m1"], axes=[2], keepdims=1, name="pool_h"),
                  helper.make_node("Squeeze", ["m1", "axis_h"], ["m"], name="squeeze"),
                  helper.make_node("Transpose", ["m"], ["t"], perm=[0, 2, 1], name="to_sequence"),
                  helper.make_node("MatMul", ["t", "head"], ["y"], name="classify")]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "W", 2])
    else:
        nodes += [helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
                  helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
                  helper.make_node("MatMul", ["f", "head"], ["y"], name="classify")]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    g = helper.make_graph(nodes, "ocr", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                          [out], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(1)
    bright = rng.uniform(1.5, 2.5, size=(24, 1, 1, 1))
    real = (bright + 0.1 * rng.standard_normal((24, 3, 64, 96))).astype(np.float32)
    out = {"seq": tmp_path / "seq.onnx", "cls": tmp_path / "cls.onnx", "real": tmp_path / "real.npz",
           "noise": tmp_path / "noise.npz"}
    onnx.save(ocr_model(True), out["seq"])
    onnx.save(ocr_model(False), out["cls"])
    np.savez(out["real"], x=real)
    np.savez(out["noise"], x=rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    return out


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("kind", ["seq", "cls"])
def test_random_32x32_passes_real_size_data_flags(capsys, files, tmp_path, kind):
    weak = tmp_path / f"weak-{kind}.onnx"
    code, out, err = _run(capsys, files[kind], "--passes", PRUNE, "--input-shape", "x:1x3x32x32", "-o", weak,
                          "--latency-runs", "0", "--report", tmp_path / "weak.json")
    assert code == 0, err
    rep = json.loads((tmp_path / "weak.json").read_text())
    assert rep["passes"][0]["modified"] and rep["passes"][0]["stats"]["channels_removed"] == 1
    y = rep["validation"]["outputs"]["y"]
    assert y["cosine"] > 0.99  # the weak check is fooled ...
    assert (y.get("argmax_agreement") or rep["validation"].get("top1_agreement")) > 0.99
    assert not any("collapsed" in w for w in rep["warnings"])
    assert any("random noise" in w for w in rep["warnings"])  # ... and says it is weak
    assert rep["shapes"]["source"] == "--input-shape" and rep["validation"]["data"]["n_samples"] > 0

    # The same pruned model, validated on real images at their real size.
    real = np.load(files["real"])["x"]
    ds = Dataset([{"x": real[i:i + 4]} for i in range(0, len(real), 4)], None, "real images 64x96")
    v = validate(onnx.load(files[kind]), onnx.load(weak), ds, latency_runs=0)
    if kind == "seq":
        assert v["outputs"]["y"]["argmax_agreement"] < 0.2
    else:
        assert v["top1_agreement"] < 0.2
    warnings = gate.quality_warnings(v)
    assert warnings and "collapsed" in warnings[0]


def test_real_data_leads_the_report_with_the_collapse(capsys, files, tmp_path):
    out_model = tmp_path / "o.onnx"
    code, out, err = _run(capsys, files["seq"], "--passes", PRUNE, "--calib", files["noise"], "--data", files["real"],
                          "-o", out_model, "--latency-runs", "0", "--report", tmp_path / "r.md",
                          "--report", tmp_path / "r.html")
    assert code == 0, err
    first = out.splitlines()[0]
    assert first.startswith("warning: outputs collapsed: per-position argmax agreement"), first
    md = (tmp_path / "r.md").read_text().splitlines()
    assert md[2].startswith("**COLLAPSE: outputs collapsed"), md[:4]
    assert "class='collapse'" in (tmp_path / "r.html").read_text()


def test_gate_fails_and_writes_nothing(capsys, files, tmp_path):
    before = sorted(os.listdir(tmp_path))
    code, out, err = _run(capsys, files["seq"], "--passes", PRUNE, "--calib", files["noise"], "--data", files["real"],
                          "-o", tmp_path / "o.onnx", "--report", tmp_path / "r.json", "--latency-runs", "0",
                          "--min-fidelity", "0.9")
    assert code == 7, err
    assert len(err.splitlines()) == 1 and "per-position argmax agreement" in err and "nothing written" in err
    assert sorted(os.listdir(tmp_path)) == before


def test_gate_passes_when_the_model_holds(capsys, files, tmp_path):
    code, out, err = _run(capsys, files["seq"], "--passes", "fold-bn", "--data", files["real"],
                          "-o", tmp_path / "o.onnx", "--latency-runs", "0", "--min-fidelity", "0.99")
    assert code == 0, err
    assert (tmp_path / "o.onnx").exists()


def test_max_drop_needs_labels(capsys, files, tmp_path):
    code, _, err = _run(capsys, files["cls"], "--passes", "fold-bn", "--data", files["real"], "--latency-runs", "0",
                        "--max-drop", "1")
    assert code == 2 and "labelled" in err


def test_max_drop_on_labelled_data(capsys, files, tmp_path):
    real = np.load(files["real"])["x"]
    np.savez(tmp_path / "lab.npz", x=real, labels=np.zeros(len(real), np.int64))  # class 0: bright images
    code, _, err = _run(capsys, files["cls"], "--passes", PRUNE, "--calib", files["noise"], "--data", tmp_path / "lab.npz",
                        "-o", tmp_path / "o.onnx", "--latency-runs", "0", "--max-drop", "5")
    assert code == 7 and "top-1 dropped 100.00 points" in err
    assert not (tmp_path / "o.onnx").exists()


def test_sequence_agreement_drives_the_gate_even_when_cosine_is_high():
    """Scores barely move, yet half the positions change their winner: cosine ~1, agreement 0.5."""
    from onnxprune.validate import compare_outputs

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 50, 5)).astype(np.float32) * 10
    top = ref.max(axis=-1)
    ref[..., 0] = top + 0.02  # class 0 wins everywhere, class 1 comes second, by a hair
    ref[..., 1] = top + 0.01
    got = ref.copy()
    got[:, ::2, 1] += 0.02  # every other position now goes to class 1
    m = compare_outputs({"y": ref}, {"y": got})["y"]
    assert m["cosine"] > 0.999 and m["argmax_agreement"] == pytest.approx(0.5)
    name, value = gate.fidelity({"outputs": {"y": m}})
    assert name == "per-position argmax agreement" and value == pytest.approx(0.5)


def test_report_says_when_validation_ran_at_other_shapes(capsys, files, tmp_path):
    code, out, err = _run(capsys, files["seq"], "--passes", "fold-bn", "--calib", files["noise"], "--data", files["real"],
                          "--latency-runs", "0", "--report", tmp_path / "r.json")
    assert code == 0, err
    shapes = json.loads((tmp_path / "r.json").read_text())["shapes"]
    assert shapes["inputs"] == {"x": [1, 3, 32, 32]} and shapes["evaluation_inputs"] == {"x": [1, 3, 64, 96]}
    assert "validation ran at x 1x3x64x96" in out
