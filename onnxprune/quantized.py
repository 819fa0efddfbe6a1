"""Quantized graphs: recognising them, and preparing float graphs for onnxruntime's quantizer.

* :func:`quantized_ops` says whether a graph is already quantized and how: QDQ
  (QuantizeLinear / DequantizeLinear pairs) or operator-level integer ops (QLinearConv,
  ConvInteger, MatMulInteger, DynamicQuantizeLinear, com.microsoft's QGemm ...). The
  :class:`~onnxprune.manager.PassManager` asks it before every pass that does not accept
  quantized graphs, so a structural pass after ``quantize`` refuses with one line instead
  of editing float weights that are no longer there.
* :func:`prepare_for_quantization` is everything ``onnxruntime.quantization`` leaves to
  its user: initializers listed as graph inputs (IR < 4) removed from the inputs, the
  default opset raised to at least 13 with ``onnx.version_converter`` (QDQ with per-channel
  axes needs 13; onnxruntime writes invalid models below it), and the conversion checked
  by running both graphs on one batch.
* :func:`adopt` puts a proto that onnxruntime wrote back into a :class:`Model`, opsets and
  IR version included (``Model.reset`` replaces the graph only).
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.errors import ModelError, UnsupportedError
from onnxprune.model import Model

log = logging.getLogger(__name__)

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
#: operator-level quantized ops (ai.onnx and com.microsoft).
INTEGER_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm", "QAttention", "QEmbedLayerNormalization",
    "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearAveragePool",
    "QLinearGlobalAveragePool", "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere", "QLinearConvTranspose",
    "DynamicQuantizeLSTM", "MatMulNBits", "MatMulBnb4", "GatherBlockQuantized", "QOrderedMatMul",
})

#: the opset QDQ needs (per-channel QuantizeLinear/DequantizeLinear with an axis).
QDQ_MIN_OPSET = 13


def _op_types(nodes: Iterable[gs.Node | onnx.NodeProto]) -> Counter[str]:
    return Counter(n.op if isinstance(n, gs.Node) else n.op_type for n in nodes)


def quantized_ops(graph: gs.Graph | onnx.ModelProto | onnx.GraphProto) -> str | None:
    """None for a float graph, else one phrase naming what was found, e.g.
    ``'QDQ (12 QuantizeLinear, 40 DequantizeLinear)'`` or ``'QLinear ops (52 QLinearConv)'``."""
    if isinstance(graph, onnx.ModelProto):
        graph = graph.graph
    counts = _op_types(graph.nodes if isinstance(graph, gs.Graph) else graph.node)
    integer = {op: n for op, n in counts.items() if op in INTEGER_OPS}
    qdq = {op: n for op, n in counts.items() if op in QDQ_OPS}
    parts = []
    if integer:
        parts.append("QLinear ops (" + ", ".join(f"{n} {op}" for op, n in sorted(integer.items())) + ")")
    if qdq:
        parts.append("QDQ (" + ", ".join(f"{n} {op}" for op, n in sorted(qdq.items())) + ")")
    return " and ".join(parts) or None


def refuse_if_quantized(model: Model, pass_name: str, after: str = "") -> None:
    """The PassManager's hook: raise UnsupportedError (one line) when ``model`` is quantized."""
    found = quantized_ops(model.graph)
    if found:
        raise UnsupportedError(f"pass {pass_name!r}{after} cannot edit a quantized graph: found {found}; "
                               "run it before quantize")


def default_opset(proto: onnx.ModelProto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ModelError("model imports no default-domain opset")


def drop_initializer_inputs(proto: onnx.ModelProto) -> int:
    """Remove graph inputs that are also initializers (IR < 4 habit), in place; raise the IR
    version to 4 when needed. Returns how many were removed."""
    init = {t.name for t in proto.graph.initializer}
    keep = [i for i in proto.graph.input if i.name not in init]
    removed = len(proto.graph.input) - len(keep)
    if removed:
        del proto.graph.input[:]
        proto.graph.input.extend(keep)
    if proto.ir_version < 4:
        proto.ir_version = 4
    return removed


def upgrade_opset(proto: onnx.ModelProto, target: int = QDQ_MIN_OPSET,
                  feed: Mapping[str, np.ndarray] | None = None, *, threads: int = 1) -> onnx.ModelProto:
    """``proto`` converted to default opset ``target`` (unchanged when already there).

    The conversion is checked: the full checker must pass and, given ``feed``, both graphs'
    outputs must agree (relative 1e-4); otherwise UnsupportedError, with the converter's
    reason in one line.
    """
    opset = default_opset(proto)
    if opset >= target:
        return proto
    try:
        converted = onnx.version_converter.convert_version(proto, target)
        converted.ir_version = max(converted.ir_version, _min_ir(converted))
        onnx.checker.check_model(converted, full_check=True)
    except Exception as exc:  # the converter raises RuntimeError, ValidationError, IndexError ...
        raise UnsupportedError(f"cannot convert opset {opset} to {target} for quantization: "
                               f"{_first_line(exc)}") from exc
    if feed is not None:
        from onnxprune.runtime import make_session

        a = make_session(proto, threads).run(None, dict(feed))
        b = make_session(converted, threads).run(None, dict(feed))
        for x, y in zip(a, b):
            x64, y64 = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
            if x64.shape != y64.shape or not np.allclose(x64, y64, rtol=1e-4, atol=1e-4 * (np.abs(x64).max() + 1e-12)):
                raise UnsupportedError(f"opset {opset} -> {target} conversion changed the model's outputs; "
                                       "convert the model to opset 13 yourself")
    log.info("converted opset %d -> %d for quantization", opset, target)
    return converted


def _min_ir(proto: onnx.ModelProto) -> int:
    try:
        return int(onnx.helper.find_min_ir_version_for(list(proto.opset_import), True))
    except Exception:  # an opset onnx does not know: keep what the converter wrote
        return int(proto.ir_version)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).strip().split("\n")[0].split())
    return (text or type(exc).__name__)[:300]


def prepare_for_quantization(proto: onnx.ModelProto, feed: Mapping[str, np.ndarray] | None = None, *,
                             min_opset: int = QDQ_MIN_OPSET, threads: int = 1) -> tuple[onnx.ModelProto, dict[str, object]]:
    """A copy of ``proto`` ready for ``onnxruntime.quantization``, and what was done to it."""
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    steps: dict[str, object] = {}
    removed = drop_initializer_inputs(work)
    if removed:
        steps["initializer_inputs_removed"] = removed
    flattened = flatten_bias_adds(work)
    if flattened:
        steps["bias_adds_flattened"] = flattened
    opset = default_opset(work)
    work = upgrade_opset(work, min_opset, feed, threads=threads)
    if default_opset(work) != opset:
        steps["opset"] = [opset, default_opset(work)]
    return work, steps


def flatten_bias_adds(proto: onnx.ModelProto) -> int:
    """``Add(MatMul(x, W), B[1, N])`` → ``Add(MatMul(x, W), B[N])``, in place; returns how many.

    Broadcasting makes the two equal whenever the MatMul output has rank ≥ 2 (always, for a
    MatMul with a 2-D weight). onnxruntime's QDQ quantizer treats such an Add as a bias
    and quantizes a [1, N] bias per axis with a scale it then cannot broadcast (a model that
    fails at run time), so the bias is given the 1-D shape it has in meaning.
    """
    from onnx import numpy_helper

    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    readers: Counter[str] = Counter(i for n in g.node for i in n.input)
    done = 0
    for node in g.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        for k in (0, 1):
            b, other = node.input[k], node.input[1 - k]
            t = inits.get(b)
            src = producers.get(other)
            if t is None or src is None or src.op_type not in ("MatMul", "Gemm") or readers[b] != 1:
                continue
            dims = list(t.dims)
            if len(dims) < 2 or any(d != 1 for d in dims[:-1]):
                continue
            w = inits.get(src.input[1]) if len(src.input) > 1 else None
            if src.op_type == "MatMul" and (w is None or len(w.dims) != 2):
                continue
            arr = numpy_helper.to_array(t).reshape(dims[-1])
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
            done += 1
    return done


def adopt(model: Model, proto: onnx.ModelProto) -> None:
    """Make ``proto`` (a graph rewritten outside onnxprune, by onnxruntime's tools) the
    model's graph, with its opset imports and IR version, which ``Model.reset`` keeps from
    the original and a quantized or converted graph needs."""
    model.reset(proto)
    meta = model._meta  # noqa: SLF001 -- the one metadata a foreign rewrite changes
    del meta.opset_import[:]
    meta.opset_import.extend(proto.opset_import)
    meta.ir_version = proto.ir_version


#: producers whose int8 kernel in onnxruntime needs the QuantizeLinear on its output (a
#: DequantizeLinear → Conv without it runs as a float conv): their graph outputs stay quantized.
NEEDS_OUTPUT_Q = frozenset({"Conv", "ConvTranspose"})


def float_graph_outputs(proto: onnx.ModelProto) -> list[str]:
    """Remove the QuantizeLinear → DequantizeLinear pair that onnxruntime's QDQ quantizer puts
    on a graph output, so that the model's consumer reads the producer's float result; in
    place; returns the outputs freed.

    Why: the pair rounds the final result to 8 bits (for a classifier, the logits) and buys
    no speed: it is the last op, and onnxruntime runs the DequantizeLinear → Gemm head as an
    int8 Gemm with float output. Measured on mobilenetv2 it is a wash on top-1 (one image
    either way, passes/quantize.py). Kept after Conv/ConvTranspose (:data:`NEEDS_OUTPUT_Q`),
    and wherever the quantized value has another reader."""
    g = proto.graph
    producer = {o: n for n in g.node for o in n.output}
    readers: Counter[str] = Counter(i for n in g.node for i in n.input)
    drop: set[int] = set()
    freed: list[str] = []
    for out in g.output:
        dq = producer.get(out.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or readers[dq.input[0]] != 1 or readers[out.name]:
            continue
        src = producer.get(q.input[0])
        if src is None or src.op_type in NEEDS_OUTPUT_Q or readers[q.input[0]] != 1:
            continue
        if any(o.name == q.input[0] for o in g.output):
            continue
        drop.update((id(q), id(dq)))
        old = q.input[0]
        src.output[list(src.output).index(old)] = out.name
        stale = [v for v in g.value_info if v.name == old]
        for v in stale:
            g.value_info.remove(v)
        freed.append(out.name)
    if drop:
        keep = [n for n in g.node if id(n) not in drop]
        del g.node[:]
        g.node.extend(keep)
    return freed
