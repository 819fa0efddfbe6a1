"""Pure-numpy factorisations behind the low-rank passes: arrays in, arrays out.

- :mod:`.ranks`: rank rules (fraction, energy, empirical VBMF).
- :mod:`.conv`: conv kernel factorisations (Tucker-2, CP, spatial SVD).
- :mod:`.matrix`: MatMul weight factorisations (low rank, diagonal, diagonal + low rank).
- :mod:`.whiten`: low rank in the input-whitened space (SVD-LLM), the rank cut by output error.
"""
from __future__ import annotations

from onnxprune.decomp.conv import (
    CPFactors,
    RankRule,
    SpatialSVD,
    Tucker2,
    TuckerMethod,
    cp,
    cp_error_lower_bound,
    cp_relative_error,
    reconstruct_cp,
    reconstruct_spatial,
    reconstruct_tucker2,
    spatial_svd,
    tucker2,
    tucker2_ranks,
)
from onnxprune.decomp.matrix import (
    DiagLowRank,
    LowRank,
    apply_diagonal,
    diagonal,
    diagonal_matrix,
    diagonal_plus_lowrank,
    diagonal_plus_lowrank_steps,
    lowrank_svd,
    reconstruct_diag_lowrank,
    relative_error,
)
from onnxprune.decomp.ranks import VBMFResult, rank_by_energy, rank_by_fraction, vbmf_rank
from onnxprune.decomp.whiten import (
    WhitenedSVD,
    cholesky_ridge,
    output_energy,
    output_error,
    whitened_factors,
    whitened_lowrank,
    whitened_svd,
)

__all__ = [
    "CPFactors",
    "DiagLowRank",
    "LowRank",
    "RankRule",
    "SpatialSVD",
    "Tucker2",
    "TuckerMethod",
    "VBMFResult",
    "WhitenedSVD",
    "apply_diagonal",
    "cholesky_ridge",
    "cp",
    "cp_error_lower_bound",
    "cp_relative_error",
    "diagonal",
    "diagonal_matrix",
    "diagonal_plus_lowrank",
    "diagonal_plus_lowrank_steps",
    "lowrank_svd",
    "output_energy",
    "output_error",
    "rank_by_energy",
    "rank_by_fraction",
    "reconstruct_cp",
    "reconstruct_diag_lowrank",
    "reconstruct_spatial",
    "reconstruct_tucker2",
    "relative_error",
    "spatial_svd",
    "tucker2",
    "tucker2_ranks",
    "vbmf_rank",
    "whitened_factors",
    "whitened_lowrank",
    "whitened_svd",
]
