"""What the factorisation passes (tucker, cp, spatial-svd, lowrank, diagonal) share.

* **Options** every one of them takes (:class:`LayerOptions`, :class:`ConvOptions`):
  which layers (``layers=`` / ``exclude=`` glob patterns on node names, ``min-params=``
  on the weight's size), whether to keep only rewrites that are cheaper
  (``only-cheaper``) and not slower in onnxruntime (``check-latency``, with the cache
  file and thread count of :mod:`onnxprune.latency`).
* **Reading a layer**: its constant weight and bias, a concrete input shape, the conv
  geometry and how it splits into a vertical (``kh x 1``) and a horizontal (``1 x kw``)
  conv. Symbolic dims are made concrete for costing and timing: the first (batch) dim
  is 1, any other :data:`NOMINAL_DIM`; the layer's stats record the shape used.
* **The ledger** (:class:`Ledger`): one record per candidate layer (name, ranks,
  params and FLOPs before/after, relative weight error, latency, skipped + reason),
  the worthwhile rule (FLOPs *and* params must drop; then the factored chain must be
  faster in onnxruntime), and emitting a chain into the graph in place of the node.

A replacement is described once, as a :data:`onnxprune.latency.Chain`; the same
description is costed, timed (as a tiny model) and emitted (as graph nodes), so what is
measured is what is written.
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import fnmatch
import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune import ir
from onnxprune.api import run_passes
from onnxprune.context import PassContext
from onnxprune.cost import model_cost
from onnxprune.decomp import rank_by_energy, rank_by_fraction
from onnxprune.errors import UsageError
from onnxprune.latency import INPUT, Chain, Const, LatencyCache, Step, WeightMode, chain_model, compare
from onnxprune.manager import Pass, PassResult, check_range
from onnxprune.model import Model

log = logging.getLogger(__name__)

# Stand-in for a symbolic dim other than the batch when costing and timing a layer.
NOMINAL_DIM = 32
OUTPUT = "y"


class Skip(Exception):
    """This layer is not rewritten; the message says why."""


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class LayerOptions:
    """Options shared by every factorisation pass (see the module docstring).

    layers: only nodes whose name matches one of these glob patterns ('|'-separated)
    exclude: skip nodes whose name matches one of these glob patterns
    min-params: skip weights with fewer elements than this
    only-cheaper: rewrite a layer only when its FLOPs and params both drop
    check-latency: rewrite a layer only when the factored chain is faster in onnxruntime (timed once per shape)
    latency-cache: JSON file of per-shape timings (default: the context's cache dir, else this run only)
    latency-threads: onnxruntime threads for the per-layer timing (default: the target's)
    """

    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_params: int = 0
    only_cheaper: bool = True
    check_latency: bool = True
    latency_cache: str | None = None
    latency_threads: int = 1

    pass_name: ClassVar[str] = "factorise"

    def __post_init__(self) -> None:
        for name in ("layers", "exclude"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if isinstance(self.min_params, bool) or int(self.min_params) != self.min_params or self.min_params < 0:
            raise UsageError(f"pass {self.pass_name}: min-params must be a non-negative integer, got {self.min_params!r}")
        if isinstance(self.latency_threads, bool) or int(self.latency_threads) != self.latency_threads \
                or self.latency_threads < 1:
            raise UsageError(f"pass {self.pass_name}: latency-threads must be a positive integer, got {self.latency_threads!r}")


@dataclass(frozen=True)
class ConvOptions(LayerOptions):
    """Plus ``include-1x1``: 1x1 convs are left alone unless asked.

    include-1x1: also decompose 1x1 convolutions
    """

    include_1x1: bool = False


class RankKind(str, enum.Enum):
    """How a matrix pass picks its rank: a fixed ``rank``, a ``fraction`` of the full rank,
    or the ``energy`` share of squared singular values to keep."""

    RANK = "rank"
    FRACTION = "fraction"
    ENERGY = "energy"


def matrix_rank_rule(pass_name: str, rank: int | None, fraction: float | None, energy: float | None,
                     default: tuple[RankKind, float]) -> tuple[RankKind, float]:
    """At most one of ``rank`` / ``fraction`` / ``energy``; none given means ``default``."""
    given = [(k, v) for k, v in ((RankKind.RANK, rank), (RankKind.FRACTION, fraction), (RankKind.ENERGY, energy))
             if v is not None]
    if len(given) > 1:
        raise UsageError(f"pass {pass_name}: give at most one of rank, fraction, energy "
                         f"(got {', '.join(k.value for k, _ in given)})")
    if not given:
        return default
    kind, value = given[0]
    if kind is RankKind.RANK:
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise UsageError(f"pass {pass_name}: rank must be a positive integer, got {value!r}")
    else:
        check_range(pass_name, kind.value, value, 0.0, 1.0, lo_open=True)
    return kind, value


def pick_rank(rule: tuple[RankKind, float], full: int, singular_values: np.ndarray | None = None) -> int:
    """The rank a rule from :func:`matrix_rank_rule` gives for a matrix of rank ``full``.

    A fixed ``rank`` is clamped to ``full`` (the cost rule then decides); ``energy``
    needs the singular values.
    """
    kind, value = rule
    if kind is RankKind.RANK:
        return min(int(value), full)
    if kind is RankKind.FRACTION:
        return rank_by_fraction(full, value)
    if singular_values is None:
        raise ValueError("the energy rule needs the singular values")
    return min(rank_by_energy(singular_values, value), full)


# --------------------------------------------------------------------------- layers


@dataclass
class Layer:
    """A candidate layer: its node, constant weight and bias, the concrete input shape used
    for costing and timing, and the node itself as a one-step chain (the dense reference)."""

    node: gs.Node
    weight: np.ndarray
    bias: np.ndarray | None
    x_shape: list[int]
    dense: Chain

    @property
    def dtype(self) -> np.dtype:
        return self.weight.dtype


@dataclass(frozen=True)
class ConvGeometry:
    """A 2-D Conv's attributes with defaults filled in."""

    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    dilations: tuple[int, int]
    auto_pad: str
    group: int

    @classmethod
    def of(cls, node: gs.Node, weight: np.ndarray) -> ConvGeometry:
        a = node.attrs
        auto_pad = a.get("auto_pad", "NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        return cls(
            kernel=(int(weight.shape[2]), int(weight.shape[3])),
            strides=tuple(int(v) for v in a.get("strides", (1, 1))),  # type: ignore[arg-type]
            pads=tuple(int(v) for v in a.get("pads", (0, 0, 0, 0))),  # type: ignore[arg-type]
            dilations=tuple(int(v) for v in a.get("dilations", (1, 1))),  # type: ignore[arg-type]
            auto_pad=auto_pad,
            group=int(a.get("group", 1)),
        )

    def _attrs(self, kernel: Sequence[int], strides: Sequence[int], pads: Sequence[int],
               dilations: Sequence[int], group: int) -> dict[str, Any]:
        attrs: dict[str, Any] = {"kernel_shape": list(kernel), "strides": list(strides), "dilations": list(dilations)}
        # ONNX forbids pads together with an auto_pad other than NOTSET.
        if self.auto_pad == "NOTSET":
            attrs["pads"] = list(pads)
        else:
            attrs["auto_pad"] = self.auto_pad
        if group != 1:
            attrs["group"] = group
        return attrs

    def full(self) -> dict[str, Any]:
        """The whole kh x kw geometry (Tucker's core conv)."""
        return self._attrs(self.kernel, self.strides, self.pads, self.dilations, 1)

    def vertical(self, group: int = 1) -> dict[str, Any]:
        """``kh x 1``: the H stride, H pads and H dilation; W untouched.

        ``auto_pad`` SAME_*/VALID carry over as they are: ONNX computes the padding of
        each spatial axis from that axis alone, and on the W axis a 1-wide kernel with
        stride 1 pads nothing.
        """
        (kh, _), (sh, _), (pt, _, pb, _), (dh, _) = self.kernel, self.strides, self.pads, self.dilations
        return self._attrs((kh, 1), (sh, 1), (pt, 0, pb, 0), (dh, 1), group)

    def horizontal(self, group: int = 1) -> dict[str, Any]:
        """``1 x kw``: the W stride, W pads and W dilation; H untouched."""
        (_, kw), (_, sw), (_, pl, _, pr), (_, dw) = self.kernel, self.strides, self.pads, self.dilations
        return self._attrs((1, kw), (1, sw), (0, pl, 0, pr), (1, dw), group)


@dataclass
class ConvLayer(Layer):
    geometry: ConvGeometry | None = None

    @property
    def geom(self) -> ConvGeometry:
        assert self.geometry is not None
        return self.geometry


def shaped(shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """A zero array of ``shape`` that takes no memory: stands in for factors not yet computed
    (costing a chain needs only its shapes)."""
    return np.broadcast_to(np.zeros((), dtype=dtype), tuple(int(d) for d in shape))


def _constant(node: gs.Node, index: int, what: str) -> np.ndarray | None:
    if index >= len(node.inputs) or not node.inputs[index].name:
        return None
    value = ir.constant_value(node.inputs[index])
    if value is None:
        raise Skip(f"{what} is not a constant")
    if value.dtype.kind != "f":
        raise Skip(f"{what} is not floating point ({value.dtype})")
    return value


def concrete_shape(tensor: gs.Tensor, fallback: Sequence[int | None], fixed: dict[int, int]) -> list[int]:
    """Numbers for ``tensor``'s shape: a symbolic first dim is 1, other symbolic dims
    :data:`NOMINAL_DIM`, except the axes in ``fixed`` (axis -> size, the channel or
    feature axis the weight dictates); an unknown shape takes ``fallback``."""
    shape = list(tensor.shape) if tensor.shape is not None else list(fallback)
    rank = len(shape)
    out = [d if isinstance(d, int) and d > 0 else (1 if i == 0 else NOMINAL_DIM) for i, d in enumerate(shape)]
    for axis, size in fixed.items():
        dim = shape[axis] if -rank <= axis < rank else None
        if -rank <= axis < rank and not (isinstance(dim, int) and dim > 0):
            out[axis] = size
    return out


def conv_layer(ledger: Ledger, node: gs.Node, include_1x1: bool) -> ConvLayer:
    """Read a Conv candidate, or Skip: 2-D, group 1, constant weight and bias, not 1x1
    unless ``include_1x1``."""
    ledger.match(node)
    w = _constant(node, 1, "weight")
    if w is None:
        raise Skip("no weight")
    if w.ndim != 4:
        raise Skip(f"{w.ndim - 2}-D convolution: only 2-D convolutions are decomposed")
    geom = ConvGeometry.of(node, w)
    cin = w.shape[1] * geom.group
    if geom.group > 1 and w.shape[1] == 1 and geom.group == cin:
        raise Skip("depthwise conv: not decomposed")
    if geom.group > 1:
        raise Skip(f"grouped conv (group={geom.group}): only group=1 is decomposed")
    if geom.kernel == (1, 1) and not include_1x1:
        raise Skip("1x1 conv: set include-1x1 to decompose it")
    b = _constant(node, 2, "bias")
    x_shape = ledger.input_shape(node.inputs[0], [None, cin, None, None], {1: cin})
    dense = [Step(node.name, "Conv", _dense_inputs(w, b), OUTPUT, dict(node.attrs))]
    layer = ConvLayer(node, w, b, x_shape, dense, geom)
    ledger.select(layer)
    return layer


def _dense_inputs(w: np.ndarray, b: np.ndarray | None) -> tuple[str | Const, ...]:
    return (INPUT, Const("W", w)) + ((Const("B", b),) if b is not None else ())


def matrix_layer(ledger: Ledger, node: gs.Node) -> Layer:
    """Read a MatMul/Gemm candidate as ``y = x @ W (+ bias)`` with ``W [K, N]``, or Skip.

    Gemm: ``W = alpha * (B^T if transB else B)``, ``bias = beta * C``; transA=1 is skipped.
    MatMul: the weight must be the second operand, a constant 2-D matrix.
    """
    ledger.match(node)
    if node.op == "Gemm":
        if int(node.attrs.get("transA", 0)):
            raise Skip("Gemm with transA=1 is not decomposed")
        b = _constant(node, 1, "weight (B)")
        if b is None or b.ndim != 2:
            raise Skip("weight (B) is not a 2-D matrix")
        alpha = float(node.attrs.get("alpha", 1.0))
        beta = float(node.attrs.get("beta", 1.0))
        w = (b.T if int(node.attrs.get("transB", 0)) else b).astype(np.float64) * alpha
        c = _constant(node, 2, "bias (C)")
        bias = None if c is None else (c.astype(np.float64) * beta).astype(b.dtype)
        weight = w.astype(b.dtype)
        x_shape = ledger.input_shape(node.inputs[0], [None, weight.shape[0]], {-1: weight.shape[0]})
        dense_inputs = (INPUT, Const("B", b)) + ((Const("C", c),) if c is not None else ())
    else:
        weight = _constant(node, 1, "weight (second operand)")
        if weight is None:
            raise Skip("no weight")
        if weight.ndim != 2:
            raise Skip(f"weight is {weight.ndim}-D: only 2-D weights are decomposed")
        bias = None
        x_shape = ledger.input_shape(node.inputs[0], [NOMINAL_DIM, weight.shape[0]], {-1: weight.shape[0]})
        dense_inputs = (INPUT, Const("B", weight))
    if len(x_shape) < 1 or x_shape[-1] != weight.shape[0]:
        raise Skip(f"input shape {x_shape} does not match the weight {list(weight.shape)}")
    dense = [Step(node.name, node.op, dense_inputs, OUTPUT, dict(node.attrs))]
    layer = Layer(node, weight, bias, x_shape, dense)
    ledger.select(layer)
    return layer


# --------------------------------------------------------------------------- the ledger


@dataclass
class LayerRecord:
    """One candidate layer's line in the pass's stats."""

    name: str
    op: str
    skipped: bool = True
    reason: str | None = None
    weight_shape: list[int] | None = None
    input_shape: list[int] | None = None
    ranks: dict[str, int] | None = None
    params_before: int | None = None
    params_after: int | None = None
    flops_before: int | None = None
    flops_after: int | None = None
    relative_error: float | None = None
    latency: dict[str, Any] | None = None
    #: pass-specific figures (whitened low rank: output energy kept, output error on calibration data).
    extra: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "extra"}
        out.update(self.extra or {})
        if self.params_before and self.params_after is not None:
            out["params_reduction"] = round(1.0 - self.params_after / self.params_before, 4)
        if self.flops_before and self.flops_after is not None:
            out["flops_reduction"] = round(1.0 - self.flops_after / self.flops_before, 4)
        if self.relative_error is not None:
            out["relative_error"] = round(self.relative_error, 6)
        return out


def chain_cost(chain: Chain, x_shape: Sequence[int], dtype: np.dtype, opset: int) -> tuple[int, int]:
    """``(params, flops)`` of a chain at ``x_shape``: params are its float constants'
    elements, FLOPs as :mod:`onnxprune.cost` counts them."""
    params = sum(int(np.asarray(c.value).size) for s in chain for c in s.inputs
                 if isinstance(c, Const) and np.asarray(c.value).dtype.kind == "f")
    cost = model_cost(chain_model(chain, x_shape, dtype=dtype, opset=opset, weights=WeightMode.INPUTS), runtime_fallback=False)
    if cost.unknown_shape_nodes:
        raise Skip(f"cannot cost the layer at input shape {list(x_shape)}")
    return params, cost.flops


class Ledger:
    """Per-pass bookkeeping and the shared steps of every layer rewrite (see module docstring)."""

    def __init__(self, model: Model, options: LayerOptions, ctx: PassContext | None = None) -> None:
        self.model = model
        self.graph: gs.Graph = model.graph
        self.options = options
        self.ctx = ctx if ctx is not None else PassContext()
        self.opset = model.opset
        # The cache file is the option's, else the context's; with neither, timings are kept for this run only.
        path = options.latency_cache or self.ctx.latency_cache_path()
        self.cache = LatencyCache(path) if options.check_latency else None
        self.threads = options.latency_threads if options.latency_threads != 1 else self.ctx.target.threads
        self.records: list[LayerRecord] = []
        self._current: LayerRecord | None = None
        self._runtime_shapes: dict[str, tuple[int, ...]] | None = None

    def input_shape(self, tensor: gs.Tensor, fallback: Sequence[int | None], fixed: dict[int, int]) -> list[int]:
        """The concrete shape a layer's input has when the model runs (see :func:`concrete_shape`).

        A shape that shape inference could not tell (after Shape -> Reshape, say), or any
        symbolic shape when the context names the input shapes, is read off one
        onnxruntime run at the context's input shapes (batch 1, other symbolic dims
        :data:`NOMINAL_DIM`), so that a classifier head is costed and timed at batch 1 and
        not at a made-up M. When that run fails, the nominal rule stands.
        """
        shape = tensor.shape
        known = shape is not None and all(isinstance(d, int) and d > 0 for d in shape)
        if not known and (shape is None or self.ctx.input_shapes):
            got = self.runtime_shapes().get(tensor.name)
            if got is not None and all(d > 0 for d in got):
                return [int(d) for d in got]
        return concrete_shape(tensor, fallback, fixed)

    def runtime_shapes(self) -> dict[str, tuple[int, ...]]:
        if self._runtime_shapes is None:
            from onnxprune.shapes import dummy_feeds, runtime_shapes

            self._runtime_shapes = {}
            try:
                proto = self.model.to_onnx()
                params = {d for i in proto.graph.input for d in
                          (x.dim_param for x in i.type.tensor_type.shape.dim[1:]) if d}
                feeds = dummy_feeds(proto, dict(self.ctx.input_shapes)) if self.ctx.input_shapes else None
                self._runtime_shapes = runtime_shapes(proto, feeds, dims={p: NOMINAL_DIM for p in params})
            except Exception as exc:  # a model onnxruntime cannot run here keeps the nominal shapes
                log.info("runtime shapes unavailable (%s); nominal shapes are used", exc)
        return self._runtime_shapes

    def candidates(self, ops: Sequence[str]) -> list[gs.Node]:
        return [n for n in list(self.graph.nodes) if n.op in ops and not n.domain]

    @contextlib.contextmanager
    def layer(self, node: gs.Node) -> Iterator[LayerRecord]:
        """Record one candidate; a :class:`Skip` raised inside ends it with the reason."""
        record = self._current = LayerRecord(node.name, node.op)
        try:
            yield record
        except Skip as why:
            record.skipped = True
            record.reason = str(why)
        self.records.append(record)

    def match(self, node: gs.Node) -> None:
        """The name rules (``layers=``, ``exclude=``), checked before anything is read."""
        o = self.options
        if o.layers and not any(fnmatch.fnmatchcase(node.name, p) for p in o.layers):
            raise Skip("not matched by layers=")
        if any(fnmatch.fnmatchcase(node.name, p) for p in o.exclude):
            raise Skip("matched by exclude=")
        if not isinstance(node.inputs[0], gs.Variable):
            raise Skip("data input is a constant")

    def select(self, layer: Layer) -> None:
        """The size and sharing rules, once the weight is known."""
        if self._current is not None:
            self._current.weight_shape = [int(d) for d in layer.weight.shape]
            self._current.input_shape = list(layer.x_shape)
        if layer.weight.size < self.options.min_params:
            raise Skip(f"weight has {layer.weight.size} elements, fewer than min-params={self.options.min_params}")
        w_in = layer.node.inputs[1]
        if ir.readers_elsewhere(self.graph, w_in, layer.node):
            raise Skip("weight is shared with other nodes: replacing it here would not shrink the model")

    def require_cheaper(self, rec: LayerRecord, layer: Layer, factored: Chain) -> None:
        """Fill params/FLOPs before and after; Skip unless both drop (when only-cheaper)."""
        rec.params_before, rec.flops_before = chain_cost(layer.dense, layer.x_shape, layer.dtype, self.opset)
        rec.params_after, rec.flops_after = chain_cost(factored, layer.x_shape, layer.dtype, self.opset)
        if self.options.only_cheaper and not (rec.params_after < rec.params_before and rec.flops_after < rec.flops_before):
            raise Skip(f"not cheaper: params {rec.params_before} -> {rec.params_after}, "
                       f"FLOPs {rec.flops_before} -> {rec.flops_after}")

    def require_faster(self, rec: LayerRecord, layer: Layer, factored: Chain) -> None:
        """Skip unless the factored chain is faster in onnxruntime (when check-latency)."""
        if self.cache is None:
            return
        timing = compare(layer.dense, factored, layer.x_shape, dtype=layer.dtype, opset=self.opset,
                         cache=self.cache, threads=self.threads)
        rec.latency = timing.to_dict()
        if not timing.faster:
            raise Skip(f"not faster in onnxruntime: {timing.dense_ms:.4g} ms dense, "
                       f"{timing.factored_ms:.4g} ms factored")

    def emit(self, rec: LayerRecord, layer: Layer, chain: Chain) -> None:
        """Replace the node by ``chain``; tensor names the rest of the graph reads stay."""
        node, graph = layer.node, self.graph
        values: dict[str, gs.Tensor] = {INPUT: node.inputs[0], "": gs.Variable.empty()}
        nodes: list[gs.Node] = []
        for i, step in enumerate(chain):
            inputs = []
            for inp in step.inputs:
                if isinstance(inp, Const):
                    name = ir.unique_name(graph, f"{node.name}_{step.name}_{inp.label}")
                    inputs.append(gs.Constant(name, np.ascontiguousarray(inp.value)))
                else:
                    inputs.append(values[inp])
            if i == len(chain) - 1:
                out = node.outputs[0]
            else:
                out = gs.Variable(ir.unique_name(graph, f"{node.name}_{step.name}_out"), dtype=layer.dtype)
            values[step.output] = out
            nodes.append(gs.Node(step.op, name=ir.unique_name(graph, f"{node.name}_{step.name}"),
                                 attrs=dict(step.attrs), inputs=inputs, outputs=[out]))
        ir.replace_node(graph, node, nodes)
        rec.skipped = False
        rec.reason = None

    def result(self) -> PassResult:
        done = [r for r in self.records if not r.skipped]
        stats: dict[str, Any] = {
            "rewritten": len(done),
            "skipped": len(self.records) - len(done),
            "params_before": sum(r.params_before or 0 for r in done),
            "params_after": sum(r.params_after or 0 for r in done),
            "flops_before": sum(r.flops_before or 0 for r in done),
            "flops_after": sum(r.flops_after or 0 for r in done),
            "layers": [r.to_dict() for r in self.records],
        }
        return PassResult(modified=bool(done), stats=stats)


# --------------------------------------------------------------------------- calibration data


def round_rank(rank: int, full: int, multiple: int) -> int:
    """``rank`` rounded up to a multiple of ``multiple`` (the target's vector width), capped at
    ``full``: onnxruntime's kernels run such widths on their fast path, and layers of one shape
    whose ranks land in the same bucket share one latency measurement."""
    if multiple <= 1:
        return rank
    return min(full, math.ceil(rank / multiple) * multiple)


def require_real_data(ctx: PassContext, pass_name: str, what: str) -> None:
    """Refuse (one-line UsageError) unless the context holds real calibration data, not noise."""
    ctx.require_data(pass_name, what)
    if not ctx.has_data:
        raise UsageError(f"pass {pass_name}: {what} needs real calibration data, not random noise: "
                         "give --calib DATA or --data DATA")


def _token_mask(batch: dict[str, np.ndarray]) -> np.ndarray | None:
    """The batch's attention mask ([batch, seq], nonzero = a real token), if it has one."""
    for name, value in batch.items():
        v = np.asarray(value)
        if "mask" in name.lower() and v.ndim == 2 and (v.dtype.kind in "iub"):
            return v != 0
    return None


def input_moments(model: Model, tensors: Sequence[str], ctx: PassContext,
                  max_rows: int = 4096) -> tuple[dict[str, tuple[np.ndarray, int]], dict[str, Any]]:
    """``E[x xᵀ]`` over the calibration data of each named MatMul/Gemm input (features on the
    last axis), streamed batch by batch (:mod:`onnxprune.activations`); and what it cost.

    Rows of padded tokens (where a 2-D ``*mask*`` input of the batch is 0 and the tensor is
    ``[batch, seq, K]``) are left out: they never reach a pooled output, and in a padded
    batch they would outnumber the real ones. At most ``max_rows`` rows per batch are used,
    drawn with the context's seed.
    """
    import time

    from onnxprune.activations import PEAK, Gram, StatsReport, Tap, feature_rows, stream

    assert ctx.calib is not None
    t0 = time.perf_counter()
    PEAK[0] = 0
    rng = np.random.default_rng(ctx.seed)
    tap = Tap(model.to_onnx(), list(tensors), ctx.target.threads)
    grams = {t: Gram() for t in tap.tensors}
    # Rows are pooled over batches before each XᵀX: one sentence gives a dozen rows, and a
    # [K, K] update per dozen rows would cost more than the model run itself.
    pending: dict[str, list[np.ndarray]] = {t: [] for t in tap.tensors}
    held = dict.fromkeys(tap.tensors, 0)

    def flush(name: str) -> None:
        if pending[name]:
            grams[name].update(np.concatenate(pending[name]))
            pending[name], held[name] = [], 0

    for batch, (got,) in zip(ctx.calib.batches, stream([tap], ctx.calib)):
        mask = _token_mask(batch)
        for name, value in got.items():
            x = np.asarray(value)
            if mask is not None and x.ndim == 3 and x.shape[:2] == mask.shape:
                rows = x[mask]
            else:
                rows = feature_rows(x)
            if len(rows) > max_rows:
                rows = rows[np.sort(rng.choice(len(rows), max_rows, replace=False))]
            pending[name].append(rows)
            held[name] += len(rows)
            if held[name] >= max_rows:
                flush(name)
    for name in tap.tensors:
        flush(name)
    out = {}
    for name, g in grams.items():
        if g.rows and g.xtx is not None:
            out[name] = (g.xtx / g.rows, g.rows)
    report = StatsReport(ctx.calib.n_samples, len(ctx.calib.batches), time.perf_counter() - t0, PEAK[0],
                         sum(g.nbytes for g in grams.values()), {"tensors": len(grams)})
    return out, report.to_dict()


def run_single(pass_cls: type[Pass], model: onnx.ModelProto, options: dict[str, Any]) -> onnx.ModelProto:
    """The plain-function twin of a pass: ``pass_cls.Options(**options)`` over ``model``, verified."""
    out, _ = run_passes(model, [pass_cls(pass_cls.Options(**options))])
    return out

