"""Exit codes and the one stderr line (issue 10, item 7).

A bug exits 1, bad input 2-4, an unsupported model 6, and 5 only when a pass really
broke the graph. Each case: the documented code, exactly one line on stderr, and no
output file (or report) left behind. Every check that can run before the work does.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import cli, progress
from onnxprune.errors import EXIT_CODES, OnnxPruneError, PassCrash, VerificationError
from onnxprune.manager import Pass, PassResult

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "models" / "mnist-8.onnx"


def _conv_model(extra=(), opsets=None, ir: int = 8) -> onnx.ModelProto:
    """x[1,3,8,8] ─Conv(16)─▶ Relu ─▶ [extra] ─▶ Conv(4) ─▶ y"""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 16, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c"], ["r"], name="relu")] + list(extra)
    nodes.append(helper.make_node("Conv", [nodes[-1].output[0], "w2"], ["y"], name="conv2"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w, w2])
    m = helper.make_model(g, opset_imports=opsets or [helper.make_opsetid("", 13)])
    m.ir_version = ir
    return m


def _if_model() -> onnx.ModelProto:
    """conv1 ─▶ Relu ─▶ If(cond: Relu | Neg) ─▶ conv2: the branches read the outer tensor r."""
    f = TensorProto.FLOAT
    then_g = helper.make_graph([helper.make_node("Relu", ["r"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", f, [1, 16, 8, 8])])
    else_g = helper.make_graph([helper.make_node("Neg", ["r"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", f, [1, 16, 8, 8])])
    m = _conv_model([helper.make_node("If", ["cond"], ["q"], then_branch=then_g, else_branch=else_g, name="if")])
    m.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    return m


def _save(tmp_path: Path, model: onnx.ModelProto, name: str) -> Path:
    p = tmp_path / name
    onnx.save(model, p)
    return p


def _expect(capsys, argv: list, code: int, message: str, tmp_path: Path) -> str:
    before = sorted(os.listdir(tmp_path))
    got = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert got == code, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == before, "a failed run left files behind"
    return lines[0]


def test_exit_code_table_matches_classes():
    from onnxprune import errors

    codes = {c.exit_code for c in vars(errors).values()
             if isinstance(c, type) and issubclass(c, OnnxPruneError) and c is not OnnxPruneError}
    assert codes <= set(EXIT_CODES) and set(range(1, 8)) <= set(EXIT_CODES)
    assert PassCrash.exit_code == 1 and VerificationError.exit_code == 5


def test_custom_domain_op_is_unsupported(capsys, tmp_path):
    m = _conv_model([helper.make_node("MyOp", ["r"], ["q"], domain="com.example", name="mine")],
                    opsets=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)])
    p = _save(tmp_path, m, "custom.onnx")
    line = _expect(capsys, [p, "--passes", "fold-bn", "-o", tmp_path / "o.onnx"], 6, "com.example:MyOp", tmp_path)
    assert "custom-domain op" in line and "[ONNXRuntimeError]" not in line


def test_ir_version_newer_than_onnxruntime_is_unsupported_and_uncut(capsys, tmp_path):
    # onnx's own IR version (14 with onnx 1.23) is valid for the checker; onnxruntime 1.31 reads up to 13.
    from onnxprune.runtime import make_session

    m = _conv_model(ir=onnx.IR_VERSION)
    try:
        make_session(m)
        pytest.skip(f"this onnxruntime reads IR {onnx.IR_VERSION}")
    except OnnxPruneError:
        pass
    p = _save(tmp_path, m, "newir.onnx")
    line = _expect(capsys, [p, "--passes", "fold-bn", "-o", tmp_path / "o.onnx"], 6,
                   f"IR version {onnx.IR_VERSION} is newer than onnxruntime", tmp_path)
    assert line.endswith("or upgrade onnxruntime"), line  # the whole message, not cut mid-word


def test_control_flow_crash_is_unsupported_not_verification(capsys, tmp_path):
    p = _save(tmp_path, _if_model(), "if.onnx")
    argv = [p, "--passes", "prune-channels:ratio=0.5,latency-guard=false", "-o", tmp_path / "o.onnx"]
    before = sorted(os.listdir(tmp_path))
    got = cli.main([str(a) for a in argv])
    _, err = capsys.readouterr()
    assert got in (0, 6), err  # handled by the pass (0), or refused with one line (6); never 5 or 1
    if got == 6:
        assert len(err.splitlines()) == 1 and "control flow" in err and "If node" in err
        assert sorted(os.listdir(tmp_path)) == before


class _Buggy(Pass):
    """A pass with a bug."""

    name = "buggy"

    def run(self, model, ctx):
        raise KeyError("oops")


class _Breaker(Pass):
    """A pass that really breaks the graph: it renames the output."""

    name = "breaker"

    def run(self, model, ctx):
        model.graph.outputs[0].name = "renamed"
        return PassResult(True)


def test_a_crashing_pass_is_a_bug_exit_1(capsys, tmp_path, monkeypatch):
    import onnxprune.api as api

    monkeypatch.setattr(api, "make_passes", lambda specs: [_Buggy()])
    p = tmp_path / "m.onnx"
    p.write_bytes(MNIST.read_bytes())
    line = _expect(capsys, [p, "--passes", "buggy", "-o", tmp_path / "o.onnx"], 1, "pass 'buggy' failed", tmp_path)
    assert "KeyError" in line


def test_exit_5_only_when_the_graph_is_broken(capsys, tmp_path, monkeypatch):
    import onnxprune.api as api

    monkeypatch.setattr(api, "make_passes", lambda specs: [_Breaker()])
    p = tmp_path / "m.onnx"
    p.write_bytes(MNIST.read_bytes())
    _expect(capsys, [p, "--passes", "breaker", "-o", tmp_path / "o.onnx"], 5, "broke the graph", tmp_path)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_non_finite_option_is_usage(capsys, tmp_path, value):
    p = tmp_path / "m.onnx"
    p.write_bytes(MNIST.read_bytes())
    _expect(capsys, [p, "--passes", f"prune-channels:ratio={value}"], 2, "must be a finite number", tmp_path)


def test_check_range_refuses_nan():
    from onnxprune.errors import UsageError
    from onnxprune.manager import check_range

    with pytest.raises(UsageError):
        check_range("p", "k", float("nan"), 0.0, 1.0)


def test_comma_instead_of_colon_hints(capsys, tmp_path):
    p = tmp_path / "m.onnx"
    p.write_bytes(MNIST.read_bytes())
    _expect(capsys, [p, "--passes", "prune-channels,ratio=0.2"], 2, "'prune-channels:ratio=0.2'", tmp_path)


@pytest.mark.parametrize("spec, hint", [("prune-chanels", "did you mean 'prune-channels'?"),
                                        ("fold-bm", "did you mean 'fold-bn'?"),
                                        ("prune-channels:ration=0.2", "did you mean 'ratio'?"),
                                        ("prune-channels:round_too=4", "did you mean 'round-to'?")])
def test_did_you_mean(capsys, tmp_path, spec, hint):
    p = tmp_path / "m.onnx"
    p.write_bytes(MNIST.read_bytes())
    _expect(capsys, [p, "--passes", spec], 2, hint, tmp_path)


def test_nan_in_data_refused_before_work(capsys, tmp_path):
    p = tmp_path / "m.onnx"
    p.write_bytes(MNIST.read_bytes())
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    x[:, 0, 0, 0] = np.nan  # in every sample, so both the calibration and the evaluation part hold some
    np.savez(tmp_path / "nan.npz", Input3=x)
    _expect(capsys, [p, "--passes", "fold-bn", "--data", tmp_path / "nan.npz", "-o", tmp_path / "o.onnx",
                     "--report", tmp_path / "r.md"], 4, "NaN", tmp_path)


def test_nan_metrics_render_as_nan():
    from onnxprune.report import render_html, render_json, render_markdown, render_text

    nan = float("nan")
    report = {"input": "m.onnx", "before": {"flops": nan, "params": 10, "size_bytes": nan},
              "after": {"flops": None, "params": nan},
              "passes": [{"name": "x", "modified": True, "stats": {"err": nan}, "seconds": nan, "cost_after": {}}],
              "validation": {"data": {"source": "s", "n_samples": 1},
                             "outputs": {"y": {"max_abs": None, "mean_abs": nan, "cosine": nan, "argmax_agreement": nan}},
                             "top1_agreement": nan, "accuracy": {"before": nan, "after": 0.5, "delta": nan, "n": 1},
                             "latency": {"before_ms": nan, "after_ms": 1.0, "ratio": nan, "threads": 1, "runs": 3}}}
    for render in (render_text, render_markdown, render_html):
        assert "nan" in render(report)
    assert "NaN" not in render_json(report)  # JSON has no NaN: null


def _unwritable(tmp_path: Path) -> Path:
    """A folder no new file can go into, for root too: /proc takes no files."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        return ro
    return Path("/proc")


def test_read_only_output_folder_fails_before_work(capsys, tmp_path, monkeypatch):
    p = tmp_path / "m.onnx"
    p.write_bytes(MNIST.read_bytes())
    called = []
    import onnxprune.model as model_mod

    monkeypatch.setattr(model_mod, "load_model", lambda *a, **k: called.append(1))
    ro = _unwritable(tmp_path)
    _expect(capsys, [p, "--passes", "fold-bn", "-o", ro / "o.onnx"], 2, "cannot write in", tmp_path)
    _expect(capsys, [p, "--passes", "fold-bn", "-o", tmp_path / "o.onnx", "--report", ro / "r.md"], 2,
            "cannot write in", tmp_path)
    assert not called, "the model was loaded before the folders were checked"


def test_internal_error_is_one_line(capsys, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("first line\nsecond line")

    monkeypatch.setattr(cli, "run", boom)
    assert cli.main(["whatever.onnx"]) == 1
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and "first line second line" in err


def test_warnings_do_not_reach_stderr(capsys, tmp_path):
    """A library warning logged during a run goes to the summary, not stderr."""
    import logging

    p = tmp_path / "m.onnx"
    p.write_bytes(MNIST.read_bytes())
    real = cli.run

    def noisy(args, progress=None):
        logging.getLogger("onnxprune.test").warning("something odd")
        return real(args, progress)

    cli.run = noisy  # type: ignore[assignment]
    try:
        code = cli.main([str(p), "--passes", "fold-bn", "--latency-runs", "0", "-o", str(tmp_path / "o.onnx")])
    finally:
        cli.run = real  # type: ignore[assignment]
    out, err = capsys.readouterr()
    assert code == 0 and err == "", err
    assert "note: onnxprune.test: something odd" in out


def test_python_warnings_are_collected_too():
    """warnings.warn from a library lands in the collector, not on stderr (a subprocess:
    pytest records warnings itself)."""
    import subprocess
    import sys

    code = ("import logging, warnings\n"
            "from onnxprune import cli, progress\n"
            "cli._setup_logging(False)\n"
            "warnings.warn('numpy says hello', UserWarning)\n"
            "print([m for h in logging.getLogger().handlers if isinstance(h, progress.Collect) for m in h.messages])\n")
    r = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "numpy says hello" in r.stdout


def test_stderr_is_silent_when_not_a_terminal(tmp_path):
    """No progress lines in a log: a successful run writes nothing to a non-terminal stderr."""
    import subprocess
    import sys

    p = tmp_path / "m.onnx"
    p.write_bytes(MNIST.read_bytes())
    r = subprocess.run([sys.executable, "-m", "onnxprune", str(p), "--passes", "fold-bn", "--latency-runs", "0",
                        "-o", str(tmp_path / "o.onnx"), "--data", str(ROOT / "models" / "mnist-test-1000.npz"),
                        "--limit", "40"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


def test_progress_line_on_a_terminal():
    import io

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    prog = progress.Progress(3, stream=stream)
    prog.stage("loading")
    prog.stage("prune-channels")
    prog.update("12/40 batches")
    prog.close()
    text = stream.getvalue()
    assert "[2/3] prune-channels 12/40 batches" in text and "\r" in text and "\n" not in text
    plain = io.StringIO()  # not a terminal: nothing at all
    prog = progress.Progress(3, stream=plain)
    prog.stage("x")
    prog.close()
    assert plain.getvalue() == ""


def test_data_loading_bar_becomes_the_progress_detail():
    """tqdm's bar (the image loader's) is relayed into the one line, not drawn beside it."""
    import io
    import sys

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    prog = progress.Progress(4, stream=stream)
    prog.stage("loading data")
    with prog.relay():
        sys.stderr.write("\rloading images:  45%|####5     | 450/1000 [00:01<00:01, 400.00img/s]")
        assert prog.detail == "450/1000"
    prog.close()
    assert "loading images" not in stream.getvalue() and "[1/4] loading data 450/1000" in stream.getvalue()


def test_missing_data_path_fails_before_the_model_loads(capsys, tmp_path, monkeypatch):
    import onnxprune.model as model_mod

    p = tmp_path / "m.onnx"
    p.write_bytes(MNIST.read_bytes())
    monkeypatch.setattr(model_mod, "load_model", lambda *a, **k: pytest.fail("loaded the model first"))
    _expect(capsys, [p, "--passes", "fold-bn", "--data", tmp_path / "nope.npz"], 4, "no such file", tmp_path)
    _expect(capsys, [p, "--passes", "fold-bn", "--calib", tmp_path / "nope"], 4, "--calib", tmp_path)


def test_a_failing_report_write_leaves_nothing(capsys, tmp_path, monkeypatch):
    import onnxprune.report as report_mod

    p = tmp_path / "m.onnx"
    p.write_bytes(MNIST.read_bytes())
    real = report_mod.write_text
    calls = []

    def flaky(text, path, *, mode=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(text, path, mode=mode)

    monkeypatch.setattr(report_mod, "write_text", flaky)
    _expect(capsys, [p, "--passes", "fold-bn", "--latency-runs", "0", "-o", tmp_path / "o.onnx",
                     "--report", tmp_path / "r.md", "--report", tmp_path / "r.json"], 2, "No space left", tmp_path)


class _BadCandidate(Pass):
    """A pass whose own candidate onnxruntime refuses (as a latency guard would find)."""

    name = "bad-candidate"

    def run(self, model, ctx):
        from onnxprune.runtime import make_session

        proto = model.to_onnx()
        proto.graph.node[0].op_type = "NoSuchOp"
        make_session(proto)
        return PassResult(False)


def test_a_pass_building_an_unloadable_model_is_5_not_3(capsys, tmp_path, monkeypatch):
    import onnxprune.api as api

    monkeypatch.setattr(api, "make_passes", lambda specs: [_BadCandidate()])
    p = tmp_path / "m.onnx"
    p.write_bytes(MNIST.read_bytes())
    _expect(capsys, [p, "--passes", "bad-candidate", "-o", tmp_path / "o.onnx"], 5,
            "pass 'bad-candidate' built a model onnxruntime refuses", tmp_path)
