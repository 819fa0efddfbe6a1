"""``onnxprune explain``: the groups table, --all, --protect, --json, and its errors."""
from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import pytest

from onnxprune import cli
from onnxprune.explain import explain_model, render

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "models" / "mnist-8.onnx"


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["explain", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_groups_of_mnist():
    info = explain_model(str(MNIST))
    assert info["n_groups"] == 3 and info["n_prunable_groups"] == 2
    by_source = {tuple(g["sources"]): g for g in info["groups"]}
    assert by_source[("Convolution28",)]["channels"] == 8 and by_source[("Convolution110",)]["channels"] == 16
    out = render(info)
    assert out.splitlines()[0].split() == ["group", "channels", "prunable", "sources", "blocked", "by"]
    assert "Times212        (output): model output" in out  # the classifier group, blocked, with its reason
    assert len(render(info, show_all=True).splitlines()) >= len(out.splitlines())
    assert out.rstrip().endswith("analysis took " + f"{info['seconds']:.3f}s")


def test_protect_blocks_a_group(capsys):
    code, out, err = _run(capsys, MNIST, "--protect", "Convolution28")
    assert code == 0, err
    assert "1 of 2 groups prunable" in out and "Convolution28" not in out


def test_json_written(capsys, tmp_path):
    code, out, err = _run(capsys, MNIST, "--json", tmp_path / "g.json")
    assert code == 0, err
    data = json.loads((tmp_path / "g.json").read_text())
    assert data["n_prunable_groups"] == 2 and len(data["groups"]) == 3


def test_json_folder_checked_before_the_analysis(capsys, tmp_path):
    code, out, err = _run(capsys, MNIST, "--json", tmp_path / "missing" / "g.json")
    assert code == 2 and len(err.splitlines()) == 1 and out == ""


@pytest.mark.parametrize("argv, code", [(["nope.onnx"], 3), ([], 2), (["--frob"], 2)])
def test_errors_are_one_line(capsys, tmp_path, argv, code):
    got, out, err = _run(capsys, *[tmp_path / a if a.endswith(".onnx") else a for a in argv])
    assert got == code and len(err.splitlines()) == 1 and err.startswith("onnxprune: error:")


def test_control_flow_is_refused_or_handled(capsys, tmp_path):
    from tests.test_errors import _if_model

    p = tmp_path / "if.onnx"
    onnx.save(_if_model(), p)
    code, out, err = _run(capsys, p)
    assert code in (0, 6), err  # handled, or unsupported with one line; never a crash (1)
    if code == 6:
        assert len(err.splitlines()) == 1 and "control flow" in err
    assert sorted(os.listdir(tmp_path)) == ["if.onnx"]
