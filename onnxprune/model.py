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
* IR < 4 models (initializers listed as graph inputs) are lifted to IR 4, opset unchanged.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from onnxprune.errors import ModelError, UnsupportedError

MIN_OPSET = 7
# Protobuf cannot serialise more than 2 GiB; stay well clear of it.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


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
        raw = p.read_bytes()
    except OSError as exc:
        raise ModelError(f"{p}: cannot read ({exc.strerror})") from exc
    if not raw:
        raise ModelError(f"{p}: empty file, not an ONNX model")
    try:
        model = onnx.load_model_from_string(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelError(f"{p}: not an ONNX model or truncated (protobuf parse failed)") from exc
    if not model.graph.node or model.ir_version <= 0 or not model.opset_import:
        raise ModelError(f"{p}: not an ONNX model (no graph, IR version or opset)")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(p.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:
            raise ModelError(f"{p}: external data missing or unreadable ({_first_line(exc)})") from exc
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise UnsupportedError(f"{p}: opset {opset} is older than the minimum supported {MIN_OPSET}")
    try:
        onnx.checker.check_model(model if model.ByteSize() < EXTERNAL_DATA_THRESHOLD else str(p))
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"{p}: invalid ONNX model: {_first_line(exc)}") from exc
    return normalize(model)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def normalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a normalised copy (see module docstring); the argument is not changed."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
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


FOLD_SIZE_LIMIT = 1 << 24  # never materialise a folded constant over 16 MiB


def _fold_constants(m: onnx.ModelProto) -> None:
    """Evaluate subgraphs whose inputs are all constants (a Reshape of a weight, a Transpose
    of one), so passes see plain initializers. Uses onnx-graphsurgeon's folding, which runs
    those nodes in onnxruntime; on any failure the graph is left as it was."""
    if m.ByteSize() >= EXTERNAL_DATA_THRESHOLD:
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
    if not missing or m.ByteSize() >= EXTERNAL_DATA_THRESHOLD:
        return
    try:
        inferred = onnx.shape_inference.infer_shapes(m)
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
    """Serialised size in bytes, counting external tensors' data once."""
    return int(model.ByteSize())


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str], *, external_data: bool | None = None) -> Path:
    """Write ``model`` atomically. External data is used when asked or when the model is large.

    With external data the weights go to ``<name>.data`` beside the model. Both files are
    first written into a temporary folder next to the target; the data file is moved in
    place before the model file, so a reader never sees a model without its data.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise ModelError(f"{target}: output folder does not exist")
    size = model_size_bytes(model)
    use_external = size >= EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
    tmpdir = Path(tempfile.mkdtemp(prefix=".onnxprune-", dir=folder))
    try:
        tmp_model = tmpdir / target.name
        if use_external:
            data_name = target.name + ".data"
            # onnx converts the proto it saves in place; keep the caller's intact.
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            onnx.save_model(
                copy,
                str(tmp_model),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=0,
            )
            if (tmpdir / data_name).exists():
                os.replace(tmpdir / data_name, folder / data_name)
        else:
            with open(tmp_model, "wb") as fh:
                fh.write(model.SerializeToString())
        os.replace(tmp_model, target)
    finally:
        for leftover in tmpdir.iterdir():
            leftover.unlink()
        tmpdir.rmdir()
    return target


# Ops whose output has their first input's type and shape, for the ops onnx infers
# nothing for (GroupNormalization-21 in onnx 1.23, say).
SAME_SHAPE_OPS = frozenset({"GroupNormalization", "LayerNormalization", "InstanceNormalization", "Relu", "Sigmoid",
                            "Identity", "Clip", "HardSwish", "LeakyRelu", "Tanh", "Erf"})


def _with_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Shape-inferred copy (symbolic dims kept); the proto itself when inference fails or it is huge."""
    if proto.ByteSize() >= EXTERNAL_DATA_THRESHOLD:
        return proto
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


class Model:
    """A graph being compressed: an onnx-graphsurgeon graph plus the model's metadata.

    Passes edit ``graph`` through :mod:`onnxprune.ir`; each edit calls :meth:`touch`,
    which bumps ``version`` and drops cached analyses.
    """

    def __init__(self, proto: onnx.ModelProto) -> None:
        self._meta = onnx.ModelProto()
        self._meta.CopyFrom(proto)
        self._meta.graph.Clear()
        # The declared graph inputs/outputs are kept as written: inference may turn a
        # symbolic output dim into a number, and callers compare the signature.
        self._io = {v.name: _copy_vi(v) for v in list(proto.graph.input) + list(proto.graph.output)}
        self.graph: gs.Graph = gs.import_onnx(_with_shapes(proto))
        self.version = 0
        self._cache: dict[str, tuple[int, Any]] = {}

    def reset(self, proto: onnx.ModelProto) -> None:
        """Replace the graph by ``proto``'s (a pass rolling back to a snapshot)."""
        self.graph = gs.import_onnx(_with_shapes(proto))
        self.touch()

    def refresh_shapes(self) -> None:
        """Re-run shape inference and write the shapes onto the graph's variables.

        Edits that change channel counts leave stale shapes behind; passes that read
        shapes after such edits call this first.
        """
        inferred = _with_shapes(self.to_onnx())
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

    def cached(self, key: str, compute: Callable[[Model], Any]) -> Any:
        hit = self._cache.get(key)
        if hit is not None and hit[0] == self.version:
            return hit[1]
        value = compute(self)
        self._cache[key] = (self.version, value)
        return value

    def to_onnx(self) -> onnx.ModelProto:
        """Export to a ModelProto with the original metadata and opsets.

        Intermediate value_info is dropped: shapes may be stale after an edit, and
        shape inference recomputes them.
        """
        self.graph.cleanup(remove_unused_graph_inputs=False).toposort()
        out = gs.export_onnx(self.graph, do_type_check=False)
        result = onnx.ModelProto()
        result.CopyFrom(self._meta)
        result.graph.CopyFrom(out.graph)
        del result.graph.value_info[:]
        for field in (result.graph.input, result.graph.output):
            for i, v in enumerate(field):
                if v.name in self._io:
                    field[i].CopyFrom(self._io[v.name])
        _name_nodes(result.graph)
        return result
