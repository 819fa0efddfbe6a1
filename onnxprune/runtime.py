"""The one place that builds onnxruntime sessions and measures latency.

Every session in onnxprune (validation, the latency guard, the per-layer timing of the
low-rank passes, activation statistics, CAR, verification) is made by
:func:`make_session`, with the same settings: CPU, ``threads`` intra-op threads, one
inter-op thread, sequential execution, no spinning (an idle session's spinning workers
would steal the core of the session timed next to it).

Latency answers one question, "is B faster than A?", the same way everywhere:
:func:`measure_latency` interleaves the sessions (round i runs every session once,
starting from session i mod k), so drift in the machine hits all alike, and reports
each one's median with its 10th/90th percentiles.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.errors import ModelError, UsageError

#: protobuf refuses to serialise a message over 2 GiB; bigger models go through a file.
PROTOBUF_LIMIT = (1 << 31) - 1

#: How many sessions this process has built (reported per run; tests read it).
SESSIONS_BUILT = [0]


def session_options(threads: int = 1, *, optimize: bool = True) -> ort.SessionOptions:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UsageError(f"threads must be a positive integer, got {threads!r}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def make_session(model: onnx.ModelProto | bytes | str | Path, threads: int = 1, *,
                 optimize: bool = True) -> ort.InferenceSession:
    """A CPU session (see the module doc). ``optimize=False`` keeps every tensor as itself
    (no fusion), for reading intermediate values. Raises ModelError when onnxruntime refuses."""
    so = session_options(threads, optimize=optimize)
    if isinstance(model, onnx.ModelProto) and _too_big_for_bytes(model):
        return _session_from_file(model, so)
    src: bytes | str
    if isinstance(model, onnx.ModelProto):
        src = _serialise(model)
    elif isinstance(model, Path):
        src = str(model)
    else:
        src = model
    SESSIONS_BUILT[0] += 1
    try:
        return ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated types
        raise ModelError(f"onnxruntime cannot load the model: {first_line(exc)}") from exc


#: Protos at least this big reach onnxruntime through a file with external data: a
#: > 2 GiB proto cannot be serialised at all, and below that the bytes would be one more
#: copy of the weights in memory (onnxruntime maps page-aligned external data instead).
FILE_SESSION_BYTES = 256 << 20

#: How many times a whole model was serialised to bytes for a session (reported per run).
SERIALISATIONS = [0]


def _too_big_for_bytes(model: onnx.ModelProto) -> bool:
    from onnxprune.shapes import proto_size

    return proto_size(model) >= FILE_SESSION_BYTES


def _session_from_file(model: onnx.ModelProto, so: ort.SessionOptions) -> ort.InferenceSession:
    import tempfile

    from onnxprune.model import write_external

    with tempfile.TemporaryDirectory(prefix="onnxprune-session-", ignore_cleanup_errors=True) as tmp:
        path = Path(tmp) / "model.onnx"
        write_external(model, path)
        SESSIONS_BUILT[0] += 1
        try:
            return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise ModelError(f"onnxruntime cannot load the model: {first_line(exc)}") from exc


def _serialise(model: onnx.ModelProto) -> bytes:
    SERIALISATIONS[0] += 1
    return model.SerializeToString()


def first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).strip().split("\n")[0].split())
    return text or type(exc).__name__


def measure_latency(
    sessions: Sequence[Any], feed: Mapping[str, np.ndarray], *, warmup: int = 5, runs: int = 50
) -> list[dict[str, float]]:
    """Interleaved timing: round i runs every session once, starting from session i mod k.

    Returns, per session, ``median_ms``, ``p10_ms``, ``p90_ms``, ``mean_ms`` and ``runs``.
    """
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise UsageError(f"latency runs must be a positive integer, got {runs!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise UsageError(f"warmup must be a non-negative integer, got {warmup!r}")
    k = len(sessions)
    feeds = [{i.name: feed[i.name] for i in s.get_inputs() if i.name in feed} for s in sessions]
    times: list[list[float]] = [[] for _ in sessions]
    for rnd in range(warmup + runs):
        for j in range(k):
            idx = (rnd + j) % k
            t0 = time.perf_counter()
            sessions[idx].run(None, feeds[idx])
            dt = time.perf_counter() - t0
            if rnd >= warmup:
                times[idx].append(dt * 1e3)
    result = []
    for ts in times:
        p10, p90 = np.percentile(ts, [10, 90])
        result.append({"median_ms": float(statistics.median(ts)), "p10_ms": float(p10), "p90_ms": float(p90),
                       "mean_ms": float(statistics.fmean(ts)), "runs": len(ts)})
    return result


def measure_budget(sessions: Sequence[Any], feed: Mapping[str, np.ndarray], *, budget_s: float = 0.3,
                   min_runs: int = 5, max_runs: int = 200, warmup: int = 3) -> tuple[list[float], int]:
    """Interleaved timing with as many rounds as fit in ``budget_s`` (within [min_runs, max_runs]).
    Returns each session's median in ms and the rounds run."""
    feed = dict(feed)
    start = time.perf_counter()
    for _ in range(warmup):
        for s in sessions:
            s.run(None, feed)
    per_round = max((time.perf_counter() - start) / max(warmup, 1), 1e-6)
    rounds = int(min(max(budget_s / per_round, min_runs), max_runs))
    times: list[list[float]] = [[] for _ in sessions]
    order = list(range(len(sessions)))
    for r in range(rounds):
        for i in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            sessions[i].run(None, feed)
            times[i].append(time.perf_counter() - t0)
    return [1e3 * statistics.median(t) for t in times], rounds


def latency_ratio(before: onnx.ModelProto, after: onnx.ModelProto, feed: Mapping[str, np.ndarray], *,
                  threads: int = 1, runs: int = 30, warmup: int = 3) -> float:
    """Median latency of ``after`` over ``before`` on ``feed``, timed interleaved (< 1: faster)."""
    sessions = [make_session(before, threads), make_session(after, threads)]
    t = measure_latency(sessions, feed, warmup=warmup, runs=runs)
    return t[1]["median_ms"] / t[0]["median_ms"]
