"""Structural verification run after every pass (and before anything is written).

Checks, in order: every tensor has one producer (and is not also an initializer or a
graph input), the graph is acyclic, graph inputs and outputs keep their names, element
types and shapes, ``onnx.checker`` (full check, which includes strict shape inference
with type checks: no second inference is run) passes, and onnxruntime builds a session
and (below :data:`onnxprune.runtime.FILE_SESSION_BYTES`, for memory) runs it once on
dummy inputs (some errors show only when a node runs).
``onnx.checker`` alone is not enough: it accepts models onnxruntime refuses (a Conv bias
of the wrong length, for one).

Nothing here serialises a big model: the checker runs on a skeleton
(:func:`onnxprune.model.check_model`) and the session is built by
:func:`onnxprune.runtime.make_session`, which hands big models over as a file.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

import onnx

from onnxprune.dag import build_dag, find_cycle, producers_of
from onnxprune.errors import OnnxPruneError, VerificationError
from onnxprune.model import check_model

log = logging.getLogger(__name__)


def _io_signature(values: Iterable[onnx.ValueInfoProto]) -> dict[str, tuple[Any, ...]]:
    sig = {}
    for v in values:
        tt = v.type.tensor_type
        dims = tuple(d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)
                     for d in tt.shape.dim) if tt.HasField("shape") else None
        sig[v.name] = (tt.elem_type, dims)
    return sig


def check_structure(model: onnx.ModelProto, reference: onnx.ModelProto | None = None) -> None:
    g = model.graph
    init = {t.name for t in g.initializer}
    inputs = {i.name for i in g.input}
    for name, nodes in producers_of(g).items():
        if len(nodes) > 1:
            raise VerificationError(f"tensor {name} has {len(nodes)} producers: {', '.join(nodes)}")
        if name in init or name in inputs:
            raise VerificationError(f"tensor {name} is written by {nodes[0]} but is also a graph input or initializer")
    cycle = find_cycle(build_dag(g))
    if cycle:
        raise VerificationError(f"graph has a cycle through {' -> '.join(cycle)}")
    if reference is not None:
        ref_in = {k: v for k, v in _io_signature(reference.graph.input).items()
                  if k not in {t.name for t in reference.graph.initializer}}
        got_in = {k: v for k, v in _io_signature(g.input).items() if k not in init}
        if ref_in != got_in:
            raise VerificationError(f"graph inputs changed: {ref_in} -> {got_in}")
        ref_out = _io_signature(reference.graph.output)
        got_out = _io_signature(g.output)
        if list(ref_out) != list(got_out):
            raise VerificationError(f"graph outputs changed: {list(ref_out)} -> {list(got_out)}")
        for name, (etype, dims) in ref_out.items():
            getype, gdims = got_out[name]
            if etype != getype or (dims is not None and gdims != dims):
                raise VerificationError(f"output {name} changed from {etype}{list(dims or [])} to {getype}{list(gdims or [])}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def check_runtime(model: onnx.ModelProto, reference: onnx.ModelProto | None = None) -> None:
    """onnx.checker (full, with strict shape inference) and an onnxruntime session.

    When the reference model (the input) fails the full check itself (an output declared
    with a shape inference contradicts, a BatchNormalization in training mode whose
    outputs onnx types differently from the exporter, ...), that is the input's property,
    not the pass's: the full check's verdict on a pass's output then says nothing about
    the pass (the message moves from node to node as passes rewrite them), so the plain
    checker and the onnxruntime run below are the evidence.
    """
    try:
        check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        input_error = _full_check_error(reference) if reference is not None else None
        if input_error is None:
            raise VerificationError(f"onnx.checker: {_first_line(exc)}") from exc
        log.warning("the input model fails onnx's full check itself (%s); verifying with the plain checker "
                    "and onnxruntime", input_error)
        try:
            check_model(model)
        except onnx.checker.ValidationError as exc2:
            raise VerificationError(f"onnx.checker: {_first_line(exc2)}") from exc2
    from onnxprune.runtime import make_session

    try:
        session = make_session(model, optimize=False)
    except OnnxPruneError as exc:
        raise VerificationError(f"onnxruntime refuses the model: {_first_line(exc)}") from exc
    # Building a session is not enough: onnxruntime checks a Conv bias's length, say, only
    # when it runs the node. One run on dummy inputs (ones, symbolic dims 1) catches those;
    # a failure the reference shows on the same inputs is the input's, not the pass's.
    # Not for models past runtime.FILE_SESSION_BYTES: the run pages in every weight once
    # more beside the input and the export (over the 3x-the-model memory budget).
    from onnxprune.runtime import FILE_SESSION_BYTES
    from onnxprune.shapes import proto_size

    if proto_size(model) >= FILE_SESSION_BYTES:
        return
    feeds = _dummy_feeds(model)
    if feeds is None:
        return
    try:
        session.run(None, feeds)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        if reference is not None and not _runs(reference, feeds):
            return
        raise VerificationError(f"onnxruntime cannot run the model: {_first_line(exc)}") from exc


def _dummy_feeds(model: onnx.ModelProto) -> dict[str, Any] | None:
    from onnxprune.shapes import concrete_input_shapes, dummy_feeds

    try:
        shapes = concrete_input_shapes(model)
        if len(shapes) != len([i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]):
            return None  # an input of unknown rank: no dummy value for it
        return dummy_feeds(model, shapes)
    except OnnxPruneError:
        return None


def _runs(model: onnx.ModelProto, feeds: dict[str, Any]) -> bool:
    from onnxprune.runtime import make_session

    try:
        make_session(model, optimize=False).run(None, feeds)
    except Exception:  # onnxruntime raises its own untyped errors
        return False
    return True


_INPUT_CHECKS: dict[tuple[int, int], str | None] = {}


def _full_check_error(model: onnx.ModelProto) -> str | None:
    """The input's own full-check error, computed once per input model."""
    from onnxprune.shapes import proto_size

    key = (id(model), proto_size(model))
    if key not in _INPUT_CHECKS:
        try:
            check_model(model, full_check=True)
            _INPUT_CHECKS[key] = None
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            _INPUT_CHECKS[key] = _first_line(exc)
        while len(_INPUT_CHECKS) > 64:
            _INPUT_CHECKS.pop(next(iter(_INPUT_CHECKS)))
    return _INPUT_CHECKS[key]


def verify(model: onnx.ModelProto, reference: onnx.ModelProto | None = None, *, pass_name: str | None = None,
           previous: list[str] | None = None) -> None:
    """Raise VerificationError naming the pass (and those before it) when an invariant breaks."""
    try:
        check_structure(model, reference)
        check_runtime(model, reference)
    except VerificationError as exc:
        if pass_name is None:
            raise
        before = f" (after {', '.join(previous)})" if previous else ""
        raise VerificationError(f"pass {pass_name!r}{before} broke the graph: {exc}") from exc


def make_verifier(reference: onnx.ModelProto) -> Callable[[onnx.ModelProto, str, list[str]], None]:
    def _verify(model: onnx.ModelProto, pass_name: str, previous: list[str]) -> None:
        verify(model, reference, pass_name=pass_name, previous=previous)
    return _verify


