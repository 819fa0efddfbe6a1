"""prune-weights: unstructured magnitude pruning of constant weights (Han et al. 2015).

Before::  X ─Conv / ConvTranspose / Gemm / MatMul (W)─▶ Y
After::   X ─Conv / ConvTranspose / Gemm / MatMul (W ⊙ mask)─▶ Y      (same graph, zeros in W)

Per layer, one rule (at most one may be given):

* ``threshold=q``: ``|w| < q · std(W)`` becomes 0 (the paper's retraining-free
  "quality parameter"; std over the layer's weights);
* ``sparsity=s`` (default 0.2 when no rule is given: without retraining, more costs
  accuracy, see ``docs/benchmarks/deep_compression.md``): exactly ``round(s · n)`` of the
  layer's ``n`` weights, those of smallest magnitude, become 0 (ties broken by position);
* ``pattern=N:M`` (e.g. ``2:4``): in every group of M consecutive weights along the input
  (reduction) axis only the N largest in magnitude stay. The input axis is Cin for Conv,
  the input channels for ConvTranspose, K for Gemm/MatMul. A layer whose input axis is
  not a multiple of M (depthwise convs, say) is skipped with the reason.

Which layers: every Conv, ConvTranspose, Gemm (B) and MatMul whose weight is a float
initializer, filtered by ``layers=`` / ``exclude=`` glob patterns on node names and
``min-params=``. Depthwise convs are left alone unless ``depthwise=true``: each of their
outputs reads only kh·kw weights, so removing a fifth of them removes a fifth of a
channel's receptive field (on MobileNetV2, 20 % per layer with depthwise included costs
tens of points without retraining). Biases are never pruned. A weight shared by nodes the pass does not
select is copied first, so only the selected nodes see the zeros.

**Stored dense.** The zeros are written as ordinary float32 values: the file is as big as
before and onnxruntime's CPU kernels do the same work, so latency does not change (the
benchmark measures it). The point is what comes next: ``share-weights`` keeps the zeros
exactly, and sparse-aware runtimes or compressors can exploit them.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune import ir
from onnxprune.context import PassContext
from onnxprune.errors import UsageError
from onnxprune.manager import Pass, PassResult, check_range
from onnxprune.model import Model

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
DEFAULT_SPARSITY = 0.2
DENSE_NOTE = ("stored dense: the zeros are ordinary float values, so the file size and onnxruntime CPU "
              "latency do not change (share-weights keeps them exactly zero)")


# --------------------------------------------------------------------------- layer selection (shared with share-weights)


@dataclass
class WeightTensor:
    """A constant float weight and the selected (node, input index) pairs reading it."""

    tensor: gs.Constant
    readers: list[tuple[gs.Node, int]] = field(default_factory=list)
    shared: bool = False  # read elsewhere too: the selected nodes must get their own copy before an edit
    copied: bool = False

    def own(self, graph: gs.Graph) -> gs.Constant:
        """The tensor the selected nodes may change: a private copy when others read it too."""
        if self.shared and not self.copied:
            own = gs.Constant(ir.unique_name(graph, f"{self.tensor.name}_own"), np.array(self.values, copy=True))
            for node, slot in self.readers:
                node.inputs[slot] = own
            self.tensor, self.copied = own, True
        return self.tensor

    @property
    def names(self) -> list[str]:
        return [n.name for n, _ in self.readers]

    @property
    def values(self) -> np.ndarray:
        return np.asarray(self.tensor.values)

    def input_axis(self) -> int:
        """The reduction (input-feature) axis of the weight, from its first reader."""
        node, index = self.readers[0]
        ndim = self.values.ndim
        if node.op == "Conv":
            return 1
        if node.op == "ConvTranspose":
            return 0
        if node.op == "Gemm":
            return 1 if int(node.attrs.get("transB", 0)) else 0
        if ndim == 1:
            return 0
        return -2 if index == 1 else -1  # MatMul: B[..., K, N] or A[..., M, K]

    def output_axis(self) -> int:
        """The output-feature axis of the weight (Cout for Conv), from its first reader."""
        node, index = self.readers[0]
        ndim = self.values.ndim
        if node.op == "Conv":
            return 0
        if node.op == "ConvTranspose":
            return 1
        if node.op == "Gemm":
            return 0 if int(node.attrs.get("transB", 0)) else 1
        if ndim == 1:
            return 0
        return -1 if index == 1 else -2


def weight_slot(node: gs.Node) -> int | None:
    """The input index holding the node's weight, if it is a constant float tensor."""
    if node.domain or node.op not in WEIGHT_OPS:
        return None
    candidates = [0, 1] if node.op == "MatMul" else [1]
    for i in reversed(candidates):
        if i < len(node.inputs):
            t = node.inputs[i]
            if isinstance(t, gs.Constant) and np.asarray(t.values).dtype.kind == "f":
                if node.op == "MatMul" and i == 0 and isinstance(node.inputs[1], gs.Constant):
                    continue  # both constant: a subgraph the loader folds; leave it
                return i
    return None


def select_weights(graph: gs.Graph, layers: tuple[str, ...], exclude: tuple[str, ...],
                   min_params: int) -> tuple[list[WeightTensor], list[dict[str, str]]]:
    """Group the selected layers by the weight tensor they read, marking the tensors that
    something unselected reads too (see :meth:`WeightTensor.own`). Returns the groups and
    the skipped layers."""
    groups: dict[int, WeightTensor] = {}
    skipped: list[dict[str, str]] = []
    for node in graph.nodes:
        slot = weight_slot(node)
        if slot is None:
            continue
        if layers and not any(fnmatch.fnmatchcase(node.name, p) for p in layers):
            continue
        if any(fnmatch.fnmatchcase(node.name, p) for p in exclude):
            skipped.append({"name": node.name, "reason": "excluded"})
            continue
        tensor = node.inputs[slot]
        if np.asarray(tensor.values).size < max(min_params, 1):
            skipped.append({"name": node.name, "reason": f"fewer than min-params={min_params} weights"})
            continue
        groups.setdefault(id(tensor), WeightTensor(tensor)).readers.append((node, slot))
    out = list(groups.values())
    for group in out:
        selected = {id(n) for n, _ in group.readers}
        group.shared = ir.is_graph_output(graph, group.tensor) or any(
            id(n) not in selected or sum(t is group.tensor for t in n.inputs) > 1 for n in group.tensor.outputs)
    return out, skipped


def is_depthwise(g: WeightTensor) -> bool:
    node, _ = g.readers[0]
    w = g.values
    group = int(node.attrs.get("group", 1))
    return node.op == "Conv" and group > 1 and w.ndim >= 3 and w.shape[1] == 1 and group == w.shape[0]


def layer_patterns(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


# --------------------------------------------------------------------------- the pruning rules


def prune_by_threshold(w: np.ndarray, q: float) -> np.ndarray:
    """``w`` with ``|w| < q · std(w)`` set to 0."""
    std = float(np.std(w.astype(np.float64)))
    return np.where(np.abs(w) < q * std, np.zeros((), w.dtype), w)


def prune_by_sparsity(w: np.ndarray, s: float) -> np.ndarray:
    """``w`` with exactly ``round(s · n)`` smallest-magnitude entries set to 0 (stable order on ties)."""
    flat = w.reshape(-1)
    k = int(round(s * flat.size))
    out = flat.copy()
    if k > 0:
        order = np.argsort(np.abs(flat), kind="stable")
        out[order[:k]] = 0
    return out.reshape(w.shape)


def prune_by_pattern(w: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    """Keep the ``n`` largest of every ``m`` consecutive weights along ``axis`` (ties: the earlier)."""
    moved = np.moveaxis(w, axis, -1)
    length = moved.shape[-1]
    if length % m:
        raise ValueError(f"input axis of length {length} is not a multiple of {m}")
    groups = moved.reshape(-1, m)
    # Rank within each group by magnitude, largest first; a stable sort keeps the earlier on ties.
    order = np.argsort(-np.abs(groups), axis=1, kind="stable")
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[:, :n], True, axis=1)
    pruned = np.where(keep, groups, np.zeros((), w.dtype)).reshape(moved.shape)
    return np.moveaxis(pruned, -1, axis)


def parse_pattern(text: str) -> tuple[int, int]:
    n_text, colon, m_text = str(text).partition(":")
    try:
        n, m = int(n_text), int(m_text)
    except ValueError:
        n = m = 0
    if not colon or not 0 < n < m:
        raise UsageError(f"pass prune-weights: pattern must be N:M with 0 < N < M (e.g. 2:4), got {text!r}")
    return n, m


# --------------------------------------------------------------------------- the pass


@dataclass(frozen=True)
class Options:
    """``threshold`` (q), ``sparsity`` (s) or ``pattern`` (N:M), at most one; ``layers``,
    ``exclude`` (glob patterns on node names), ``min-params``, ``depthwise``.

    threshold: zero weights with |w| < threshold * std(W) of their layer (q >= 0)
    sparsity: zero exactly round(sparsity * n) smallest-magnitude weights per layer (in [0, 1); default 0.2 if no rule)
    pattern: N:M structured sparsity, e.g. 2:4: keep the N largest of every M consecutive weights along the input axis
    layers: only nodes whose name matches one of these glob patterns (default: every weight layer)
    exclude: skip nodes whose name matches one of these glob patterns
    min-params: skip layers whose weight has fewer than this many elements (default 0)
    depthwise: also prune depthwise convs (default false: costly without retraining)
    """

    threshold: float | None = None
    sparsity: float | None = None
    pattern: str | None = None
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_params: int = 0
    depthwise: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", layer_patterns(self.layers))
        object.__setattr__(self, "exclude", layer_patterns(self.exclude))
        given = [k for k in ("threshold", "sparsity", "pattern") if getattr(self, k) is not None]
        if len(given) > 1:
            raise UsageError(f"pass prune-weights: give one of threshold, sparsity, pattern (got {', '.join(given)})")
        if self.threshold is not None and not (np.isfinite(self.threshold) and self.threshold >= 0):
            raise UsageError(f"pass prune-weights: threshold must be a finite number >= 0, got {self.threshold}")
        if self.sparsity is not None:
            check_range("prune-weights", "sparsity", self.sparsity, 0.0, 1.0, hi_open=True)
        if self.pattern is not None:
            parse_pattern(self.pattern)
        if isinstance(self.min_params, bool) or int(self.min_params) != self.min_params or self.min_params < 0:
            raise UsageError(f"pass prune-weights: min-params must be a non-negative integer, got {self.min_params!r}")

    def rule(self) -> dict[str, Any]:
        if self.threshold is not None:
            return {"threshold": self.threshold}
        if self.pattern is not None:
            return {"pattern": self.pattern}
        return {"sparsity": DEFAULT_SPARSITY if self.sparsity is None else self.sparsity}


class PruneWeights(Pass):
    """Unstructured magnitude pruning of Conv/Gemm/MatMul weights: threshold q·std, sparsity, or N:M pattern."""

    name = "prune-weights"
    Options = Options

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        opts: Options = self.options
        groups, skipped = select_weights(model.graph, opts.layers, opts.exclude, opts.min_params)
        if not opts.depthwise:
            skipped += [{"name": name, "reason": "depthwise conv (depthwise=true prunes it)"}
                        for g in groups if is_depthwise(g) for name in g.names]
            groups = [g for g in groups if not is_depthwise(g)]
        rule = opts.rule()
        lines: list[dict[str, Any]] = []
        total = zeros_before = zeros_after = 0
        changed = False
        for g in groups:
            w = g.values
            try:
                if "threshold" in rule:
                    new = prune_by_threshold(w, rule["threshold"])
                elif "pattern" in rule:
                    n, m = parse_pattern(rule["pattern"])
                    new = prune_by_pattern(w, n, m, g.input_axis())
                else:
                    new = prune_by_sparsity(w, rule["sparsity"])
            except ValueError as why:
                skipped.extend({"name": name, "reason": str(why)} for name in g.names)
                continue
            z0, z1 = int(np.count_nonzero(w == 0)), int(np.count_nonzero(new == 0))
            if not np.array_equal(new, w):
                g.own(model.graph).values = np.ascontiguousarray(new)
                changed = True
            total += w.size
            zeros_before += z0
            zeros_after += z1
            lines.append({"name": ",".join(g.names), "tensor": g.tensor.name, "shape": list(w.shape),
                          "params": int(w.size), "zeros_before": z0, "zeros_after": z1,
                          "sparsity": round(z1 / w.size, 6), "copied": g.copied})
        stats = {"rule": rule, "layers": lines, "skipped": skipped, "params": total,
                 "zeros_before": zeros_before, "zeros_after": zeros_after,
                 "sparsity": round(zeros_after / total, 6) if total else 0.0, "storage": DENSE_NOTE}
        return PassResult(modified=changed, stats=stats)


def prune_weights(proto: Any, **options: Any) -> Any:
    """Library twin: ``prune_weights(model_proto, sparsity=0.5)`` → pruned ModelProto."""
    from onnxprune.api import run_passes

    out, _ = run_passes(proto, [PruneWeights(Options(**options))])
    return out
