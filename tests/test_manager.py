"""Pass registry, option parsing and the manager's verification after each pass."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

import pytest
from onnx import helper

from onnxprune.api import run_passes
from onnxprune.errors import UsageError, VerificationError
from onnxprune.manager import Pass, PassResult, Registry, check_range, parse_pass_spec
from onnxprune.model import normalize
from onnxprune.testing import make_model, vinfo


class Crit(enum.Enum):
    L1 = "l1"
    L2 = "l2"


@dataclass(frozen=True)
class DemoOptions:
    ratio: float = 0.5
    steps: int = 1
    exact: bool = False
    criterion: Crit = Crit.L1
    mode: Literal["global", "local"] = "local"
    protect: tuple[str, ...] = ()
    limit: float | None = None

    def __post_init__(self) -> None:
        check_range("demo", "ratio", self.ratio, 0.0, 1.0, hi_open=True)


class Demo(Pass):
    """A demo pass that does nothing."""

    name = "demo"
    Options = DemoOptions

    def run(self, model, ctx):
        return PassResult(False, {"seen": len(model.graph.nodes)})


class BreakOutputs(Pass):
    """Renames the graph output: verification must catch it."""

    name = "break"

    def run(self, model, ctx):
        model.graph.outputs[0].name = "renamed"
        return PassResult(True)


class MakeCycle(Pass):
    """Feeds a node its own output."""

    name = "cycle"

    def run(self, model, ctx):
        node = model.graph.nodes[0]
        node.inputs[0] = node.outputs[0]
        return PassResult(True)


REG = Registry([Demo, BreakOutputs, MakeCycle])


def test_parse_spec():
    assert parse_pass_spec("demo") == ("demo", {})
    assert parse_pass_spec("demo:ratio=0.3,steps=2") == ("demo", {"ratio": "0.3", "steps": "2"})
    with pytest.raises(UsageError, match="key=value"):
        parse_pass_spec("demo:ratio")
    with pytest.raises(UsageError, match="twice"):
        parse_pass_spec("demo:ratio=1,ratio=2")


def test_options_coerced():
    p = REG.create("demo:ratio=0.25,steps=3,exact=yes,criterion=l2,mode=global,protect=a|b*,limit=none")
    assert p.options == DemoOptions(0.25, 3, True, Crit.L2, "global", ("a", "b*"), None)
    assert REG.create("demo:limit=2.5").options.limit == 2.5


@pytest.mark.parametrize("spec, message", [
    ("nope", "unknown pass 'nope'; valid passes: demo, break, cycle"),
    ("demo:ratoi=0.3", "unknown option 'ratoi'; valid options: ratio, steps, exact, criterion, mode, protect, limit"),
    ("demo:ratio=abc", "ratio must be float"),
    ("demo:ratio=1.5", "ratio=1.5 is out of range [0.0, 1.0)"),
    ("demo:steps=1.5", "steps must be int"),
    ("demo:criterion=l3", "criterion must be one of l1, l2"),
    ("demo:mode=x", "mode must be one of global, local"),
    ("demo:exact=maybe", "exact must be bool"),
])
def test_option_errors_name_the_valid_choices(spec, message):
    with pytest.raises(UsageError) as info:
        REG.create(spec)
    assert message in str(info.value)


def test_duplicate_registration_rejected():
    with pytest.raises(ValueError, match="twice"):
        Registry([Demo, Demo])


def _model():
    """X ─Relu─▶ Y"""
    return normalize(make_model([helper.make_node("Relu", ["X"], ["Y"])], [vinfo("X", [1, 3])], [vinfo("Y", [1, 3])]))


@pytest.mark.parametrize("bad, message", [(BreakOutputs(), "graph outputs changed"), (MakeCycle(), "")])
def test_verification_names_the_pass(bad, message):
    with pytest.raises(VerificationError) as info:
        run_passes(_model(), [Demo(), bad])
    text = str(info.value)
    assert f"pass '{bad.name}' (after demo)" in text and message in text


def test_unmodified_pass_is_honest():
    out, records = run_passes(_model(), [Demo()])
    assert records[0].modified is False and records[0].stats == {"seen": 1}
    assert out.graph.node[0].op_type == "Relu"


def test_all_registered_passes_have_docs():
    from onnxprune.passes import PASSES

    for cls in PASSES:
        assert cls.summary(), cls.name
        assert "Before" in (__import__(cls.__module__, fromlist=["x"]).__doc__ or ""), cls.name
