"""Original vs compressed, in onnxruntime: fidelity, accuracy, latency.

Both models run on the same batches in CPU sessions built the same way.  Fidelity is
measured per output over all samples (flattened):

* ``max_abs`` = max |ref - got|, ``mean_abs`` = mean |ref - got|;
* ``max_rel`` = max |ref - got| / max |ref| (normwise, so near-zero reference values
  do not blow it up; 0 when both are all zero);
* ``cosine`` = <ref, got> / (|ref| |got|) (1 when both are zero, 0 when one is);
* ``top1_agreement`` (classifier-like outputs, [N,C] or [N,C,1,1] float with C > 1):
  the fraction of samples whose argmax is the same;
* ``argmax_agreement`` (sequence outputs, [N,T,C] float with T, C > 1: a recogniser's
  per-position character scores): the fraction of the N·T positions whose argmax over C
  is the same. Cosine alone hides a reader that now reads nothing: the scores stay
  close while the winning character at each position changes.

Padded text (:mod:`onnxprune.padding`): with ``masks`` (the data's padding mask, a 2-D
integer input named like ``*mask*``) an output of shape [N, T, ...] is compared at its real
positions only (mask != 0): every metric above leaves the padded positions out, and the
output's entry says ``masked`` (the mask input) and ``positions`` (how many were compared).
The same rule as the evaluator's fidelity score, from the same helper.

Non-finite values in ``got`` make the metrics ``None`` and are counted in ``nonfinite``.

Before any work, :func:`preflight` refuses (exit 6, one uncut line) a model onnxruntime
cannot run: a custom-domain op, an IR version newer than onnxruntime's; and
:func:`check_finite` refuses (exit 4) data holding NaN, which would make every metric NaN.

Latency interleaves the sessions: each round runs every session once, rotating which
goes first, so drift in the machine (frequency, other load) hits both alike.
"""
from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.data import Dataset
from onnxprune.errors import DataError, ModelError, OnnxPruneError, UnsupportedError, UsageError, VerificationError
from onnxprune.runtime import make_session, measure_latency  # noqa: F401  (re-exported)

Outputs = Mapping[str, Any] | Sequence[Mapping[str, np.ndarray]]


# ---------------------------------------------------------------------------- fidelity

def _gather(outputs: Outputs) -> dict[str, np.ndarray]:
    """Per-batch result dicts (or name -> array / list of arrays) to name -> one array."""
    if isinstance(outputs, Mapping):
        items = {k: (list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in outputs.items()}
    else:
        items = {}
        for batch in outputs:
            for k, v in batch.items():
                items.setdefault(k, []).append(v)
    out = {}
    for k, parts in items.items():
        arrs = [np.asarray(p) for p in parts]
        out[k] = arrs[0] if len(arrs) == 1 else (
            np.concatenate(arrs, axis=0) if arrs[0].ndim else np.stack(arrs)
        )
    return out


def _scores(a: np.ndarray) -> np.ndarray | None:
    """``a`` as [N, C] classifier scores, or None when it does not look like one."""
    if not np.issubdtype(a.dtype, np.floating):
        return None
    if a.ndim == 4 and a.shape[2:] == (1, 1):
        a = a.reshape(a.shape[:2])
    if a.ndim == 2 and a.shape[1] > 1:
        return a
    return None


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _metrics(ref: np.ndarray, got: np.ndarray, keep: np.ndarray | None = None) -> dict[str, Any]:
    """The metrics of one output; ``keep`` ([N, T] bool): compare only those positions."""
    m: dict[str, Any] = {"shape": list(ref.shape)}
    full_ref, full_got = ref, got
    if keep is not None:
        ref, got = ref[keep], got[keep]  # [K, ...]: the real positions only
        m["positions"] = int(keep.sum())
    r = ref.astype(np.float64).ravel()
    g = got.astype(np.float64).ravel()
    m["nonfinite"] = int(np.size(g) - np.count_nonzero(np.isfinite(g)))
    if r.size == 0:
        m.update(max_abs=0.0, mean_abs=0.0, max_rel=0.0, cosine=1.0)
        return m
    d = np.abs(r - g)
    max_abs = float(d.max())
    peak = float(np.abs(r).max())
    nr, ng = float(np.linalg.norm(r)), float(np.linalg.norm(g))
    if max_abs == 0:
        cosine = 1.0  # identical (or both zero): exactly 1, not 1 - 2e-16
    elif nr == 0 or ng == 0:
        cosine = 0.0
    else:
        cosine = float(np.dot(r, g) / (nr * ng))
        cosine = min(1.0, cosine) if math.isfinite(cosine) else math.nan  # min() would hide a NaN
    m.update(
        max_abs=_finite_or_none(max_abs),
        mean_abs=_finite_or_none(float(d.mean())),
        max_rel=_finite_or_none(max_abs / peak if peak else (0.0 if max_abs == 0 else math.inf)),
        cosine=_finite_or_none(cosine),
    )
    rs, gs = _scores(full_ref), _scores(full_got)  # the kind of output is read off its full shape
    if rs is not None and gs is not None:
        m["top1_agreement"] = float(np.mean(rs.argmax(axis=-1) == gs.argmax(axis=-1)))
    elif _is_sequence(full_ref):
        same = full_ref.argmax(axis=-1) == full_got.argmax(axis=-1)
        m["argmax_agreement"] = float(np.mean(same if keep is None else same[keep])) if same.size else 1.0
    return m


def _is_sequence(a: np.ndarray) -> bool:
    """[N, T, C] float scores, T > 1 positions of C > 1 classes (a text recogniser's output)."""
    return bool(np.issubdtype(a.dtype, np.floating) and a.ndim == 3 and a.shape[1] > 1 and a.shape[2] > 1)


def compare_outputs(ref: Outputs, got: Outputs, masks: Mapping[str, np.ndarray] | None = None
                    ) -> dict[str, dict[str, Any]]:
    """Per output name: max_abs, mean_abs, max_rel, cosine, (top1_agreement), shape, nonfinite.

    ``ref`` and ``got`` are lists of per-batch result dicts, or dicts of name -> array
    (or list of per-batch arrays).  Their names and shapes must match.  ``masks``: the
    padding mask ({input name: [N, T] array} over the same samples, see :func:`padding_masks`);
    outputs with that sequence axis are compared at the real positions only.
    """
    from onnxprune.padding import output_mask

    mask_input, real = next(iter(masks.items())) if masks else (None, None)
    keep_all = None if real is None else np.asarray(real) != 0
    r, g = _gather(ref), _gather(got)
    if set(r) != set(g):
        raise VerificationError(
            f"outputs differ: reference has {sorted(r)}, compared model has {sorted(g)}"
        )
    out = {}
    for name in r:
        if r[name].shape != g[name].shape:
            raise VerificationError(
                f"output {name!r}: shape {list(g[name].shape)} differs from the reference {list(r[name].shape)}"
            )
        keep = output_mask(keep_all, r[name])
        out[name] = _metrics(r[name], g[name], keep)
        if keep is not None:
            out[name]["masked"] = mask_input
    return out


def padding_masks(dataset: Dataset) -> dict[str, np.ndarray] | None:
    """{mask input: [N, T] mask over all of ``dataset``'s batches}, or None when it has none."""
    from onnxprune.padding import mask_name, real_positions, stack_masks

    name = mask_name(dataset.batches[0]) if dataset.batches else None
    stacked = stack_masks([real_positions(b) for b in dataset.batches]) if name is not None else None
    return None if name is None or stacked is None else {name: stacked}


def accuracy(outputs: Sequence[np.ndarray], labels: np.ndarray) -> float:
    """Top-1 accuracy (a fraction) of per-batch classifier outputs ([N,C] or [N,C,1,1])."""
    return float(np.mean(correct(outputs, labels)))


def correct(outputs: Sequence[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Per sample, whether the top-1 class of per-batch classifier outputs is the label."""
    parts = [np.asarray(o) for o in outputs]
    if not parts:
        raise DataError("accuracy: no outputs")
    scores = np.concatenate(parts, axis=0)
    while scores.ndim > 2 and scores.shape[-1] == 1:
        scores = scores.reshape(scores.shape[:-1])
    if scores.ndim != 2:
        raise DataError(f"accuracy: expected classifier scores [N,C] or [N,C,1,1], got shape {list(scores.shape)}")
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != scores.shape[0]:
        raise DataError(f"accuracy: {len(labels)} labels for {scores.shape[0]} samples")
    if labels.size and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise DataError(
            f"accuracy: labels range {labels.min()}..{labels.max()}, but the output has {scores.shape[1]} classes"
        )
    return np.asarray(scores.argmax(axis=-1) == labels)


# ---------------------------------------------------------------------------- latency

# ---------------------------------------------------------------------------- validate

def _pick_classifier(outputs: Mapping[str, np.ndarray], given: str | None) -> str | None:
    if given is not None:
        if given not in outputs:
            raise UsageError(f"classifier output {given!r} is not an output; outputs: {sorted(outputs)}")
        if _scores(outputs[given]) is None:
            raise UsageError(
                f"classifier output {given!r} has shape {list(outputs[given].shape)} "
                f"({outputs[given].dtype}); expected float [N,C] or [N,C,1,1] with C > 1"
            )
        return given
    found = [k for k, v in outputs.items() if _scores(v) is not None]
    return found[0] if len(found) == 1 else None


def _run(sess: ort.InferenceSession, names: list[str], feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return dict(zip(names, sess.run(names, dict(feed))))


def validate(
    original: onnx.ModelProto,
    compressed: onnx.ModelProto,
    dataset: Dataset,
    *,
    threads: int = 1,
    latency_runs: int = 50,
    warmup: int = 5,
    classifier_output: str | None = None,
    progress: bool | Callable[[int, int], None] = False,
) -> dict[str, Any]:
    """Run both models on ``dataset``; a JSON-serialisable report (see the module doc).

    ``latency_runs=0`` skips the latency measurement (``latency`` is then None).
    """
    if isinstance(latency_runs, bool) or not isinstance(latency_runs, int) or latency_runs < 0:
        raise UsageError(f"latency runs must be a non-negative integer, got {latency_runs!r}")
    if not dataset.batches:
        raise DataError(f"no data to validate with ({dataset.source})")
    s_orig = make_session(original, threads)
    try:
        s_comp = make_session(compressed, threads)
    except ModelError as exc:
        raise VerificationError(f"compressed model: {exc}") from exc
    names = [o.name for o in s_orig.get_outputs()]
    comp_names = [o.name for o in s_comp.get_outputs()]
    if set(names) != set(comp_names):
        raise VerificationError(
            f"the compressed model's outputs {comp_names} differ from the original's {names}"
        )
    in_orig = sorted(i.name for i in s_orig.get_inputs())
    in_comp = sorted(i.name for i in s_comp.get_inputs())
    if in_orig != in_comp:
        raise VerificationError(f"the compressed model's inputs {in_comp} differ from the original's {in_orig}")

    from tqdm import tqdm

    ref: list[dict[str, np.ndarray]] = []
    got: list[dict[str, np.ndarray]] = []
    # disable=None: a bar only on a terminal, never lines of it in a log; a callable reports (done, total).
    tick = progress if callable(progress) else None
    bar = tqdm(dataset.batches, desc="validating", unit="batch", file=sys.stderr,
               disable=None if progress is True else True, leave=False)
    for feed in bar:
        if tick is not None:
            tick(len(ref), len(dataset.batches))
        try:
            ref.append(_run(s_orig, names, feed))
        except OnnxPruneError:
            raise
        except Exception as exc:
            raise DataError(f"the original model fails on the data ({dataset.source}): {_first_line(exc)}") from exc
        try:
            got.append(_run(s_comp, names, feed))
        except Exception as exc:
            raise VerificationError(f"the compressed model fails where the original runs: {_first_line(exc)}") from exc
        if len(ref) == 1:
            classifier = _pick_classifier(ref[0], classifier_output)
            if dataset.labels is not None and classifier is None:
                raise UsageError(
                    f"the data has labels but no output looks like classifier scores; name one of {names}"
                )

    report: dict[str, Any] = {
        "data": {"source": dataset.source, "n_samples": dataset.n_samples, "batches": len(dataset.batches)},
        "outputs": compare_outputs(ref, got, padding_masks(dataset)),
        "classifier_output": classifier,
    }
    if classifier is not None:
        report["top1_agreement"] = report["outputs"][classifier].get("top1_agreement")
    if dataset.labels is not None and classifier is not None:
        from onnxprune.paired import discordant, half_width

        c0 = correct([r[classifier] for r in ref], dataset.labels)
        c1 = correct([g[classifier] for g in got], dataset.labels)
        lost, gained = discordant(c0, c1)
        n = int(len(dataset.labels))
        report["accuracy"] = {"before": float(c0.mean()), "after": float(c1.mean()),
                              "delta": float(c1.mean() - c0.mean()), "n": n,
                              # the samples that decide the delta, and its paired 95 % interval
                              "lost": lost, "gained": gained, "ci95": half_width(lost, gained, n)}
    report["latency"] = None
    if latency_runs:
        from onnxprune.padding import representative_sample

        # padded text: the batch with the longest sample, as the latency guards and auto time
        lat_feed = dataset.batches[representative_sample(dataset)[0]]
        before_l, after_l = measure_latency([s_orig, s_comp], lat_feed, warmup=warmup, runs=latency_runs)
        report["latency"] = {
            "threads": threads,
            "runs": latency_runs,
            "warmup": warmup,
            "batch": _batch_len(lat_feed),
            "before_ms": before_l["median_ms"],
            "after_ms": after_l["median_ms"],
            "ratio": after_l["median_ms"] / before_l["median_ms"],
            "speedup": before_l["median_ms"] / after_l["median_ms"],
            "before_p10_ms": before_l["p10_ms"],
            "before_p90_ms": before_l["p90_ms"],
            "after_p10_ms": after_l["p10_ms"],
            "after_p90_ms": after_l["p90_ms"],
        }
    return report


def _batch_len(feed: Mapping[str, np.ndarray]) -> int:
    arrs = [a for a in feed.values() if np.ndim(a)]
    return int(arrs[0].shape[0]) if arrs else 1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------- preflight

_IR_TOO_NEW = re.compile(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)")
_OPSET_TOO_NEW = re.compile(r"(?:Opset|opset) (\d+)[^.]*(?:under development|not supported|newer)", re.I)
_STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training",
                               "ai.onnx.training", "com.microsoft.nchwc", "com.ms.internal.nhwc"})


def preflight(model: onnx.ModelProto, source: str | Path | None = None) -> None:
    """Refuse before any work what onnxruntime cannot run: exit 6 with one whole line.

    ``source`` (the model's path) lets onnxruntime read it from the file (models over
    2 GB cannot be serialised in memory). Runs one session on the original model.
    """
    name = Path(source).name if source is not None else "model"
    custom = [n for n in model.graph.node if n.domain not in _STANDARD_DOMAINS]
    try:
        make_session(Path(source) if source is not None else model, 1)
    except ModelError as exc:
        text = str(exc.__cause__ or exc)
        if m := _IR_TOO_NEW.search(text):
            raise UnsupportedError(
                f"{name}: IR version {m.group(1)} is newer than onnxruntime {ort.__version__} supports "
                f"(at most {m.group(2)}): onnxprune cannot run or verify it; re-export with an older onnx, "
                f"or upgrade onnxruntime") from None
        if custom or "is not a registered function/op" in text or "No opset import for domain" in text:
            node = custom[0] if custom else None
            what = (f"node {node.name or node.op_type!r} is {node.domain}:{node.op_type}, a custom-domain op"
                    if node is not None else "the model uses a custom-domain op")
            raise UnsupportedError(
                f"{name}: {what} that onnxruntime does not implement, so onnxprune cannot run or verify "
                "the model (register the op's library with onnxruntime first)") from None
        if m := _OPSET_TOO_NEW.search(text):
            raise UnsupportedError(f"{name}: opset {m.group(1)} is not supported by onnxruntime "
                                   f"{ort.__version__}: {_ort_reason(text)}") from None
        raise UnsupportedError(f"{name}: onnxruntime {ort.__version__} cannot load the model: "
                               f"{_ort_reason(text)}") from None


def _ort_reason(text: str) -> str:
    """onnxruntime's message without its '[ONNXRuntimeError] : 1 : FAIL : file.cc:123 Func(...)' prefix."""
    line = " ".join(text.strip().splitlines()[0].split()) if text.strip() else "unknown error"
    line = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", line)
    line = re.sub(r"^/?\S+\.(?:cc|h|cpp):\d+ (?:\S+\(.*?\) )?", "", line)
    return line


def control_flow_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes holding subgraphs (If, Loop, Scan ...), which most passes do not rewrite."""
    return [n for n in model.graph.node
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)]


def check_finite(dataset: Dataset | None, what: str) -> None:
    """Refuse data holding NaN in a float input (exit 4): every metric on it would be NaN."""
    if dataset is None:
        return
    sample = 0
    for feed in dataset.batches:
        n = _batch_len(feed)
        for key, arr in feed.items():
            a = np.asarray(arr)
            if np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.complexfloating):
                bad = np.isnan(a)
                if bad.any():
                    first = sample + (int(np.argwhere(bad)[0][0]) if a.ndim else 0)
                    raise DataError(f"{what} ({dataset.source}): input {key!r} holds {int(bad.sum())} NaN value(s), "
                                    f"the first in sample {first}; clean the data (metrics on NaN are NaN)")
        sample += n
