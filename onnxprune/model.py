"""Loading, normalising and saving ONNX models, and the :class:`Model` that passes edit.

Loading never writes anything; saving is atomic (temporary file in the target folder,
then ``os.replace``), with external data when the model is large. Normalisation makes
exporters' habits uniform so passes see one shape of graph:

* weights held in ``Constant`` nodes become initializers;
* ``Identity`` nodes on initializers collapse onto the initializer;
* subgraphs of constants are folded into initializers (a Reshape of a weight);
* initializers nobody reads are dropped;
* every node gets a unique name (reports and layer patterns need them);
* graph outputs declared without a shape get the inferred one (the full checker needs it);
* IR < 4 models (initializers listed as graph inputs) are lifted to IR 4, opset unchanged:
  IR 3 listed every weight as an input because it had to, so those inputs go. An IR >= 4
  model that lists an initializer as an input (an overridable default) keeps it: the
  export puts it back, with the initializer's new shape if a pass changed it;
* a dim stored as ``dim_value: -1`` (older exporters' "dynamic") becomes a symbolic dim.

Models over 2 GiB: protobuf cannot serialise them (``ByteSize()`` itself raises), so no
code here serialises a whole model. Sizes are summed per tensor
(:func:`~onnxprune.shapes.proto_size`), checks and shape inference run on a skeleton
whose big tensors are stubs (:func:`~onnxprune.shapes.skeleton`), and files with
external data are written one tensor at a time (:func:`write_external`). The working
graph of :class:`Model` shares the weights of the proto it was made from instead of
copying them, so a pass costs memory for what it changes, not for the whole model.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
from onnx import numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxprune.errors import ModelError, UnsupportedError, UsageError
from onnxprune.shapes import STUB_LOCATION, copy_fields, proto_size, skeleton

MIN_OPSET = 7
# Protobuf cannot serialise more than 2 GiB; stay well clear of it.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
# Above this, checks run on a skeleton (big tensors stubbed) rather than on a serialised
# copy of the whole model: the copy would cost the model's size in memory again.
SKELETON_CHECK_BYTES = 64 << 20


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ModelError("model imports no default-domain opset")


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read, check and normalise a model file; raise ModelError with one line on failure."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: no such file")
    if not p.is_file():
        raise ModelError(f"{p}: not a file")
    try:
        if p.stat().st_size == 0:
            raise ModelError(f"{p}: empty file, not an ONNX model")
        model = onnx.load_model(str(p), load_external_data=False)
    except ModelError:
        raise
    except OSError as exc:
        raise ModelError(f"{p}: cannot read ({exc.strerror})") from exc
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelError(f"{p}: not an ONNX model or truncated (protobuf parse failed)") from exc
    if not model.graph.node or model.ir_version <= 0 or not model.opset_import:
        raise ModelError(f"{p}: not an ONNX model (no graph, IR version or opset)")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        try:
            # One tensor at a time, straight into its proto: no second copy of the model.
            onnx.external_data_helper.load_external_data_for_model(model, str(p.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:
            raise ModelError(f"{p}: external data missing or unreadable ({_first_line(exc)})") from exc
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise UnsupportedError(f"{p}: opset {opset} is older than the minimum supported {MIN_OPSET}")
    try:
        check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"{p}: invalid ONNX model: {_first_line(exc)}") from exc
    return normalize(model, inplace=True)


def check_model(model: onnx.ModelProto, *, full_check: bool = False) -> None:
    """``onnx.checker.check_model`` that never serialises a big model.

    The checker serialises what it is given (impossible over 2 GiB, a copy of every weight
    below). A model over :data:`SKELETON_CHECK_BYTES` is checked as its skeleton instead,
    written to a temporary folder beside an empty file where the stubs say their data is
    (the checker wants that file to exist; it reads no data from it). The weights' own
    bytes are then not checked: they were checked, or written by us, tensor by tensor.
    """
    if proto_size(model) < SKELETON_CHECK_BYTES:
        onnx.checker.check_model(model, full_check=full_check)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="onnxprune-check-") as tmp:
        (Path(tmp) / STUB_LOCATION).write_bytes(b"")
        path = Path(tmp) / "model.onnx"
        path.write_bytes(skeleton(model).SerializeToString())
        onnx.checker.check_model(str(path), full_check=full_check)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def normalize(model: onnx.ModelProto, *, inplace: bool = False) -> onnx.ModelProto:
    """Return a normalised copy (see module docstring); the argument is not changed
    unless ``inplace`` (then it is normalised and returned: no copy of the weights)."""
    if inplace:
        m = model
    else:
        m = onnx.ModelProto()
        m.CopyFrom(model)
    g = m.graph
    _fix_negative_dims(g)
    if m.ir_version < 4:
        init_names = {t.name for t in g.initializer}
        keep = [i for i in g.input if i.name not in init_names]
        del g.input[:]
        g.input.extend(keep)
        m.ir_version = 4
    outputs = {o.name for o in g.output}

    # Constant nodes holding a tensor -> initializers.
    kept: list[onnx.NodeProto] = []
    for node in g.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output[0] not in outputs:
            value = _constant_node_value(node)
            if value is not None:
                g.initializer.append(numpy_helper.from_array(value, node.output[0]))
                continue
        kept.append(node)

    # Identity on an initializer -> readers use the initializer directly.
    inits = {t.name for t in g.initializer}
    rename: dict[str, str] = {}
    final: list[onnx.NodeProto] = []
    for node in kept:
        if node.op_type == "Identity" and node.input[0] in inits | set(rename) and node.output[0] not in outputs:
            src = node.input[0]
            rename[node.output[0]] = rename.get(src, src)
            continue
        final.append(node)
    for node in final:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del g.node[:]
    g.node.extend(final)

    # Drop unused initializers (and their value_info).
    used = {name for node in g.node for name in node.input} | outputs
    used |= _subgraph_reads(g)
    unused = [t for t in g.initializer if t.name not in used]
    for t in unused:
        g.initializer.remove(t)

    _fold_constants(m)
    _name_nodes(m.graph)
    _fill_output_shapes(m)
    return m


def _fix_negative_dims(g: onnx.GraphProto) -> None:
    """``dim_value: -1`` (older Paddle exports' dynamic batch) -> a symbolic dim.

    ONNX has no negative dims; every consumer of shapes would otherwise try to make an
    array with a dim of -1. The batch axis is called ``batch``; other axes get a name of
    their own, as onnx names dims it cannot relate.
    """
    for v in (*g.input, *g.output, *g.value_info):
        if not v.type.HasField("tensor_type") or not v.type.tensor_type.HasField("shape"):
            continue
        for axis, d in enumerate(v.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value < 0:
                d.dim_param = "batch" if axis == 0 else f"{v.name}_dim{axis}"


FOLD_SIZE_LIMIT = 1 << 24  # never materialise a folded constant over 16 MiB
_FOLD_SKIP_OPS = frozenset({"Constant", "ConstantOfShape", "RandomNormal", "RandomUniform", "Multinomial"})


def _has_foldable(g: onnx.GraphProto) -> bool:
    """Whether some node reads only initializers (what folding would evaluate)."""
    consts = {t.name for t in g.initializer}
    return any(n.input and all(not i or i in consts for i in n.input) and n.op_type not in _FOLD_SKIP_OPS
               and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)
               for n in g.node)


def _fold_constants(m: onnx.ModelProto) -> None:
    """Evaluate subgraphs whose inputs are all constants (a Reshape of a weight, a Transpose
    of one), so passes see plain initializers. Uses onnx-graphsurgeon's folding, which runs
    those nodes in onnxruntime; on any failure the graph is left as it was."""
    # Folding exports the whole graph (a copy of every weight): only when there is something to fold.
    if not _has_foldable(m.graph) or proto_size(m) >= EXTERNAL_DATA_THRESHOLD:
        return
    try:
        graph = gs.import_onnx(m)
        before = len(graph.nodes)
        graph.fold_constants(fold_shapes=False, size_threshold=FOLD_SIZE_LIMIT, error_ok=True).cleanup()
        if len(graph.nodes) == before:
            return
        folded = gs.export_onnx(graph.toposort(), do_type_check=False)
    except Exception:  # folding is an optimisation; a graph it cannot handle stays as it is
        return
    del m.graph.node[:]
    m.graph.node.extend(folded.graph.node)
    del m.graph.initializer[:]
    m.graph.initializer.extend(folded.graph.initializer)


def _fill_output_shapes(m: onnx.ModelProto) -> None:
    """Give graph outputs declared without a shape the shape inference finds.

    ``onnx.checker``'s full check demands output shapes; exporters sometimes omit them.
    """
    missing = [o for o in m.graph.output if o.type.HasField("tensor_type") and not o.type.tensor_type.HasField("shape")]
    if not missing:
        return
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(m))
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        return
    found = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for out in missing:
        v = found.get(out.name)
        if v is not None and v.type.tensor_type.HasField("shape"):
            out.type.tensor_type.shape.CopyFrom(v.type.tensor_type.shape)


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None  # sparse or string constants stay as nodes


def _subgraph_reads(g: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in g.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                names |= {n for sn in sub.node for n in sn.input}
                names |= _subgraph_reads(sub)
    return names


def _name_nodes(g: onnx.GraphProto) -> None:
    seen: set[str] = set()
    for i, node in enumerate(g.node):
        name = node.name or f"{node.op_type}_{i}"
        base, k = name, 1
        while name in seen:
            name = f"{base}_{k}"
            k += 1
        node.name = name
        seen.add(name)


def model_size_bytes(model: onnx.ModelProto) -> int:
    """Serialised size in bytes, counting external tensors' data once; never serialises."""
    external = sum(int(e.value) for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                   for e in t.external_data if e.key == "length")
    return proto_size(model) + external


#: tensors at least this big go to the data file when saving with external data.
EXTERNAL_MIN_BYTES = 1024
#: data offsets are multiples of this, so onnxruntime can map the file instead of copying it.
EXTERNAL_ALIGN = 4096


def write_external(model: onnx.ModelProto, path: str | os.PathLike[str], *, data_name: str | None = None,
                   data_path: Path | None = None, min_bytes: int = EXTERNAL_MIN_BYTES) -> Path:
    """Write ``model`` to ``path`` with its initializers in one data file beside it.

    The model names its data ``data_name`` (default ``<name>.data``); the bytes go to
    ``data_path`` (default: that name beside ``path``), which a caller renames later.
    Tensors under ``min_bytes`` (and string tensors) stay in the model file.

    Streamed one tensor at a time: ``model`` is neither copied nor changed (``onnx.save``
    with external data rewrites the proto it is given, and a copy of a 2 GB model is
    2 GB more memory). Returns the data file's path. Not atomic: see :func:`save_model`.
    """
    target = Path(path)
    data_name = data_name or target.name + ".data"
    data_path = data_path or target.parent / data_name
    skel = onnx.ModelProto()
    copy_fields(model, skel, skip="graph")
    g, sg = model.graph, skel.graph
    copy_fields(g, sg, skip="initializer")
    offset = 0
    with open(data_path, "wb") as fh:
        for t in g.initializer:
            if t.data_type == onnx.TensorProto.STRING or t.data_location == onnx.TensorProto.EXTERNAL \
                    or t.ByteSize() < min_bytes:
                sg.initializer.append(t)
                continue
            blob = t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
            pad = (-offset) % EXTERNAL_ALIGN
            fh.write(b"\0" * pad)
            offset += pad
            fh.write(blob)
            stub = sg.initializer.add()
            stub.name, stub.data_type = t.name, t.data_type
            stub.dims.extend(t.dims)
            if t.doc_string:
                stub.doc_string = t.doc_string
            stub.data_location = onnx.TensorProto.EXTERNAL
            for key, val in (("location", data_name), ("offset", str(offset)), ("length", str(len(blob)))):
                entry = stub.external_data.add()
                entry.key, entry.value = key, val
            offset += len(blob)
            del blob
    with open(target, "wb") as fh:
        fh.write(skel.SerializeToString())
    return data_path


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len_field(number: int, size: int) -> bytes:
    return _varint(number << 3 | 2) + _varint(size)


def write_streamed(model: onnx.ModelProto, fh: Any) -> int:
    """Write ``model``'s wire format to ``fh`` one initializer at a time; return the bytes written.

    ``SerializeToString`` would hold the whole file in memory once more. Protobuf merges
    repeated occurrences of a message field, so the file is the model without its graph,
    then the graph field holding the graph without initializers followed by each
    initializer as its own entry: the bytes parse to the same model.
    """
    graph_no = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
    init_no = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
    head = onnx.ModelProto()
    copy_fields(model, head, skip="graph")
    rest = onnx.GraphProto()
    copy_fields(model.graph, rest, skip="initializer")
    rest_bytes = rest.SerializeToString()
    sizes = [t.ByteSize() for t in model.graph.initializer]
    graph_size = len(rest_bytes) + sum(len(_len_field(init_no, s)) + s for s in sizes)
    written = 0
    for chunk in (head.SerializeToString(), _len_field(graph_no, graph_size), rest_bytes):
        fh.write(chunk)
        written += len(chunk)
    for t, size in zip(model.graph.initializer, sizes):
        chunk = t.SerializeToString()
        fh.write(_len_field(init_no, size))
        fh.write(chunk)
        written += len(_len_field(init_no, size)) + size
    return written


_TMP_MARK = ".onnxprune-tmp-"


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Raise UsageError (one line) unless ``path`` can be written; call it before the work.

    The folder must exist and take a new file (a temporary file is created and removed:
    permission bits alone miss read-only mounts); an existing ``path`` must be a file.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"{target}: output folder {folder} does not exist")
    if target.exists() and not target.is_file():
        raise UsageError(f"{target}: exists and is not a file")
    probe = folder / f"{_TMP_MARK}probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"{target}: cannot write to {folder} ({exc.strerror or exc})") from None
    return target


def _sweep_stale(folder: Path, name: str) -> None:
    """Remove temporaries of earlier saves to ``name`` whose process is gone (SIGKILL)."""
    for leftover in folder.glob(f".{name}{_TMP_MARK}*"):
        pid = leftover.name.rsplit("-", 1)[-1].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            try:
                leftover.unlink()
            except OSError:
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def _removed_on_signal(paths: list[Path]) -> Iterator[None]:
    """Delete ``paths`` if SIGTERM or SIGINT arrives (then let the signal act as before)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[signal.Signals, Any] = {}

    def handler(signum: Any, frame: Any) -> None:
        for p in paths:
            try:
                p.unlink()
            except OSError:
                pass
        old = previous.get(signum)
        signal.signal(signum, old if old is not None else signal.SIG_DFL)
        if callable(old):
            old(signum, frame)
        else:
            os.kill(os.getpid(), signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str], *, external_data: bool | None = None) -> Path:
    """Write ``model`` atomically. External data is used when asked or when the model is large.

    With external data the weights go to ``<name>.data`` beside the model. Both are first
    written to temporary files next to the target (``.<name>.onnxprune-tmp-<pid>``) and
    renamed into place, the data file first, so a reader never sees a model without its
    data. SIGTERM/SIGINT during the write removes the temporaries; after a SIGKILL, the
    next save to the same name removes them.
    """
    target = check_writable(path)
    folder = target.parent if str(target.parent) else Path(".")
    _sweep_stale(folder, target.name)
    use_external = model_size_bytes(model) >= EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
    pid = os.getpid()
    tmp_model = folder / f".{target.name}{_TMP_MARK}{pid}"
    data_name = target.name + ".data"
    tmp_data = folder / f".{data_name}{_TMP_MARK}{pid}"
    temps = [tmp_model, tmp_data]
    with _removed_on_signal(temps):
        try:
            if use_external:
                # The model file names the final data file; only the bytes go to the temporary.
                # Asked for external data: every tensor goes there; when only the size forces it,
                # small ones stay inline.
                write_external(model, tmp_model, data_name=data_name, data_path=tmp_data,
                               min_bytes=0 if external_data else EXTERNAL_MIN_BYTES)
                os.replace(tmp_data, folder / data_name)
            else:
                with open(tmp_model, "wb") as fh:
                    write_streamed(model, fh)
            os.replace(tmp_model, target)
        finally:
            for t in temps:
                if t.exists():
                    t.unlink()
    return target


# Ops whose output has their first input's type and shape, for the ops onnx infers
# nothing for (GroupNormalization-21 in onnx 1.23, say).
SAME_SHAPE_OPS = frozenset({"GroupNormalization", "LayerNormalization", "InstanceNormalization", "Relu", "Sigmoid",
                            "Identity", "Clip", "HardSwish", "LeakyRelu", "Tanh", "Erf"})


def _with_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Shape-inferred copy (symbolic dims kept); the proto itself when inference fails.
    Callers pass a skeleton (:func:`~onnxprune.shapes.skeleton`): inference serialises."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        return proto
    for _ in range(8):  # each round lets inference run on past one more same-shape op
        known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
                 if v.type.tensor_type.HasField("shape")}
        added = False
        for node in inferred.graph.node:
            out = node.output[0] if node.output else ""
            if node.op_type in SAME_SHAPE_OPS and out and out not in known and node.input and node.input[0] in known:
                vi = onnx.ValueInfoProto()
                vi.CopyFrom(known[node.input[0]])
                vi.name = out
                inferred.graph.value_info.append(vi)
                added = True
        if not added:
            break
        try:
            inferred = onnx.shape_inference.infer_shapes(inferred, data_prop=True)
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
            break
    return inferred


def _copy_vi(v: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(v)
    return out


def _copy_meta(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Every field of ``proto`` but its graph (copying the graph to clear it would copy the weights)."""
    meta = onnx.ModelProto()
    copy_fields(proto, meta, skip="graph")
    return meta


def _import_lean(proto: onnx.ModelProto) -> gs.Graph:
    """``gs.import_onnx`` of ``proto`` with inferred shapes, sharing ``proto``'s weights.

    Shape inference runs on the skeleton; its stubbed tensors are then pointed back at
    ``proto``'s own TensorProtos (loaded lazily, on first use). ``proto`` must stay alive
    and unchanged while the graph lives: the caller's model, or a snapshot.
    """
    skel = skeleton(proto)
    stubbed = {t.name for t in skel.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
               and any(e.key == "location" and e.value == STUB_LOCATION for e in t.external_data)}
    graph = gs.import_onnx(_with_shapes(skel))
    if stubbed:
        originals = {t.name: t for t in proto.graph.initializer if t.name in stubbed}
        for name, tensor in graph.tensors().items():
            if isinstance(tensor, gs.Constant) and name in originals:
                tensor._values = LazyValues(originals[name])
                tensor.data_location = None
    return graph


def _subgraph_initializers(g: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in g.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                names |= {t.name for t in sub.initializer} | _subgraph_initializers(sub)
    return names


def _keep_outer_weights_outside(main: onnx.GraphProto, g: onnx.GraphProto, own: set[str]) -> None:
    """onnx-graphsurgeon exports an outer-scope weight that a Loop/If body reads as an
    initializer *of the body*: a copy per body, and a cost model that then misses it. Put
    each such tensor back in the main graph (once) and out of the bodies."""
    main_names = {t.name for t in main.initializer}
    for node in g.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                moved = [t for t in sub.initializer if t.name not in own]
                for t in moved:
                    if t.name not in main_names:
                        main.initializer.append(t)
                        main_names.add(t.name)
                    sub.initializer.remove(t)
                _keep_outer_weights_outside(main, sub, own)


def _export(graph: gs.Graph, meta: onnx.ModelProto) -> onnx.ModelProto:
    """``gs.export_onnx`` written straight into the result, with ``meta``'s metadata.

    onnx-graphsurgeon builds a GraphProto (one copy of every weight) and ``make_model``
    copies it into the model (a second, whole copy at once); here each tensor is copied
    once, into its place. Intermediate value_info is not exported: shapes may be stale
    after an edit, and shape inference recomputes them.
    """
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
    from onnx_graphsurgeon.ir.tensor import SparseValues

    result = onnx.ModelProto()
    copy_fields(meta, result)
    g = result.graph
    g.node.extend(OnnxExporter.export_node(n) for n in graph.nodes)
    g.input.extend(OnnxExporter.export_value_info_proto(t, False) for t in graph.inputs)
    g.output.extend(OnnxExporter.export_value_info_proto(t, False) for t in graph.outputs)
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant):
            if isinstance(t._values, SparseValues):
                g.sparse_initializer.append(OnnxExporter.export_sparse_tensor_proto(t))
            else:
                g.initializer.append(OnnxExporter.export_tensor_proto(t))
    if graph.name:
        g.name = graph.name
    if graph.doc_string:
        g.doc_string = graph.doc_string
    if not meta.functions and graph.functions:
        result.functions.extend(OnnxExporter.export_function(f) for f in graph.functions)
    return result


#: Whole-graph exports (copies of the weights) this process has made; a run reports it
#: beside runtime.SESSIONS_BUILT and runtime.SERIALISATIONS.
EXPORTS = [0]


def _exportable_as_is(proto: onnx.ModelProto) -> bool:
    """Whether ``proto`` is what :meth:`Model.to_onnx` would make of it unedited: nodes
    uniquely named and in topological order, no value_info, no outer-scope weights."""
    names = [n.name for n in proto.graph.node]
    if not all(names) or len(set(names)) != len(names) or len(proto.graph.value_info):
        return False
    known = {i.name for i in proto.graph.input} | {t.name for t in proto.graph.initializer} | {""}
    for n in proto.graph.node:
        if any(i not in known for i in n.input):
            return False
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
            return False  # subgraphs: let the export apply its outer-scope rules
        known.update(n.output)
    return True


def _stub_tensor(t: gs.Constant) -> onnx.TensorProto:
    stub = onnx.TensorProto(name=t.name, dims=[int(d) for d in t.shape])
    stub.data_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype))
    stub.data_location = onnx.TensorProto.EXTERNAL
    entry = stub.external_data.add()
    entry.key, entry.value = "location", STUB_LOCATION
    return stub


class Model:
    """A graph being compressed: an onnx-graphsurgeon graph plus the model's metadata.

    Passes edit ``graph`` through :mod:`onnxprune.ir`; each edit calls :meth:`touch`,
    which bumps ``version`` and drops cached analyses (and the cached export).

    The graph shares the weights of the proto it was built from (see
    :func:`_import_lean`): that proto must not be changed while the Model lives.
    """

    def __init__(self, proto: onnx.ModelProto) -> None:
        self._meta = _copy_meta(proto)
        # The declared graph inputs/outputs are kept as written: inference may turn a
        # symbolic output dim into a number, and callers compare the signature.
        self._io = {v.name: _copy_vi(v) for v in list(proto.graph.input) + list(proto.graph.output)}
        inits = {t.name for t in proto.graph.initializer}
        # Initializers listed as inputs (IR >= 4: overridable defaults) are part of the
        # signature: onnx-graphsurgeon drops them, the export puts them back.
        self._init_inputs = [v.name for v in proto.graph.input if v.name in inits]
        self._sub_inits = _subgraph_initializers(proto.graph)
        self._source = proto  # kept alive: the graph's weights live in it
        self.graph: gs.Graph = _import_lean(proto)
        self.version = 0
        self._cache: dict[str, tuple[int, Any]] = {}
        self._export: tuple[tuple[int, int, int], onnx.ModelProto] | None = None
        self._pristine = self._key() if _exportable_as_is(proto) else None
        #: whole-model exports made (reported per run, and by tests: one per graph version).
        self.exports = 0

    def reset(self, proto: onnx.ModelProto) -> None:
        """Replace the graph by ``proto``'s (a pass rolling back to a snapshot)."""
        self._source = proto
        self.graph = _import_lean(proto)
        self.touch()
        self._pristine = self._key() if _exportable_as_is(proto) else None

    def _key(self) -> tuple[int, int, int]:
        return (self.version, id(self.graph), len(self.graph.nodes))

    def refresh_shapes(self) -> None:
        """Re-run shape inference and write the shapes onto the graph's variables.

        Edits that change channel counts leave stale shapes behind; passes that read
        shapes after such edits call this first.
        """
        inferred = _with_shapes(self.skeleton())
        known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
        for name, tensor in self.graph.tensors().items():
            if isinstance(tensor, gs.Variable) and name in known:
                tt = known[name].type.tensor_type
                if tt.HasField("shape"):
                    tensor.shape = [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)
                                    for d in tt.shape.dim]

    @property
    def opset(self) -> int:
        return default_opset(self._meta)

    def touch(self) -> None:
        self.version += 1
        self._cache.clear()
        self._export = None

    def cached(self, key: str, compute: Callable[[Model], Any]) -> Any:
        hit = self._cache.get(key)
        if hit is not None and hit[0] == self.version:
            return hit[1]
        value = compute(self)
        self._cache[key] = (self.version, value)
        return value

    def to_onnx(self) -> onnx.ModelProto:
        """Export to a ModelProto with the original metadata and opsets.

        The export is cached per graph version (and node count, for an edit that forgot
        :meth:`touch`): treat the result as read-only. Intermediate value_info is
        dropped: shapes may be stale after an edit, and shape inference recomputes them.
        """
        key = self._key()
        if key == self._pristine:
            # Unedited since it was built: the proto it came from is this export (a snapshot
            # before a pass then costs no copy of the weights).
            return self._source
        if self._export is not None and self._export[0] == key:
            return self._export[1]
        self.graph.cleanup(remove_unused_graph_inputs=False).toposort()
        result = _export(self.graph, self._meta)
        self.exports += 1
        EXPORTS[0] += 1
        graph = result.graph
        for field in (graph.input, graph.output):
            for i, v in enumerate(field):
                if v.name in self._io:
                    field[i].CopyFrom(self._io[v.name])
        self._add_initializer_inputs(graph)
        if self._sub_inits is not None:
            _keep_outer_weights_outside(graph, graph, self._sub_inits)
        _name_nodes(graph)
        self._export = (key, result)
        return result

    def skeleton(self) -> onnx.ModelProto:
        """The export with every big weight stubbed (see :func:`~onnxprune.shapes.skeleton`),
        for shape inference and checks, made without copying any weight."""
        if self._export is not None and self._export[0] == self._key():
            return skeleton(self._export[1])
        if self._key() == self._pristine:
            return skeleton(self._source)
        swapped: list[tuple[gs.Constant, Any]] = []
        try:
            for t in self.graph.tensors().values():
                if isinstance(t, gs.Constant) and not isinstance(t._values, gs.ir.tensor.SparseValues):
                    try:
                        nbytes = int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize
                        onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype))
                    except (TypeError, KeyError, ValueError):
                        continue  # a type numpy cannot name: exported as it is
                    if nbytes > 1 << 16:
                        swapped.append((t, t._values))
                        t._values = LazyValues(_stub_tensor(t))
            self.graph.cleanup(remove_unused_graph_inputs=False).toposort()
            out = _export(self.graph, self._meta)
        finally:
            for t, values in swapped:
                t._values = values
        for field in (out.graph.input, out.graph.output):
            for i, v in enumerate(field):
                if v.name in self._io:
                    field[i].CopyFrom(self._io[v.name])
        self._add_initializer_inputs(out.graph)
        return out

    def _add_initializer_inputs(self, graph: onnx.GraphProto) -> None:
        if not self._init_inputs:
            return
        inits = {t.name: t for t in graph.initializer}
        have = {v.name for v in graph.input}
        for name in self._init_inputs:
            t = inits.get(name)
            if t is None or name in have:
                continue  # a pass removed it: nothing left to override
            vi = onnx.helper.make_tensor_value_info(name, t.data_type, list(t.dims))
            graph.input.append(vi)
