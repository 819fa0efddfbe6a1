"""The command line: the happy path on the bundled model and every error path.

Each error must give one line on stderr, the documented exit code, no traceback, and
leave the input file byte-identical.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.cli import main

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "models" / "mnist-8.onnx"


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture()
def model(tmp_path) -> Path:
    p = tmp_path / "in.onnx"
    p.write_bytes(MNIST.read_bytes())
    return p


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_happy_path_reports(model, tmp_path, capsys):
    before = _digest(model)
    out = tmp_path / "small.onnx"
    code, stdout, err = _run(capsys, model, "--passes", "fold-bn", "-o", out, "--report", tmp_path / "r.json",
                             "--report", tmp_path / "r.md", "--report", tmp_path / "r.html", "--latency-runs", "5")
    assert code == 0, err
    assert _digest(model) == before
    onnx.checker.check_model(onnx.load(out), full_check=True)
    rep = json.loads((tmp_path / "r.json").read_text())
    for side in ("before", "after"):
        assert {"flops", "params", "size_bytes"} <= set(rep[side])
    assert rep["after"]["size_bytes"] == out.stat().st_size
    assert rep["passes"][0]["name"] == "fold-bn" and rep["passes"][0]["modified"] is True
    assert rep["passes"][0]["stats"]["folded"] == {"Add": 2}
    val = rep["validation"]
    assert "random" in val["data"]["source"]
    assert val["outputs"]["Plus214_Output_0"]["max_abs"] < 1e-3
    assert val["latency"]["before_ms"] > 0 and val["latency"]["after_ms"] > 0
    assert "| FLOPs |" in (tmp_path / "r.md").read_text()
    assert "<table>" in (tmp_path / "r.html").read_text()
    assert "FLOPs" in stdout and "wrote" in stdout


def test_list_passes(capsys):
    code, out, _ = _run(capsys, "--list-passes")
    assert code == 0 and out.startswith("fold-bn")


def _expect_error(capsys, model: Path | None, argv: list, code: int, message: str) -> None:
    before = _digest(model) if model else None
    got, out, err = _run(capsys, *argv)
    assert got == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxprune: error: "), err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err
    if model:
        assert _digest(model) == before


def test_missing_file(capsys, tmp_path):
    _expect_error(capsys, None, [tmp_path / "nope.onnx", "--passes", "fold-bn"], 3, "no such file")


def test_not_onnx(capsys, tmp_path):
    p = tmp_path / "x.onnx"
    p.write_text("definitely not protobuf\n" * 20)
    _expect_error(capsys, p, [p, "--passes", "fold-bn"], 3, "not an ONNX model")


def test_truncated(capsys, tmp_path):
    p = tmp_path / "t.onnx"
    p.write_bytes(MNIST.read_bytes()[:9000])
    _expect_error(capsys, p, [p, "--passes", "fold-bn", "-o", tmp_path / "o.onnx"], 3, "t.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_unknown_pass(capsys, model):
    _expect_error(capsys, model, [model, "--passes", "fold-bm"], 2, "unknown pass 'fold-bm'; valid passes: fold-bn")


def test_unknown_key(capsys, model):
    _expect_error(capsys, model, [model, "--passes", "fold-bn:ratio=0.3"], 2, "unknown option 'ratio'")


@pytest.mark.parametrize("flag, value, message", [("--batch-size", "0", "--batch-size must be at least 1"),
                                                  ("--threads", "0", "--threads must be at least 1"),
                                                  ("--latency-runs", "-1", "--latency-runs must be 0 or more")])
def test_value_out_of_range(capsys, model, flag, value, message):
    _expect_error(capsys, model, [model, flag, value], 2, message)


def test_bad_flag_is_one_line(capsys, model):
    _expect_error(capsys, model, [model, "--frobnicate"], 2, "unrecognized arguments")


def test_output_is_input_refused(capsys, model):
    _expect_error(capsys, model, [model, "--passes", "fold-bn", "-o", model], 2, "never overwrites its input")


def test_data_wrong_shape(capsys, model, tmp_path):
    np.savez(tmp_path / "d.npz", Input3=np.zeros((1, 1, 27, 28), np.float32))
    _expect_error(capsys, model, [model, "--passes", "fold-bn", "--data", tmp_path / "d.npz", "-o", tmp_path / "o.onnx"],
                  4, "Input3")
    assert not (tmp_path / "o.onnx").exists()


def test_data_wrong_name(capsys, model, tmp_path):
    np.savez(tmp_path / "d.npz", image=np.zeros((1, 1, 28, 28), np.float32), other=np.zeros(3))
    _expect_error(capsys, model, [model, "--data", tmp_path / "d.npz"], 4, "Input3")


def test_report_bad_suffix(capsys, model, tmp_path):
    _expect_error(capsys, model, [model, "--report", tmp_path / "r.txt"], 2, "unknown format")


def test_verbose_shows_traceback(capsys, tmp_path):
    code, _, err = _run(capsys, tmp_path / "nope.onnx", "-v")
    assert code == 3 and "Traceback" in err


def test_console_script_and_module(tmp_path, model):
    """`python -m onnxprune` works from any folder and exits non-zero on errors."""
    ok = subprocess.run([sys.executable, "-m", "onnxprune", str(model), "--passes", "fold-bn", "-q", "--no-validate",
                         "-o", str(tmp_path / "o.onnx")], cwd=tmp_path, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "onnxprune", str(tmp_path / "missing.onnx")], cwd=tmp_path,
                         capture_output=True, text=True)
    assert bad.returncode == 3 and bad.stderr.count("\n") == 1


def test_pass_option_out_of_range(capsys, model):
    _expect_error(capsys, model, [model, "--passes", "prune-channels:ratio=1.5"], 2, "ratio=1.5 is out of range [0.0, 1.0)")


def test_explain(capsys, model, tmp_path):
    code, out, err = _run(capsys, "explain", model, "--json", tmp_path / "g.json")
    assert code == 0, err
    assert "2 of 3 groups prunable" in out
    groups = json.loads((tmp_path / "g.json").read_text())["groups"]
    assert any(b["reason"] == "model output" for g in groups for b in g["blocked"])
    _expect_error(capsys, None, ["explain", tmp_path / "nope.onnx"], 3, "no such file")


# ---------------------------------------------------------------------------- option docs (item 3)

def test_list_passes_verbose_documents_every_option(capsys):
    from onnxprune.passes import REGISTRY

    from onnxprune.manager import option_docs

    code, out, _ = _run(capsys, "--list-passes", "-v")
    assert code == 0
    for name, cls in REGISTRY.items():
        assert f"{name}: {cls.summary()}" in out
        for d in option_docs(cls):
            assert any(line.strip().startswith(d.key + " ") and d.type in line for line in out.splitlines()), d


def test_help_pass(capsys):
    code, out, _ = _run(capsys, "help", "prune-channels")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("prune-channels: ")
    ratio = next(line for line in lines if line.strip().startswith("ratio "))
    assert "float" in ratio and "default 0.3" in ratio
    rt = next(line for line in lines if line.strip().startswith("round-to "))
    assert "int or none" in rt and "default none" in rt
    code, _, err = _run(capsys, "help", "prune-chanels")
    assert code == 2 and "did you mean 'prune-channels'" in err


def test_option_help_conventions():
    """Help comes from field metadata first, then 'key: text' docstring lines (base classes too)."""
    from dataclasses import dataclass, field

    from onnxprune.manager import Pass, option_docs

    @dataclass(frozen=True)
    class Base:
        """Shared options.

        layers: node-name patterns to rewrite
        """

        layers: tuple[str, ...] = ()

    @dataclass(frozen=True)
    class Opts(Base):
        """Options.

        round-to: keep channel counts a multiple of this
        """

        ratio: float = field(default=0.3, metadata={"help": "fraction of channels to remove"})
        round_to: int | None = None
        mode: str = "a"

    class P(Pass):
        name = "p"
        Options = Opts

        def run(self, model, ctx):  # pragma: no cover
            raise NotImplementedError

    docs = {d.key: d for d in option_docs(P)}
    assert docs["ratio"].help == "fraction of channels to remove" and docs["ratio"].default == 0.3
    assert docs["round-to"].help == "keep channel counts a multiple of this" and docs["round-to"].type == "int or none"
    assert docs["layers"].help == "node-name patterns to rewrite" and docs["layers"].type.startswith("list of str")
    assert docs["mode"].help == ""


def test_readme_pass_table_matches_the_registry(repo_root):
    """Every registered pass has a row in the README's pass table, and every row is a registered pass."""
    import re

    from onnxprune.passes import REGISTRY

    text = (repo_root / "README.md").read_text()
    section = text.split("## Passes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.M)
    assert rows == REGISTRY.names(), (rows, REGISTRY.names())


def test_readme_exit_codes_match(repo_root):
    import re

    from onnxprune.errors import EXIT_CODES

    text = (repo_root / "README.md").read_text()
    section = text.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    codes = [int(c) for c in re.findall(r"^\| (\d) \|", section, flags=re.M)]
    assert codes == sorted(EXIT_CODES)


# ---------------------------------------------------------------------------- real sizes (item 11)

def test_input_shape_sizes_validation_and_cost(capsys, tmp_path):
    from tests.test_gate import ocr_model

    p = tmp_path / "dyn.onnx"
    onnx.save(ocr_model(), p)
    reps = {}
    for shape in (None, "x:1x3x32x32", "x:1x3x64x64"):
        argv = [p, "--passes", "fold-bn", "--latency-runs", "0", "--report", tmp_path / "r.json"]
        if shape:
            argv += ["--input-shape", shape]
        code, out, err = _run(capsys, *argv)
        assert code == 0, err
        reps[shape] = json.loads((tmp_path / "r.json").read_text())
    none = reps[None]
    assert none["shapes"]["source"].startswith("none given") and none["shapes"]["dynamic_dims"] == ["x[2]", "x[3]"]
    assert any("dynamic input dims" in w for w in none["warnings"])
    small, big = reps["x:1x3x32x32"], reps["x:1x3x64x64"]
    assert small["validation"]["outputs"]["y"]["shape"][1] == 32 and big["validation"]["outputs"]["y"]["shape"][1] == 64
    assert big["before"]["flops"] == pytest.approx(4 * small["before"]["flops"], rel=0.01)
    assert "x 1x3x64x64 (from --input-shape)" in big["conventions"]["flops"]
    assert not any("dynamic input dims" in w for w in big["warnings"])


def test_sequence_outputs_get_argmax_agreement(capsys, tmp_path):
    from tests.test_gate import ocr_model

    p = tmp_path / "dyn.onnx"
    onnx.save(ocr_model(), p)
    code, out, err = _run(capsys, p, "--passes", "fold-bn", "--latency-runs", "0", "--input-shape", "x:1x3x8x20")
    assert code == 0, err
    assert "per-position argmax agreement=100.00%" in out


# ---------------------------------------------------------------------------- quick start (item 2)

def _readme_commands(repo_root: Path) -> list[list[str]]:
    """The `onnxprune ...` commands of the README's quick start, continuation lines joined."""
    import shlex

    text = (repo_root / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    cmds = []
    for block in section.split("```bash")[1:]:
        body = block.split("```", 1)[0].replace("\\\n", " ")
        for line in body.splitlines():
            for part in line.split("#", 1)[0].split("&&"):  # the first command installs && runs
                part = part.strip()
                if part.startswith("onnxprune "):
                    cmds.append(shlex.split(part)[1:])
    return cmds


def test_quick_start_shows_real_validated_compression(capsys, tmp_path, repo_root, monkeypatch):
    """The README's first command, as a new user runs it: real compression, measured on held-out data."""
    argv = _readme_commands(repo_root)[0]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").symlink_to(repo_root / "models")
    code, out, err = _run(capsys, *argv, "--report", "r.json")
    assert code == 0, err
    rep = json.loads((tmp_path / "r.json").read_text())
    modified = [p["name"] for p in rep["passes"] if p["modified"]]
    assert modified and not any(p["stats"].get("reverted") for p in rep["passes"])
    assert rep["after"]["size_bytes"] < 0.5 * rep["before"]["size_bytes"]  # real compression ...
    acc = rep["validation"]["accuracy"]  # ... with its evidence, on data the passes never saw
    assert acc["n"] == 744 and rep["data"]["split"]["disjoint"] is True
    assert acc["before"] - acc["after"] <= 0.01
    assert not rep["warnings"]
    out_model = tmp_path / argv[argv.index("-o") + 1]
    onnx.checker.check_model(str(out_model), full_check=True)
    assert out_model.stat().st_size == rep["after"]["size_bytes"]


def test_every_pass_option_is_documented():
    from onnxprune.passes import REGISTRY

    from onnxprune.manager import option_docs

    missing = [f"{name}:{d.key}" for name, cls in REGISTRY.items() for d in option_docs(cls) if not d.help]
    assert not missing, f"{len(missing)} undocumented options: {', '.join(missing[:20])}"


def test_sizes_are_both_on_disk(capsys, tmp_path):
    """before = the input file (plus its external data), after = the written file(s): like for like."""
    ext = tmp_path / "ext.onnx"
    from onnxprune.model import load_model

    onnx.save_model(load_model(MNIST), str(ext), save_as_external_data=True, location="ext.onnx.data",
                    size_threshold=1024)
    on_disk = ext.stat().st_size + (tmp_path / "ext.onnx.data").stat().st_size
    for src, size in ((MNIST, MNIST.stat().st_size), (ext, on_disk)):
        code, _, err = _run(capsys, src, "--passes", "fold-bn", "--no-validate", "-o", tmp_path / "o.onnx",
                            "--report", tmp_path / "r.json")
        assert code == 0, err
        rep = json.loads((tmp_path / "r.json").read_text())
        assert rep["before"]["size_bytes"] == size
        assert rep["after"]["size_bytes"] == (tmp_path / "o.onnx").stat().st_size
