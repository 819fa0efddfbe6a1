"""Training-free recovery after channel pruning: refit the layers that read pruned tensors.

For every *consumer* of a pruned tensor (a Conv with group 1 and 2-D kernel, a Gemm, a
MatMul with a constant 2-D weight), on the calibration data, with X the consumer's
input rows in the PRUNED model (im2col rows at sampled output positions for a KxK conv,
kept channels only) and Y the ORIGINAL model's output of that consumer at the same rows:

    [W; b] = argmin ‖[X 1]·[W; b] − Y‖² + λ‖W‖²,   λ = ridge · mean(diag XᵀX)
           = (XᵀX + λI | bias column)⁻¹ · [XᵀY; Σy]          (float64 Gram, streamed)

The ridge strength is chosen per layer by 2-fold cross-validation over the calibration
batches (fit on the even batches, measure on the odd, and back): λ from ridge × {0.1, 1, 10,
100, 1000}, or no refit but the mean shift moved into the bias; the winner is refit on all
rows. A layer with many rows per feature gets a weak ridge, a classifier after global
pooling (one row per image) a strong one or the bias alone: one rule, judged on rows it
was not fit on (``held_out=False``: ``ridge`` as given, bias only below
MIN_ROWS_PER_FEATURE rows per feature).

``augment="flip"`` (image inputs [N,C,H,W] only): every calibration batch is also fed
mirrored along W, through the original (targets) and the pruned model (inputs), with its
own sampled rows, so each layer sees twice the rows from twice the images (an ImageNet
classifier's output is nearly flip-invariant, its inner layers see new patterns). A
mirrored batch goes into its source batch's fold, never the other: otherwise the held-out
ridge choice would be measured on near-copies of the rows it was fit on.

Consumers are refit front to back, in *waves*: a wave is a run of consecutive consumers
none of which depends on another's output, so one pass over the data (through only the
front of the model that the wave needs) gives all their statistics, and every later wave
sees the already-refit layers: errors do not compound. Consumers that cannot be refit
(ConvTranspose, 1-D/3-D or SAME-padded convs at an unknown input size, Gemm with transA) get the mean shift of their
output moved into the bias (Nagel et al. 2019, empirical bias correction).

The same Grams of the ORIGINAL model serve two choices made before pruning:

* :func:`lasso_scores`: He et al. 2017 channel selection. With Z_c the contribution of
  channel c to the consumer output, min_β ‖Σ β_c Z_c − Y‖² + α‖β‖₁ needs only
  A[c, d] = ⟨Z_c, Z_d⟩ = Σ_blocks (XᵀX ∘ WᵀW); α is bisected until the group's quota
  of β is zero; the score is |β| (summed over the group's consumers, each normalised).
* :func:`error_curve`: the relative output error left after an LS refit when the k
  lowest-ranked atoms of a group go, err(S) = tr(Θ_Sᵀ (G_SS − G_SK G_KK⁻¹ G_KS) Θ_S) / ‖Y − Ȳ‖²,
  which makes groups comparable for a non-uniform, error-per-FLOP allocation.
"""
from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import scipy.linalg

from onnxprune import ir
from onnxprune.activations import PEAK, ChannelMoments, ConvGeom, Gram, Tap, conv_rows, output_rows, sample_positions
from onnxprune.data import Dataset
from onnxprune.errors import UsageError

log = logging.getLogger(__name__)

#: a Gram over more input features than this is not formed (a 3x3 conv over 512 channels has 4608)
MAX_FEATURES = 4608
#: rows per input feature below which a consumer is only bias-corrected (a classifier head
#: after global pooling sees one row per image: 256 rows for 1280 features would be memorised)
MIN_ROWS_PER_FEATURE = 4


class FitKind(str, enum.Enum):
    CONV = "conv"      # Conv, group 1, 2-D kernel, explicit pads
    GEMM = "gemm"      # Gemm, transA 0, C absent or a per-column vector
    MATMUL = "matmul"  # MatMul X[..., K] @ W[K, N]
    BIAS = "bias"      # not refit: empirical bias correction only
    NONE = "none"      # exact after pruning (grouped/depthwise conv) or nothing to correct


def _pads_known(node: gs.Node, w: np.ndarray) -> bool:
    """Whether a Conv's pads are known before it runs: explicit, VALID, or SAME_* at a known
    input size (the im2col rows then use the equal explicit pads, :func:`activations.same_pads`)."""
    try:
        ConvGeom.of_node(node, w.shape)
    except ValueError:
        return False
    return True


def fit_kind(node: gs.Node) -> FitKind:
    w = ir.constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None or w.dtype not in (np.float32, np.float64):
        return FitKind.NONE
    if node.op == "Conv":
        if int(node.attrs.get("group", 1)) != 1:
            return FitKind.NONE
        return FitKind.CONV if w.ndim == 4 and _pads_known(node, w) else FitKind.BIAS
    if node.op == "Gemm":
        c = ir.constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
        simple_c = c is None or c.size == 1 or c.ndim == 1 or (c.ndim == 2 and c.shape[0] == 1)
        if int(node.attrs.get("transA", 0)) == 0 and w.ndim == 2 and simple_c:
            return FitKind.GEMM
        return FitKind.BIAS
    if node.op == "MatMul":
        return FitKind.MATMUL if w.ndim == 2 else FitKind.NONE
    if node.op == "ConvTranspose":
        return FitKind.BIAS if int(node.attrs.get("group", 1)) == 1 else FitKind.NONE
    return FitKind.NONE


def consumers(graph: gs.Graph, tensors: set[str], only: set[str] | None = None) -> list[gs.Node]:
    """Nodes reading a pruned tensor as their data input, in topological order; ``only``: the
    nodes the channel analysis knows as consumers of those channels (a MatMul that carries
    them on a leading axis is not one)."""
    graph.toposort()
    return [n for n in graph.nodes if n.inputs and n.inputs[0].name in tensors and fit_kind(n) is not FitKind.NONE
            and (only is None or n.name in only)]


# ---------------------------------------------------------------------------- weights as Θ = [W; b]


def _gemm_c(node: gs.Node, n_out: int) -> np.ndarray:
    c = ir.constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    beta = float(node.attrs.get("beta", 1.0))
    return np.zeros(n_out) if c is None else beta * np.broadcast_to(np.asarray(c, np.float64).reshape(-1), (n_out,))


def theta_of(node: gs.Node, kind: FitKind) -> np.ndarray:
    """The node's weights as Θ [features + 1, outputs] (rows: input features, then the bias)."""
    w = np.asarray(ir.constant_value(node.inputs[1]), dtype=np.float64)
    if kind is FitKind.CONV:
        w2 = w.reshape(w.shape[0], -1).T
        b = ir.constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
        return np.vstack([w2, np.zeros((1, w.shape[0])) if b is None else np.asarray(b, np.float64)[None]])
    if kind is FitKind.GEMM:
        kn = (w.T if int(node.attrs.get("transB", 0)) else w) * float(node.attrs.get("alpha", 1.0))
        return np.vstack([kn, _gemm_c(node, kn.shape[1])[None]])
    if kind is FitKind.MATMUL:
        return np.vstack([w, np.zeros((1, w.shape[1]))])
    raise ValueError(f"{node.name}: {kind.value} has no Θ")


def write_theta(graph: gs.Graph, node: gs.Node, kind: FitKind, theta: np.ndarray) -> None:
    w_old = ir.constant_value(node.inputs[1])
    assert w_old is not None
    dt = w_old.dtype
    w, b = theta[:-1], theta[-1]
    if kind is FitKind.CONV:
        ir.set_input_constant(graph, node, 1, w.T.reshape(w_old.shape).astype(dt), name=f"{node.name}_W_refit")
        ir.set_input_constant(graph, node, 2, b.astype(dt), name=f"{node.name}_B_refit")
    elif kind is FitKind.GEMM:
        ir.set_input_constant(graph, node, 1, (w.T if int(node.attrs.get("transB", 0)) else w).astype(dt),
                              name=f"{node.name}_W_refit")
        ir.set_input_constant(graph, node, 2, b.astype(dt), name=f"{node.name}_C_refit")
        node.attrs["alpha"], node.attrs["beta"] = 1.0, 1.0
    elif kind is FitKind.MATMUL:
        ir.set_input_constant(graph, node, 1, w.astype(dt), name=f"{node.name}_W_refit")
        add_bias_after(graph, node, b.astype(dt))


def add_bias_after(graph: gs.Graph, node: gs.Node, bias: np.ndarray) -> None:
    """``node``'s output + bias (on the last axis), keeping the output tensor's name."""
    if not np.any(bias):
        return
    out = node.outputs[0]
    mid = gs.Variable(ir.unique_name(graph, f"{out.name}_nobias"), dtype=out.dtype, shape=out.shape)
    node.outputs[0] = mid
    const = gs.Constant(ir.unique_name(graph, f"{node.name}_bias"), np.ascontiguousarray(bias))
    graph.nodes.append(gs.Node("Add", name=ir.unique_name(graph, f"{node.name}_bias_add"), inputs=[mid, const],
                               outputs=[out]))


def add_to_bias(graph: gs.Graph, node: gs.Node, delta: np.ndarray) -> None:
    """Empirical bias correction: add ``delta`` (per output channel) to the node's bias."""
    w = ir.constant_value(node.inputs[1])
    assert w is not None
    dt = w.dtype
    if node.op in ("Conv", "ConvTranspose"):
        b = ir.constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
        base = np.zeros(len(delta)) if b is None else np.asarray(b, np.float64)
        ir.set_input_constant(graph, node, 2, (base + delta).astype(dt), name=f"{node.name}_B_corrected")
    elif node.op == "Gemm":
        c = _gemm_c(node, len(delta)) if fit_kind(node) is FitKind.GEMM else None
        if c is None:
            add_bias_after(graph, node, delta.astype(dt))
            return
        ir.set_input_constant(graph, node, 2, (c + delta).astype(dt), name=f"{node.name}_C_corrected")
        node.attrs["beta"] = 1.0
    else:
        add_bias_after(graph, node, delta.astype(dt))


# ---------------------------------------------------------------------------- rows


@dataclass
class RowPlan:
    """Which rows of one consumer are read in each batch: conv output positions or flat row indices."""

    kind: FitKind
    geom: ConvGeom | None
    picks: list[np.ndarray] = field(default_factory=list)

    def pick(self, b: int, y_or_x_shape: Sequence[int], max_rows: int, rng: np.random.Generator, *,
             from_input: bool = False) -> np.ndarray:
        while len(self.picks) <= b:
            if self.kind is FitKind.CONV:
                assert self.geom is not None
                n, h, w = int(y_or_x_shape[0]), int(y_or_x_shape[2]), int(y_or_x_shape[3])
                oh, ow = self.geom.out_hw(h, w) if from_input else (h, w)
                self.picks.append(sample_positions(n, oh, ow, max_rows, rng))
            else:
                total = int(np.prod(y_or_x_shape[:-1])) if self.kind is FitKind.MATMUL else int(y_or_x_shape[0])
                self.picks.append(np.arange(total) if total <= max_rows
                                  else np.sort(rng.choice(total, max_rows, replace=False)))
        return self.picks[b]

    def x_rows(self, x: np.ndarray, b: int) -> np.ndarray:
        if self.kind is FitKind.CONV:
            assert self.geom is not None
            return conv_rows(x, self.geom, self.picks[b])
        return x.reshape(-1, x.shape[-1])[self.picks[b]]

    def y_rows(self, y: np.ndarray, b: int) -> np.ndarray:
        if self.kind is FitKind.CONV:
            return output_rows(y, self.picks[b])
        return y.reshape(-1, y.shape[-1])[self.picks[b]]


def row_plan(node: gs.Node, kind: FitKind) -> RowPlan:
    geom = None
    if kind is FitKind.CONV:
        w = ir.constant_value(node.inputs[1])
        assert w is not None
        geom = ConvGeom.of_node(node, w.shape)
    return RowPlan(kind, geom)


def _augmented(g: Gram) -> tuple[np.ndarray, np.ndarray | None]:
    """[[XᵀX, Σx], [Σxᵀ, n]] and [XᵀY; Σy]."""
    assert g.xtx is not None and g.xsum is not None
    f = g.xtx.shape[0]
    a = np.empty((f + 1, f + 1))
    a[:f, :f], a[:f, f], a[f, :f], a[f, f] = g.xtx, g.xsum, g.xsum, g.rows
    bmat = None
    if g.xty is not None and g.ysum is not None:
        bmat = np.vstack([g.xty, g.ysum[None]])
    return a, bmat


def solve_ridge(g: Gram, ridge: float, theta0: np.ndarray | None = None) -> np.ndarray:
    """Θ minimising ‖[X 1]Θ − Y‖² + λ‖W − W₀‖² (bias unpenalised), λ = ridge · mean(diag XᵀX):
    the ridge pulls towards the sliced original weights ``theta0`` (zero when not given), so
    weak data leaves a layer as it was rather than shrinking it."""
    a, bmat = _augmented(g)
    assert bmat is not None
    f = a.shape[0] - 1
    lam = ridge * float(np.mean(np.diag(a)[:f])) if f else 0.0
    lam = max(lam, 1e-12 * max(float(np.max(np.diag(a)[:f], initial=0.0)), 1e-30))
    a[np.arange(f), np.arange(f)] += lam
    if theta0 is not None:
        bmat = bmat.copy()
        bmat[:f] += lam * theta0[:f]
    try:
        return scipy.linalg.solve(a, bmat, assume_a="pos", check_finite=False)
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
        return np.linalg.lstsq(a, bmat, rcond=None)[0]


def determined(g: Gram) -> bool:
    """Enough rows for a least-squares refit that does not just memorise the calibration data."""
    return g.xtx is not None and g.rows >= MIN_ROWS_PER_FEATURE * (g.xtx.shape[0] + 1)


def bias_corrected(g: Gram, theta: np.ndarray) -> np.ndarray:
    """Θ with its bias row moved so the mean output on the rows matches the target's."""
    assert g.xsum is not None and g.ysum is not None
    out = theta.copy()
    out[-1] += (g.ysum - g.xsum @ theta[:-1]) / max(g.rows, 1) - theta[-1]
    return out


def sq_error(g: Gram, theta: np.ndarray) -> float:
    """‖[X 1]Θ − Y‖² from the streamed moments."""
    a, bmat = _augmented(g)
    assert bmat is not None and g.yty_diag is not None
    err = float(g.yty_diag.sum()) - 2.0 * float(np.sum(theta * bmat)) + float(np.sum(theta * (a @ theta)))
    return max(err, 0.0)


def rel_error(g: Gram, theta: np.ndarray) -> float:
    """‖[X 1]Θ − Y‖² / ‖Y‖² from the streamed moments."""
    assert g.yty_diag is not None
    yy = float(g.yty_diag.sum())
    return sq_error(g, theta) / yy if yy > 0 else 0.0


def merged(a: Gram, b: Gram) -> Gram:
    """The Gram of both row sets (every moment is a sum over rows)."""
    out = Gram(rows=a.rows + b.rows)
    for f in ("xtx", "xty", "xsum", "ysum", "yty_diag"):
        x, y = getattr(a, f), getattr(b, f)
        setattr(out, f, x if y is None else y if x is None else x + y)
    return out


#: ridge strengths tried by the held-out choice, as multiples of Options.ridge
RIDGE_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)


def _candidate(g: Gram, theta0: np.ndarray, ridge: float | None) -> np.ndarray:
    return bias_corrected(g, theta0) if ridge is None else solve_ridge(g, ridge, theta0)


def held_out_ridge(folds: Sequence[Gram], ridge: float, theta0: np.ndarray,
                   grid: Sequence[float] = RIDGE_GRID) -> tuple[float | None, float]:
    """2-fold cross-validation over the calibration batches (even / odd): the ridge strength
    (``ridge`` × :data:`RIDGE_GRID`, or None: the sliced weights with only their bias corrected)
    whose fit on one fold leaves the least output error on the other, summed both ways; with that
    held-out relative error. The ridge pulls towards the sliced weights, so a strong one is the
    safe choice for a layer with few rows per feature (a classifier after global pooling) and a
    weak one where the rows determine the layer: one rule for both, chosen on data not fit."""
    best: tuple[float, float | None] = (np.inf, None)
    yy = sum(float(f.yty_diag.sum()) for f in folds if f.yty_diag is not None)
    for r in (None, *(ridge * m for m in grid)):
        err = 0.0
        for fit, val in ((folds[0], folds[1]), (folds[1], folds[0])):
            err += sq_error(val, _candidate(fit, theta0, r))
        if err < best[0]:
            best = (err, r)
    return best[1], (best[0] / yy if yy > 0 else 0.0)


# ---------------------------------------------------------------------------- the refit


@dataclass
class Options:
    method: str = "ls"  # "ls": refit; "bias": bias correction only
    ridge: float = 1e-3
    rows: int = 8192  # rows per consumer in all (spread over the batches)
    samples: int | None = None  # calibration samples used (None: all)
    threads: int = 1
    seed: int = 0
    #: choose each layer's ridge (ridge × RIDGE_GRID, or bias correction only) by 2-fold
    #: cross-validation over the calibration batches; False: ``ridge`` as given, and bias
    #: correction only below MIN_ROWS_PER_FEATURE rows per feature
    held_out: bool = True
    #: the chosen ridge is multiplied by this for the refit on all rows (each fold holds about half)
    held_out_final: float = 1.0
    #: calibration augmentation of the refit's rows: "none" or "flip" (:func:`augmented_views`)
    augment: str = "none"
    #: multiples of ``ridge`` the held-out choice tries
    ridge_grid: tuple[float, ...] = RIDGE_GRID


#: calibration augmentations of the refit (prune-channels:augment=...)
AUGMENTS = ("none", "flip")


def check_augment(batches: Sequence[Mapping[str, np.ndarray]], augment: str, who: str = "prune-channels") -> None:
    """UsageError (one line, naming the input) unless every input of every batch can be
    augmented: for flip, a 4-D float array [N,C,H,W] with W > 1."""
    if augment not in AUGMENTS:
        raise UsageError(f"pass {who}: augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
    if augment == "none":
        return
    for feed in batches[:1]:
        for name, arr in feed.items():
            a = np.asarray(arr)
            if a.ndim != 4 or not np.issubdtype(a.dtype, np.floating) or a.shape[3] <= 1:
                raise UsageError(f"pass {who}: augment={augment} needs image inputs [N,C,H,W] of floats with W > 1; "
                                 f"input {name!r} is {a.dtype}{list(a.shape)}")
            if a.shape[3] <= 4 < a.shape[1]:  # [N,H,W,C] with 1-4 channels: the flip would mirror colours
                raise UsageError(f"pass {who}: augment={augment} mirrors the last axis of an NCHW input; input "
                                 f"{name!r} {list(a.shape)} looks channels-last (NHWC)")


def augmented_views(batches: Sequence[dict[str, np.ndarray]], augment: str) -> list[tuple[int, dict[str, np.ndarray]]]:
    """(source batch index, feed) per view of the calibration data: each batch, then (flip) its
    mirror image along W. The source index decides the view's cross-validation fold."""
    check_augment(batches, augment)
    out: list[tuple[int, dict[str, np.ndarray]]] = []
    for b, feed in enumerate(batches):
        out.append((b, feed))
        if augment == "flip":
            out.append((b, {k: np.ascontiguousarray(np.asarray(v)[..., ::-1]) for k, v in feed.items()}))
    return out


def fold_of(source: int) -> int:
    """The held-out fold (0: even source batches, 1: odd) of a view of source batch ``source``."""
    return source % 2


def calibration_batches(data: Dataset, samples: int | None) -> list[dict[str, np.ndarray]]:
    """The first batches of ``data`` holding ``samples`` samples (all of them when None)."""
    if not samples:
        return list(data.batches)
    out, n = [], 0
    for b in data.batches:
        if n >= samples:
            break
        out.append(b)
        arrs = [a for a in b.values() if np.ndim(a)]
        n += len(arrs[0]) if arrs else 1
    return out


def _waves(graph: gs.Graph, nodes: list[gs.Node]) -> list[list[gs.Node]]:
    """Consecutive runs of consumers none of which reads (through any path) another's output."""
    producer = {t.name: n for n in graph.nodes for t in n.outputs}

    def ancestors(t: str) -> set[str]:
        seen: set[str] = set()
        stack = [t]
        while stack:
            p = producer.get(stack.pop())
            if p is None or p.name in seen:
                continue
            seen.add(p.name)
            stack += [i.name for i in p.inputs]
        return seen

    waves: list[list[gs.Node]] = []
    for n in nodes:
        anc = ancestors(n.inputs[0].name)
        if waves and not any(m.name in anc for m in waves[-1]):
            waves[-1].append(n)
        else:
            waves.append([n])
    return waves


def reconstruct(model: Any, original: onnx.ModelProto, pruned: Mapping[str, np.ndarray], data: Dataset,
                opts: Options, *, only: set[str] | None = None, axes: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Refit (or bias-correct) every consumer of a tensor in ``pruned`` (name -> removed channel
    indices) in ``model`` (a :class:`~onnxprune.model.Model`, edited in place) so that its outputs
    match ``original``'s on ``data``. Returns the report: per layer error before and after, rows,
    samples, seconds, peak activation bytes. ``only``: see :func:`consumers`; ``axes``: the channel
    axis of each pruned tensor (default: 1, or the last for a MatMul output)."""
    t0 = time.perf_counter()
    graph: gs.Graph = model.graph
    nodes = consumers(graph, set(pruned), only)
    batches = calibration_batches(data, opts.samples)
    report: dict[str, Any] = {"method": opts.method, "ridge": opts.ridge, "layers": [], "waves": 0,
                              "samples": sum(len(next(a for a in b.values() if np.ndim(a))) for b in batches)}
    if not nodes or not batches:
        report["seconds"] = round(time.perf_counter() - t0, 3)
        return report
    # rows per view as without augmentation: a mirrored batch adds its own rows (2x in all)
    views = augmented_views(batches, opts.augment)
    if opts.augment != "none":
        report.update(augment=opts.augment, views=len(views))
    kinds = {n.name: (fit_kind(n) if opts.method == "ls" else FitKind.BIAS) for n in nodes}
    per_batch = max(16, opts.rows // len(batches))
    rng = np.random.default_rng(opts.seed)
    plans = {n.name: row_plan(n, kinds[n.name]) for n in nodes}
    # the original's outputs of every consumer, at the rows the refit will read (or their channel means)
    outs = {n.name: n.outputs[0].name for n in nodes}
    targets: dict[str, list[np.ndarray]] = {n.name: [] for n in nodes}
    means: dict[str, ChannelMoments] = {}
    PEAK[0] = 0
    tap = Tap(original, list(outs.values()), opts.threads, optimize=True, prefix=True)
    for b, (_, feed) in enumerate(views):
        got = tap.run(feed)
        PEAK[0] = max(PEAK[0], sum(v.nbytes for v in got.values()))
        for n in nodes:
            y = got[outs[n.name]]
            if outs[n.name] in pruned:  # the consumer lost output channels too: match the kept ones
                axis = (axes or {}).get(outs[n.name], 1 if n.op != "MatMul" else y.ndim - 1)
                y = np.delete(y, pruned[outs[n.name]], axis=axis)
            if kinds[n.name] is FitKind.BIAS:
                means.setdefault(n.name, ChannelMoments(axis=1 if n.op != "MatMul" else -1)).update(y)
            else:
                plans[n.name].pick(b, y.shape, per_batch, rng)
                targets[n.name].append(plans[n.name].y_rows(y, b).astype(np.float32))
    del tap
    waves = _waves(graph, nodes)
    report["waves"] = len(waves)
    for wave in waves:
        proto = model.to_onnx()
        want = [n.inputs[0].name if kinds[n.name] is not FitKind.BIAS else outs[n.name] for n in wave]
        tap = Tap(proto, want, opts.threads, optimize=True, prefix=True)
        folds = {n.name: (Gram(), Gram()) for n in wave}  # even / odd source batches: the held-out ridge choice
        pruned_means: dict[str, ChannelMoments] = {}
        for b, (src, feed) in enumerate(views):
            got = tap.run(feed)
            PEAK[0] = max(PEAK[0], sum(v.nbytes for v in got.values()))
            for n in wave:
                if kinds[n.name] is FitKind.BIAS:
                    pruned_means.setdefault(n.name, ChannelMoments(axis=1 if n.op != "MatMul" else -1)).update(
                        got[outs[n.name]])
                else:
                    folds[n.name][fold_of(src)].update(plans[n.name].x_rows(got[n.inputs[0].name], b),
                                                       targets[n.name][b])
        del tap
        for n in wave:
            line: dict[str, Any] = {"name": n.name, "op": n.op, "fit": kinds[n.name].value}
            if kinds[n.name] is FitKind.BIAS:
                delta = means[n.name].mean - pruned_means[n.name].mean
                add_to_bias(graph, n, delta)
                line["mean_shift"] = round(float(np.sqrt(np.mean(delta ** 2))), 6)
            else:
                g = merged(*folds[n.name])
                theta0 = theta_of(n, kinds[n.name])
                before = rel_error(g, theta0)
                if opts.held_out and min(f.rows for f in folds[n.name]) > 0:
                    ridge, held = held_out_ridge(folds[n.name], opts.ridge, theta0, opts.ridge_grid)
                    ridge = None if ridge is None else ridge * opts.held_out_final
                    line.update(ridge=ridge, rel_error_held_out=round(held, 6))
                else:
                    ridge = opts.ridge if determined(g) else None
                theta = _candidate(g, theta0, ridge)
                if ridge is None:
                    line["fit"] = "bias" + ("" if determined(g) else " (under-determined)")
                after = rel_error(g, theta)
                if after <= before:
                    write_theta(graph, n, kinds[n.name], theta)
                line.update(rows=g.rows, features=int(g.xtx.shape[0]) if g.xtx is not None else 0,
                            rel_error_before=round(before, 6), rel_error_after=round(min(after, before), 6))
            report["layers"].append(line)
        targets.update({n.name: [] for n in wave})  # free the rows already used
        model.touch()
    report["peak_activation_bytes"] = PEAK[0]
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return report


# ---------------------------------------------------------------------------- before pruning: Grams of the original


def input_grams(original: onnx.ModelProto, nodes: Sequence[gs.Node], data: Dataset, *, rows: int = 8192,
                samples: int | None = None, threads: int = 1, seed: int = 0) -> dict[str, Gram]:
    """XᵀX of each consumer's input rows (im2col for convs) in the original model."""
    nodes = [n for n in nodes if fit_kind(n) in (FitKind.CONV, FitKind.GEMM, FitKind.MATMUL)]
    plans = {n.name: row_plan(n, fit_kind(n)) for n in nodes}
    nodes = [n for n in nodes if _features(n) <= MAX_FEATURES]
    if not nodes:
        return {}
    batches = calibration_batches(data, samples)
    per_batch = max(16, rows // len(batches))
    rng = np.random.default_rng(seed)
    grams = {n.name: Gram() for n in nodes}
    tap = Tap(original, [n.inputs[0].name for n in nodes], threads, optimize=True, prefix=True)
    for b, feed in enumerate(batches):
        got = tap.run(feed)
        for n in nodes:
            x = got[n.inputs[0].name]
            plans[n.name].pick(b, x.shape, per_batch, rng, from_input=True)
            grams[n.name].update(plans[n.name].x_rows(x, b))
    return grams


def _features(node: gs.Node) -> int:
    w = ir.constant_value(node.inputs[1])
    assert w is not None
    if node.op == "Conv":
        return int(np.prod(w.shape[1:]))
    return int(w.shape[1] if node.op == "Gemm" and int(node.attrs.get("transB", 0)) else w.shape[0])


def channel_blocks(node: gs.Node) -> int:
    """Input features per input channel (kh·kw for a conv, 1 otherwise)."""
    w = ir.constant_value(node.inputs[1])
    assert w is not None
    return int(np.prod(w.shape[2:])) if node.op == "Conv" else 1


def contribution_gram(g: Gram, node: gs.Node) -> np.ndarray:
    """A[c, d] = ⟨Z_c, Z_d⟩ over input channels (Z_c: channel c's share of the output), normalised to 1ᵀA1 = 1."""
    theta = theta_of(node, fit_kind(node))[:-1]  # [F, Cout]
    assert g.xtx is not None
    k = channel_blocks(node)
    m = g.xtx * (theta @ theta.T)
    c = m.shape[0] // k
    a = m.reshape(c, k, c, k).sum(axis=(1, 3))
    total = float(a.sum())
    return a / total if total > 0 else a


def lasso_beta(a: np.ndarray, free: np.ndarray, n_zero: int, iters: int = 300, steps: int = 18) -> np.ndarray:
    """β of min (β−1)ᵀA(β−1) + α Σ_{not free} |β_i|, with α bisected until ≥ n_zero penalised βs are 0."""
    n = len(a)
    lip = 2.0 * float(np.linalg.eigvalsh(a)[-1]) if n else 1.0
    if lip <= 0 or n_zero <= 0:
        return np.ones(n)
    ones = np.ones(n)
    pen = (~free).astype(np.float64)

    def solve(alpha: float, beta0: np.ndarray) -> np.ndarray:
        beta, z, t = beta0.copy(), beta0.copy(), 1.0
        for _ in range(iters):
            grad = 2.0 * (a @ (z - ones))
            v = z - grad / lip
            new = np.sign(v) * np.maximum(np.abs(v) - pen * alpha / lip, 0.0)
            t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
            z = new + ((t - 1) / t_next) * (new - beta)
            beta, t = new, t_next
        return beta

    lo, hi = 0.0, 2.0 * float(np.abs(a @ ones).max()) + 1e-12
    best = solve(hi, ones)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        beta = solve(mid, best)
        if int(np.sum((beta == 0) & ~free)) >= n_zero:
            hi, best = mid, beta
        else:
            lo = mid
    return best


def error_curve(g: Gram, node: gs.Node, gone_sets: Sequence[np.ndarray]) -> list[float]:
    """Relative output error ‖Y − Ŷ‖²/‖Y − Ȳ‖² of ``node`` without the input channels of each set:
    after an LS refit of the rest (Schur complement, G_SS − G_SK G_KK⁻¹ G_KS = ((G⁻¹)_SS)⁻¹, one
    inverse for all sets) when the Gram has enough rows, else with only the mean shift corrected."""
    theta = theta_of(node, fit_kind(node))
    a, _ = _augmented(g)
    f = a.shape[0] - 1
    n = max(g.rows, 1)
    ysum = theta.T @ a[f]
    energy = float(np.sum(theta * (a @ theta))) - float(ysum @ ysum) / n
    k_blk = channel_blocks(node)
    refit = determined(g)
    if refit:
        a[np.arange(f), np.arange(f)] += 1e-7 * max(float(np.mean(np.diag(a)[:f])), 1e-30)
        inv = scipy.linalg.inv(a, check_finite=False)
    else:
        cov = a[:f, :f] - np.outer(a[f, :f], a[f, :f]) / n
    out = []
    for gone_set in gone_sets:
        gone = np.asarray(gone_set, dtype=np.int64)
        if not len(gone) or energy <= 0:
            out.append(0.0)
            continue
        s = (gone[:, None] * k_blk + np.arange(k_blk)[None]).reshape(-1)
        ts = theta[s]
        if refit:
            try:
                err = float(np.sum(ts * scipy.linalg.solve(inv[np.ix_(s, s)], ts, assume_a="pos", check_finite=False)))
            except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
                err = float(np.sum(ts * (a[np.ix_(s, s)] @ ts)))
        else:
            err = float(np.sum(ts * (cov[np.ix_(s, s)] @ ts)))
        out.append(max(err, 0.0) / energy)
    return out
