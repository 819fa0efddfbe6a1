"""The library entry points: the CLI is a thin layer over these."""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import onnx

from onnxprune.manager import Pass, PassManager, PassRecord
from onnxprune.model import Model, load_model, save_model
from onnxprune.verify import make_verifier, verify

__all__ = ["compress", "run_passes", "load_model", "save_model", "make_passes"]


def make_passes(specs: Sequence[str | Pass]) -> list[Pass]:
    """Turn ``'name:key=value'`` strings (or ready Pass objects) into passes; errors name the valid ones."""
    from onnxprune.passes import REGISTRY

    return [s if isinstance(s, Pass) else REGISTRY.create(s) for s in specs]


def run_passes(model: onnx.ModelProto, specs: Sequence[str | Pass], *, verify_each: bool = True,
               cost: Callable[[onnx.ModelProto], dict[str, Any]] | None = None,
               progress: Callable[[str], None] | None = None) -> tuple[onnx.ModelProto, list[PassRecord]]:
    """Run passes over a loaded model; returns the result (verified) and one record per pass."""
    passes = make_passes(specs)
    work = Model(model)
    manager = PassManager(passes, verifier=make_verifier(model) if verify_each else None, cost=cost, progress=progress)
    records = manager.run(work)
    result = work.to_onnx()
    if not verify_each:
        verify(result, model)
    return result, records


def compress(model: onnx.ModelProto | str | os.PathLike[str], passes: Sequence[str | Pass], *,
             verify_each: bool = True) -> onnx.ModelProto:
    """Load (if a path), run ``passes`` and return the compressed, verified ModelProto."""
    proto = load_model(model) if not isinstance(model, onnx.ModelProto) else model
    result, _ = run_passes(proto, passes, verify_each=verify_each)
    return result
