"""The library entry points: the CLI is a thin layer over these."""
from __future__ import annotations

import gc
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from onnxprune.context import Evaluator, PassContext, Target
from onnxprune.manager import Pass, PassManager, PassRecord
from onnxprune.model import Model, load_model, save_model
from onnxprune.verify import make_verifier, verify

__all__ = ["compress", "run_passes", "load_model", "save_model", "make_passes", "prepare_data", "DataPlan"]

#: calibration samples taken from --data when no --calib is given (the rest evaluate).
DEFAULT_CALIB = 256


def make_passes(specs: Sequence[str | Pass]) -> list[Pass]:
    """Turn ``'name:key=value'`` strings (or ready Pass objects) into passes; errors name the valid ones."""
    from onnxprune.passes import REGISTRY

    return [s if isinstance(s, Pass) else REGISTRY.create(s) for s in specs]


@dataclass
class DataPlan:
    """The calibration and evaluation data of a run, and what the report says of them."""

    ctx: PassContext
    evaluation: Any  # Dataset | None
    report: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _sample_hashes(ds: Any) -> list[str]:
    from onnxprune.data import stacked

    arrays = stacked(ds)
    n = ds.n_samples
    out = []
    for i in range(n):
        h = hashlib.sha1()
        for k in sorted(arrays):
            a = arrays[k]
            h.update(np.ascontiguousarray(a[i] if np.ndim(a) else a).tobytes())
        out.append(h.hexdigest())
    return out


def prepare_data(original: onnx.ModelProto, *, data: str | os.PathLike[str] | None = None,
                 calib: str | os.PathLike[str] | None = None, labels: str | None = None, recipe: str | None = None,
                 calib_limit: int | None = None, limit: int | None = None, batch_size: int = 1, seed: int = 0,
                 samples: int = 8, input_shapes: str | Sequence[str] | dict[str, tuple[int, ...]] | None = None,
                 target: str = "auto", threads: int = 1, cache_dir: str | os.PathLike[str] | None = None,
                 workers: int = 1, progress: bool = False, need_eval: bool = True,
                 tokenizer: str | os.PathLike[str] | None = None) -> DataPlan:
    """Load and split the data of a run into a pass context and an evaluation set.

    * ``calib`` and ``data``: calibration from ``calib`` (at most ``calib_limit``),
      evaluation from ``data``; evaluation samples equal to a calibration sample are
      dropped (and counted), so no sample is ever both.
    * only ``data``: a seeded split, ``calib_limit`` (default 256, at most half) for
      calibration and the rest for evaluation.
    * neither: random data at the given input shapes; the report says the check is weak.

    ``tokenizer`` (a ``tokenizer.json``) makes ``.txt`` data (one sentence a line) token
    arrays for a text encoder (:mod:`onnxprune.text`).
    """
    from onnxprune.data import (
        batch_step,
        dynamic_dims,
        load_dataset,
        parse_input_shapes,
        parse_recipe,
        resolve_input_shapes,
        split_dataset,
        subset,
    )
    from onnxprune.errors import DataError

    tok = Path(tokenizer) if tokenizer is not None else None
    shapes = resolve_input_shapes(original, input_shapes if isinstance(input_shapes, dict)
                                  else parse_input_shapes(input_shapes))
    rec = parse_recipe(recipe) if recipe else None
    step = batch_step(original, batch_size)
    report: dict[str, Any] = {"seed": seed}
    warnings: list[str] = []
    kind = "data"
    n_calib = calib_limit or DEFAULT_CALIB
    evaluation = None
    if calib is not None:
        calib_ds = load_dataset(original, calib, recipe=rec, labels=None, limit=n_calib, batch_size=batch_size,
                                seed=seed, progress=progress, tokenizer=tok, shapes=shapes)
        if data is not None and need_eval:
            evaluation = load_dataset(original, data, recipe=rec, labels=labels, limit=limit, batch_size=batch_size,
                                      seed=seed, progress=progress, tokenizer=tok, shapes=shapes)
            seen = set(_sample_hashes(calib_ds))
            keep = np.array([i for i, h in enumerate(_sample_hashes(evaluation)) if h not in seen], dtype=np.int64)
            dropped = evaluation.n_samples - len(keep)
            if not len(keep):
                raise DataError("every evaluation sample is also a calibration sample; give disjoint --calib and --data")
            if dropped:
                evaluation = subset(evaluation, keep, batch_size=step)
                evaluation.source += f" ({dropped} samples that are also in --calib left out)"
            report["overlap_dropped"] = dropped
        report["split"] = "separate --calib and --data"
    elif data is not None:
        full = load_dataset(original, data, recipe=rec, labels=labels, limit=limit, batch_size=batch_size,
                            seed=seed, progress=progress, tokenizer=tok, shapes=shapes)
        calib_ds, evaluation = split_dataset(full, n_calib, seed=seed, batch_size=step)
        report["split"] = {"from": full.source, "calibration": calib_ds.n_samples, "evaluation": evaluation.n_samples,
                           "seed": seed, "disjoint": True}
        if not need_eval:
            evaluation = None
    else:
        kind = "random"
        calib_ds = load_dataset(original, None, limit=samples, batch_size=batch_size, seed=seed, shapes=shapes)
        if need_eval:
            evaluation = load_dataset(original, None, limit=samples, batch_size=batch_size, seed=seed + 1, shapes=shapes)
        warnings.append("no data given: calibration and validation use random noise, so the fidelity check is "
                        "weak (give --data, or --calib and --data, for a real check)")
        report["split"] = "random data (no --data or --calib)"
    if not shapes and kind == "data" and calib_ds.batches:
        b = calib_ds.batches[0]
        shapes = {k: (1, *np.shape(v)[1:]) for k, v in b.items() if np.ndim(v)}
    if not shapes and (dyn := dynamic_dims(original)):
        warnings.append(f"the model has dynamic input dims ({', '.join(dyn)}) and no data or --input-shape: "
                        "cost, latency and validation use size 1 for them, not the sizes the model runs at")
    report["calibration"] = {"source": calib_ds.source, "n_samples": calib_ds.n_samples, "kind": kind}
    report["evaluation"] = None if evaluation is None else {"source": evaluation.source,
                                                            "n_samples": evaluation.n_samples}
    report["input_shapes"] = {k: list(v) for k, v in shapes.items()}
    ctx = PassContext(calib=calib_ds, target=Target.named(target, threads), input_shapes=shapes,
                      cache_dir=Path(cache_dir) if cache_dir is not None else None, seed=seed, workers=workers,
                      evaluator=Evaluator(original, calib_ds, threads=threads), calib_kind=kind)
    return DataPlan(ctx, evaluation, report, warnings)


def run_passes(model: onnx.ModelProto, specs: Sequence[str | Pass], *, verify_each: bool = True,
               cost: Callable[[onnx.ModelProto], dict[str, Any]] | None = None,
               progress: Callable[[str], None] | None = None,
               ctx: PassContext | None = None) -> tuple[onnx.ModelProto, list[PassRecord]]:
    """Run passes over a loaded model; returns the result (verified) and one record per pass."""
    passes = make_passes(specs)
    work = Model(model)
    manager = PassManager(passes, verifier=make_verifier(model) if verify_each else None, cost=cost, progress=progress)
    records = manager.run(work, ctx)
    result = work.to_onnx()
    # The graph's nodes and tensors point at each other: without a collection its
    # weights would outlive the call, beside the result (a large model's size again).
    del work, manager
    gc.collect()
    if not verify_each:
        verify(result, model)
    return result, records


def compress(model: onnx.ModelProto | str | os.PathLike[str], passes: Sequence[str | Pass], *,
             verify_each: bool = True, ctx: PassContext | None = None, **data: Any) -> onnx.ModelProto:
    """Load (if a path), run ``passes`` and return the compressed, verified ModelProto.

    ``ctx`` is a ready pass context; else keyword arguments of :func:`prepare_data`
    (``calib=``, ``data=``, ``recipe=`` ...) build one, when any is given.
    """
    proto = load_model(model) if not isinstance(model, onnx.ModelProto) else model
    if ctx is None and data:
        ctx = prepare_data(proto, need_eval=False, **data).ctx
    result, _ = run_passes(proto, passes, verify_each=verify_each, ctx=ctx)
    return result
