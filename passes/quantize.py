"""quantize: 8-bit integer arithmetic through onnxruntime's quantizer, with the manual steps done.

Before::  X ─Conv(W fp32)─▶ Relu ─▶ Conv(W2 fp32) ─▶ Y
After (static, QDQ)::
          X ─Q─DQ─Conv(DQ(W int8, per-channel))─Q─DQ─▶ Conv(DQ(W2 int8)) ─Q─DQ─▶ Y
          (onnxruntime fuses each DQ→op→Q into QLinearConv at session creation)
After (``mode=dynamic``)::  MatMul(X, W) → MatMulInteger(DynamicQuantizeLinear(X), W int8) · scales

The arithmetic is onnxruntime.quantization's (``quantize_static`` / ``quantize_dynamic``);
this pass does what it leaves to its user:

* initializers listed as graph inputs (IR < 4) removed, the opset raised to 13 with
  ``onnx.version_converter`` and checked against the original's outputs on one
  calibration batch (onnxruntime writes invalid QDQ models below opset 13);
* ``quant_pre_process`` (shape inference and the basic graph optimizations);
* calibration on the context's calibration data (``calibrate=minmax|entropy|percentile``),
  collected in strides so histogram calibration holds at most 16 batches of activations;
* weights int8 symmetric per output channel; activation type for the target
  (``activations=auto``): uint8. Measured here (Xeon with AVX-512 VNNI and AMX,
  mobilenetv2, 1 thread): uint8 activations 1.72x faster than fp32, int8 activations
  1.05x: onnxruntime's CPU kernels fuse QDQ into QLinearConv for u8 activations, and s8
  activations stay mostly unfused; the same holds on AVX2 without VNNI (the issue's
  measurements). So ``auto`` is uint8 on every x86 target, int8 remains a choice;
* ``exclude=none`` (default): every quantizable node is quantized. Measured on the zoo
  (docs/benchmarks/quantize.md), keeping nodes in float bought no top-1 on the
  evaluation split (efficientnet-lite0 -0.81 either way, squeezenet1.1 -0.13 with two
  float convs against +0.40 without) and cost speed and size, so it is opt-in;
* ``exclude=auto``: per node measured, never guessed. When the fully quantized model
  loses at most ``max_drop`` points of the context's evaluator score (top-1 with labels,
  else cosine x100) on the calibration data, every node stays quantized. Otherwise, with
  the ranges calibrated once, every quantizable node is tried in float with the rest quantized, scored by output
  fidelity (mean cosine to the float model) on ``search_samples`` calibration samples;
  the sweep is bounded by ``search_seconds`` (measured from the output backwards, the
  first node early); then, best first, greedily, a node stays float when it removes at least ``min_gain`` of
  the remaining error and the model stays within ``latency_budget`` of the fully quantized
  one's latency (measured interleaved), at most ``max_excluded`` nodes, stopping as soon
  as the evaluator's drop is within ``max_drop``.
  ``exclude=PATTERN`` keeps in float the nodes whose name or op type match any
  ``|``-separated fnmatch pattern; ``exclude=none`` quantizes everything;
* ``float-outputs=true`` (default): the Q→DQ pair onnxruntime puts on each graph output is
  removed, so a classifier's logits are not rounded to 8 bits (it is the last op: no speed
  is lost). Measured on mobilenetv2 (``python tools/exp_quantize_folds.py mobilenetv2
  quantize quantize:float-outputs=false``; ranges from 128 / 128 / 256 / 64 calibration
  images), top-1 drop on the 744 evaluation images with the pair 0.54 / 1.88 / 0.40 / 0.40,
  without it 0.67 / 1.75 / 0.54 / 0.81 (one image is 0.13: a wash), and on the 128-image
  halves auto checks on, 2.34 / 0.78 with it, 1.56 / -0.78 without
  (:func:`onnxprune.quantized.float_graph_outputs`);
* a model that arrives quantized (QDQ or QLinear ops) is reported as such, unchanged.

Graph inputs and outputs stay float32. Dynamic mode needs no data: weights of MatMul/Gemm
with constant B are int8, activations are quantized per call (transformers: MiniLM).
"""
from __future__ import annotations

import contextlib
import fnmatch
import importlib.util
import io
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from onnxprune.context import Evaluator, PassContext
from onnxprune.errors import UsageError
from onnxprune.manager import Pass, PassResult, check_range
from onnxprune.model import Model, model_size_bytes
from onnxprune.quantized import adopt, float_graph_outputs, prepare_for_quantization, quantized_ops

log = logging.getLogger(__name__)

#: op types whose float execution can buy accuracy back (data movement is excluded: it is exact).
CANDIDATE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Concat", "GlobalAveragePool",
                           "AveragePool", "Softmax", "Sigmoid", "Resize", "LayerNormalization"})
#: at most this many calibration samples' activations are held at once while ranges are
#: calibrated: onnxruntime's calibrators keep every intermediate output of the data they are
#: given before reducing it (mobilenetv2 at 224x224 is ~27 MB a sample; 256 samples handed
#: over at once peaked above 14 GB of RSS and were killed on a 24 GB machine).
CALIB_CHUNK = 16


@dataclass(frozen=True)
class Options:
    """Options of the quantize pass (see the module docstring for the exclude=auto search).

    mode: static (QDQ, activation ranges calibrated on data; default) or dynamic (MatMul/Gemm weights int8, no data)
    calibrate: activation-range calibration for static mode: minmax, entropy or percentile (default)
    percentile: with calibrate=percentile, the percentile of |activation| kept as the range (in (50, 100]; default 99.999)
    activations: activation type for static mode: auto (uint8 on x86 targets; default), uint8 or int8
    per-channel: weights quantized per output channel (default true) rather than per tensor
    exclude: nodes kept in float: none (default), auto (measured search) or |-separated fnmatch patterns on name/op type
    max-excluded: with exclude=auto, at most this many nodes kept in float (default 3)
    max-drop: with exclude=auto, allowed drop of the evaluator score in points (top-1 or cosine x100; default 0.5)
    latency-budget: with exclude=auto, max latency relative to the fully quantized model (in [1, 10]; default 1.10)
    min-gain: with exclude=auto, a node stays float only if it removes this share of the remaining error (default 0.05)
    search-samples: with exclude=auto, calibration samples used to score each candidate node (default 64)
    search-seconds: with exclude=auto, time bound in seconds on the per-node sweep (default 90)
    preprocess: run onnxruntime's quant_pre_process (shape inference, basic optimizations) first (default true)
    float-outputs: graph outputs stay float: the quantizer's Q/DQ pair on each output is removed (not after Conv; default true)
    """

    mode: Literal["static", "dynamic"] = "static"
    calibrate: Literal["minmax", "entropy", "percentile"] = "percentile"
    percentile: float = 99.999
    activations: Literal["auto", "uint8", "int8"] = "auto"
    per_channel: bool = True
    exclude: str = "none"
    max_excluded: int = 3
    max_drop: float = 0.5
    latency_budget: float = 1.10
    min_gain: float = 0.05
    search_samples: int = 64
    search_seconds: float = 90.0
    preprocess: bool = True
    float_outputs: bool = True

    def __post_init__(self) -> None:
        check_range("quantize", "percentile", self.percentile, 50.0, 100.0, lo_open=True)
        check_range("quantize", "latency-budget", self.latency_budget, 1.0, 10.0)
        check_range("quantize", "min-gain", self.min_gain, 0.0, 1.0)
        check_range("quantize", "max-drop", self.max_drop, 0.0, 100.0)
        if self.max_excluded < 0:
            raise UsageError(f"pass quantize: max-excluded must be >= 0, got {self.max_excluded}")
        check_range("quantize", "search-seconds", self.search_seconds, 0.0, 1e6)
        if self.search_samples < 1:
            raise UsageError(f"pass quantize: search-samples must be >= 1, got {self.search_samples}")


class Quantize(Pass):
    """Quantize to int8 with onnxruntime (static QDQ per-channel, or dynamic), opset/IR/pre-processing done."""

    name = "quantize"
    Options = Options
    accepts_quantized = True  # to say "already quantized" rather than refuse

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        opts: Options = self.options
        proto = model.to_onnx()
        found = quantized_ops(proto)
        if found:
            return PassResult(False, {"already_quantized": found,
                                      "reason": f"the model is already quantized ({found}); nothing was changed"})
        before = model_size_bytes(proto)
        if opts.mode == "static":
            ctx.require_data(self.name, "static quantization (activation ranges)")
            if not ctx.has_data:
                raise UsageError("pass quantize: static quantization calibrates activation ranges and random data "
                                 "gives wrong ones: give --calib DATA or --data DATA, or use quantize:mode=dynamic")
        feed = ctx.feed()
        prepared, steps = prepare_for_quantization(proto, feed, threads=ctx.target.threads)
        stats: dict[str, Any] = {"mode": opts.mode, "prepared": steps}
        with tempfile.TemporaryDirectory(prefix="onnxprune-quantize-") as tmp:
            job = _Job(Path(tmp), opts, ctx)
            src = job.preprocess(prepared, stats)
            if opts.mode == "dynamic":
                out = job.dynamic(src)
            else:
                out = job.static(src, onnx.load(str(src)), stats)
                stats["float_outputs"] = job.float_outputs
        if not quantized_ops(out):
            return PassResult(False, {**stats, "reason": "onnxruntime quantized no node of this model"})
        onnx.checker.check_model(out, full_check=True)
        adopt(model, out)
        stats["size_bytes"] = [before, model_size_bytes(out)]
        stats["quantized_as"] = quantized_ops(out)
        return PassResult(True, stats)


class _Reader:
    """onnxruntime's CalibrationDataReader over the calibration batches cut into chunks of
    at most ``chunk`` samples, with ranges for strided collection (one chunk a stride)."""

    def __init__(self, batches: list[dict[str, np.ndarray]], names: set[str], chunk: int = CALIB_CHUNK) -> None:
        self.batches = [piece for b in batches for piece in _chunks({k: v for k, v in b.items() if k in names}, chunk)]
        self._it = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.batches[start_index:end_index])

    def rewind(self) -> None:
        self._it = iter(self.batches)


def _chunks(batch: dict[str, np.ndarray], chunk: int) -> list[dict[str, np.ndarray]]:
    """A batch cut along its sample axis into pieces of at most ``chunk`` samples (kept
    whole when its inputs do not share one leading sample count)."""
    sizes = {np.shape(v)[0] if np.ndim(v) else None for v in batch.values()}
    n = sizes.pop() if len(sizes) == 1 else None
    if not n or n <= chunk:
        return [batch]
    return [{k: v[i:i + chunk] for k, v in batch.items()} for i in range(0, n, chunk)]


class _Job:
    """One quantization in a temporary folder: pre-processing, calibration once, then as
    many quantizations (different float nodes) as the exclusion search asks for."""

    def __init__(self, tmp: Path, opts: Options, ctx: PassContext) -> None:
        self.tmp, self.opts, self.ctx = tmp, opts, ctx
        self.cache = tmp / "calibration.json"
        self.count = 0
        self.float_outputs: list[str] = []

    def preprocess(self, prepared: onnx.ModelProto, stats: dict[str, Any]) -> Path:
        raw = self.tmp / "prepared.onnx"
        onnx.save(prepared, str(raw))
        if not self.opts.preprocess:
            return raw
        from onnxruntime.quantization.shape_inference import quant_pre_process

        out = self.tmp / "preprocessed.onnx"
        symbolic = importlib.util.find_spec("sympy") is not None  # onnxruntime's symbolic inference needs it
        try:
            quant_pre_process(str(raw), str(out), skip_symbolic_shape=not symbolic)
            onnx.checker.check_model(str(out))
        except Exception as exc:  # pre-processing is an optimisation: quantize the prepared graph instead
            stats["preprocess"] = f"skipped: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
            return raw
        stats["preprocess"] = "quant_pre_process" + ("" if symbolic else " (no symbolic shape inference: sympy absent)")
        return out

    def dynamic(self, src: Path) -> onnx.ModelProto:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out = self.tmp / "dynamic.onnx"
        quantize_dynamic(str(src), str(out), op_types_to_quantize=["MatMul", "Gemm"], per_channel=self.opts.per_channel,
                         weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True})
        return onnx.load(str(out))

    def activation_type(self) -> str:
        # Measured (module docstring): u8 activations are the fast ones on x86 with or without VNNI.
        return "int8" if self.opts.activations == "int8" else "uint8"

    def quantize(self, src: Path, exclude: list[str]) -> onnx.ModelProto:
        """One static quantization; the first call calibrates and caches the ranges."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        calib = self.ctx.calib
        assert calib is not None
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[self.opts.calibrate]
        names = {i.name for i in onnx.load(str(src), load_external_data=False).graph.input}
        reader = _Reader(calib.batches, names)
        # one chunk per collection: onnxruntime reduces (min/max, histograms) after each stride
        extra: dict[str, Any] = {"CalibStridedMinMax": 1}
        if self.opts.calibrate == "percentile":
            extra["CalibPercentile"] = self.opts.percentile
        act = QuantType.QUInt8 if self.activation_type() == "uint8" else QuantType.QInt8
        self.count += 1
        out = self.tmp / f"q{self.count}.onnx"
        def run() -> None:
            # onnxruntime's calibrators print progress with print(); only the CLI prints here.
            with contextlib.redirect_stdout(io.StringIO()):
                _static()

        def _static() -> None:
            quantize_static(str(src), str(out), reader, quant_format=QuantFormat.QDQ,
                            per_channel=self.opts.per_channel, activation_type=act, weight_type=QuantType.QInt8,
                            nodes_to_exclude=list(exclude), calibrate_method=method, extra_options=extra,
                            calibration_cache_path=str(self.cache))

        try:
            run()
        except ValueError as exc:
            # onnxruntime 1.31's int32-bias weight-scale adjustment indexes a bias of shape
            # [1, N] (MatMul + Add heads, e.g. mnist-8) as if it were [N] and fails; the
            # adjustment only guards against int32 overflow of tiny scales, so redo without it.
            if "truth value of an array" not in str(exc):
                raise
            extra["QDQDisableWeightAdjustForInt32Bias"] = True
            reader = _Reader(calib.batches, names)
            run()
        q = onnx.load(str(out))
        out.unlink()
        if self.opts.float_outputs:
            self.float_outputs = float_graph_outputs(q)
        return q

    def static(self, src: Path, float_model: onnx.ModelProto, stats: dict[str, Any]) -> onnx.ModelProto:
        opts = self.opts
        calib = self.ctx.calib
        assert calib is not None
        stats.update({"calibrate": opts.calibrate, "calibration_samples": calib.n_samples,
                      "activations": self.activation_type(), "weights": "int8 " + ("per-channel" if opts.per_channel
                                                                                  else "per-tensor")})
        start = time.perf_counter()
        full = self.quantize(src, [])
        stats["calibration_seconds"] = round(time.perf_counter() - start, 2)
        mode = opts.exclude.strip()
        if mode.lower() == "none" or not mode:
            stats["excluded"] = []
            return full
        if mode.lower() != "auto":
            names = _matching(float_model, mode)
            if not names:
                raise UsageError(f"pass quantize: exclude={mode!r} matches no node (patterns match node names or op types)")
            stats["excluded"] = names
            return self.quantize(src, names)
        excluded, search = self.search(src, float_model, full)
        stats["excluded"] = [e["node"] for e in excluded]
        stats["exclusion_search"] = search
        return self.quantize(src, stats["excluded"]) if excluded else full

    def search(self, src: Path, float_model: onnx.ModelProto, full: onnx.ModelProto) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The measured greedy exclusion (module docstring)."""
        from onnxprune.data import Dataset
        from onnxprune.runtime import make_session, measure_budget

        opts, ctx = self.opts, self.ctx
        calib = ctx.calib
        assert calib is not None
        if opts.max_excluded == 0:
            return [], {"skipped": "max-excluded=0"}
        # Accuracy first: a model whose every node quantizes within max-drop keeps them all
        # (a float node costs latency and buys back nothing that matters).
        judge = ctx.evaluator
        # the model as it arrives here (after earlier passes), not the original, is the reference
        reference = judge.score(float_model) if judge is not None else None
        if judge is not None and reference is not None:
            drop = 100 * (reference - judge.score(full))
            if drop <= opts.max_drop:
                return [], {"skipped": f"all nodes quantized lose {drop:.2f} points ({judge.metric}) on the "
                                       f"calibration data, within max-drop={opts.max_drop}"}
        batches, n = [], 0
        for b in calib.batches:
            if n >= opts.search_samples:
                break
            batches.append(b)
            n += next((v.shape[0] for v in b.values() if np.ndim(v)), 1)
        fid = Evaluator(float_model, Dataset(batches, None, "quantize search"), threads=ctx.target.threads,
                        metric="cosine")
        start = time.perf_counter()
        base = fid.score(full)
        candidates = _search_order([nd.name for nd in float_model.graph.node if nd.op_type in CANDIDATE_OPS and nd.name])
        gains = []
        for name in candidates:
            if time.perf_counter() - start > opts.search_seconds:
                break
            gains.append((fid.score(self.quantize(src, [name])) - base, name))
        measured = len(gains)
        gains.sort(reverse=True)
        feed = ctx.feed()
        full_sess = make_session(full, ctx.target.threads)
        chosen: list[dict[str, Any]] = []
        current = base
        tried = 0
        for gain, name in gains:
            if len(chosen) >= opts.max_excluded or tried >= 2 * opts.max_excluded or gain <= 0:
                break
            tried += 1
            trial = [c["node"] for c in chosen] + [name]
            q = self.quantize(src, trial)
            score = fid.score(q)
            if (1.0 - score) > (1.0 - current) * (1.0 - opts.min_gain):
                continue
            ratio = 1.0
            if feed is not None:
                ms, _ = measure_budget([full_sess, make_session(q, ctx.target.threads)], feed, budget_s=1.0)
                ratio = ms[1] / ms[0]
                if ratio > opts.latency_budget:
                    continue
            chosen.append({"node": name, "error_before": round(1.0 - current, 6), "error_after": round(1.0 - score, 6),
                           "latency_vs_all_quantized": round(ratio, 3)})
            current = score
            if judge is not None and reference is not None:
                drop = 100 * (reference - judge.score(q))
                chosen[-1]["drop_points"] = round(drop, 3)
                if drop <= opts.max_drop:
                    break
        search = {"metric": "mean cosine to float outputs", "samples": n, "candidates": len(candidates),
                  "measured": measured,
                  "error_all_quantized": round(1.0 - base, 6), "error_final": round(1.0 - current, 6),
                  "top_single_gains": [{"node": nm, "gain": round(g, 6)} for g, nm in gains[:5]],
                  "seconds": round(time.perf_counter() - start, 1)}
        return chosen, search


def _search_order(names: list[str]) -> list[str]:
    """Candidates in the order the time-bounded search measures them: from the output
    backwards, with the first node early (late layers and the stem are where a float node
    buys most accuracy back on CNNs; the order only decides what a short budget reaches)."""
    rev = names[::-1]
    if len(rev) > 2:
        rev.insert(2, rev.pop())
    return rev


def _matching(model: onnx.ModelProto, patterns: str) -> list[str]:
    pats = [p.strip() for p in patterns.split("|") if p.strip()]
    return [n.name for n in model.graph.node
            if any(fnmatch.fnmatchcase(n.name, p) or fnmatch.fnmatchcase(n.op_type, p) for p in pats)]


def quantize(proto: onnx.ModelProto, *, ctx: PassContext | None = None, **options: Any) -> onnx.ModelProto:
    """Library twin: ``quantize(proto, ctx=ctx, calibrate="minmax")`` → quantized ModelProto."""
    from onnxprune.api import run_passes

    result, _ = run_passes(proto, [Quantize(Options(**options))], ctx=ctx)
    return result
