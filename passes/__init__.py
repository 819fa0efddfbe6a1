"""The registered passes: one explicit list, in the order ``--list-passes`` prints them."""
from __future__ import annotations

from onnxprune.passes.auto import AutoCompress
from onnxprune.passes.cp import CPDecompose
from onnxprune.passes.diagonal import DiagonalApproximate
from onnxprune.passes.equalize import Equalize
from onnxprune.passes.fold_bn import FoldBatchNorm
from onnxprune.passes.fp16 import Float16
from onnxprune.passes.lowrank import LowRankFactorize
from onnxprune.passes.prune_channels import PruneChannels
from onnxprune.passes.prune_weights import PruneWeights
from onnxprune.passes.quantize import Quantize
from onnxprune.passes.share_weights import ShareWeights
from onnxprune.passes.spatial_svd import SpatialSVDDecompose
from onnxprune.passes.tucker import TuckerDecompose

from onnxprune.manager import Pass, Registry

PASSES: list[type[Pass]] = [
    FoldBatchNorm,
    PruneChannels,
    TuckerDecompose,
    CPDecompose,
    SpatialSVDDecompose,
    LowRankFactorize,
    DiagonalApproximate,
    PruneWeights,
    ShareWeights,
    AutoCompress,
    Equalize,
    Quantize,
    Float16,
]

REGISTRY = Registry(PASSES)
