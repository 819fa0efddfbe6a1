"""Measured latency of a dense layer against its factored replacement, in onnxruntime.

Fewer FLOPs is not the same as faster: a chain of three small Convs pays three kernel
launches and three passes over memory where the dense Conv paid one, and onnxruntime's
kernels prefer some channel counts to others. So the factorisation passes ask this
module, per layer shape, whether the replacement is actually faster.

A layer is described as a :data:`Chain`: a few :class:`Step` s (op type, inputs, one
output, attributes) that read ``"x"`` and whose last step writes the result. From a
chain and a concrete input shape, :func:`chain_model` builds a tiny single-layer model
with ``onnx.helper``. :func:`compare` times the dense and the factored model:

* one onnxruntime session each, ``threads`` intra-op threads (1 by default),
  sequential execution, default graph optimisations;
* a few warm-up runs, then rounds that run both models back to back, alternating which
  goes first, so drift (frequency scaling, a noisy neighbour) hits both alike;
* as many rounds as fit in ``budget_s`` (within ``[min_runs, max_runs]``); the result
  is each model's median.

Timing depends on shapes, not on weight values, so the tiny models get random weights
of the right shapes (integer constants such as Slice bounds keep their values). Results
are cached in a JSON file (the pass context's ``cache_dir``; in memory when none is given), keyed by
the onnxruntime version, the CPU model and the thread count, then by a hash of the two
chains' structure (op types, attributes, constant shapes, wiring), the input shape,
dtype and opset. A cache that cannot be read or written is ignored with a warning:
the measurement is then repeated next time, nothing fails.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnxprune.runtime import make_session, measure_budget

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
INPUT = "x"

#: how many dense-vs-factored measurements :func:`compare` has run in this process (cache hits
#: not counted); tests read it to check that each distinct layer shape is timed once.
MEASUREMENTS = [0]


@dataclass(frozen=True, eq=False)
class Const:
    """A constant input of a step; ``label`` names it in the graph (``W``, ``B``, ``U`` ...)."""

    label: str
    value: np.ndarray


@dataclass(frozen=True, eq=False)
class Step:
    """One node of a chain. ``inputs`` are ``"x"``, an earlier step's output, a :class:`Const`,
    or ``""`` (an omitted optional input)."""

    name: str
    op: str
    inputs: tuple[str | Const, ...]
    output: str
    attrs: Mapping[str, Any] = field(default_factory=dict)


Chain = Sequence[Step]


class WeightMode(str, Enum):
    """What :func:`chain_model` makes of float constants."""

    VALUES = "values"  # initializers holding the given values
    RANDOM = "random"  # initializers of random values of the same shapes (timing)
    INPUTS = "inputs"  # graph inputs of the same shapes (shape inference and costing)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment_key(threads: int) -> str:
    return f"onnxruntime={ort.__version__};cpu={cpu_model()};threads={threads}"


def _attr_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_attr_text(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(float(value))
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def chain_text(chain: Chain) -> str:
    """Canonical text of a chain's structure: names replaced by positions, float constants
    by their shapes, integer constants spelled out."""
    names = {INPUT: INPUT, "": ""}
    lines = []
    for i, step in enumerate(chain):
        args = []
        for inp in step.inputs:
            if isinstance(inp, Const):
                v = np.asarray(inp.value)
                if v.dtype.kind == "f":
                    args.append(f"{v.dtype}{list(v.shape)}")
                else:
                    args.append(f"{v.dtype}{v.reshape(-1).tolist()}@{list(v.shape)}")
            else:
                args.append(names[inp])
        names[step.output] = f"v{i}"
        attrs = ",".join(f"{k}={_attr_text(v)}" for k, v in sorted(step.attrs.items()))
        lines.append(f"{step.op}({', '.join(args)}){{{attrs}}}")
    return "; ".join(lines)


def chain_model(chain: Chain, input_shape: Sequence[int], *, dtype: np.dtype | type = np.float32, opset: int = 17,
                weights: WeightMode = WeightMode.VALUES, seed: int = 0) -> onnx.ModelProto:
    """A single-layer model ``x -> chain -> y`` with ``x`` of ``input_shape``.

    ``weights`` says what float constants become (:class:`WeightMode`): random values
    serve timing, where only shapes matter; graph inputs serve costing without copying
    the weights. Integer constants (Slice bounds, pads) always keep their values.
    """
    weights = WeightMode(weights)
    rng = np.random.default_rng(seed)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inputs = [helper.make_tensor_value_info(INPUT, elem, list(input_shape))]
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    for i, step in enumerate(chain):
        names = []
        for inp in step.inputs:
            if isinstance(inp, Const):
                value = np.asarray(inp.value)
                name = f"c{len(inits) + len(inputs)}_{inp.label}"
                if value.dtype.kind == "f" and weights is WeightMode.INPUTS:
                    inputs.append(helper.make_tensor_value_info(
                        name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)))
                else:
                    if value.dtype.kind == "f" and weights is WeightMode.RANDOM:
                        value = rng.standard_normal(value.shape).astype(value.dtype)
                    inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
                names.append(name)
            else:
                names.append(inp)
        out = "y" if i == len(chain) - 1 else step.output
        nodes.append(helper.make_node(step.op, names, [out], name=step.name or f"n{i}", **dict(step.attrs)))
    graph = helper.make_graph(nodes, "layer", inputs, [helper.make_tensor_value_info("y", elem, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(onnx.IR_VERSION, 8)
    return model


@dataclass(frozen=True)
class Timing:
    """Median milliseconds of the dense and the factored layer, measured interleaved."""

    dense_ms: float
    factored_ms: float
    runs: int
    cached: bool = False

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.factored_ms if self.factored_ms > 0 else float("inf")

    @property
    def faster(self) -> bool:
        return self.factored_ms < self.dense_ms

    def to_dict(self) -> dict[str, Any]:
        return {"dense_ms": round(self.dense_ms, 4), "factored_ms": round(self.factored_ms, 4),
                "speedup": round(self.speedup, 3), "runs": self.runs, "cached": self.cached}


class LatencyCache:
    """The JSON cache file: ``{"format": 1, "environments": {env: {key: entry}}}``.

    Read once when made; every :meth:`store` rewrites the file atomically (temporary
    file, then rename), so concurrent writers never leave a torn file behind.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        # No path: kept in memory for this run only (the pass context names the file).
        self.path = Path(path) if path is not None else None
        self._data: dict[str, Any] = {"format": CACHE_FORMAT, "environments": {}}
        if self.path is None:
            return
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(raw, dict) and raw.get("format") == CACHE_FORMAT and isinstance(raw.get("environments"), dict):
                self._data = raw
            else:
                log.warning("latency cache %s has an unknown format; starting afresh", self.path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("latency cache %s unreadable (%s); starting afresh", self.path, exc)

    def get(self, env: str, key: str) -> dict[str, Any] | None:
        entry = self._data["environments"].get(env, {}).get(key)
        return entry if isinstance(entry, dict) else None

    def store(self, env: str, key: str, entry: dict[str, Any]) -> None:
        self._data["environments"].setdefault(env, {})[key] = entry
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".latency-", suffix=".json", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self._data, fh, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write latency cache %s: %s", self.path, exc)


def measure(models: Sequence[onnx.ModelProto], feeds: Mapping[str, np.ndarray], *, threads: int = 1,
            budget_s: float = 0.3, min_runs: int = 5, max_runs: int = 200, warmup: int = 3) -> tuple[list[float], int]:
    """Median milliseconds of each model on ``feeds``, run interleaved; and the rounds run."""
    sessions = [make_session(m, threads) for m in models]
    return measure_budget(sessions, feeds, budget_s=budget_s, min_runs=min_runs, max_runs=max_runs, warmup=warmup)


def compare(dense: Chain, factored: Chain, input_shape: Sequence[int], *, dtype: np.dtype | type = np.float32,
            opset: int = 17, cache: LatencyCache | None = None, threads: int = 1, budget_s: float = 0.3) -> Timing:
    """Time ``dense`` against ``factored`` on an input of ``input_shape`` (cached when ``cache`` is given)."""
    env = environment_key(threads)
    dense_text, factored_text = chain_text(dense), chain_text(factored)
    ident = f"x={np.dtype(dtype)}{list(input_shape)};opset={opset}|{dense_text}|{factored_text}"
    key = hashlib.sha256(ident.encode()).hexdigest()[:24]
    if cache is not None:
        hit = cache.get(env, key)
        if hit is not None and {"dense_ms", "factored_ms", "runs"} <= hit.keys():
            return Timing(float(hit["dense_ms"]), float(hit["factored_ms"]), int(hit["runs"]), cached=True)
    models = [chain_model(c, input_shape, dtype=dtype, opset=opset, weights=WeightMode.RANDOM) for c in (dense, factored)]
    x = np.random.default_rng(0).standard_normal(tuple(input_shape)).astype(dtype)
    (dense_ms, factored_ms), runs = measure(models, {INPUT: x}, threads=threads, budget_s=budget_s)
    MEASUREMENTS[0] += 1
    timing = Timing(dense_ms, factored_ms, runs)
    if cache is not None:
        cache.store(env, key, {"dense_ms": dense_ms, "factored_ms": factored_ms, "runs": runs,
                               "input": list(input_shape), "dense": dense_text, "factored": factored_text})
    return timing
