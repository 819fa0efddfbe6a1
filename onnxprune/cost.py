"""Cost model: MACs, FLOPs, parameters and bytes per node and for the whole model.

Conventions (one MAC = one multiply plus one add; FLOPs count both):

======================================  ===============================================
op                                      cost
======================================  ===============================================
Conv (1-D/2-D/3-D, grouped, depthwise,  MACs = N·Cout·prod(out spatial)·(Cin/groups)·prod(kernel);
dilated, strided, any pads)             dilation and padding change only the output size,
                                        read from the inferred output shape
ConvTranspose                           MACs = N·Cin·prod(in spatial)·(Cout/groups)·prod(kernel)
Gemm                                    MACs = M·N·K (after transA/transB); alpha, beta
                                        not counted
MatMul (and MatMulInteger,              MACs = prod(broadcast batch dims)·M·N·K; a 1-D
QLinearMatMul)                          operand counts as a matrix with M or N = 1
Einsum                                  MACs = prod(size of every index)·(operands − 1)
RNN / GRU / LSTM                        MACs = seq·batch·(|W| + |R|); gate math not counted
**FLOPs of all the above**              **FLOPs = 2 × MACs, plus one FLOP per output
                                        element for a bias add (Conv/ConvTranspose B,
                                        Gemm C)**
elementwise (Add, Mul, Relu, Clip, Erf, 1 FLOP per output element, no MACs; variadic
Sigmoid, Pow, comparisons, Where ...)   Sum/Max/Min/Mean: (inputs − 1) per element
BatchNormalization                      2 FLOPs per element (folded scale and shift)
Quantize/DequantizeLinear               2 FLOPs per element
LayerNorm / InstanceNorm / GroupNorm    5 FLOPs per element
Softmax / LogSoftmax                    3 FLOPs per element
MaxPool / AveragePool / LpPool          prod(kernel_shape) FLOPs per output element
Global*Pool, Reduce*, ArgMax, ArgMin    1 FLOP per *input* element
anything else                           0 FLOPs (data movement: Reshape, Concat, Gather,
                                        Transpose, Resize, Cast ...)
======================================  ===============================================

Shapes are made concrete before counting: a symbolic first input dim is ``batch``,
any other symbolic input dim 1 unless ``dims`` names it (e.g. ``{"seq": 128}``).
Static inference runs on those numbers; what it leaves unknown is read from one
onnxruntime run (:func:`onnxprune.shapes.runtime_shapes`) unless that is turned off.
A node whose cost still needs an unknown shape costs 0 and is listed in
``ModelCost.unknown_shape_nodes``, so a partial count is never mistaken for a full one.

``params`` of a node: elements of the initializers it reads, each initializer charged
to its first reader in graph order only (exporters share weights and zero biases).
``ModelCost.params`` counts every main-graph initializer, read or not. Values held in
``Constant`` nodes are not params (``model.py`` turns weight-holding ones into
initializers on load).
"""
from __future__ import annotations

import logging
import math
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxprune.errors import OnnxPruneError
from onnxprune.shapes import (
    concrete_input_shapes,
    dummy_feeds,
    infer_shapes,
    proto_size,
    real_inputs,
    runtime_shapes,
    tensor_elem_types,
    tensor_shapes,
    with_input_shapes,
)

log = logging.getLogger(__name__)

Shape = tuple[int, ...]


@dataclass(frozen=True)
class NodeCost:
    """One node's cost. ``output_bytes``: activations it writes at the chosen batch/dims."""

    name: str
    op_type: str
    macs: int
    flops: int
    params: int
    param_bytes: int
    output_bytes: int


@dataclass(frozen=True)
class ModelCost:
    """Totals over the main graph; ``params``/``param_bytes`` cover every initializer.

    ``size_bytes`` is the serialised model plus any external data lengths it records;
    ``unknown_shape_nodes`` names the nodes whose count is partial (see module docstring);
    ``uncosted_subgraphs`` the If/Loop/Scan nodes whose bodies are not costed (a Loop's
    trip count is data; neither their FLOPs nor their bodies' own initializers are in the totals).
    """

    nodes: list[NodeCost]
    flops: int
    macs: int
    params: int
    size_bytes: int
    batch: int = 1
    param_bytes: int = 0
    unknown_shape_nodes: list[str] = field(default_factory=list)
    uncosted_subgraphs: list[str] = field(default_factory=list)

    def by_op(self) -> dict[str, dict]:
        """Totals per op type: count, macs, flops, params, param_bytes, output_bytes."""
        totals: dict[str, dict] = {}
        for n in self.nodes:
            row = totals.setdefault(n.op_type, dict.fromkeys(
                ("count", "macs", "flops", "params", "param_bytes", "output_bytes"), 0))
            row["count"] += 1
            for key in ("macs", "flops", "params", "param_bytes", "output_bytes"):
                row[key] += getattr(n, key)
        return totals

    def to_dict(self) -> dict:
        """Plain JSON-ready data: totals, ``by_op`` and every node."""
        return {
            "flops": self.flops, "macs": self.macs, "params": self.params,
            "param_bytes": self.param_bytes, "size_bytes": self.size_bytes, "batch": self.batch,
            "unknown_shape_nodes": list(self.unknown_shape_nodes),
            "by_op": self.by_op(), "nodes": [asdict(n) for n in self.nodes],
        }


class _UnknownShape(Exception):
    """A rule needed a shape that is not known."""


@dataclass(frozen=True)
class _View:
    """What a cost rule may see of one node: its attributes and concrete shapes."""

    node: onnx.NodeProto
    shapes: Mapping[str, Shape]

    def has(self, i: int) -> bool:
        return i < len(self.node.input) and self.node.input[i] != ""

    def inp(self, i: int) -> Shape:
        return self._shape(self.node.input[i] if self.has(i) else "")

    def out(self, i: int = 0) -> Shape:
        return self._shape(self.node.output[i] if i < len(self.node.output) else "")

    def _shape(self, name: str) -> Shape:
        if name not in self.shapes:
            raise _UnknownShape(name)
        return self.shapes[name]

    def attr(self, name: str, default: object = None) -> object:
        for a in self.node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default


_Rule = Callable[[_View], tuple[int, int]]  # -> (macs, flops)
_RULES: dict[str, _Rule] = {}


def _rule(*op_types: str) -> Callable[[_Rule], _Rule]:
    def register(fn: _Rule) -> _Rule:
        for op in op_types:
            if op in _RULES:
                raise ValueError(f"cost rule for {op} registered twice")
            _RULES[op] = fn
        return fn
    return register


def _numel(shape: Iterable[int]) -> int:
    return math.prod(shape)


def _mac_flops(macs: int, bias_elems: int = 0) -> tuple[int, int]:
    return macs, 2 * macs + bias_elems


@_rule("Conv", "ConvInteger", "QLinearConv")
def _conv(v: _View) -> tuple[int, int]:
    # W is [Cout, Cin/groups, *kernel], so one output element costs prod(W[1:]) MACs.
    w_index, b_index = (3, 8) if v.node.op_type == "QLinearConv" else (1, 2)
    y = v.out()
    bias = _numel(y) if v.node.op_type != "ConvInteger" and v.has(b_index) else 0
    return _mac_flops(_numel(y) * _numel(v.inp(w_index)[1:]), bias)


@_rule("ConvTranspose")
def _conv_transpose(v: _View) -> tuple[int, int]:
    # W is [Cin, Cout/groups, *kernel]: every input element scatters into prod(W[1:]).
    return _mac_flops(_numel(v.inp(0)) * _numel(v.inp(1)[1:]), _numel(v.out()) if v.has(2) else 0)


@_rule("Gemm")
def _gemm(v: _View) -> tuple[int, int]:
    a, b = v.inp(0), v.inp(1)
    m, k = (a[1], a[0]) if v.attr("transA", 0) else (a[0], a[1])
    n = b[0] if v.attr("transB", 0) else b[1]
    return _mac_flops(m * n * k, m * n if v.has(2) else 0)


def _broadcast(*shapes: Sequence[int]) -> Shape:
    rank = max((len(s) for s in shapes), default=0)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    return tuple(max(dims) if 0 not in dims else 0 for dims in zip(*padded))


@_rule("MatMul", "MatMulInteger", "QLinearMatMul")
def _matmul(v: _View) -> tuple[int, int]:
    a, b = v.inp(0), v.inp(3 if v.node.op_type == "QLinearMatMul" else 1)
    a2 = a if len(a) >= 2 else (1, *a)  # numpy rule: a 1-D operand is a row / column
    b2 = b if len(b) >= 2 else (*b, 1)
    batch = _broadcast(a2[:-2], b2[:-2])
    return _mac_flops(_numel(batch) * a2[-2] * b2[-1] * a2[-1])


@_rule("Einsum")
def _einsum(v: _View) -> tuple[int, int]:
    equation = v.attr("equation", b"")
    equation = equation.decode() if isinstance(equation, bytes) else str(equation)
    lhs = equation.replace(" ", "").split("->")[0]
    terms = lhs.split(",")
    sizes: dict[str, int] = {}
    # Give each ellipsis axis its own letter, aligned from the right like broadcasting.
    spare = [c for c in string.ascii_uppercase + string.ascii_lowercase if c not in lhs]
    for i, term in enumerate(terms):
        shape = v.inp(i)
        if "..." in term:
            n_ell = len(shape) - (len(term) - 3)
            term = term.replace("...", "".join(spare[len(spare) - n_ell:]))
        for letter, size in zip(term, shape):
            sizes[letter] = max(sizes.get(letter, 1), size)
    return _mac_flops(_numel(sizes.values()) * max(len(terms) - 1, 1))


@_rule("RNN", "GRU", "LSTM")
def _recurrent(v: _View) -> tuple[int, int]:
    # X is [seq, batch, in] (or [batch, seq, in]); per step and sequence one W·x and one R·h.
    return _mac_flops(_numel(v.inp(0)[:2]) * (_numel(v.inp(1)) + _numel(v.inp(2))))


def _per_output_element(flops_each: int) -> _Rule:
    return lambda v: (0, flops_each * _numel(v.out()))


def _per_input_element(v: _View) -> tuple[int, int]:
    return 0, _numel(v.inp(0))


def _variadic(v: _View) -> tuple[int, int]:
    return 0, max(sum(1 for i in v.node.input if i) - 1, 1) * _numel(v.out())


def _pool(v: _View) -> tuple[int, int]:
    kernel = v.attr("kernel_shape", ())
    return 0, _numel(v.out()) * _numel(kernel if isinstance(kernel, (list, tuple)) else ())


_ELEMENTWISE = """Add Sub Mul Div Mod Pow Sqrt Exp Log Abs Neg Reciprocal Floor Ceil Round Sign
    Relu LeakyRelu PRelu Elu Selu Celu Gelu Clip Sigmoid HardSigmoid HardSwish Tanh Erf Softplus
    Softsign Mish ThresholdedRelu Shrink Sin Cos Tan Asin Acos Atan Sinh Cosh Asinh Acosh Atanh
    Equal Less Greater LessOrEqual GreaterOrEqual Not And Or Xor Where IsNaN IsInf BitShift
    BitwiseAnd BitwiseOr BitwiseXor BitwiseNot""".split()
_REDUCTIONS = """GlobalAveragePool GlobalMaxPool GlobalLpPool ReduceMean ReduceSum ReduceMax ReduceMin
    ReduceProd ReduceL1 ReduceL2 ReduceSumSquare ReduceLogSum ReduceLogSumExp ArgMax ArgMin""".split()

_rule(*_ELEMENTWISE)(_per_output_element(1))
_rule("Sum", "Max", "Min", "Mean")(_variadic)
_rule("BatchNormalization", "QuantizeLinear", "DequantizeLinear")(_per_output_element(2))
_rule("Softmax", "LogSoftmax")(_per_output_element(3))
_rule("LayerNormalization", "InstanceNormalization", "GroupNormalization")(_per_output_element(5))
_rule("MaxPool", "AveragePool", "LpPool")(_pool)
_rule(*_REDUCTIONS)(_per_input_element)


def _elem_bits(elem_type: int) -> int:
    sub_byte = {TensorProto.INT4: 4, TensorProto.UINT4: 4, TensorProto.FLOAT4E2M1: 4,
                getattr(TensorProto, "INT2", -1): 2, getattr(TensorProto, "UINT2", -1): 2,
                getattr(TensorProto, "FLOAT6E2M3", -1): 6, getattr(TensorProto, "FLOAT6E3M2", -1): 6}
    if elem_type in sub_byte:
        return sub_byte[elem_type]
    try:
        return 8 * np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return 0  # undefined or string: no fixed size


def _nbytes(shape: Shape, elem_type: int) -> int:
    return (_numel(shape) * _elem_bits(elem_type) + 7) // 8


def _concrete(shape: tuple, names: Mapping[str, int]) -> Shape | None:
    dims = [names.get(d) if isinstance(d, str) else d for d in shape]
    return tuple(d for d in dims if isinstance(d, int)) if all(isinstance(d, int) for d in dims) else None


def _concrete_shapes(model: onnx.ModelProto, batch: int, dims: Mapping[str, int] | None,
                     runtime_fallback: bool, given: Mapping[str, tuple[int, ...]] | None = None,
                     ) -> tuple[dict[str, Shape], dict[str, int]]:
    """Concrete shapes (and element types) of every main-graph tensor that can be found."""
    inputs = concrete_input_shapes(model, batch=batch, dims=dims)
    inputs.update({k: tuple(int(d) for d in v) for k, v in (given or {}).items() if k in inputs})
    # Symbolic names as the inputs spell them, so stale value_info ("batch") resolves too.
    names: dict[str, int] = {}
    for vi in real_inputs(model):
        for dim, value in zip(vi.type.tensor_type.shape.dim, inputs.get(vi.name, ())):
            if dim.dim_param:
                names.setdefault(dim.dim_param, value)
    names.update(dims or {})
    inferred = infer_shapes(with_input_shapes(model, inputs))
    shapes: dict[str, Shape] = {}
    for name, shape in tensor_shapes(inferred).items():
        if (fixed := _concrete(shape, names)) is not None:
            shapes[name] = fixed
    elem_types = tensor_elem_types(inferred)
    needed = {t for n in model.graph.node for t in (*n.input, *n.output) if t}
    if runtime_fallback and not needed <= shapes.keys():
        try:
            found = runtime_shapes(model, dummy_feeds(model, inputs))
        except OnnxPruneError as exc:
            log.warning("runtime shape fallback failed: %s", exc)
        else:
            shapes.update({k: s for k, s in found.items() if k not in shapes})
    return shapes, elem_types


def model_cost(model: onnx.ModelProto, *, batch: int = 1, dims: Mapping[str, int] | None = None,
               runtime_fallback: bool = True, inputs: Mapping[str, tuple[int, ...]] | None = None) -> ModelCost:
    """Count MACs, FLOPs, params and bytes of ``model`` (see the module docstring).

    ``batch`` fills symbolic first input dims, ``dims`` any symbolic dim by name;
    ``inputs`` (input name -> shape) fixes whole input shapes (the shapes users run);
    ``runtime_fallback`` allows one onnxruntime run when static inference leaves
    shapes unknown. Never raises on unknown shapes: those nodes are listed instead.
    """
    shapes, elem_types = _concrete_shapes(model, batch, dims, runtime_fallback, inputs)
    inits = {t.name: (tuple(t.dims), t.data_type) for t in model.graph.initializer}
    inits.update({t.values.name: (tuple(t.dims), t.values.data_type) for t in model.graph.sparse_initializer})

    charged: set[str] = set()
    nodes: list[NodeCost] = []
    unknown: list[str] = []
    for index, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}#{index}"
        view = _View(node, shapes)
        rule = _RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        incomplete = any(o and o not in shapes for o in node.output)
        macs = flops = 0
        if rule is not None:
            try:
                macs, flops = rule(view)
            except _UnknownShape:
                incomplete = True
            except (IndexError, TypeError, ValueError) as exc:  # malformed node: count nothing
                log.warning("cannot cost %s (%s): %s", name, node.op_type, exc)
                incomplete = True
        params = param_bytes = 0
        for t in dict.fromkeys(node.input):
            if t in inits and t not in charged:
                charged.add(t)
                params += _numel(inits[t][0])
                param_bytes += _nbytes(*inits[t])
        out_bytes = sum(_nbytes(shapes[o], elem_types.get(o, 0)) for o in node.output if o in shapes)
        if incomplete:
            unknown.append(name)
        nodes.append(NodeCost(name, node.op_type, int(macs), int(flops), params, param_bytes, out_bytes))

    external = sum(int(e.value) for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL
                   for e in t.external_data if e.key == "length")
    return ModelCost(
        nodes=nodes,
        flops=sum(n.flops for n in nodes),
        macs=sum(n.macs for n in nodes),
        params=sum(_numel(s) for s, _ in inits.values()),
        size_bytes=proto_size(model) + external,  # ByteSize() raises over 2 GiB
        batch=batch,
        param_bytes=sum(_nbytes(s, t) for s, t in inits.values()),
        unknown_shape_nodes=unknown,
        uncosted_subgraphs=[n.name or n.op_type for n in model.graph.node
                            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)],
    )
