"""The registered passes: one explicit list, in the order ``--list-passes`` prints them."""
from __future__ import annotations

from onnxprune.manager import Pass, Registry
from onnxprune.passes.fold_bn import FoldBatchNorm
from onnxprune.passes.prune_channels import PruneChannels

PASSES: list[type[Pass]] = [
    FoldBatchNorm,
    PruneChannels,
]

REGISTRY = Registry(PASSES)
