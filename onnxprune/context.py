"""The pass context: what every pass may read besides the model.

A frozen :class:`PassContext` carries

* ``calib``: the calibration data (a :class:`~onnxprune.data.Dataset`) the passes may
  look at: activation statistics, reconstruction, CAR, quantization ranges. It is
  never the evaluation data: :func:`onnxprune.data.split_dataset` keeps the two apart;
* ``target``: the CPU the result is for (fp32 vector width, VNNI, threads), detected
  (``auto``) or named (``avx2``, ``avx512``, ``avx512-vnni``, ``generic``), recorded
  in the report so that a build is reproducible on another machine;
* ``input_shapes``: the concrete input shapes the model runs at (from the data, or
  ``--input-shape``), used by costing, the latency guard and statistics;
* ``cache_dir``: where per-shape latency measurements are kept (None: not kept);
* ``seed``, ``workers``: for anything random, and the size of a sweep's process pool;
* ``evaluator``: scores a candidate model on the calibration data, top-1 with labels,
  else fidelity to the original model's outputs.

``PassContext()`` (no calibration data) is the context of a run with no data: passes that need data
refuse with one line, the rest behave as they always did.
"""
from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from onnxprune.errors import UsageError

if TYPE_CHECKING:
    from onnxprune.data import Dataset

log = logging.getLogger(__name__)


class TargetKind(str, enum.Enum):
    AUTO = "auto"
    GENERIC = "generic"
    AVX2 = "avx2"
    AVX2_VNNI = "avx2-vnni"
    AVX512 = "avx512"
    AVX512_VNNI = "avx512-vnni"


_WIDTH = {TargetKind.GENERIC: 4, TargetKind.AVX2: 8, TargetKind.AVX2_VNNI: 8, TargetKind.AVX512: 16,
          TargetKind.AVX512_VNNI: 16}


@dataclass(frozen=True)
class Target:
    """The CPU a compressed model is built for."""

    kind: TargetKind
    vector_width: int  # float32 lanes of the widest SIMD unit onnxruntime uses
    vnni: bool  # int8 dot-product instructions (VNNI/AMX): int8 activations are fast
    threads: int = 1
    detected: bool = False  # read off this machine (auto) rather than named

    @classmethod
    def named(cls, name: str | TargetKind, threads: int = 1) -> Target:
        try:
            kind = TargetKind(name)
        except ValueError:
            raise UsageError(f"--target must be one of {', '.join(k.value for k in TargetKind)}, got {name!r}") from None
        if kind is TargetKind.AUTO:
            return cls.detect(threads)
        return cls(kind, _WIDTH[kind], kind in (TargetKind.AVX2_VNNI, TargetKind.AVX512_VNNI), threads)

    @classmethod
    def detect(cls, threads: int = 1) -> Target:
        flags = cpu_flags()
        vnni = bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)
        if "avx512f" in flags:
            kind = TargetKind.AVX512_VNNI if vnni else TargetKind.AVX512
        elif "avx2" in flags:
            kind = TargetKind.AVX2_VNNI if vnni else TargetKind.AVX2
        else:
            kind = TargetKind.GENERIC
        return cls(kind, _WIDTH[kind], vnni, threads, detected=True)

    def to_dict(self) -> dict[str, Any]:
        from onnxprune.latency import cpu_model

        return {"kind": self.kind.value, "vector_width": self.vector_width, "vnni": self.vnni,
                "threads": self.threads, "detected": self.detected, "cpu": cpu_model()}


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@dataclass(frozen=True)
class PassContext:
    calib: Dataset | None = None
    target: Target = field(default_factory=lambda: Target.detect())
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    cache_dir: Path | None = None
    seed: int = 0
    workers: int = 1
    evaluator: Evaluator | None = None
    #: "data" when the calibration data is real, "random" when it is noise (weak), None when absent.
    calib_kind: str | None = None

    @property
    def has_data(self) -> bool:
        """Real calibration data (random noise does not count)."""
        return self.calib is not None and self.calib_kind == "data"

    def require_data(self, pass_name: str, what: str) -> Dataset:
        if self.calib is None:
            raise UsageError(f"pass {pass_name}: {what} needs calibration data: give --calib DATA or --data DATA")
        return self.calib

    def latency_cache_path(self) -> Path | None:
        return None if self.cache_dir is None else Path(self.cache_dir) / "latency.json"

    def replace(self, **changes: Any) -> PassContext:
        return dataclasses.replace(self, **changes)

    def feed(self) -> dict[str, np.ndarray] | None:
        """One calibration batch at its real size (the latency guard's input), or None.

        The batch holding :func:`~onnxprune.padding.representative_sample`: for padded text
        the one with the sample of most real tokens (timed on a short sentence padded to
        128, MiniLM's int8 speed-up read 2.2x instead of 2.7x), for images the first."""
        if self.calib is None or not self.calib.batches:
            return None
        from onnxprune.padding import representative_sample

        return dict(self.calib.batches[representative_sample(self.calib)[0]])

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target.to_dict(), "seed": self.seed, "workers": self.workers,
                "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
                "calibration": None if self.calib is None else {
                    "source": self.calib.source, "n_samples": self.calib.n_samples, "kind": self.calib_kind},
                "latency_cache": None if self.cache_dir is None else str(self.latency_cache_path())}


METRICS = ("auto", "accuracy", "soft-accuracy", "cosine", "agreement")
# metrics whose score is a fraction of samples: drops are reported in points (x100)
POINT_METRICS = ("accuracy", "soft-accuracy", "agreement")


def probabilities(out: np.ndarray) -> np.ndarray:
    """(N, classes) probabilities of a classifier output: kept when every row already is a
    distribution (a model ending in Softmax), else the softmax of the logits."""
    a = np.asarray(out, dtype=np.float64).reshape(len(out), -1)
    if a.size and a.min() >= 0.0 and np.allclose(a.sum(1), 1.0, atol=1e-3):
        return a
    z = np.exp(a - a.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


class Evaluator:
    """Scores a model on the calibration data: higher is better.

    With labels the score is top-1 accuracy of the classifier output; without, it is the
    fidelity to the reference model's outputs: mean cosine similarity per sample over all
    float outputs, or top-1 agreement when ``metric="agreement"``. The reference outputs
    are computed once. A sample whose output equals the reference scores exactly 1.

    Padded text (:mod:`onnxprune.padding`): when a batch has a padding mask (a 2-D integer
    or bool input named like ``*mask*``, [B, T]), an output of shape [B, T, ...] is compared
    at the real positions only (mask != 0, in the reference and the candidate alike): what
    a model computes at a padded position is read by nothing, yet on MiniLM's
    ``last_hidden_state`` it made the cosine fall much faster than STS-B. Outputs without
    that sequence axis (a pooled embedding [B, H]) are compared whole.

    ``metric="soft-accuracy"`` (labels needed) scores the mean probability the model gives
    the true label (softmax of the classifier output unless it already holds
    probabilities). It is continuous where top-1 on a few dozen samples counts 1-3 flipped
    images, but measured on mobilenetv2 (12 single-group cuts, 64 scoring images) it ranked
    the cuts worse against the 744-image evaluation top-1 than top-1 itself did (Spearman
    0.70 vs 0.92): it is an option, not a default.
    """

    def __init__(self, reference: onnx.ModelProto, data: Dataset, *, threads: int = 1, metric: str = "auto") -> None:
        if metric not in METRICS:
            raise UsageError(f"evaluator metric must be {', '.join(METRICS)}, got {metric!r}")
        self.data = data
        self.threads = threads
        self._model = reference
        self._metric = metric
        self._reference: list[dict[str, np.ndarray]] | None = None
        self.names: list[str] = [o.name for o in reference.graph.output]
        self.classifier: str | None = None
        self.metric = metric

    @property
    def drop_scale(self) -> float:
        """What a score difference is multiplied by to read as a drop: 100 (points) for the
        fraction-of-samples metrics, 1 for cosine."""
        _ = self.reference
        return 100.0 if self.metric in POINT_METRICS else 1.0

    def on(self, data: Dataset) -> Evaluator:
        """The same evaluation (reference model, requested metric, threads) on other data."""
        return Evaluator(self._model, data, threads=self.threads, metric=self._metric)

    @property
    def reference(self) -> list[dict[str, np.ndarray]]:
        """The original model's outputs on the calibration data (computed once, on first use)."""
        if self._reference is None:
            from onnxprune.runtime import make_session

            sess = make_session(self._model, self.threads)
            self.names = [o.name for o in sess.get_outputs()]
            self._reference = [dict(zip(self.names, sess.run(self.names, dict(b)))) for b in self.data.batches]
            self.classifier = _classifier_name(self._reference[0]) if self._reference else None
            metric = self._metric
            if metric == "auto":
                metric = "accuracy" if (self.data.labels is not None and self.classifier) else "cosine"
            if metric in ("accuracy", "agreement", "soft-accuracy") and not self.classifier:
                raise UsageError(f"evaluator metric {metric} needs a classifier-like output; outputs: {self.names}")
            if metric in ("accuracy", "soft-accuracy") and self.data.labels is None:
                raise UsageError("evaluator metric accuracy needs labelled calibration data")
            self.metric = metric
        return self._reference

    def baseline(self) -> float:
        """The original model's own score."""
        return self.score_outputs(self.reference)

    def score_outputs(self, outputs: list[dict[str, np.ndarray]]) -> float:
        _ = self.reference
        if self.metric == "accuracy":
            assert self.classifier and self.data.labels is not None
            pred = np.concatenate([np.asarray(o[self.classifier]).reshape(len(o[self.classifier]), -1).argmax(1)
                                   for o in outputs])
            return float(np.mean(pred == self.data.labels[: len(pred)]))
        if self.metric == "soft-accuracy":
            assert self.classifier and self.data.labels is not None
            prob = np.concatenate([probabilities(o[self.classifier]) for o in outputs])
            lab = np.asarray(self.data.labels[: len(prob)], dtype=np.int64)
            return float(np.mean(prob[np.arange(len(prob)), lab]))
        if self.metric == "agreement":
            assert self.classifier
            a = np.concatenate([r[self.classifier].reshape(len(r[self.classifier]), -1).argmax(1) for r in self.reference])
            b = np.concatenate([o[self.classifier].reshape(len(o[self.classifier]), -1).argmax(1) for o in outputs])
            return float(np.mean(a == b))
        sims = sample_cosines(self.reference, outputs, self.data.batches)
        if not sims.size:
            return 0.0
        val = float(np.mean(sims))
        return val if np.isfinite(val) else -1.0

    def run(self, model: onnx.ModelProto | Any) -> list[dict[str, np.ndarray]]:
        from onnxprune.runtime import make_session

        sess: Any = model if hasattr(model, "get_outputs") else make_session(model, self.threads)
        return [dict(zip(self.names, sess.run(self.names, dict(b)))) for b in self.data.batches]

    def score(self, model: onnx.ModelProto | Any) -> float:
        """Score of a model (a ModelProto, or a ready session)."""
        try:
            return self.score_outputs(self.run(model))
        except Exception as exc:  # a candidate that onnxruntime refuses scores worst
            log.info("evaluator: candidate failed: %s", exc)
            return -1.0



def sample_cosines(reference: Sequence[Mapping[str, np.ndarray]], outputs: Sequence[Mapping[str, np.ndarray]],
                   batches: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
    """Per sample and float output, the cosine between a candidate's and the reference's
    outputs (one value per sample per output, concatenated): padded positions of [B, T, ...]
    outputs left out (see :class:`Evaluator`); identical rows exactly 1."""
    from onnxprune.padding import output_mask, real_positions

    sims = []
    for ref, got, batch in zip(reference, outputs, batches):
        real = real_positions(batch)
        for k, r in ref.items():
            if not np.issubdtype(np.asarray(r).dtype, np.floating):
                continue
            rr = np.asarray(r, dtype=np.float64)
            g = np.asarray(got[k], dtype=np.float64).reshape(rr.shape)
            keep = output_mask(real, rr)
            if keep is not None:  # padded positions count as zero in both: left out of dot and norms
                w = keep.reshape(keep.shape + (1,) * (rr.ndim - 2))
                rr, g = rr * w, g * w
            rr = rr.reshape(len(rr), -1) if rr.ndim else rr.reshape(1, -1)
            g = g.reshape(rr.shape)
            num = (rr * g).sum(1)
            den = np.linalg.norm(rr, axis=1) * np.linalg.norm(g, axis=1)
            cos = np.where(den > 0, np.minimum(num / np.maximum(den, 1e-300), 1.0),
                           (np.abs(rr).sum(1) == np.abs(g).sum(1)) * 1.0)
            # identical rows are exactly 1, not 1 - 1e-16: "unchanged" must read as unchanged
            sims.append(np.where((rr == g).all(1), 1.0, cos))
    return np.concatenate(sims) if sims else np.zeros(0)

def _classifier_name(outputs: Mapping[str, np.ndarray]) -> str | None:
    found = []
    for k, v in outputs.items():
        a = np.asarray(v)
        if not np.issubdtype(a.dtype, np.floating) or a.ndim < 2:
            continue
        rest = [d for d in a.shape[1:] if d != 1]
        if len(rest) == 1 and rest[0] > 1 and a.shape[1] == rest[0]:
            found.append(k)
    return found[0] if len(found) == 1 else None
