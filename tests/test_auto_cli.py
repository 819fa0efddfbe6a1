"""The auto pass through the command line when its target cannot be met (exit 7).

    small CNN (tests/test_sensitivity.py): X -Conv3x3-Relu-Conv3x3-Relu-Conv1x1-Relu-GAP-Gemm-> Y

A 50x speed-up is out of reach of any pruning of it, while a mean-cosine budget of 0.5
holds for mild pruning, so the search ends with a best point inside the budget that misses
the target. The run must exit 7, write the reports (with a "TARGET MISSED" first line and
the search's points), write no model, and with ``--keep-best`` write that best point, valid.
Also: a budget no point can hold (min-cosine=1) leaves nothing to keep; the HTML report
carries the search's pictures as inline SVG while Markdown and JSON carry none.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.cli import main
from onnxprune.runtime import make_session

_spec = importlib.util.spec_from_file_location("_sens_helpers", Path(__file__).with_name("test_sensitivity.py"))
assert _spec and _spec.loader
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
small_cnn, SHAPE = _helpers.small_cnn, _helpers.SHAPE

FAST = "ratios=0.25|0.5,fractions=0.5,latency-runs=5,reconstruct=none,rounds=2"
MISS = f"auto:speedup=50,min-cosine=0.5,{FAST}"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path, Path]:
    d = tmp_path_factory.mktemp("auto_cli")
    model, data = d / "m.onnx", d / "d.npz"
    onnx.save(small_cnn(), model)
    np.savez(data, X=np.random.default_rng(0).standard_normal((16, *SHAPE[1:])).astype(np.float32))
    return d, model, data


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxprune: error: pass auto: cannot reach"), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def cache(files) -> Path:
    return files[0] / "cache"  # one sweep for every run of this module (same model, data, settings)


def _common(files, cache) -> list:
    _, model, data = files
    return [model, "--passes", MISS, "--data", data, "--batch-size", "8", "--latency-runs", "3", "-q",
            "--cache-dir", cache]


def test_miss_writes_report_not_model(files, cache, capsys, tmp_path) -> None:
    out = tmp_path / "o.onnx"
    reports = [tmp_path / "r.md", tmp_path / "r.json", tmp_path / "r.html"]
    code, stdout, err = _run(capsys, *_common(files, cache), "-o", out, *[x for r in reports for x in ("--report", r)])
    assert code == 7
    line = _one_error_line(err)
    assert "no model (--keep-best writes the best point)" in line and str(reports[0]) in line
    assert not out.exists() and not out.with_name(out.name + ".data").exists()
    assert all(r.is_file() for r in reports)
    md = reports[0].read_text()
    first = [x for x in md.splitlines()[1:] if x.strip()][0]
    assert first.startswith("**TARGET MISSED: auto (pass 1) did not reach latency x50") and "best point: x" in first
    assert "no model written" in first
    rep = json.loads(reports[1].read_text())
    assert rep["output"] is None and rep["target_missed"]["best_point_written"] is False
    st = rep["passes"][0]["stats"]
    assert st["target_met"] is False and st["chosen"]["holds_quality"] and len(st["points"]) >= 2
    assert rep["passes"][0]["modified"] is True
    assert "auto (pass 1): points" in md and "auto (pass 1): chosen point" in md
    # the best point, not written, was still validated on the evaluation split
    assert rep["validation"]["outputs"] and rep["validation"]["latency"]["ratio"] > 0
    # pictures: inline SVG in the HTML only; the JSON keeps the names of those drawn
    assert "<svg" not in md and "<svg" not in reports[1].read_text()
    assert isinstance(st["plots"], list)
    html = reports[2].read_text()
    assert "TARGET MISSED" in html.split("<table>")[0]
    if _helpers_plots_available():
        assert set(st["plots"]) == {"sensitivity", "pareto_latency", "pareto_size", "predicted_vs_measured"}
        for caption in ("sensitivity curves", "measured speed-up vs drop", "size vs drop", "predicted vs measured"):
            i = html.find(caption)
            assert i > 0, caption
            fig = html.rfind("<figure>", 0, i)
            assert fig >= 0 and html.find("<svg", fig, i) > 0, caption  # that figure holds an SVG
        assert html.count("<svg") >= 5  # + FLOPs per layer


def _helpers_plots_available() -> bool:
    from onnxprune import plots

    return plots.available()


def test_keep_best_writes_the_best_point(files, cache, capsys, tmp_path) -> None:
    out = tmp_path / "best.onnx"
    report = tmp_path / "r.json"
    code, stdout, err = _run(capsys, *_common(files, cache), "-o", out, "--keep-best", "--report", report)
    assert code == 7
    line = _one_error_line(err)
    assert f"the best point to {out} (--keep-best)" in line
    proto = onnx.load(out)
    onnx.checker.check_model(proto, full_check=True)
    make_session(proto).run(None, {"X": np.zeros(SHAPE, np.float32)})
    rep = json.loads(report.read_text())
    assert rep["target_missed"]["best_point_written"] is True and rep["output"] == str(out)
    assert rep["after"]["size_bytes"] == out.stat().st_size
    chosen = rep["passes"][0]["stats"]["chosen"]
    assert chosen["drop"] <= rep["passes"][0]["stats"]["budget"] + 1e-9
    assert rep["after"]["flops"] < rep["before"]["flops"]  # it is the pruned point, not the original


def test_keep_best_with_no_point_in_budget(files, cache, capsys, tmp_path) -> None:
    # min-cosine=1: nothing but the original holds it, so there is no best point to keep
    _, model, data = files
    out = tmp_path / "o.onnx"
    report = tmp_path / "r.md"
    code, _, err = _run(capsys, model, "--passes", f"auto:speedup=50,min-cosine=1,{FAST}", "--data", data,
                        "--batch-size", "8", "-q", "--cache-dir", cache, "-o", out, "--keep-best", "--report", report)
    assert code == 7
    assert "no model (no point held the quality budget)" in _one_error_line(err)
    assert not out.exists()
    md = report.read_text()
    assert "TARGET MISSED" in md and "the best point is the original model" in md


def test_keep_best_needs_output(files, capsys) -> None:
    _, model, data = files
    code, _, err = _run(capsys, model, "--passes", MISS, "--data", data, "--keep-best")
    assert code == 2 and "--keep-best" in err and len(err.strip().splitlines()) == 1
