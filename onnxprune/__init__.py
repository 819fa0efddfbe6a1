"""onnxprune: a compression compiler for trained ONNX models.

Library use::

    import onnxprune
    small = onnxprune.compress("model.onnx", ["fold-bn", "prune-channels:ratio=0.3"])
    onnxprune.save_model(small, "small.onnx")
"""
from __future__ import annotations

import importlib.util as _ilu
import sys as _sys
from pathlib import Path as _Path

__version__ = "0.1.0"


def _bind_source_passes() -> None:
    # In the source tree the passes live in ../passes; the wheel maps that folder to
    # onnxprune/passes (pyproject package-dir). When this package is imported from the
    # source tree (python -m onnxprune, pytest from the repo root) neither an installed
    # wheel nor the editable finder is consulted, so bind ../passes here.
    here = _Path(__file__).resolve().parent
    src = here.parent / "passes"
    if (here / "passes").is_dir() or not (src / "__init__.py").is_file():
        return
    if "onnxprune.passes" in _sys.modules:
        return
    spec = _ilu.spec_from_file_location(
        "onnxprune.passes", src / "__init__.py", submodule_search_locations=[str(src)]
    )
    assert spec is not None and spec.loader is not None
    module = _ilu.module_from_spec(spec)
    _sys.modules["onnxprune.passes"] = module
    spec.loader.exec_module(module)


_bind_source_passes()


def __getattr__(name: str):  # lazy, so that `import onnxprune` stays cheap
    if name in {"compress", "load_model", "save_model"}:
        from onnxprune import api

        return getattr(api, name)
    raise AttributeError(f"module 'onnxprune' has no attribute {name!r}")


__all__ = ["__version__", "compress", "load_model", "save_model"]
