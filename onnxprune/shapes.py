"""Shape analysis: ONNX static inference with symbolic dims kept, and a runtime fallback.

Static inference (:func:`infer_shapes`) is ONNX's own, with type checking and data
propagation, so ``Shape -> Gather -> Concat -> Reshape`` chains usually resolve. A
symbolic dim (``dim_param``, e.g. ``"batch"``) stays symbolic: analyses that need
numbers ask for them explicitly (:func:`concrete_input_shapes`), never by rewriting
the model's dims to 1.

Where static inference gives up (a Reshape whose target is computed by ops that ONNX
does not propagate, shapes that depend on data), :func:`runtime_shapes` runs the model
once in onnxruntime with every intermediate exposed as an output and reads the
shapes off the results. It is a fallback: it needs the weights and costs one forward
pass.

A :data:`Dim` is an ``int`` (fixed), a ``str`` (symbolic; ONNX also invents
``unk__N`` names for dims it cannot relate to any input) or ``None`` (unknown).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxprune.errors import DataError, OnnxPruneError, UnsupportedError, VerificationError

log = logging.getLogger(__name__)

Dim = int | str | None

# Protobuf refuses to serialise a message of 2 GiB or more; the in-memory ONNX and
# onnxruntime entry points both serialise.
PROTOBUF_LIMIT = 2**31 - 1
# Initializers bigger than this are stubbed out before static inference: inference only
# reads the values of small tensors (shape operands), so it never misses the payload.
_STUB_ABOVE_BYTES = 1 << 16


def proto_size(model: onnx.ModelProto) -> int:
    """Serialised size of ``model`` in bytes, without serialising it.

    ``ByteSize()`` raises on a message over 2 GiB (protobuf's limit), which is exactly
    when the size matters, so the size is summed per initializer and per node (each far
    below the limit) plus the rest of the graph. External tensors count their stub only.
    """
    g = model.graph
    big = sum(t.ByteSize() for t in g.initializer) + sum(n.ByteSize() for n in g.node)
    rest = sum(v.ByteSize() for v in (*g.input, *g.output, *g.value_info))
    rest += sum(t.ByteSize() for t in g.sparse_initializer) + sum(f.ByteSize() for f in model.functions)
    # Field tags and length prefixes: at most 10 bytes per element.
    bound = int(big + rest + 10 * (len(g.initializer) + len(g.node) + len(g.input) + len(g.output)) + 4096)
    # Below the limit protobuf computes the exact size itself (no serialisation); the
    # bound stands in only where ByteSize() would raise.
    return int(model.ByteSize()) if bound < PROTOBUF_LIMIT else bound


def infer_shapes(model: onnx.ModelProto, *, strict: bool = False) -> onnx.ModelProto:
    """Return a copy of ``model`` with ONNX shape inference applied; ``model`` is untouched.

    ``strict`` turns any inference or type error into a :class:`VerificationError`.
    Without it, a model that fails type checking is inferred again without the check,
    and if that fails too an un-inferred copy comes back (logged as a warning).
    """
    too_big = proto_size(model) > PROTOBUF_LIMIT
    source = skeleton(model) if too_big else model
    try:
        inferred = _run_onnx_inference(source, strict=strict, check_type=True)
    except Exception as exc:  # onnx raises InferenceError, ValueError, RuntimeError
        message = " ".join(str(exc).split())
        if strict:
            raise VerificationError(f"shape inference failed: {message}") from None
        log.warning("shape inference failed (%s); retrying without type checks", message)
        try:
            inferred = _run_onnx_inference(source, strict=False, check_type=False)
        except Exception as exc2:
            log.warning("shape inference failed again (%s); shapes left as they were",
                        " ".join(str(exc2).split()))
            inferred = source
    if not too_big:
        return inferred if inferred is not model else _copy(model)
    # The skeleton lacks the big payloads: graft its inferred types onto a full copy.
    out = _copy(model)
    for field in ("value_info", "output", "node"):
        out.graph.ClearField(field)
        getattr(out.graph, field).extend(getattr(inferred.graph, field))
    return out


def _run_onnx_inference(model: onnx.ModelProto, *, strict: bool, check_type: bool) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(model, check_type=check_type, strict_mode=strict, data_prop=True)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def skeleton(model: onnx.ModelProto, stub_above: int = _STUB_ABOVE_BYTES) -> onnx.ModelProto:
    """A copy of ``model`` whose big initializers keep name, type and dims but no data.

    The payloads become external-data stubs pointing nowhere: ONNX inference reads
    only dims and types of external tensors, so the skeleton infers exactly like the
    original while staying far below the protobuf limit. This avoids writing a
    multi-GB model to a temp dir just to call ``infer_shapes_path``.
    """
    skel = onnx.ModelProto()
    _copy_fields(model, skel, skip="graph")
    _copy_fields(model.graph, skel.graph, skip="initializer")
    for tensor in model.graph.initializer:
        if tensor.ByteSize() <= stub_above or tensor.data_type == TensorProto.STRING:
            skel.graph.initializer.append(tensor)
            continue
        stub = skel.graph.initializer.add()
        stub.name, stub.data_type = tensor.name, tensor.data_type
        stub.dims.extend(tensor.dims)
        stub.data_location = TensorProto.EXTERNAL
        entry = stub.external_data.add()
        entry.key, entry.value = "location", STUB_LOCATION
    return skel


#: where a skeleton's stubbed tensors claim their data lives (a name no file has).
STUB_LOCATION = "onnxprune-stub-never-read"
_skeleton = skeleton


def copy_fields(src: onnx.ModelProto | onnx.GraphProto, dst: onnx.ModelProto | onnx.GraphProto,
                *, skip: str | tuple[str, ...] = (), replace: bool = False) -> None:
    """Copy every set field of ``src`` but those in ``skip`` onto ``dst`` (``replace``:
    repeated fields of ``dst`` are emptied first). Copying a model minus its graph this
    way costs nothing, where ``CopyFrom`` then ``Clear`` would copy every weight."""
    skipped = (skip,) if isinstance(skip, str) else skip
    for desc, value in src.ListFields():
        if desc.name in skipped:
            continue
        # protobuf >= 6 has is_repeated; older releases only the label.
        repeated = desc.is_repeated if hasattr(desc, "is_repeated") else desc.label == desc.LABEL_REPEATED  # type: ignore[attr-defined]
        if repeated:
            field = getattr(dst, desc.name)
            if replace:
                del field[:]
            field.extend(value)
        elif desc.message_type is not None:
            getattr(dst, desc.name).CopyFrom(value)
        else:
            setattr(dst, desc.name, value)


_copy_fields = copy_fields


def _dims_of(type_proto: onnx.TypeProto) -> tuple[Dim, ...] | None:
    if type_proto.WhichOneof("value") != "tensor_type" or not type_proto.tensor_type.HasField("shape"):
        return None
    dims: list[Dim] = []
    for d in type_proto.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:  # older exporters write -1 for "dynamic"
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def _value_infos(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    # Outputs last: their declared shapes are the most specific after inference.
    return [*graph.input, *graph.value_info, *graph.output]


def tensor_shapes(model: onnx.ModelProto) -> dict[str, tuple[Dim, ...]]:
    """Shape of every main-graph tensor whose rank is known (run :func:`infer_shapes` first)."""
    shapes: dict[str, tuple[Dim, ...]] = {}
    for vi in _value_infos(model.graph):
        dims = _dims_of(vi.type)
        if dims is not None:
            shapes[vi.name] = dims
    for tensor in model.graph.initializer:
        shapes[tensor.name] = tuple(int(d) for d in tensor.dims)
    for sparse in model.graph.sparse_initializer:
        shapes[sparse.values.name] = tuple(int(d) for d in sparse.dims)
    return shapes


def tensor_elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """ONNX element type (``TensorProto.FLOAT`` ...) of every main-graph tensor that has one."""
    types: dict[str, int] = {}
    for vi in _value_infos(model.graph):
        if vi.type.WhichOneof("value") == "tensor_type" and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for tensor in model.graph.initializer:
        types[tensor.name] = tensor.data_type
    for sparse in model.graph.sparse_initializer:
        types[sparse.values.name] = sparse.values.data_type
    return types


def tensor_dtypes(model: onnx.ModelProto) -> dict[str, np.dtype]:
    """NumPy dtype of every main-graph tensor whose element type NumPy can name."""
    dtypes: dict[str, np.dtype] = {}
    for name, elem_type in tensor_elem_types(model).items():
        try:
            dtypes[name] = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
        except (KeyError, TypeError, ValueError):
            log.debug("no numpy dtype for %s (elem_type %d)", name, elem_type)
    return dtypes


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs a caller must feed (old exporters also list initializers as inputs)."""
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def concrete_input_shapes(model: onnx.ModelProto, *, batch: int = 1,
                          dims: Mapping[str, int] | None = None) -> dict[str, tuple[int, ...]]:
    """Numbers for every input's dims: fixed dims as they are, symbolic ones chosen.

    A symbolic or unknown *first* dim is ``batch``, and so is any other dim sharing its
    name; every other symbolic or unknown dim is 1. ``dims`` (dim_param name -> value,
    e.g. ``{"seq": 128}``) overrides both rules. Inputs of unknown rank are left out.
    """
    dims = dict(dims or {})
    batch_names: set[str] = set()
    for vi in real_inputs(model):
        shape = _dims_of(vi.type)
        if shape and isinstance(shape[0], str):
            batch_names.add(shape[0])

    def pick(dim: Dim, axis: int) -> int:
        if isinstance(dim, int):
            return dim
        if dim is not None and dim in dims:
            return int(dims[dim])
        return batch if axis == 0 or dim in batch_names else 1

    # An input of unknown rank gets no entry: no rule can invent its rank.
    return {vi.name: tuple(pick(d, i) for i, d in enumerate(shape))
            for vi in real_inputs(model) if (shape := _dims_of(vi.type)) is not None}


def with_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A lightweight copy (big initializers stubbed, see :func:`_skeleton`) with inputs fixed to ``shapes``.

    Meant for analysis only: the copy cannot be run or saved.
    """
    skel = _skeleton(model)
    for vi in skel.graph.input:
        if vi.name in shapes and vi.type.WhichOneof("value") == "tensor_type":
            shape = vi.type.tensor_type.shape
            shape.ClearField("dim")
            for value in shapes[vi.name]:
                shape.dim.add().dim_value = int(value)
    return skel


def dummy_feeds(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Arrays of ones (True for bool) for the inputs named in ``shapes``, in those shapes.

    Ones rather than zeros: an integer input that ends up as a divisor would crash
    the run, and index inputs (token ids, masks) stay in range for any table.
    """
    dtypes = tensor_dtypes(model)
    feeds: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if name not in dtypes:
            raise DataError(f"input {name!r} has no tensor type; cannot make a dummy value")
        feeds[name] = np.ones(shape, dtype=dtypes[name])
    return feeds


def runtime_shapes(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray] | None = None, *,
                   dims: Mapping[str, int] | None = None) -> dict[str, tuple[int, ...]]:
    """Concrete shapes of every input and node output, read off one onnxruntime run.

    Inputs missing from ``feeds`` get dummy values (:func:`dummy_feeds`) with symbolic
    dims set from ``dims`` or 1. Intermediates whose element type ONNX inference cannot
    tell are skipped (a graph output must be typed), as are tensors inside subgraphs.
    """
    given = dict(feeds or {})
    wanted = {vi.name for vi in real_inputs(model)}
    if unknown := sorted(set(given) - wanted):
        raise DataError(f"feeds name tensors that are not model inputs: {', '.join(unknown)}")
    given.update(dummy_feeds(model, {k: v for k, v in concrete_input_shapes(model, dims=dims).items()
                                     if k not in given}))
    if missing := sorted(wanted - given.keys()):
        raise DataError(f"inputs of unknown rank need values in feeds: {', '.join(missing)}")

    from onnxprune.runtime import make_session

    elem_types = tensor_elem_types(infer_shapes(skeleton(model)))
    # The intermediates become extra graph outputs for the one session, then go again:
    # the model is lent, not copied (a copy of a large model costs its size in memory).
    outputs = model.graph.output
    n_declared = len(outputs)
    exposed = {o.name for o in outputs}
    try:
        for node in model.graph.node:
            for name in node.output:
                if name and name not in exposed and name in elem_types:
                    outputs.append(helper.make_tensor_value_info(name, elem_types[name], None))
                    exposed.add(name)
        names = [o.name for o in outputs]
        # No fusion: every requested tensor must exist as itself; also builds faster.
        session = make_session(model, optimize=False)
    except OnnxPruneError as exc:
        raise UnsupportedError(f"onnxruntime could not load the model to find shapes: {exc}") from None
    finally:
        del outputs[n_declared:]
    try:
        results = session.run(names, given)
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        raise UnsupportedError(f"onnxruntime could not run the model to find shapes: "
                               f"{' '.join(str(exc).split())}") from None

    shapes = {name: tuple(int(d) for d in np.shape(value)) for name, value in given.items()}
    for name, value in zip(names, results):
        if isinstance(value, np.ndarray):  # sequences and maps have no single shape
            shapes[name] = tuple(int(d) for d in value.shape)
    return shapes
