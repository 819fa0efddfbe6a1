"""share-weights: per-layer k-means weight sharing stored as packed b-bit indices (Deep Compression).

Before::  X ─Conv(W: float32[Cout, Cin, kh, kw])─▶ Y
After::   P: uint8[ceil(n/8), b] ─Cast int32─▶ ─Gather(first) + 256·Gather(second)─▶
          ─Div 2**offset─▶ ─mod 2**b─▶ ─Reshape[-1]─▶ (Slice 0:n) ─Gather(codebook[k])─▶
          ─Reshape[Cout, Cin, kh, kw]─▶ ─Mul(scale[Cout,1,1,1])─▶ W' ─▶ Conv(W')─▶ Y

Per layer (Han et al. 2016, section 3): the n weights are clustered into k = 2**b shared
values by 1-D k-means (Lloyd's algorithm, exact in 1-D on the sorted weights) with
**linear initialisation**, the k centroids evenly spaced over [min, max] as the paper
recommends. With ``scale=channel`` (default) the weights are first divided by their
output channel's max |w| and the channel scales are stored beside the codebook
(``W' = scale[c] · codebook[index]``): one codebook, but channels of very different
magnitude (BN-folded, per-channel-quantised exports) no longer share a grid that fits
only the largest; ``scale=none`` is the paper's plain codebook. When the layer has zeros
(after ``prune-weights``) and ``keep-zeros`` (default), 0 is centroid 0, held fixed, and
only the nonzero weights are clustered over the other k−1 centroids, so pruned weights
stay exactly zero. A layer with at most k distinct values is stored losslessly.

**Rounding.** Data-free (``rounding=nearest``, what the paper does before retraining):
each weight takes its nearest centroid. With calibration data (``rounding=auto`` picks
this when the context has real data; ``gptq`` demands it) the indices are chosen by GPTQ
error feedback on each layer's input second moments XᵀX (:func:`gptq_codes`), which
keeps the layer's *output* close instead of its weights; nothing is retrained. Depthwise
convs get one XᵀX per channel; other grouped convs, SAME padding and batched MatMul
weights use nearest rounding.

**Bits per layer.** ``bits=b`` everywhere; or ``max-error=e``: one more bit at a time (up to
``max-bits``) while the layer's relative error exceeds e (output error ‖ΔW·X‖/‖W·X‖ on
the calibration inputs with data, weight error ‖ΔW‖/‖W‖ without); or ``budget=B``: every
layer coded at every width in [bits, max-bits], then, from max-bits down, the layer whose
next bit costs least squared relative error per byte saved gives it up, until the coded
weights average at most B bits.

**Storage.** The indices are packed b bits each into ``uint8`` (:mod:`onnxprune.coding`:
8 indices per b bytes). The decoder above is a constant subgraph of
Cast/Gather/Mul/Add/Div/(Mod, or Div·Mul·Sub before opset 10)/Reshape/Slice, which every
opset from 7 has; onnxruntime folds it when it builds the session, so inference runs the
same dense float kernels as before (latency ratio ≈ 1, measured in
``docs/benchmarks/deep_compression.md``). The small decoder tables are shared by every
layer of the same width. Weights per layer: ``ceil(n/8)·b`` bytes + ``4k`` (codebook) +
``4·Cout`` (scales) instead of ``4n``. Layers too small to gain (a decoder costs about
800 bytes of nodes) and biases stay float.

**Reported**, per layer and in total: float bytes before, stored bytes after (indices +
codebook + scales), the Huffman-coded size of the indices plus the same side data (the
paper's figure; ONNX cannot decode Huffman, so it is not stored), the errors, and the
serialised model size before/after.

Loading an output with :func:`onnxprune.model.load_model` folds the decoder back into a
dense float initializer (load-time normalisation), so run ``share-weights`` last and
keep its output file as written; passes after it see no constant weights to change.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnxprune.passes.prune_weights import WeightTensor, layer_patterns, select_weights

from onnxprune import ir
from onnxprune.coding import MAX_BITS, huffman_bits, pack_indices, packed_nbytes, unpack_tables
from onnxprune.context import PassContext
from onnxprune.errors import UsageError
from onnxprune.manager import Pass, PassResult, check_range
from onnxprune.model import Model, model_size_bytes

#: Rough serialised size of one layer's decoder nodes and tensor headers; a layer is
#: coded only when its stored form plus this is smaller than the float weight.
DECODER_OVERHEAD = 800


# --------------------------------------------------------------------------- clustering


@dataclass(frozen=True)
class Coded:
    """One layer's shared weights: ``codebook[codes]`` reshaped is the new weight."""

    codes: np.ndarray  # int64, flat
    codebook: np.ndarray  # weight dtype, k values
    bits: int
    lossless: bool
    zeros_kept: int
    scale: np.ndarray | None = None  # per output channel, broadcastable to the weight

    def decode(self, shape: tuple[int, ...]) -> np.ndarray:
        """The decoded weight, with the decoder's own float arithmetic."""
        w = self.codebook[self.codes].reshape(shape)
        return w if self.scale is None else w * self.scale


def kmeans_1d(sorted_x: np.ndarray, k: int, iterations: int) -> np.ndarray:
    """Lloyd's k-means on sorted 1-D data from a linear initialisation; sorted centroids.

    In 1-D the clusters are intervals between midpoints of neighbouring centroids, so each
    step is a ``searchsorted`` plus prefix sums. An empty cluster keeps its centroid.
    """
    x = np.asarray(sorted_x, dtype=np.float64)
    c = np.linspace(x[0], x[-1], k)
    prefix = np.concatenate([[0.0], np.cumsum(x)])
    for _ in range(iterations):
        edges = np.concatenate([[0], np.searchsorted(x, (c[1:] + c[:-1]) / 2), [x.size]])
        count = np.diff(edges)
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        new = np.sort(np.where(count > 0, sums / np.maximum(count, 1), c))
        done = np.allclose(new, c, rtol=0.0, atol=1e-9 * max(float(x[-1] - x[0]), 1e-30))
        c = new
        if done:
            break
    return c


def nearest(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted ``centroids`` for each value."""
    return np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values).astype(np.int64)


def channel_scale(w: np.ndarray, axis: int) -> np.ndarray:
    """max |w| over everything but ``axis`` (1 for an all-zero channel), shaped to broadcast."""
    axis = axis % w.ndim
    others = tuple(i for i in range(w.ndim) if i != axis)
    s = np.abs(w).max(axis=others, keepdims=True) if others else np.abs(w)
    return np.where(s > 0, s, np.ones((), w.dtype)).astype(w.dtype)


def share(w: np.ndarray, bits: int, *, keep_zeros: bool = True, iterations: int = 50,
          axis: int | None = None) -> Coded:
    """Cluster ``w`` into at most ``2**bits`` shared values (see the module doc); with
    ``axis``, of the weights divided by their channel's max |w| along that axis."""
    flat = w.reshape(-1)
    k = 1 << bits
    distinct = np.unique(flat)
    if distinct.size <= k:
        used = max(1, int(np.ceil(np.log2(max(distinct.size, 2)))))
        return Coded(np.searchsorted(distinct, flat).astype(np.int64), distinct.astype(w.dtype), used, True,
                     int(np.count_nonzero(flat == 0)))
    scale = None
    if axis is not None and w.ndim > 1:
        scale = channel_scale(w, axis)
        flat = (w.astype(np.float64) / scale).reshape(-1)
    zero = flat == 0
    n_zero = int(np.count_nonzero(zero))
    if keep_zeros and n_zero:
        rest = flat[~zero].astype(np.float64)
        centroids = kmeans_1d(np.sort(rest), k - 1, iterations)
        codes = np.zeros(flat.size, dtype=np.int64)
        codes[~zero] = 1 + nearest(rest, centroids)
        codebook = np.concatenate([[0.0], centroids])
    else:
        x = flat.astype(np.float64)
        codebook = kmeans_1d(np.sort(x), k, iterations)
        codes = nearest(x, codebook)
        n_zero = 0
    return Coded(codes, codebook.astype(w.dtype), bits, False, n_zero, scale)


def relative_error(w: np.ndarray, approx: np.ndarray) -> float:
    den = float(np.linalg.norm(w.astype(np.float64)))
    num = float(np.linalg.norm(w.astype(np.float64) - approx.astype(np.float64)))
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


# --------------------------------------------------------------------------- error feedback (with data)


def as_rows(w: np.ndarray, reader: gs.Node) -> tuple[np.ndarray, bool]:
    """The weight as ``[outputs, input features]`` in the layout the reader multiplies, and
    whether that is the transpose of ``w`` (Gemm without transB, MatMul)."""
    if reader.op == "Conv":
        return w.reshape(w.shape[0], -1), False
    if reader.op == "Gemm" and int(reader.attrs.get("transB", 0)):
        return w, False
    return w.T, True


def gptq_codes(coded: Coded, w: np.ndarray, reader: gs.Node, hessian: np.ndarray, damp: float = 0.01) -> Coded:
    """Re-pick ``coded``'s indices (same codebook and scales) by optimal-brain-quantization
    error feedback (GPTQ, Frantar et al. 2023) on the layer's input second moments
    ``H = XᵀX / rows``: input features are rounded one at a time (largest ``H_jj`` first
    when H is shared by all outputs) and each one's rounding error is pushed onto the
    features not yet rounded through the Cholesky factor of ``H⁻¹``, so ``‖(W − W')X‖``
    rather than ``‖W − W'‖`` is kept small. ``hessian`` is ``[d, d]``, or ``[out, d, d]``
    for a depthwise conv (each output sees its own input channel). Zeros held by a fixed
    zero centroid stay zero (their rounding error is fed forward like any other)."""
    rows, transposed = as_rows(w.astype(np.float64), reader)
    out, d = rows.shape
    h = np.array(hessian, dtype=np.float64)
    shared = h.ndim == 2
    if h.shape[-2:] != (d, d) or (not shared and h.shape[0] != out):
        return coded
    scale = np.ones(out) if coded.scale is None else coded.scale.astype(np.float64).reshape(-1)
    if scale.size != out:
        return coded
    zero_fixed = coded.zeros_kept > 0 and float(coded.codebook[0]) == 0.0
    pruned, _ = as_rows(w == 0, reader)
    book = coded.codebook.astype(np.float64)
    rest = book[1:] if zero_fixed else book
    h = h.reshape(-1, d, d)
    diag = np.diagonal(h, axis1=1, axis2=2)
    mean = np.where((diag > 0).any(1), np.where(diag > 0, diag, 0).sum(1) / np.maximum((diag > 0).sum(1), 1), 1.0)
    h = h + np.eye(d) * (np.where(diag <= 0, 1.0, 0.0) + damp * mean[:, None])[:, None, :]
    perm = np.argsort(-np.diagonal(h[0]), kind="stable") if shared else np.arange(d)
    work = rows[:, perm].copy()
    try:
        upper = np.swapaxes(np.linalg.cholesky(np.linalg.inv(h[:, perm][:, :, perm])), 1, 2)
    except np.linalg.LinAlgError:
        return coded
    codes = np.empty((out, d), dtype=np.int64)
    for j in range(d):
        c = nearest(work[:, j] / scale, rest) + (1 if zero_fixed else 0)
        if zero_fixed:
            c = np.where(pruned[:, perm[j]], 0, c)
        codes[:, j] = c
        err = (work[:, j] - book[c] * scale) / upper[:, j, j]
        work[:, j + 1:] -= err[:, None] * upper[:, j, j + 1:]
    codes = codes[:, np.argsort(perm)]
    flat = (codes.T if transposed else codes).reshape(-1)
    return Coded(flat, coded.codebook, coded.bits, coded.lossless, coded.zeros_kept, coded.scale)


def refit_codebook(coded: Coded, w: np.ndarray, reader: gs.Node, hessian: np.ndarray, block: int = 128) -> Coded:
    """The codebook that minimises the output error ``Σ_o ‖w_o − s_o·c[idx_o]‖²_H`` for the
    chosen indices: the normal equations ``(Σ_o s_o² E_oᵀ H E_o) c = Σ_o s_o E_oᵀ H w_o``
    with E_o the one-hot index matrix of output o. The current codebook is a feasible
    point, so the output error can only go down; a fixed zero centroid stays 0."""
    rows, _ = as_rows(w.astype(np.float64), reader)
    out, d = rows.shape
    k = coded.codebook.size
    codes_rows, _ = as_rows(coded.codes.reshape(w.shape), reader)
    scale = np.ones(out) if coded.scale is None else coded.scale.astype(np.float64).reshape(-1)
    h = np.asarray(hessian, dtype=np.float64).reshape(-1, d, d)
    a = np.zeros((k, k))
    b = np.zeros(k)
    eye = np.eye(k)
    for lo in range(0, out, block):
        hi = min(lo + block, out)
        onehot = eye[codes_rows[lo:hi]]  # [o, d, k]
        hh = h if h.shape[0] == 1 else h[lo:hi]
        hm = np.matmul(hh, onehot)  # [o, d, k]
        s2 = scale[lo:hi] ** 2
        a += np.einsum("o,odk,odm->km", s2, onehot, hm, optimize=True)
        b += np.einsum("o,od,odk->k", scale[lo:hi], rows[lo:hi], hm, optimize=True)
    free = np.arange(1 if coded.zeros_kept > 0 and float(coded.codebook[0]) == 0.0 else 0, k)
    old = coded.codebook.astype(np.float64)
    ridge = 1e-9 * max(float(np.trace(a)) / k, 1e-30)
    af = a[np.ix_(free, free)] + ridge * np.eye(free.size)
    bf = b[free] - a[np.ix_(free, np.setdiff1d(np.arange(k), free))] @ old[np.setdiff1d(np.arange(k), free)] \
        + ridge * old[free]
    try:
        new = old.copy()
        new[free] = np.linalg.solve(af, bf)
    except np.linalg.LinAlgError:
        return coded
    if not np.all(np.isfinite(new)):
        return coded
    return Coded(coded.codes, new.astype(coded.codebook.dtype), coded.bits, coded.lossless, coded.zeros_kept,
                 coded.scale)


def output_error(w: np.ndarray, approx: np.ndarray, reader: gs.Node, hessian: np.ndarray) -> float:
    """Relative output error on the calibration inputs: sqrt(tr(ΔW H ΔWᵀ) / tr(W H Wᵀ))
    (per output row with its own H for a depthwise conv)."""
    a, _ = as_rows(w.astype(np.float64), reader)
    b, _ = as_rows(approx.astype(np.float64), reader)
    diff = a - b
    if hessian.ndim == 2:
        den, num = float(np.sum((a @ hessian) * a)), float(np.sum((diff @ hessian) * diff))
    else:
        den = float(np.einsum("oi,oij,oj->", a, hessian, a, optimize=True))
        num = float(np.einsum("oi,oij,oj->", diff, hessian, diff, optimize=True))
    return float(np.sqrt(max(num, 0.0) / den)) if den > 0 else 0.0


#: im2col rows (or feature rows) sampled per calibration sample for a layer's ``XᵀX``.
ROWS_PER_SAMPLE = 32


def layer_hessians(model: Model, ctx: PassContext, groups: list[WeightTensor]) -> dict[int, np.ndarray]:
    """``XᵀX / rows`` of each group's input (through its first reader) on the calibration
    data, keyed by position in ``groups``; layers whose rows are not plain (grouped or
    depthwise convs, SAME padding, batched MatMul weights, Gemm with transA) are left out."""
    from onnxprune.activations import ConvGeom, Gram, Tap, conv_rows, feature_rows, sample_positions

    assert ctx.calib is not None
    plan: dict[int, tuple[str, ConvGeom | None]] = {}
    for i, g in enumerate(groups):
        node, slot = g.readers[0]
        w = g.values
        if node.op == "Conv":
            group = int(node.attrs.get("group", 1))
            if w.ndim != 4 or not (group == 1 or (w.shape[1] == 1 and group == w.shape[0])):
                continue  # grouped convs other than depthwise: plain rounding
            try:
                plan[i] = (node.inputs[0].name, ConvGeom.of_node(node, w.shape))
            except ValueError:
                continue
        elif w.ndim == 2 and slot == 1 and not (node.op == "Gemm" and int(node.attrs.get("transA", 0))) \
                and node.op in ("Gemm", "MatMul"):
            plan[i] = (node.inputs[0].name, None)
    if not plan:
        return {}
    tap = Tap(model.to_onnx(), sorted({name for name, _ in plan.values()}), ctx.target.threads, optimize=True)
    grams = {i: Gram() for i in plan}
    depthwise: dict[int, np.ndarray] = {}  # per-channel XᵀX [C, kh·kw, kh·kw] and row counts
    counts: dict[int, int] = {}
    pending: dict[int, list[np.ndarray]] = {i: [] for i in plan}
    rng = np.random.default_rng(ctx.seed)

    def flush(i: int, at_least: int) -> None:  # one big XᵀX beats many small ones
        if sum(len(r) for r in pending[i]) >= max(at_least, 1):
            grams[i].update(np.concatenate(pending[i]))
            pending[i].clear()

    for batch in ctx.calib.batches:
        values = tap.run(batch)
        for i, (name, geom) in plan.items():
            x = values[name]
            if geom is not None:
                oh, ow = geom.out_hw(x.shape[2], x.shape[3])
                rows = conv_rows(x, geom, sample_positions(x.shape[0], oh, ow, ROWS_PER_SAMPLE * x.shape[0], rng))
                if geom.group > 1:
                    r = rows.reshape(len(rows), geom.group, -1).astype(np.float64)
                    depthwise[i] = depthwise.get(i, 0) + np.einsum("rci,rcj->cij", r, r, optimize=True)
                    counts[i] = counts.get(i, 0) + len(rows)
                    continue
            else:
                rows = feature_rows(x)
                limit = ROWS_PER_SAMPLE * (x.shape[0] if x.ndim > 2 else 1)
                if len(rows) > limit:
                    rows = rows[np.sort(rng.choice(len(rows), limit, replace=False))]
            pending[i].append(np.asarray(rows, dtype=np.float32))
            flush(i, 4096)
    for i in plan:
        if pending[i]:
            flush(i, 1)
    out = {i: g.xtx / g.rows for i, g in grams.items() if g.rows and g.xtx is not None}
    out.update({i: h / counts[i] for i, h in depthwise.items()})
    return out


# --------------------------------------------------------------------------- the decoder subgraph


class Decoders:
    """Builds decoder subgraphs, sharing the small constant tables between layers.

    Names are short (``sw3.5``): every node repeats its input and output names in the
    file, and a layer's decoder has about ten nodes."""

    def __init__(self, graph: gs.Graph, opset: int) -> None:
        self.graph = graph
        self.opset = opset
        self._tables: dict[Any, gs.Constant] = {}
        self._layer = 0
        self._step = 0

    def _const(self, key: Any, base: str, value: np.ndarray) -> gs.Constant:
        if key not in self._tables:
            self._tables[key] = gs.Constant(ir.unique_name(self.graph, f"sw.{base}"), np.asarray(value))
        return self._tables[key]

    def _own(self, what: str, value: np.ndarray) -> gs.Constant:
        return gs.Constant(ir.unique_name(self.graph, f"sw{self._layer}.{what}"), np.asarray(value))

    def _node(self, op: str, inputs: list[gs.Tensor], dtype: Any, attrs: dict[str, Any] | None = None,
              out: gs.Variable | None = None) -> gs.Variable:
        self._step += 1
        name = ir.unique_name(self.graph, f"sw{self._layer}.{self._step}")
        if out is None:
            out = gs.Variable(name, dtype=dtype)
        self.graph.nodes.append(gs.Node(op, name, attrs or {}, inputs, [out]))
        return out

    def build(self, coded: Coded, shape: tuple[int, ...], out: gs.Variable) -> None:
        """Nodes that compute ``out`` (the decoded float weight of ``shape``) from packed indices."""
        self._layer += 1
        self._step = 0
        n, b = coded.codes.size, coded.bits
        i32 = np.int32
        ints = self._node("Cast", [self._own(f"idx{b}b", pack_indices(coded.codes, b))], i32,
                          {"to": onnx.TensorProto.INT32})
        flat_shape = self._const("flat", "flat", np.array([-1], np.int64))
        if b == 8:
            flat = self._node("Reshape", [ints, flat_shape], i32)
        else:
            first, second, divisor = unpack_tables(b)
            lo = self._node("Gather", [ints, self._const(("first", b), f"first{b}b", first)], i32, {"axis": 1})
            hi = self._node("Gather", [ints, self._const(("second", b), f"second{b}b", second)], i32, {"axis": 1})
            hi = self._node("Mul", [hi, self._const("256", "c256", np.array(256, i32))], i32)
            word = self._node("Add", [lo, hi], i32)
            q = self._node("Div", [word, self._const(("div", b), f"shift{b}b", divisor)], i32)
            k = self._const(("k", b), f"k{b}b", np.array(1 << b, i32))
            if self.opset >= 10:
                r = self._node("Mod", [q, k], i32)
            else:  # no Mod before opset 10: q - (q // k) * k
                r = self._node("Sub", [q, self._node("Mul", [self._node("Div", [q, k], i32), k], i32)], i32)
            flat = self._node("Reshape", [r, flat_shape], i32)
        if flat_len(n) != n:
            if self.opset >= 10:
                flat = self._node("Slice", [flat, self._const("zero", "zero", np.array([0], np.int64)),
                                            self._own("n", np.array([n], np.int64))], i32)
            else:
                flat = self._node("Slice", [flat], i32, {"starts": [0], "ends": [n], "axes": [0]})
        dtype = coded.codebook.dtype
        values = self._node("Gather", [self._own("codebook", coded.codebook), flat], dtype, {"axis": 0})
        out.dtype, out.shape = dtype, list(shape)
        shape_c = self._own("shape", np.array(shape, np.int64))
        if coded.scale is None:
            self._node("Reshape", [values, shape_c], dtype, out=out)
        else:
            values = self._node("Reshape", [values, shape_c], dtype)
            self._node("Mul", [values, self._own("scale", coded.scale)], dtype, out=out)


def flat_len(n: int) -> int:
    """Length of the decoder's flat index vector before the Slice."""
    return -(-n // 8) * 8


def stored_bytes(coded: Coded) -> int:
    n, b = coded.codes.size, coded.bits
    return packed_nbytes(n, b) + side_bytes(coded)


def side_bytes(coded: Coded) -> int:
    """Codebook and channel scales."""
    return coded.codebook.nbytes + (0 if coded.scale is None else coded.scale.nbytes)


def huffman_bytes(coded: Coded) -> int:
    return -(-huffman_bits(coded.codes, coded.codebook.size) // 8) + side_bytes(coded)


# --------------------------------------------------------------------------- the pass


@dataclass(frozen=True)
class Options:
    """``bits`` (1..8, default 4), ``max-error`` and ``max-bits`` (per-layer fallback to more
    bits), ``keep-zeros``, ``iterations``, ``layers`` / ``exclude`` / ``min-params``.

    bits: index width per weight, k = 2**bits shared values per layer (1..8; default 4; the minimum with max-error/budget)
    scale: channel (weights divided by their output channel's max |w|, scales stored; default) or none (plain codebook)
    rounding: index choice: auto (gptq with calibration data, else nearest; default), nearest or gptq (needs data)
    max-error: per layer, add bits up to max-bits while the relative (output, or weight) error exceeds this (in (0, 1])
    budget: average stored bits per weight over all coded layers, bits allocated per layer (in [1, 8]; not with max-error)
    max-bits: upper bit width for max-error and budget (bits..8; default 8)
    keep-zeros: keep zero weights (from prune-weights) exactly zero as a fixed centroid (default true)
    iterations: maximum Lloyd (k-means) iterations per layer (default 50)
    layers: only nodes whose name matches one of these glob patterns (default: every weight layer)
    exclude: skip nodes whose name matches one of these glob patterns
    min-params: skip layers whose weight has fewer than this many elements (default 0)
    """

    bits: int = 4
    scale: Literal["channel", "none"] = "channel"
    rounding: Literal["auto", "nearest", "gptq"] = "auto"
    max_error: float | None = None
    budget: float | None = None
    max_bits: int = MAX_BITS
    keep_zeros: bool = True
    iterations: int = 50
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_params: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", layer_patterns(self.layers))
        object.__setattr__(self, "exclude", layer_patterns(self.exclude))
        for key in ("bits", "max_bits"):
            v = getattr(self, key)
            if isinstance(v, bool) or int(v) != v or not 1 <= v <= MAX_BITS:
                raise UsageError(f"pass share-weights: {key.replace('_', '-')} must be an integer in [1, {MAX_BITS}], "
                                 f"got {v!r}")
        if self.scale not in ("channel", "none"):
            raise UsageError(f"pass share-weights: scale must be channel or none, got {self.scale!r}")
        if self.rounding not in ("auto", "nearest", "gptq"):
            raise UsageError(f"pass share-weights: rounding must be auto, nearest or gptq, got {self.rounding!r}")
        if self.max_bits < self.bits:
            raise UsageError(f"pass share-weights: max-bits={self.max_bits} is below bits={self.bits}")
        if self.budget is not None:
            check_range("share-weights", "budget", self.budget, 1.0, float(MAX_BITS))
            if self.max_error is not None:
                raise UsageError("pass share-weights: give max-error or budget, not both")
        if self.max_error is not None:
            check_range("share-weights", "max-error", self.max_error, 0.0, 1.0, lo_open=True)
        if isinstance(self.iterations, bool) or int(self.iterations) != self.iterations or self.iterations < 0:
            raise UsageError(f"pass share-weights: iterations must be a non-negative integer, got {self.iterations!r}")
        if isinstance(self.min_params, bool) or int(self.min_params) != self.min_params or self.min_params < 0:
            raise UsageError(f"pass share-weights: min-params must be a non-negative integer, got {self.min_params!r}")


class ShareWeights(Pass):
    """k-means weight sharing (Deep Compression): packed b-bit indices + codebook, decoded by a folded subgraph."""

    name = "share-weights"
    Options = Options

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        opts: Options = self.options
        groups, skipped = select_weights(model.graph, opts.layers, opts.exclude, opts.min_params)
        kept: list[WeightTensor] = []
        for g in groups:
            w = g.values
            if not np.all(np.isfinite(w)):
                skipped.extend({"name": name, "reason": "non-finite weights"} for name in g.names)
            elif packed_nbytes(w.size, opts.bits) + 4 * (1 << opts.bits) + DECODER_OVERHEAD >= w.nbytes:
                skipped.extend({"name": name, "reason": f"too small to gain ({w.size} weights)"} for name in g.names)
            else:
                kept.append(g)
        if opts.rounding == "gptq":
            ctx.require_data(self.name, "rounding=gptq")
        use_data = opts.rounding == "gptq" or (opts.rounding == "auto" and ctx.has_data)
        hessians = layer_hessians(model, ctx, kept) if use_data and kept else {}
        chosen = self._choose(kept, hessians)
        plans: list[tuple[WeightTensor, Coded, dict[str, Any]]] = []
        for g, (coded, errors) in zip(kept, chosen):
            if stored_bytes(coded) + DECODER_OVERHEAD >= g.values.nbytes:
                skipped.extend({"name": name, "reason": f"too small to gain ({g.values.size} weights)"}
                               for name in g.names)
                continue
            plans.append((g, coded, errors))
        if not plans:
            return PassResult(False, {"layers": [], "skipped": skipped})
        size_before = model_size_bytes(model.to_onnx())
        decoders = Decoders(model.graph, model.opset)
        lines: list[dict[str, Any]] = []
        for g, coded, errors in plans:
            w = g.values
            name = g.tensor.name
            if not g.shared:  # the dense initializer goes away: the decoded weight takes its name
                g.tensor.name = ir.unique_name(model.graph, f"{name}_dense")
            decoded = gs.Variable(ir.unique_name(model.graph, name if not g.shared else f"{name}_shared"))
            decoders.build(coded, tuple(w.shape), decoded)
            for node, slot in g.readers:
                node.inputs[slot] = decoded
            lines.append({"name": ",".join(g.names), "tensor": name, "shape": list(w.shape),
                          "params": int(w.size), "bits": coded.bits, "k": int(coded.codebook.size),
                          "lossless": coded.lossless, "zeros_kept": coded.zeros_kept,
                          **{k: v for k, v in errors.items() if k != "error"},
                          "float_bytes": int(w.nbytes), "stored_bytes": stored_bytes(coded),
                          "huffman_bytes": huffman_bytes(coded)})
        model.touch()
        size_after = model_size_bytes(model.to_onnx())
        total = {k: sum(line[k] for line in lines) for k in ("params", "float_bytes", "stored_bytes", "huffman_bytes")}
        stats = {
            "layers": lines, "skipped": skipped, **total,
            "bits_per_weight": round(8 * total["stored_bytes"] / total["params"], 4),
            "huffman_bits_per_weight": round(8 * total["huffman_bytes"] / total["params"], 4),
            "rounding": "gptq" if hessians else "nearest", "gptq_layers": sum(1 for line in lines if "output_error" in line),
            "model_bytes_before": size_before, "model_bytes_after": size_after,
            "size_ratio": round(size_before / size_after, 4),
            "bits_histogram": {str(b): sum(1 for line in lines if line["bits"] == b)
                               for b in sorted({line["bits"] for line in lines})},
        }
        return PassResult(True, stats)

    def _code(self, g: WeightTensor, bits: int, hessian: np.ndarray | None) -> tuple[Coded, dict[str, Any]]:
        """One layer at ``bits``, with its errors: weight, and output on the calibration inputs
        when there is data."""
        opts: Options = self.options
        w, reader = g.values, g.readers[0][0]
        coded = share(w, bits, keep_zeros=opts.keep_zeros, iterations=opts.iterations,
                      axis=g.output_axis() if opts.scale == "channel" else None)
        if hessian is not None and not coded.lossless:
            coded = refit_codebook(gptq_codes(coded, w, reader, hessian), w, reader, hessian)
        approx = coded.decode(w.shape)
        errors: dict[str, Any] = {"rel_error": round(relative_error(w, approx), 6)}
        if hessian is not None:
            errors["output_error"] = round(output_error(w, approx, reader, hessian), 6)
        errors["error"] = errors.get("output_error", errors["rel_error"])
        return coded, errors

    def _choose(self, groups: list[WeightTensor], hessians: dict[int, np.ndarray]
                ) -> list[tuple[Coded, dict[str, Any]]]:
        """Bits per layer: ``bits``; with ``max-error``, one more bit at a time while the layer's
        error is over it (up to ``max-bits``); with ``budget``, the allocation below."""
        opts: Options = self.options
        if opts.budget is None:
            out = []
            for i, g in enumerate(groups):
                bits = opts.bits
                while True:
                    coded, errors = self._code(g, bits, hessians.get(i))
                    if opts.max_error is None or errors["error"] <= opts.max_error or bits >= opts.max_bits \
                            or coded.lossless:
                        break
                    bits += 1
                out.append((coded, errors))
            return out
        # budget: every layer coded at every width in [bits, max-bits]; start at max-bits and
        # lower, one bit at a time, the layer whose next drop adds the least squared relative
        # error per byte saved, until the coded weights average at most ``budget`` bits.
        levels = [{b: self._code(g, b, hessians.get(i)) for b in range(opts.bits, opts.max_bits + 1)}
                  for i, g in enumerate(groups)]
        pick = [opts.max_bits if not lv[opts.max_bits][0].lossless else min(lv) for lv in levels]
        n = sum(g.values.size for g in groups)

        def index_bits() -> int:
            return sum(8 * packed_nbytes(g.values.size, levels[i][pick[i]][0].bits) for i, g in enumerate(groups))

        while index_bits() > opts.budget * n:
            best, best_rate = -1, np.inf
            for i, g in enumerate(groups):
                b = pick[i]
                if b <= opts.bits or levels[i][b][0].lossless:
                    continue
                saved = packed_nbytes(g.values.size, b) - packed_nbytes(g.values.size, b - 1)
                cost = levels[i][b - 1][1]["error"] ** 2 - levels[i][b][1]["error"] ** 2
                if saved > 0 and cost / saved < best_rate:
                    best, best_rate = i, cost / saved
            if best < 0:
                break  # every layer is at ``bits``: the budget cannot be met
            pick[best] -= 1
        return [levels[i][pick[i]] for i in range(len(groups))]


def share_weights(proto: Any, **options: Any) -> Any:
    """Library twin: ``share_weights(model_proto, bits=4)`` → ModelProto with packed shared weights."""
    from onnxprune.api import run_passes

    out, _ = run_passes(proto, [ShareWeights(Options(**options))])
    return out
