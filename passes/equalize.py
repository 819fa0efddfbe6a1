"""equalize: cross-layer equalization, bias absorption and bias correction (Nagel et al. 2019).

Before::  X ─Conv₁(W₁, b₁)─▶ Relu ─▶ Conv₂(W₂, b₂) ─▶ Y      (Conv₁ or Conv₂ may be depthwise)
After::   X ─Conv₁(W₁/s, b₁/s)─▶ Relu ─▶ Conv₂(W₂·s, b₂')─▶ Y

Equalization. For each channel i between the pair, r₁ᵢ = max|W₁[i, ...]| (output channel i
of Conv₁) and r₂ᵢ = max|W₂[:, i, ...]| (input channel i of Conv₂; for a grouped Conv₂ the
output channels of i's group), sᵢ = sqrt(r₁ᵢ / r₂ᵢ) makes both ranges sqrt(r₁ᵢ r₂ᵢ), which
per-tensor weight quantization needs. Relu(x/s) = Relu(x)/s for s > 0, so the rewrite is
exact in float; the pass sweeps every pair ``iterations`` times (chains like MobileNet's
expand → depthwise → project share layers, and the scales converge).

Clip(0, m) (ReLU6). Clip(x/s, 0, m) ≠ Clip(x, 0, m)/s: the scale moves the clip point of
channel i to m·sᵢ, and ONNX Clip bounds are per tensor. ``clip=`` chooses:

* ``exact`` (default): Clip(0, m) becomes Relu followed by Min with a per-channel bound
  m/sᵢ, exact in float. Min is not quantized by onnxruntime, so the pair's activation
  gets a float Min between DequantizeLinear and QuantizeLinear (costs some latency);
* ``relu``: Clip becomes Relu, as in Nagel et al.: values above m are no longer clipped
  (lossy in float wherever a pre-activation exceeded m; the stats say how many pairs);
* ``skip``: pairs through Clip are left alone.

Bias absorption (with calibration data). cᵢ = max(0, min over the calibration data of the
pair's pre-activation i): Relu(x) = Relu(x − c) + c wherever x ≥ c, so b₁ −= c and
b₂ += Σ W₂[:, i] cᵢ. Exact on the calibration data (and wherever x stays above the least
value seen there); only through a Conv₂ without padding (padding would add c at borders).

Bias correction (``bias_correction=auto``): the int8 weights ŵ = Q(W) (symmetric,
per output channel unless ``per_channel=false``, the rounding onnxruntime applies) shift
each output by E[(ŵ − W)·x]; b −= (ŵ − W)·E[x] cancels it on average. E[x] per input
channel is measured on the calibration data (empirical); without data it is analytic
where a BatchNormalization(γ, β) (→ Relu) feeds the Conv: E[x] = β, or
β·Φ(β/|γ|) + |γ|·φ(β/|γ|) after Relu. Bias correction changes the float model on purpose
(by the expected quantization error): run it right before ``quantize``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune import ir
from onnxprune.context import PassContext
from onnxprune.errors import UsageError
from onnxprune.manager import Pass, PassResult
from onnxprune.model import Model


@dataclass(frozen=True)
class Options:
    """Options of the equalize pass.

    clip: pairs through Clip(0, m): exact (Relu + per-channel Min, exact in float; default), relu (lossy) or skip
    iterations: sweeps over all pairs so chained layers' scales converge (in [1, 100]; default 8)
    absorb: bias absorption through Relu, with calibration data only (default true)
    bias-correction: subtract the expected weight-quantization error: auto (empirical with data, else analytic; default), empirical, analytic or none
    per-channel: bias correction simulates per-output-channel weight quantization (default true) rather than per tensor
    bits: weight bit width simulated by bias correction (in [2, 16]; default 8)
    """

    clip: Literal["exact", "relu", "skip"] = "exact"
    iterations: int = 8
    absorb: bool = True
    bias_correction: Literal["auto", "empirical", "analytic", "none"] = "auto"
    per_channel: bool = True
    bits: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.iterations <= 100:
            raise UsageError(f"pass equalize: iterations must be in [1, 100], got {self.iterations}")
        if not 2 <= self.bits <= 16:
            raise UsageError(f"pass equalize: bits must be in [2, 16], got {self.bits}")


@dataclass
class Pair:
    conv1: gs.Node
    conv2: gs.Node
    chain: list[gs.Node]  # the activation nodes between them: [], [Relu], [Clip], [Relu, Min]


class Equalize(Pass):
    """Cross-layer equalization of Conv → Relu/Clip → Conv pairs, bias absorption, bias correction."""

    name = "equalize"
    Options = Options

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        opts: Options = self.options
        graph = model.graph
        stats: dict[str, Any] = {"clip": opts.clip}
        pairs, skipped = find_pairs(graph, opts.clip)
        if opts.clip != "skip":
            rewritten = [p for p in pairs if p.chain and p.chain[0].op == "Clip"]
            for p in rewritten:
                _unclip(graph, p, exact=opts.clip == "exact")
            stats["clips_rewritten"] = {"to": "Relu+Min" if opts.clip == "exact" else "Relu", "count": len(rewritten)}
        changed = 0.0
        for _ in range(opts.iterations):
            changed = max([_equalize(graph, p) for p in pairs], default=0.0)
            if changed < 1e-6:
                break
        stats["pairs"] = len(pairs)
        stats["not_equalized"] = skipped[:20]
        absorbed = 0
        if opts.absorb and pairs and ctx.has_data:
            absorbed = _absorb(model, pairs, ctx)
        stats["bias_absorbed_channels"] = absorbed if ctx.has_data else "no calibration data"
        corrected, how = _correct(model, ctx, opts)
        stats["bias_corrected"] = {"convs": corrected, "how": how}
        return PassResult(bool(pairs) or corrected > 0 or absorbed > 0, stats)


# ---------------------------------------------------------------------------- pairs

def _const(t: gs.Tensor) -> np.ndarray | None:
    return ir.constant_value(t)


def _only_reader(graph: gs.Graph, t: gs.Tensor, node: gs.Node) -> bool:
    return not ir.readers_elsewhere(graph, t, node)


def _clip_bounds(node: gs.Node) -> tuple[float, float] | None:
    if "min" in node.attrs or "max" in node.attrs:  # opset < 11
        return float(node.attrs.get("min", -np.inf)), float(node.attrs.get("max", np.inf))
    lo = _const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1].name else np.array(-np.inf)
    hi = _const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else np.array(np.inf)
    if lo is None or hi is None or lo.size != 1 or hi.size != 1:
        return None
    return float(lo.reshape(-1)[0]), float(hi.reshape(-1)[0])


def _conv_ok(node: gs.Node) -> bool:
    if node.op != "Conv" or node.domain:
        return False
    w = _const(node.inputs[1])
    if w is None or w.dtype.kind != "f" or w.ndim < 3:
        return False
    return not (len(node.inputs) > 2 and node.inputs[2].name and _const(node.inputs[2]) is None)


def find_pairs(graph: gs.Graph, clip: str) -> tuple[list[Pair], list[dict[str, str]]]:
    """Every Conv₁ → (Relu | Clip(0, m) | Relu → Min(per-channel)) → Conv₂ whose
    intermediate tensors are read by the next node only."""
    pairs: list[Pair] = []
    skipped: list[dict[str, str]] = []
    for conv2 in graph.nodes:
        if not _conv_ok(conv2):
            continue
        chain: list[gs.Node] = []
        t = conv2.inputs[0]
        reader = conv2
        node = ir.producer(t)
        ok = True
        while node is not None and node.op in ("Relu", "Clip", "Min") and len(chain) < 2:
            if not _only_reader(graph, t, reader):
                ok = False
                break
            chain.insert(0, node)
            reader, t = node, node.inputs[0]
            node = ir.producer(t)
        if not ok or node is None or not _conv_ok(node) or not _only_reader(graph, t, reader):
            continue
        why = _chain_problem(chain, clip, node)
        if why:
            skipped.append({"pair": f"{node.name} -> {conv2.name}", "reason": why})
            continue
        pairs.append(Pair(node, conv2, chain))
    return pairs, skipped


def _chain_problem(chain: list[gs.Node], clip: str, conv1: gs.Node) -> str | None:
    ops = [n.op for n in chain]
    channels = _const(conv1.inputs[1]).shape[0]  # type: ignore[union-attr]
    if ops in ([], ["Relu"]):
        return None
    if ops == ["Clip"]:
        b = _clip_bounds(chain[0])
        if b is None or b[0] != 0.0:
            return "Clip with a lower bound other than 0"
        return "clip=skip" if clip == "skip" else None
    if ops == ["Relu", "Min"]:
        c = _const(chain[1].inputs[1])
        if c is None or c.size != channels or c.reshape(-1).min() < 0:
            return "Min is not by a per-channel non-negative constant"
        return None
    return f"activation chain {ops} is not Relu or Clip(0, m)"


def _unclip(graph: gs.Graph, p: Pair, *, exact: bool) -> None:
    """Clip(0, m) → Relu (→ Min(per-channel m) when exact)."""
    clip = p.chain[0]
    bounds = _clip_bounds(clip)
    assert bounds is not None
    x, out = clip.inputs[0], clip.outputs[0]
    clip.op, clip.attrs, clip.inputs = "Relu", {}, [x]
    if not exact or not math.isfinite(bounds[1]):
        p.chain = [clip]
        return
    w1 = _const(p.conv1.inputs[1])
    assert w1 is not None
    mid = gs.Variable(ir.unique_name(graph, f"{out.name}_relu"), dtype=out.dtype, shape=out.shape)
    clip.outputs = [mid]
    bound = np.full((w1.shape[0],) + (1,) * (w1.ndim - 2), bounds[1], dtype=w1.dtype)
    const = gs.Constant(ir.unique_name(graph, f"{clip.name}_bound"), bound)
    mn = gs.Node("Min", name=ir.unique_name(graph, f"{clip.name}_min"), inputs=[mid, const], outputs=[out])
    graph.nodes.append(mn)
    p.chain = [clip, mn]


def _group_view(w2: np.ndarray, groups: int) -> np.ndarray:
    """W₂ [O, I/g, ...] as [g, O/g, I/g, K]: input channel c = group·(I/g) + j."""
    o, ig = w2.shape[0], w2.shape[1]
    return w2.reshape(groups, o // groups, ig, -1)


def _in_channels(conv: gs.Node, w: np.ndarray) -> int:
    return w.shape[1] * int(conv.attrs.get("group", 1))


def _equalize(graph: gs.Graph, p: Pair) -> float:
    """One equalization step on a pair; returns max |log s| (0 when balanced)."""
    w1, w2 = _const(p.conv1.inputs[1]), _const(p.conv2.inputs[1])
    assert w1 is not None and w2 is not None
    g2 = int(p.conv2.attrs.get("group", 1))
    c = w1.shape[0]
    if _in_channels(p.conv2, w2) != c:
        return 0.0
    r1 = np.abs(w1.astype(np.float64)).reshape(c, -1).max(1)
    r2 = np.abs(_group_view(w2.astype(np.float64), g2)).max(axis=(1, 3)).reshape(-1)
    s = np.ones(c)
    ok = (r1 > 0) & (r2 > 0)
    s[ok] = np.sqrt(r1[ok] / r2[ok])
    s = np.clip(s, 1e-4, 1e4)
    if np.max(np.abs(np.log(s))) < 1e-6:
        return 0.0
    _scale_pair(graph, p, s)
    return float(np.max(np.abs(np.log(s))))


def _scale_pair(graph: gs.Graph, p: Pair, s: np.ndarray) -> None:
    """Conv₁'s output channel i divided by sᵢ, Conv₂'s input channel i multiplied by it."""
    w1, w2 = _const(p.conv1.inputs[1]), _const(p.conv2.inputs[1])
    assert w1 is not None and w2 is not None
    g2 = int(p.conv2.attrs.get("group", 1))
    shape1 = (-1,) + (1,) * (w1.ndim - 1)
    _set(graph, p.conv1, 1, (w1.astype(np.float64) / s.reshape(shape1)).astype(w1.dtype))
    if len(p.conv1.inputs) > 2 and p.conv1.inputs[2].name:
        b1 = _const(p.conv1.inputs[2])
        assert b1 is not None
        _set(graph, p.conv1, 2, (b1.astype(np.float64) / s).astype(b1.dtype))
    view = _group_view(w2.astype(np.float64), g2) * s.reshape(g2, 1, -1, 1)
    _set(graph, p.conv2, 1, view.reshape(w2.shape).astype(w2.dtype))
    if len(p.chain) == 2:  # Relu → Min(m): the bound follows the channel
        m = _const(p.chain[1].inputs[1])
        assert m is not None
        _set(graph, p.chain[1], 1, (m.astype(np.float64) / s.reshape(m.shape)).astype(m.dtype))


def _set(graph: gs.Graph, node: gs.Node, index: int, value: np.ndarray) -> None:
    """Give ``node`` its own copy of the constant (exporters share initializers)."""
    ir.set_input_constant(graph, node, index, value, name=f"{node.name}_in{index}_eq")


# ---------------------------------------------------------------------------- data

def _pads_zero(conv: gs.Node) -> bool:
    pads = conv.attrs.get("pads")
    auto = conv.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    return auto in ("NOTSET", "VALID") and (pads is None or not any(pads))


def _absorb(model: Model, pairs: list[Pair], ctx: PassContext) -> int:
    from onnxprune.activations import Tap, stream

    assert ctx.calib is not None
    eligible = [p for p in pairs if p.chain and p.chain[0].op == "Relu" and _pads_zero(p.conv2)
                and len(p.conv1.inputs) > 2 and p.conv1.inputs[2].name]
    if not eligible:
        return 0
    graph = model.graph
    names = [p.conv1.outputs[0].name for p in eligible]
    tap = Tap(model.to_onnx(), names, ctx.target.threads)
    mins: dict[str, np.ndarray] = {}
    for (got,) in stream([tap], ctx.calib):
        for k, v in got.items():
            m = np.moveaxis(np.asarray(v), 1, 0).reshape(v.shape[1], -1).min(1)
            mins[k] = m if k not in mins else np.minimum(mins[k], m)
    count = 0
    for p in eligible:
        c = np.maximum(mins[p.conv1.outputs[0].name].astype(np.float64), 0.0)
        if len(p.chain) == 2:
            m = _const(p.chain[1].inputs[1])
            assert m is not None
            c = np.minimum(c, m.reshape(-1).astype(np.float64))
        if not np.any(c > 0):
            continue
        b1 = _const(p.conv1.inputs[2])
        w2 = _const(p.conv2.inputs[1])
        assert b1 is not None and w2 is not None
        g2 = int(p.conv2.attrs.get("group", 1))
        view = _group_view(w2.astype(np.float64), g2).sum(-1)  # [g, O/g, I/g]
        shift = (view * c.reshape(g2, 1, -1)).sum(-1).reshape(-1)
        b2 = _const(p.conv2.inputs[2]) if len(p.conv2.inputs) > 2 and p.conv2.inputs[2].name else None
        b2v = np.zeros(w2.shape[0]) if b2 is None else b2.astype(np.float64)
        _set(graph, p.conv1, 2, (b1.astype(np.float64) - c).astype(b1.dtype))
        new_b2 = (b2v + shift).astype(w2.dtype)
        if b2 is None:
            p.conv2.inputs.append(gs.Constant(ir.unique_name(graph, f"{p.conv2.name}_bias_absorbed"), new_b2))
        else:
            _set(graph, p.conv2, 2, new_b2)
        if len(p.chain) == 2:
            m = _const(p.chain[1].inputs[1])
            assert m is not None
            _set(graph, p.chain[1], 1, (m.astype(np.float64) - c.reshape(m.shape)).astype(m.dtype))
        count += int(np.sum(c > 0))
    model.touch()
    return count


def _quantize_sim(w: np.ndarray, bits: int, per_channel: bool) -> np.ndarray:
    """Symmetric signed rounding as onnxruntime applies to int8 weights: scale = max|w| / (2^(b-1) - 1)."""
    w64 = w.astype(np.float64)
    qmax = 2 ** (bits - 1) - 1
    amax = np.abs(w64).reshape(w.shape[0], -1).max(1) if per_channel else np.full(w.shape[0], np.abs(w64).max())
    scale = np.where(amax > 0, amax / qmax, 1.0).reshape((-1,) + (1,) * (w.ndim - 1))
    return np.clip(np.round(w64 / scale), -qmax, qmax) * scale


def _analytic_mean(conv: gs.Node) -> np.ndarray | None:
    """E[x] of a Conv input fed by BatchNormalization (→ Relu), from γ and β; else None."""
    from scipy.stats import norm

    node = ir.producer(conv.inputs[0])
    relu = False
    if node is not None and node.op == "Relu":
        relu, node = True, ir.producer(node.inputs[0])
    if node is None or node.op != "BatchNormalization":
        return None
    gamma, beta = _const(node.inputs[1]), _const(node.inputs[2])
    if gamma is None or beta is None:
        return None
    g, b = np.abs(gamma.astype(np.float64)), beta.astype(np.float64)
    if not relu:
        return b
    z = b / np.where(g > 0, g, 1.0)
    return np.where(g > 0, b * norm.cdf(z) + g * norm.pdf(z), np.maximum(b, 0.0))


def _correct(model: Model, ctx: PassContext, opts: Options) -> tuple[int, str]:
    mode = opts.bias_correction
    if mode == "none":
        return 0, "off"
    if mode == "empirical" and not ctx.has_data:
        raise UsageError("pass equalize: bias-correction=empirical needs calibration data: give --calib or --data")
    use_data = ctx.has_data and mode in ("auto", "empirical")
    graph = model.graph
    convs = [n for n in graph.nodes if _conv_ok(n)]
    means: dict[str, np.ndarray] = {}
    if use_data:
        from onnxprune.activations import channel_stats

        assert ctx.calib is not None
        tensors = {n.inputs[0].name: 1 for n in convs}
        acc, _ = channel_stats(model.to_onnx(), tensors, ctx.calib, threads=ctx.target.threads)
        means = {k: m.mean for k, m in acc.items()}
    count = 0
    for conv in convs:
        mu = means.get(conv.inputs[0].name) if use_data else _analytic_mean(conv)
        w = _const(conv.inputs[1])
        assert w is not None
        g = int(conv.attrs.get("group", 1))
        if mu is None or mu.shape != (_in_channels(conv, w),):
            continue
        eps = _quantize_sim(w, opts.bits, opts.per_channel) - w.astype(np.float64)
        corr = (_group_view(eps, g).sum(-1) * mu.reshape(g, 1, -1)).sum(-1).reshape(-1)
        if not np.any(corr):
            continue
        b = _const(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2].name else None
        new_b = ((np.zeros(w.shape[0]) if b is None else b.astype(np.float64)) - corr).astype(w.dtype)
        if b is None:
            conv.inputs.append(gs.Constant(ir.unique_name(graph, f"{conv.name}_bias_corrected"), new_b))
        else:
            _set(graph, conv, 2, new_b)
        count += 1
    if count:
        model.touch()
    return count, ("empirical (calibration data)" if use_data else "analytic (BatchNormalization statistics)")


def equalize(proto: Any, *, ctx: PassContext | None = None, **options: Any) -> Any:
    """Library twin: ``equalize(proto, clip="exact")`` → equalized ModelProto."""
    from onnxprune.api import run_passes

    result, _ = run_passes(proto, [Equalize(Options(**options))], ctx=ctx)
    return result
