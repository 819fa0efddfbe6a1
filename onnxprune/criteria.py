"""Channel importance: one score per atom (a set of channels removed together).

Every member layer of a group contributes: a source's filter rows, a consumer's
input-channel slices, a BatchNorm's |γ|. Each member's per-channel scores are divided
by that member's mean score (so a layer with large weights does not drown the others),
and an atom's score is the MEAN of the normalised scores of all member channels in it.
Low score = removed first.

* ``l1`` / ``l2``: norm of each channel's weight slice (Li et al. 2017).
* ``fpgm``: for source filters, the sum of Euclidean distances to the layer's other
  filters; filters near the geometric median are the most replaceable (He et al. 2019).
  Consumers contribute their l2 norms.
* ``bn-scale``: |γ| of BatchNorm members (network slimming); groups with no BatchNorm fall
  back to l1, and the pass reports how many did.

Data-driven criteria take activations as well; the signature leaves room for them.
"""
from __future__ import annotations

import enum
from typing import Callable

import numpy as np

from onnxprune.channels.analysis import Analysis
from onnxprune.channels.core import Member, Role


class Criterion(enum.Enum):
    L1 = "l1"
    L2 = "l2"
    FPGM = "fpgm"
    BN_SCALE = "bn-scale"


def _l1(rows: np.ndarray) -> np.ndarray:
    return np.abs(rows).sum(axis=1, dtype=np.float64)


def _l2(rows: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->i", rows, rows, dtype=np.float64))


def _fpgm(rows: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", rows, rows, dtype=np.float64)
    gram = (rows @ rows.T).astype(np.float64)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
    return np.sqrt(d2).sum(axis=1)


def member_scores(m: Member, criterion: Criterion) -> np.ndarray | None:
    """Per-channel scores of one member, or None when it has nothing to say."""
    if m.weight is None:
        return None
    if criterion is Criterion.BN_SCALE:
        return m.weight[:, 0].astype(np.float64) if m.role is Role.PARAM else None
    if m.role is Role.PARAM:
        return None
    if criterion is Criterion.L1:
        return _l1(m.weight)
    if criterion is Criterion.FPGM and m.role is Role.SOURCE:
        return _fpgm(m.weight)
    return _l2(m.weight)


def atom_scores(analysis: Analysis, criterion: Criterion,
                fallback: Callable[[Member], np.ndarray | None] | None = None) -> tuple[np.ndarray, int]:
    """Mean normalised score per atom; NaN for atoms no member scored. Also returns the
    number of groups that fell back to l1 (bn-scale without BatchNorm)."""
    n = len(analysis.atoms)
    total = np.zeros(n)
    count = np.zeros(n)
    scored_groups: set[int] = set()
    by_group: dict[int, list[tuple[Member, np.ndarray]]] = {}
    for m in analysis.ctx.members:
        s = member_scores(m, criterion)
        gid = analysis.atoms[int(analysis.atom_of[m.space][0])].group if analysis.ctx.spaces[m.space].size else -1
        if s is not None:
            by_group.setdefault(gid, []).append((m, s))
            scored_groups.add(gid)
    fell_back = 0
    if criterion is Criterion.BN_SCALE:
        for m in analysis.ctx.members:
            gid = analysis.atoms[int(analysis.atom_of[m.space][0])].group
            if gid not in scored_groups:
                s = member_scores(m, Criterion.L1)
                if s is not None:
                    by_group.setdefault(gid, []).append((m, s))
        fell_back = len({g.id for g in analysis.groups if g.sources} - scored_groups)
    for items in by_group.values():
        for m, s in items:
            mean = float(np.mean(s))
            norm = s / mean if mean > 0 else np.zeros_like(s)
            np.add.at(total, analysis.atom_of[m.space], norm)
            np.add.at(count, analysis.atom_of[m.space], 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan), fell_back
