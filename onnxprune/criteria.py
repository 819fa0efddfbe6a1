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

The interface is open: a criterion is a :class:`ChannelCriterion` subclass with a
``name`` (the option value), ``needs_data`` and ``score(analysis, model, ctx)`` returning
one score per atom (NaN: not scored, never pruned) and a stats dict. ``register`` adds
it to :data:`CRITERIA`; ``get_criterion(name)`` finds it (a misspelt name lists the
valid ones). Weight criteria (l1, l2, fpgm, bn-scale) live here; data-driven ones
(apoz, variance, activation, thinet, car) in their own modules, imported at the end.
"""
from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np

from onnxprune.channels.analysis import Analysis
from onnxprune.channels.core import Member, Role
from onnxprune.errors import UsageError

if TYPE_CHECKING:
    from onnxprune.context import PassContext
    from onnxprune.model import Model


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


# ---------------------------------------------------------------------------- the open interface


class ChannelCriterion(ABC):
    """Scores atoms of a channel analysis; low scores are removed first."""

    name: ClassVar[str]
    needs_data: ClassVar[bool] = False

    @abstractmethod
    def score(self, analysis: Analysis, model: Model, ctx: PassContext) -> tuple[np.ndarray, dict[str, Any]]:
        """One score per atom of ``analysis`` (NaN: no opinion, never pruned), and stats for the report."""

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


CRITERIA: dict[str, type[ChannelCriterion]] = {}


def register(cls: type[ChannelCriterion]) -> type[ChannelCriterion]:
    if cls.name in CRITERIA:
        raise ValueError(f"criterion {cls.name!r} registered twice")
    CRITERIA[cls.name] = cls
    return cls


def get_criterion(name: str) -> ChannelCriterion:
    try:
        return CRITERIA[name]()
    except KeyError:
        raise UsageError(f"unknown criterion {name!r}; valid criteria: {', '.join(CRITERIA)}") from None


class _WeightCriterion(ChannelCriterion):
    kind: ClassVar[Criterion]

    def score(self, analysis: Analysis, model: Model, ctx: PassContext) -> tuple[np.ndarray, dict[str, Any]]:
        scores, fell_back = atom_scores(analysis, self.kind)
        return scores, ({"bn_scale_fallback_groups": fell_back} if fell_back else {})


@register
class L1(_WeightCriterion):
    """Sum of |w| of each channel's weight slices (Li et al. 2017)."""

    name, kind = "l1", Criterion.L1


@register
class L2(_WeightCriterion):
    """Euclidean norm of each channel's weight slices."""

    name, kind = "l2", Criterion.L2


@register
class FPGM(_WeightCriterion):
    """Distance of each filter to the layer's others: near the geometric median goes first (He et al. 2019)."""

    name, kind = "fpgm", Criterion.FPGM


@register
class BNScale(_WeightCriterion):
    """|γ| of BatchNorm members (network slimming); groups without BN fall back to l1."""

    name, kind = "bn-scale", Criterion.BN_SCALE


from onnxprune import criteria_data, criteria_greedy  # noqa: E402,F401
