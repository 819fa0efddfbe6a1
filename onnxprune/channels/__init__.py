"""Channel dependency analysis: which channels of which tensors must be removed together.

One module per op family registers handlers (see :mod:`onnxprune.channels.core`);
:func:`analyze` runs the closure and :func:`apply_removal` rewrites the graph.
"""
from __future__ import annotations

from onnxprune.channels import concat_split, conv, elementwise, matmul, norm, pooling, reshape, spatial  # noqa: F401
from onnxprune.channels.analysis import Analysis, Atom, Group, analyze, apply_removal
from onnxprune.channels.core import HANDLERS, Role

__all__ = ["Analysis", "Atom", "Group", "HANDLERS", "Role", "analyze", "apply_removal"]
