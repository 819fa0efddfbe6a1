"""Composing passes through the CLI on trained zoo models (issue #4):
prune-channels → tucker → lowrank, each verified, all reported with its cost."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.cli import main
from onnxprune.validate import make_session

ZOO = Path(__file__).resolve().parents[1].parent / "shared" / "zoo"

pytestmark = [pytest.mark.zoo, pytest.mark.slow,
              pytest.mark.skipif(not (ZOO / "models").is_dir(), reason=f"model zoo not found at {ZOO}")]

NAMES = ["prune-channels", "tucker", "lowrank"]


def _passes(tmp_path: Path, check_latency: bool) -> list[str]:
    if check_latency:  # as shipped, but timing into a fresh cache rather than ~/.cache
        cache = f"latency-cache={tmp_path / 'latency.json'}"
        return ["prune-channels:ratio=0.2", f"tucker:energy=0.9,{cache}", f"lowrank:energy=0.9,{cache}"]
    return ["prune-channels:ratio=0.2,latency-guard=false", "tucker:energy=0.9,check-latency=false",
            "lowrank:energy=0.9,check-latency=false"]


def _compose(tmp_path: Path, name: str, check_latency: bool) -> tuple[dict, onnx.ModelProto, onnx.ModelProto]:
    src = ZOO / "models" / f"{name}.onnx"
    if not src.exists():
        pytest.skip(f"{src} absent")
    out, rep = tmp_path / "out.onnx", tmp_path / "report.json"
    code = main([str(src), "--passes", *_passes(tmp_path, check_latency), "-o", str(out), "--report", str(rep),
                 "--no-validate", "-q"])
    assert code == 0
    return json.loads(rep.read_text()), onnx.load(src), onnx.load(out)


def _check_valid(original: onnx.ModelProto, result: onnx.ModelProto) -> None:
    onnx.checker.check_model(result, full_check=True)
    inits = {t.name for t in original.graph.initializer}
    inputs = [i for i in original.graph.input if i.name not in inits]
    assert len(inputs) == 1
    shape = [d.dim_value if d.dim_value > 0 else 1 for d in inputs[0].type.tensor_type.shape.dim]
    feed = {inputs[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    ref = make_session(original).run(None, feed)
    got = make_session(result).run(None, feed)
    assert [a.shape for a in got] == [a.shape for a in ref]
    assert all(np.all(np.isfinite(a)) for a in got)


def _check_report(report: dict) -> list[dict]:
    passes = report["passes"]
    assert [p["name"] for p in passes] == NAMES
    flops = [report["before"]["flops"]]
    for p in passes:
        cost = p["cost_after"]
        assert isinstance(cost, dict) and cost["flops"] > 0 and cost["params"] > 0
        flops.append(cost["flops"])
    # every pass keeps only rewrites that lower FLOPs (or reverts): never more work
    assert all(b <= a for a, b in zip(flops, flops[1:]))
    assert report["after"]["flops"] == flops[-1]
    return passes


@pytest.mark.parametrize("name", ["mnist-8", "squeezenet1.1"])
def test_compose_as_shipped(tmp_path, name):
    report, original, result = _compose(tmp_path, name, check_latency=True)
    _check_valid(original, result)
    _check_report(report)


def test_compose_squeezenet_without_latency_checks(tmp_path):
    # Deterministic: with the latency checks off, what each pass does depends on the weights only.
    report, original, result = _compose(tmp_path, "squeezenet1.1", check_latency=False)
    _check_valid(original, result)
    prune, tucker, lowrank = _check_report(report)
    assert prune["modified"] and prune["stats"]["channels_removed"] > 0
    assert tucker["modified"] and tucker["stats"]["rewritten"] > 0
    assert tucker["cost_after"]["flops"] < prune["cost_after"]["flops"] < report["before"]["flops"]
    assert not lowrank["modified"]  # SqueezeNet's classifier is a Conv: no Gemm/MatMul to factor
