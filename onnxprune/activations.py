"""Activation statistics, streamed through onnxruntime over the calibration batches.

One implementation serves the data-driven criteria, the reconstruction after pruning,
whitened low rank, and quantization calibration. Nothing here holds all activations
at once: each batch's tensors are reduced into accumulators and dropped.

* :func:`tapped` adds intermediate tensors to a model's outputs; :class:`Tap` runs it
  (one session, graph optimisations off so that every tensor exists as itself).
* :class:`ChannelMoments` reduces a tensor to per-channel count, mean, variance,
  fraction of exact zeros and abs-max, along one axis (1 for NCHW, -1 for [.., C]).
* :class:`Gram` accumulates second moments ``XᵀX`` (and ``XᵀY`` when targets are
  given) of row matrices in float64.
* :func:`conv_rows` turns an NCHW input into im2col rows for a Conv of given geometry
  at sampled output positions (:func:`sample_positions`), so a KxK conv's input
  moments are those of its own matmul: ``Y[pos] = rows(X)[pos] @ W.reshape(Cout, -1)ᵀ``.
  Rows per batch are capped (``max_rows``), sampled with the context's seed.

``stream`` runs one or several tapped models on the same batches (the original and the
pruned model, say) and yields their tensors side by side; the peak bytes held are
tracked in :data:`PEAK` for the report.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import onnx
from onnx import helper

from onnxprune.data import Dataset
from onnxprune.runtime import make_session
from onnxprune.shapes import infer_shapes, tensor_elem_types

log = logging.getLogger(__name__)

#: largest number of bytes of activations held at once by :func:`stream` in this process.
PEAK = [0]


def tapped(model: onnx.ModelProto, tensors: Sequence[str], *, prefix: bool = False) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are its own followed by ``tensors``; with
    ``prefix``, only ``tensors`` and the nodes they need (a layer-by-layer refit then runs
    the front of the model only)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if prefix:
        _keep_prefix(out, tensors)
    have = {o.name for o in out.graph.output}
    want = [t for t in dict.fromkeys(tensors) if t not in have]
    if want:
        types = tensor_elem_types(infer_shapes(model))
        types.update({i.name: i.type.tensor_type.elem_type for i in model.graph.input})
        for name in want:
            out.graph.output.append(helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None))
    return out


def _keep_prefix(model: onnx.ModelProto, tensors: Sequence[str]) -> None:
    """Drop every node ``tensors`` do not depend on, and the model's own outputs."""
    g = model.graph
    producer = {o: i for i, n in enumerate(g.node) for o in n.output}
    need, stack = set(), [t for t in tensors if t in producer]
    while stack:
        i = producer[stack.pop()]
        if i in need:
            continue
        need.add(i)
        stack += [t for t in g.node[i].input if t in producer]
    used = {t for i in need for t in g.node[i].input}
    nodes = [n for i, n in enumerate(g.node) if i in need]
    inits = [t for t in g.initializer if t.name in used]
    del g.node[:], g.output[:], g.initializer[:]
    g.node.extend(nodes)
    g.initializer.extend(inits)


class Tap:
    """A session over ``model`` that returns the named tensors for a feed."""

    def __init__(self, model: onnx.ModelProto, tensors: Sequence[str], threads: int = 1, *,
                 optimize: bool = False, prefix: bool = False) -> None:
        # optimize=True is safe for reading tensors that are graph outputs (onnxruntime does
        # not fuse them away) and several times faster on depthwise-heavy CNNs
        self.tensors = list(dict.fromkeys(tensors))
        self.session = make_session(tapped(model, self.tensors, prefix=prefix), threads, optimize=optimize)
        inputs = {i.name for i in self.session.get_inputs()}
        self._inputs = inputs

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: v for k, v in feed.items() if k in self._inputs}
        values = self.session.run(self.tensors, feed)
        return dict(zip(self.tensors, values))


def stream(taps: Sequence[Tap], data: Dataset) -> Iterator[list[dict[str, np.ndarray]]]:
    """For each calibration batch, every tap's tensors (same batch for all)."""
    for batch in data.batches:
        got = [t.run(batch) for t in taps]
        held = sum(int(np.asarray(v).nbytes) for g in got for v in g.values())
        PEAK[0] = max(PEAK[0], held)
        yield got


@dataclass
class ChannelMoments:
    """Per-channel statistics along ``axis`` (every other axis is pooled)."""

    axis: int = 1
    count: int = 0
    sum: np.ndarray | None = None
    sumsq: np.ndarray | None = None
    zeros: np.ndarray | None = None
    absmax: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        c = np.moveaxis(x, self.axis, -1).reshape(-1, x.shape[self.axis]).astype(np.float64)
        s, sq = c.sum(0), np.einsum("ij,ij->j", c, c)
        z, m = (c == 0).sum(0).astype(np.float64), np.abs(c).max(0) if len(c) else np.zeros(c.shape[1])
        if self.sum is None:
            self.sum, self.sumsq, self.zeros, self.absmax = s, sq, z, m
        else:
            assert self.sumsq is not None and self.zeros is not None and self.absmax is not None
            self.sum += s
            self.sumsq += sq
            self.zeros += z
            self.absmax = np.maximum(self.absmax, m)
        self.count += len(c)

    def _need(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self.sum is None or self.sumsq is None or self.zeros is None or self.absmax is None or not self.count:
            raise ValueError("no data reduced yet")
        return self.sum, self.sumsq, self.zeros, self.absmax

    @property
    def mean(self) -> np.ndarray:
        return self._need()[0] / self.count

    @property
    def var(self) -> np.ndarray:
        s, sq, _, _ = self._need()
        mean = s / self.count
        return np.maximum(sq / self.count - mean * mean, 0.0)

    @property
    def second_moment(self) -> np.ndarray:
        return self._need()[1] / self.count

    @property
    def zero_fraction(self) -> np.ndarray:
        """APoZ: the fraction of exact zeros per channel."""
        return self._need()[2] / self.count

    @property
    def abs_max(self) -> np.ndarray:
        return self._need()[3]


@dataclass
class Gram:
    """``XᵀX``, ``Σx`` and (optionally) ``XᵀY``, ``Σy``, ``Σy²`` over rows, in float64."""

    xtx: np.ndarray | None = None
    xty: np.ndarray | None = None
    xsum: np.ndarray | None = None
    ysum: np.ndarray | None = None
    yty_diag: np.ndarray | None = None
    rows: int = 0

    def update(self, x: np.ndarray, y: np.ndarray | None = None) -> None:
        x = np.asarray(x, dtype=np.float64)
        xtx = x.T @ x
        if self.xtx is None:
            self.xtx, self.xsum = xtx, x.sum(0)
        else:
            assert self.xsum is not None
            self.xtx += xtx
            self.xsum += x.sum(0)
        if y is not None:
            y = np.asarray(y, dtype=np.float64)
            xty, ys, yy = x.T @ y, y.sum(0), np.einsum("ij,ij->j", y, y)
            if self.xty is None:
                self.xty, self.ysum, self.yty_diag = xty, ys, yy
            else:
                assert self.ysum is not None and self.yty_diag is not None
                self.xty += xty
                self.ysum += ys
                self.yty_diag += yy
        self.rows += len(x)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.xtx, self.xty) if a is not None)


@dataclass(frozen=True)
class ConvGeom:
    """What im2col needs of a Conv: kernel, strides, pads (begin h, w, end h, w), dilations, group."""

    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    group: int = 1

    @classmethod
    def of_node(cls, node: onnx.NodeProto | Any, weight_shape: Sequence[int]) -> ConvGeom:
        attrs = node.attrs if hasattr(node, "attrs") else {a.name: helper.get_attribute_value(a) for a in node.attribute}
        k = tuple(int(d) for d in weight_shape[2:])
        if len(k) != 2:
            raise ValueError("only 2-D convs have im2col rows here")
        strides = tuple(int(s) for s in attrs.get("strides", (1, 1)))
        dilations = tuple(int(d) for d in attrs.get("dilations", (1, 1)))
        auto = attrs.get("auto_pad", "NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            shape = getattr(node.inputs[0], "shape", None) if hasattr(node, "inputs") else None
            pads = same_pads(auto, shape[2:] if shape else None, k, strides, dilations)
            if pads is None:
                raise ValueError("auto_pad SAME_* at an unknown spatial size: the pads are not known")
        else:
            pads = tuple(int(p) for p in attrs.get("pads", (0, 0, 0, 0)))
        return cls((k[0], k[1]), strides, (pads[0], pads[1], pads[2], pads[3]),  # type: ignore[arg-type]
                   dilations, int(attrs.get("group", 1)))  # type: ignore[arg-type]

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        kh = (self.kernel[0] - 1) * self.dilations[0] + 1
        kw = (self.kernel[1] - 1) * self.dilations[1] + 1
        return ((h + self.pads[0] + self.pads[2] - kh) // self.strides[0] + 1,
                (w + self.pads[1] + self.pads[3] - kw) // self.strides[1] + 1)


def same_pads(auto_pad: str, spatial: Sequence[Any] | None, kernel: Sequence[int], strides: Sequence[int],
              dilations: Sequence[int]) -> tuple[int, ...] | None:
    """The explicit ``pads`` (begins, then ends) that ONNX's ``auto_pad=SAME_UPPER|SAME_LOWER``
    means at input size ``spatial``; None when a size is unknown. Total pad per axis is
    ``max((⌈H/s⌉ − 1)·s + (k − 1)·d + 1 − H, 0)``; SAME_UPPER puts the odd pixel at the end."""
    if not spatial or len(spatial) != len(kernel) or not all(isinstance(d, int) for d in spatial):
        return None
    begin, end = [], []
    for size, k, st, d in zip(spatial, kernel, strides, dilations):
        total = max((-(-int(size) // st) - 1) * st + (int(k) - 1) * d + 1 - int(size), 0)
        b = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        begin.append(b)
        end.append(total - b)
    return tuple(begin + end)


def sample_positions(n: int, oh: int, ow: int, max_rows: int | None, rng: np.random.Generator) -> np.ndarray:
    """Output positions ``[(b, i, j), ...]`` of a batch: all of them, or ``max_rows`` drawn without replacement."""
    total = n * oh * ow
    flat = np.arange(total) if not max_rows or total <= max_rows else np.sort(rng.choice(total, max_rows, replace=False))
    b, rest = np.divmod(flat, oh * ow)
    i, j = np.divmod(rest, ow)
    return np.stack([b, i, j], axis=1)


def conv_rows(x: np.ndarray, geom: ConvGeom, pos: np.ndarray, channels: np.ndarray | None = None) -> np.ndarray:
    """im2col rows of ``x`` [N,C,H,W] at output positions ``pos``: [R, C·kh·kw] (channel-major,
    like ``W.reshape(Cout, -1)``). ``channels`` picks input channels first."""
    if channels is not None:
        x = x[:, channels]
    pt, pl, pb, pr = geom.pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if any(geom.pads) else x
    kh, kw = geom.kernel
    b, i, j = pos[:, 0], pos[:, 1] * geom.strides[0], pos[:, 2] * geom.strides[1]
    parts = []
    for ki in range(kh):
        for kj in range(kw):
            parts.append(xp[b, :, i + ki * geom.dilations[0], j + kj * geom.dilations[1]])  # [R, C]
    return np.stack(parts, axis=2).reshape(len(pos), -1)


def output_rows(y: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """The rows of a Conv output ``y`` [N,Cout,OH,OW] at positions ``pos``: [R, Cout]."""
    return y[pos[:, 0], :, pos[:, 1], pos[:, 2]]


def feature_rows(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Rows of a MatMul/Gemm input: features on ``axis``, every other axis pooled."""
    x = np.asarray(x)
    return np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])


@dataclass
class StatsReport:
    """What a statistics run cost, for the pass's stats."""

    samples: int = 0
    batches: int = 0
    seconds: float = 0.0
    peak_activation_bytes: int = 0
    accumulator_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "batches": self.batches, "seconds": round(self.seconds, 3),
                "peak_activation_bytes": self.peak_activation_bytes, "accumulator_bytes": self.accumulator_bytes,
                **self.extra}


def thin(x: np.ndarray, axis: int, max_positions: int | None) -> np.ndarray:
    """An NCHW-like ``x`` (channels on axis 1) with every s-th spatial position only, so that
    about ``max_positions`` positions per channel remain (a view; other layouts unchanged)."""
    if not max_positions or axis != 1 or x.ndim < 3 or not x.flags.c_contiguous:
        return x
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    step = -(-n * flat.shape[2] // max_positions)
    if step <= 1:
        return x
    step += 1 - step % 2  # odd, so the samples do not fall on the same image columns
    return flat[:, :, ::step]


def channel_stats(model: onnx.ModelProto, tensors: dict[str, int], data: Dataset, *,
                  threads: int = 1, optimize: bool = False,
                  max_positions: int | None = None) -> tuple[dict[str, ChannelMoments], StatsReport]:
    """Per-channel moments of each named tensor (name -> channel axis) over ``data``; with
    ``max_positions``, from about that many spatial positions per batch (see :func:`thin`)."""
    import time

    t0 = time.perf_counter()
    PEAK[0] = 0
    tap = Tap(model, list(tensors), threads, optimize=optimize, prefix=optimize)
    acc = {name: ChannelMoments(axis=axis) for name, axis in tensors.items()}
    for (got,) in stream([tap], data):
        for name, value in got.items():
            acc[name].update(thin(value, acc[name].axis, max_positions))
    rep = StatsReport(data.n_samples, len(data.batches), time.perf_counter() - t0, PEAK[0],
                      sum(4 * 8 * (m.sum.size if m.sum is not None else 0) for m in acc.values()))
    return acc, rep
