"""Per-layer latency model: what each compute node of a model costs in onnxruntime.

A compute node (Conv, ConvTranspose, Gemm, MatMul with a constant weight) is summarised
by its *signature*: op, attributes, input shape at batch 1 and constant shapes. Each
distinct signature is timed once as a one-node model in onnxruntime (interleaved with
the others, 1 thread; kept in the per-shape latency cache of :mod:`onnxprune.latency`).
A model's latency is predicted as

    t(model) = T(original) · Σ t(model's signatures) / Σ t(original's signatures)

with T(original) the measured whole model: what the per-node times leave out (elementwise
ops, pooling, copies) is taken to shrink with the compute, and the ratio is robust to the
whole model and the one-node models being timed under different load. A candidate's gain
is the difference of the two sums (scaled by the same ratio), so rounded channel counts
and factored chains are priced at what onnxruntime really does with them, not at FLOPs. The budget search checks the
prediction against the measured whole model (``predicted vs measured`` in its stats).

The sweep (:mod:`onnxprune.sensitivity`) records every candidate's signatures; the auto
pass prices them with :func:`layer_times` / :class:`LayerTimes` and measures whole models
with :func:`measure_models`. The per-node times live in the one per-shape latency cache
of :mod:`onnxprune.latency` (:class:`~onnxprune.latency.LatencyCache`, same environment
key), as ``layer:<signature>`` entries beside the factorisation passes' dense-vs-factored
ones.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.context import PassContext
from onnxprune.errors import UsageError

log = logging.getLogger(__name__)

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _attr(a: onnx.AttributeProto) -> Any:
    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list):
        return [x.decode() if isinstance(x, bytes) else x for x in v]
    return v


def signatures(proto: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, dict[str, Any]]:
    """node name -> signature of every compute node with constant weights (batch-1 shapes)."""
    from onnxprune.shapes import concrete_input_shapes, infer_shapes, tensor_shapes, with_input_shapes

    shapes_in = {k: (1, *tuple(v)[1:]) for k, v in input_shapes.items()} or concrete_input_shapes(proto, batch=1)
    shapes = tensor_shapes(infer_shapes(with_input_shapes(proto, shapes_in)))
    inits = {t.name: t for t in proto.graph.initializer}
    shapes.update(_run_shapes(proto, shapes_in, shapes, inits))
    out: dict[str, dict[str, Any]] = {}
    for i, node in enumerate(proto.graph.node):
        if node.op_type not in COMPUTE_OPS or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        if node.input[1] not in inits:
            continue
        x = shapes.get(node.input[0])
        if x is None or not all(isinstance(d, int) and d > 0 for d in x):
            continue
        consts: list[list[Any] | None] = []
        for name in node.input[1:]:
            if not name:
                consts.append(None)
            elif name in inits:
                t = inits[name]
                consts.append([list(t.dims), int(t.data_type)])
            else:
                consts = []
                break
        if not consts:
            continue
        attrs = {a.name: _attr(a) for a in node.attribute}
        sig = {"op": node.op_type, "x": list(x), "consts": consts, "attrs": attrs}
        sig["key"] = hashlib.sha256(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:20]
        out[node.name or f"{node.op_type}#{i}"] = sig
    return out


def _concrete(shape: Any) -> bool:
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


def _run_shapes(proto: onnx.ModelProto, shapes_in: Mapping[str, tuple[int, ...]], shapes: Mapping[str, Any],
                inits: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Input shapes of compute nodes that ONNX inference left symbolic, from one real run.

    Exported transformers slice their position ids by a computed length, and ONNX shape
    inference loses every dim after that (MiniLM: ``unk__0 x 128 x 384``), which would
    leave the latency model and the low-rank candidates with nothing. One onnxruntime run
    on zeros at ``shapes_in`` reads the real shapes (a shape that depends on the input
    values is read at that zero input).
    """
    wanted = [n.input[0] for n in proto.graph.node
              if n.op_type in COMPUTE_OPS and len(n.input) >= 2 and n.input[1] in inits and n.input[0]
              and n.input[0] not in inits and not _concrete(shapes.get(n.input[0]))]
    graph_inputs = [i for i in proto.graph.input if i.name not in inits]
    if not wanted or not all(i.name in shapes_in for i in graph_inputs):
        return {}
    from onnxprune.activations import Tap

    try:
        feed = {i.name: np.zeros(shapes_in[i.name], helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
                for i in graph_inputs}
        got = Tap(proto, wanted).run(feed)
    except Exception as exc:  # the shapes stay unknown: those nodes are left out, as before
        log.info("signatures: shapes from a run failed: %s", exc)
        return {}
    return {k: tuple(int(d) for d in np.shape(v)) for k, v in got.items()}


def _node_model(sig: Mapping[str, Any], input_name: str, opset: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits, names = [], [input_name]
    for j, c in enumerate(sig["consts"]):
        if c is None:
            names.append("")
            continue
        dims, dt = c
        arr = rng.standard_normal(dims).astype(helper.tensor_dtype_to_np_dtype(dt))
        inits.append(numpy_helper.from_array(arr, f"c{j}"))
        names.append(f"c{j}")
    node = helper.make_node(sig["op"], names, ["y"], **sig["attrs"])
    graph = helper.make_graph([node], "layer", [helper.make_tensor_value_info(input_name, onnx.TensorProto.FLOAT, sig["x"])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = min(onnx.IR_VERSION, 8)
    return m


class LayerTimes:
    """Measured milliseconds per signature, kept in the per-shape latency cache."""

    def __init__(self, cache_path: Path | None, threads: int = 1, opset: int = 17, runs: int = 30) -> None:
        from onnxprune.latency import LatencyCache, environment_key

        self.cache = LatencyCache(cache_path)
        self.env = environment_key(threads)
        self.threads, self.opset, self.runs = threads, opset, runs
        self.measured = 0

    def times(self, sigs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        from onnxprune.runtime import make_session, measure_latency

        out: dict[str, float] = {}
        todo: dict[str, Mapping[str, Any]] = {}
        for s in sigs:
            hit = self.cache.get(self.env, "layer:" + s["key"])
            if hit is not None and "ms" in hit:
                out[s["key"]] = float(hit["ms"])
            else:
                todo[s["key"]] = s
        items = list(todo.items())
        for start in range(0, len(items), 16):  # sessions timed interleaved, a chunk at a time
            chunk = items[start:start + 16]
            sessions, feed = [], {}
            for j, (key, s) in enumerate(chunk):
                name = f"x{j}"
                try:
                    sessions.append(make_session(_node_model(s, name, self.opset), self.threads))
                except Exception as exc:  # an odd node: priced at 0 (the residual carries it)
                    log.info("cannot time %s node %s: %s", s["op"], key, exc)
                    out[key] = 0.0
                    sessions.append(None)
                    continue
                feed[name] = np.random.default_rng(j).standard_normal(s["x"]).astype(np.float32)
            ok = [(k, ss) for (k, _), ss in zip(chunk, sessions) if ss is not None]
            if not ok:
                continue
            res = measure_latency([ss for _, ss in ok], feed, warmup=3, runs=self.runs)
            for (key, _), r in zip(ok, res):
                out[key] = r["median_ms"]
                self.cache.store(self.env, "layer:" + key, {"ms": r["median_ms"], "op": todo[key]["op"],
                                                             "x": todo[key]["x"]})
                self.measured += 1
        return out

    def total(self, sigs: Mapping[str, Mapping[str, Any]]) -> float:
        t = self.times(list(sigs.values()))
        return float(sum(t[s["key"]] for s in sigs.values()))


def batch1_feed(ctx: PassContext) -> dict[str, np.ndarray]:
    """One calibration sample (batch 1): the latency the user feels.

    The representative one (:func:`onnxprune.padding.representative_sample`, in the batch
    ``ctx.feed()`` returns): for padded text the sample with the most real tokens, since
    timed on a 9-token sentence padded to 128 MiniLM's int8 speed-up read 2.2x against
    2.7x on 128 real tokens; for images the first."""
    from onnxprune.padding import representative_sample

    feed = ctx.feed()
    if feed is None or ctx.calib is None:
        raise UsageError("latency needs one input sample: give --data or --calib")
    row = representative_sample(ctx.calib)[1]
    return {k: (v[row:row + 1] if np.ndim(v) else v) for k, v in feed.items()}


def measure_models(models: Sequence[onnx.ModelProto], feed: Mapping[str, np.ndarray], *, threads: int = 1,
                   runs: int = 40, repeats: int = 1) -> list[list[float]]:
    """Median ms of each model, timed interleaved in one run; ``repeats`` runs, each listed."""
    from onnxprune.runtime import make_session, measure_latency

    sessions = [make_session(m, threads) for m in models]
    out: list[list[float]] = [[] for _ in models]
    for _ in range(repeats):
        for i, r in enumerate(measure_latency(sessions, feed, warmup=5, runs=runs)):
            out[i].append(r["median_ms"])
    return out


def layer_times(table: Mapping[str, Any], ctx: PassContext, *, runs: int = 30) -> tuple[dict[str, float], int]:
    """Measured ms of every signature the table names (cached), and how many were timed now."""
    # single-node models use opset 17: every op priced here has the same semantics there
    lt = LayerTimes(ctx.latency_cache_path(), threads=ctx.target.threads, runs=runs)
    times = lt.times(list(table["signatures"].values()))
    return times, lt.measured
