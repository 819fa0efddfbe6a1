"""onnxprune: a compression compiler for trained ONNX models.

Library use::

    import onnxprune
    small = onnxprune.compress("model.onnx", ["fold-bn", "prune-channels:ratio=0.3"])
    onnxprune.save_model(small, "small.onnx")
"""
from __future__ import annotations

__version__ = "0.1.0"

# ``onnxprune.passes`` lives in the top-level ``passes/`` folder; the install maps it
# (setup.py), and so does the editable install's finder when the package is imported
# from a checkout (``python -m pytest`` from the repo root, which puts the checkout
# first on sys.path). Nothing needs binding here.


def __getattr__(name: str):  # lazy, so that `import onnxprune` stays cheap
    if name in {"compress", "load_model", "save_model"}:
        from onnxprune import api

        return getattr(api, name)
    raise AttributeError(f"module 'onnxprune' has no attribute {name!r}")


__all__ = ["__version__", "compress", "load_model", "save_model"]
