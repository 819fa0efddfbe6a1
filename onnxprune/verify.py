"""Structural verification run after every pass (and before anything is written).

Checks, in order: every tensor has one producer (and is not also an initializer or a
graph input), the graph is acyclic, graph inputs and outputs keep their names, element
types and shapes, ``onnx.checker`` (full check) passes, strict shape inference passes,
and onnxruntime builds a session. ``onnx.checker`` alone is not enough: it accepts
models onnxruntime refuses (a Conv bias of the wrong length, for one).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

from onnxprune.dag import build_dag, find_cycle, producers_of
from onnxprune.errors import VerificationError
from onnxprune.model import EXTERNAL_DATA_THRESHOLD, save_model


def _io_signature(values) -> dict[str, tuple]:
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
    """onnx.checker (full), strict shape inference, and an onnxruntime session.

    A full-check failure that the reference model shows too (an output whose shape no
    inference can find, say) is the input's property, not the pass's: then the plain
    checker is used instead.
    """
    big = model.ByteSize() >= EXTERNAL_DATA_THRESHOLD
    with tempfile.TemporaryDirectory(prefix="onnxprune-verify-") as tmp:
        path = Path(tmp) / "model.onnx"
        if big:
            save_model(model, path, external_data=True)
        try:
            onnx.checker.check_model(str(path) if big else model, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            if reference is None or big or _full_check_error(reference) != _first_line(exc):
                raise VerificationError(f"onnx.checker: {_first_line(exc)}") from exc
        try:
            if big:
                onnx.shape_inference.infer_shapes_path(str(path), str(Path(tmp) / "inferred.onnx"), check_type=True, strict_mode=True)
            else:
                onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
            raise VerificationError(f"shape inference: {_first_line(exc)}") from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            ort.InferenceSession(str(path) if big else model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise VerificationError(f"onnxruntime refuses the model: {_first_line(exc)}") from exc


def _full_check_error(model: onnx.ModelProto) -> str | None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        return _first_line(exc)
    return None


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


def make_verifier(reference: onnx.ModelProto):
    def _verify(model: onnx.ModelProto, pass_name: str, previous: list[str]) -> None:
        verify(model, reference, pass_name=pass_name, previous=previous)
    return _verify


