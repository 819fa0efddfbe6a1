"""Helpers for tests of passes, criteria and pipelines (not used by the compiler itself).

Small models built in code (:func:`make_model`, :func:`vinfo`), running them
(:func:`run`, :func:`random_feeds`), and a CNN over any size with external data
(:func:`write_large_cnn`) to try a pipeline on models over 2 GB. The project's own
test-only code (random architectures, oracles) lives in ``tests/_support``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_model(nodes: Sequence[onnx.NodeProto], inputs: Sequence[onnx.ValueInfoProto],
               outputs: Sequence[onnx.ValueInfoProto], initializers: dict[str, np.ndarray] | None = None,
               *, opset: int = 17, name: str = "test") -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()]
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def vinfo(name: str, shape: Sequence[int | str | None] | None, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, None if shape is None else list(shape))


def run(model: onnx.ModelProto | str | os.PathLike[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of ``model`` (a proto, or a path for models with external data) on ``feeds``."""
    from onnxprune.runtime import make_session

    src = Path(model) if isinstance(model, (str, os.PathLike)) else model
    return make_session(src).run(None, feeds)


def random_feeds(model: onnx.ModelProto, seed: int = 0, batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    init = {t.name for t in model.graph.initializer}
    feeds = {}
    for i in model.graph.input:
        if i.name in init:
            continue
        # dim_value -1 (older exporters' dynamic batch) is as dynamic as a dim_param.
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else batch
                for d in i.type.tensor_type.shape.dim]
        feeds[i.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def write_large_cnn(path: str | os.PathLike[str], target_bytes: int, *, width: int = 2048, seed: int = 0) -> int:
    """Write a CNN of about ``target_bytes`` of float32 weights, with external data, to ``path``.

    ::

        X[1, 64, 4, 4] ─Conv3x3(64→w)─Relu─[Conv3x3(w→w)─Relu]×n─GlobalAveragePool─Flatten
                       ─Gemm(w→1024)─Relu─Gemm(1024→10)─▶ Y

    Each weight is generated, written to ``<name>.data`` and dropped before the next one,
    so making a model of several GB needs memory for one layer only (a model over 2 GB
    cannot be built as one proto at all). Returns the size of the data file.
    """
    target = Path(path)
    data_name = target.name + ".data"
    rng = np.random.default_rng(seed)
    per_conv = width * width * 9 * 4
    n_conv = max(1, int(target_bytes // per_conv))
    shapes: list[tuple[str, tuple[int, ...]]] = [("w_in", (width, 64, 3, 3))]
    shapes += [(f"w{i}", (width, width, 3, 3)) for i in range(n_conv)]
    shapes += [("fc1", (1024, width)), ("fc2", (10, 1024))]
    inits: list[onnx.TensorProto] = []
    offset = 0
    with open(target.parent / data_name, "wb") as fh:
        for name, shape in shapes:
            fan_in = int(np.prod(shape[1:]))
            w = (rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in)))
            pad = (-offset) % 4096  # page-aligned, so onnxruntime can map the data
            fh.write(b"\0" * pad)
            offset += pad
            fh.write(w.tobytes())
            t = onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
            t.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(w.nbytes))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            offset += w.nbytes
            inits.append(t)
            del w
        for name, size in (("b_fc1", 1024), ("b_fc2", 10)):
            inits.append(numpy_helper.from_array(np.zeros(size, np.float32), name))
    nodes = [helper.make_node("Conv", ["X", "w_in"], ["c_in"], pads=[1, 1, 1, 1], name="conv_in"),
             helper.make_node("Relu", ["c_in"], ["r_in"], name="relu_in")]
    prev = "r_in"
    for i in range(n_conv):
        nodes += [helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        prev = f"r{i}"
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc1", "b_fc1"], ["h"], transB=1, name="fc1"),
              helper.make_node("Relu", ["h"], ["hr"], name="relu_fc"),
              helper.make_node("Gemm", ["hr", "fc2", "b_fc2"], ["Y"], transB=1, name="fc2")]
    graph = helper.make_graph(nodes, "large_cnn", [vinfo("X", [1, 64, 4, 4])], [vinfo("Y", [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    target.write_bytes(model.SerializeToString())
    return offset
