"""The report renderers (issue 10, item 12): headline first, per-group and per-layer
detail, pictures in the HTML, data and split shown, NaN-safe, the model's permissions."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from onnxprune import cli, report
from onnxprune.report import (
    headline,
    layer_rows,
    render_html,
    render_json,
    render_markdown,
    render_text,
    tables,
    write_report,
)

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "models" / "mnist-8.onnx"
SAMPLE = ROOT / "models" / "mnist-test-1000.npz"


def _node(name: str, op: str, flops: int, params: int) -> dict:
    return {"name": name, "op_type": op, "macs": flops // 2, "flops": flops, "params": params, "param_bytes": 4 * params,
            "output_bytes": 0}


def _report(**extra) -> dict:
    rep = {
        "input": "m.onnx", "output": "o.onnx",
        "warnings": ["no data given: calibration and validation use random noise, so the fidelity check is weak",
                     "outputs collapsed: top-1 agreement 0.1000 (below 0.5) on the evaluation data"],
        "before": {"flops": 1000, "macs": 500, "params": 100, "size_bytes": 4000,
                   "nodes": [_node("conv1", "Conv", 600, 60), _node("conv2", "Conv", 400, 40), _node("relu", "Relu", 0, 0)]},
        "after": {"flops": 500, "macs": 250, "params": 50, "size_bytes": 2000,
                  "nodes": [_node("conv1", "Conv", 300, 30), _node("conv2", "Conv", 200, 20), _node("relu", "Relu", 0, 0),
                            _node("conv2_bias", "Add", 10, 10)]},
        "shapes": {"inputs": {"x": [1, 3, 8, 8]}, "source": "--input-shape", "dynamic_dims": ["x[2]", "x[3]"],
                   "text": "x 1x3x8x8 (from --input-shape)"},
        "data": {"seed": 0, "split": {"from": "d.npz", "calibration": 256, "evaluation": 744, "seed": 0, "disjoint": True},
                 "calibration": {"source": "d.npz calib", "n_samples": 256, "kind": "data"},
                 "evaluation": {"source": "d.npz eval", "n_samples": 744}},
        "context": {"target": {"kind": "avx2", "vector_width": 8, "vnni": False, "threads": 1, "detected": False,
                               "cpu": "test"}},
        "passes": [{"name": "prune-channels", "options": {"ratio": 0.5}, "modified": True, "seconds": 0.1,
                    "stats": {"channels_removed": 12,
                              "per_group": [{"sources": ["conv1"], "channels": 16, "removed": 8},
                                            {"sources": ["conv2"], "channels": 8, "removed": 4}]},
                    "cost_after": {"flops": 500, "params": 50}}],
        "validation": {"data": {"source": "d.npz eval", "n_samples": 744},
                       "outputs": {"y": {"max_abs": 0.5, "mean_abs": 0.1, "cosine": 0.8}}, "top1_agreement": 0.1,
                       "accuracy": {"before": 0.9, "after": 0.1, "delta": -0.8, "n": 744}, "latency": None},
    }
    rep.update(extra)
    return rep


def test_headline_puts_collapse_then_weak_validation_first():
    lines = headline(_report())
    assert lines[0].startswith("COLLAPSE: outputs collapsed")
    assert lines[1].startswith("WEAK VALIDATION: no data given")
    assert "FLOPs -50.0%" in lines[2] and "x 1x3x8x8 (from --input-shape)" in lines[2]


def test_markdown_first_lines_and_detail():
    md = render_markdown(_report())
    lines = md.splitlines()
    assert lines[2].startswith("**COLLAPSE") and lines[3].startswith("**WEAK VALIDATION")
    assert "## prune-channels (pass 1): per group" in md
    assert "| conv1 | 16 | 8 |" in md
    assert "## Per-layer cost (3 of 4 layers changed)" in md
    assert "| conv1 | Conv | 600 | 300 | -50.0% | 60 | 30 |" in md
    assert "| conv2_bias | Add | - | 10 | new |" in md
    assert "relu |" not in md.split("## Per-layer cost")[1]  # unchanged layers are left out
    # data and split
    assert "calibration=256, evaluation=744, seed=0, disjoint=True" in md
    assert "| dynamic dims | x[2], x[3] |" in md
    assert "avx2 (vector width 8" in md


def test_layer_rows_join_by_name_and_mark_removed():
    rep = _report()
    rep["after"]["nodes"] = [n for n in rep["after"]["nodes"] if n["name"] != "conv2"]
    rows = {r["name"]: r for r in layer_rows(rep)}
    assert rows["conv2"]["flops_after"] is None and rows["conv2_bias"]["flops_before"] is None
    title, header, body = tables(rep, detail=True)[-1]
    assert title.startswith("Per-layer cost") and any(r[0] == "conv2" and r[4] == "removed" for r in body)


def test_terminal_text_is_the_summary_only():
    text = render_text(_report())
    assert "Per-layer cost" not in text and "Model (batch 1, inputs at x 1x3x8x8" in text


def test_html_has_pictures_and_highlights():
    pytest.importorskip("matplotlib")
    page = render_html(_report())
    assert page.count("<svg") == 2  # FLOPs per layer, channels per group
    assert "class='collapse'" in page and "class='weak'" in page
    assert page.index("class='collapse'") < page.index("<table>")


def test_html_without_matplotlib_says_so(monkeypatch):
    from onnxprune import plots

    monkeypatch.setattr(plots, "available", lambda: False)
    page = render_html(_report())
    assert "<svg" not in page and "left out (install matplotlib" in page


def test_renderers_survive_odd_values():
    rep = _report()
    rep["passes"][0]["stats"].update(weird={1, 2}, nested={"a": [1, 2]}, none=None, flag=True)
    rep["before"]["flops"] = None
    rep["validation"]["outputs"]["y"]["cosine"] = None
    for render in (render_text, render_markdown, render_html, render_json):
        assert render(rep)
    json.loads(render_json(rep))


def test_long_detail_tables_are_capped():
    rep = _report()
    rep["passes"][0]["stats"]["per_group"] = [{"sources": [f"c{i}"], "channels": 8, "removed": 1} for i in range(200)]
    md = render_markdown(rep)
    assert f"first {report.DETAIL_ROWS} of 200" in md and "| c199 |" not in md


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o600])
def test_write_report_sets_the_mode(tmp_path, mode):
    for suffix in (".json", ".md", ".html"):
        p = write_report(_report(), tmp_path / f"r{suffix}", mode=mode)
        assert stat.S_IMODE(p.stat().st_mode) == mode
    assert [f for f in os.listdir(tmp_path) if f.startswith(".")] == []  # no temporary left


def test_cli_reports_get_the_models_permissions(capsys, tmp_path):
    old = os.umask(0o027)  # the model file is then 0640; the reports must follow it, not mkstemp's 0600
    try:
        code = cli.main([str(MNIST), "--passes", "fold-bn", "-o", str(tmp_path / "o.onnx"), "--latency-runs", "0",
                         "--report", str(tmp_path / "r.md"), "--report", str(tmp_path / "r.json")])
    finally:
        os.umask(old)
    capsys.readouterr()
    assert code == 0
    model_mode = stat.S_IMODE((tmp_path / "o.onnx").stat().st_mode)
    for r in ("r.md", "r.json"):
        assert stat.S_IMODE((tmp_path / r).stat().st_mode) == model_mode


def test_cli_report_end_to_end(capsys, tmp_path):
    """A real run: per-group and per-layer detail from prune-channels, the data split, FLOPs at the data's shapes."""
    code = cli.main([str(MNIST), "--passes", "prune-channels:ratio=0.5,round-to=4,latency-guard=false",
                     "--data", str(SAMPLE), "--limit", "200", "--calib-limit", "64", "--latency-runs", "0",
                     "-o", str(tmp_path / "o.onnx"), "--report", str(tmp_path / "r.md"),
                     "--report", str(tmp_path / "r.json")])
    out, err = capsys.readouterr()
    assert code == 0, err
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["data"]["split"]["calibration"] == 64 and rep["data"]["split"]["evaluation"] == 136
    assert rep["shapes"]["source"] == "the data" and rep["shapes"]["inputs"] == {"Input3": [1, 1, 28, 28]}
    md = (tmp_path / "r.md").read_text()
    assert "per group" in md and "| Convolution28 | 8 | 4 |" in md
    assert "Per-layer cost" in md and "| Convolution110 | Conv |" in md
    assert "FLOPs at Input3 1x1x28x28 (from the data)" in md
    assert "| ratio=0.5, round_to=4, latency_guard=False |" in md  # what was asked, beside what the pass did


def test_nested_per_layer_lists_become_tables():
    rep = _report()
    rep["passes"][0]["stats"]["reconstruction"] = {
        "method": "ls", "samples": 256,
        "layers": [{"name": "conv2", "op": "Conv", "rel_error_before": 0.65, "rel_error_after": 0.61}]}
    md = render_markdown(rep)
    assert "## prune-channels (pass 1): reconstruction layers (method=ls, samples=256)" in md
    assert "| conv2 | Conv | 0.65 | 0.61 |" in md


def _auto_pass(met: bool, modified: bool = True) -> dict:
    svgs = {k: f"<svg id='{k}'><circle r='1'/></svg>" for k in ("sensitivity", "pareto_latency", "pareto_size")}
    svgs["predicted_vs_measured"] = None  # nothing to draw (or no matplotlib)
    chosen = {"label": "round 2", "levels": {"prune:conv1": 0.25}, "speedup": 1.234, "drop": 0.4, "holds_quality": True}
    return {"name": "auto", "options": {"speedup": 1.5}, "modified": modified, "seconds": 1.0, "cost_after": None,
            "stats": {"objective": "latency", "target": 1.5, "budget": 1.0, "budget_unit": "points of top-1",
                      "target_met": met, "chosen": chosen, "notes": ["round 3: allocation repeats an earlier one"],
                      "points": [{"label": "original", "speedup": 1.0, "drop": 0.0}, chosen], "plots": svgs}}


def test_pass_plots_in_html_only():
    rep = _report(passes=[_auto_pass(met=True)])
    html, md, js = render_html(rep), render_markdown(rep), render_json(rep)
    for k in ("sensitivity", "pareto_latency", "pareto_size"):
        assert f"<svg id='{k}'><circle r='1'/></svg>" in html  # the pass's own SVG, verbatim
    assert "predicted vs measured speed-up" in html
    assert "<svg" not in md and "<svg" not in render_text(rep) and "<svg" not in js
    assert json.loads(js)["passes"][0]["stats"]["plots"] == ["sensitivity", "pareto_latency", "pareto_size"]
    assert rep["passes"][0]["stats"]["plots"]["sensitivity"].startswith("<svg")  # the report dict is untouched
    assert "auto (pass 1): chosen point" in md and "round 3: allocation repeats" in md
    assert not any(h.startswith("TARGET MISSED") for h in headline(rep))


def test_missed_target_is_the_first_line():
    rep = _report(passes=[_auto_pass(met=False)])
    first = headline(rep)[0]
    assert first.startswith("TARGET MISSED: auto (pass 1) did not reach latency x1.5 within a drop of 1 points of top-1")
    assert "best point: x1.234 latency at a drop of 0.4" in first and "on-miss=best" in first
    assert render_markdown(rep).splitlines()[2].startswith("**TARGET MISSED")
    rep["target_missed"] = {"pass": "auto", "best_point_written": True, "exit_code": 7}
    assert "the best point was written (--keep-best); exit 7" in headline(rep)[0]
    rep = _report(passes=[_auto_pass(met=False, modified=False)], target_missed={"best_point_written": False})
    assert "the best point is the original model" in headline(rep)[0]
    assert "class='collapse'>TARGET MISSED" in render_html(rep)
