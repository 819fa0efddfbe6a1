"""Data-driven channel criteria: scores read off activations on the calibration data.

Which tensor speaks for a channel: every space of the atom's group that a weighted
layer *reads* (the input of a consumer member: the tensor the next layer actually sees,
after BatchNorm and the activation), measured by :func:`onnxprune.activations.channel_stats`
over ``ctx.calib``. A group with no consumer space (its channels only reach Adds and
outputs) is measured on its sources' outputs instead.

* ``apoz`` (Hu et al. 2016): APoZ_c = fraction of exact zeros of channel c after the
  activation; score = 1 − APoZ (a dead channel scores 0, and goes first).
* ``variance`` (Polyak & Wolf 2015): Var[x_c]; a constant channel (score 0) carries no
  information that a bias could not.
* ``activation`` (the channel form of Wanda, Sun et al. 2023): a channel's contribution
  to its consumers' outputs, Σ_consumers ‖W[:, c]‖ · sqrt(E[x_c²]).

An atom spanning several spaces (a residual group) scores the mean of its measured
channels' scores (apoz, variance) or the sum over consumers (activation). Atoms that no
measurement reaches are NaN: never pruned.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from onnxprune.activations import ChannelMoments, channel_stats
from onnxprune.channels.analysis import Analysis
from onnxprune.channels.core import Member, Role
from onnxprune.context import PassContext
from onnxprune.criteria import ChannelCriterion, register
from onnxprune.model import Model

#: spatial positions per batch and tensor the moments are taken at (every position of a
#: 112x112 map in 16 images is 200k rows; a dead or constant channel is exactly so at any subset)
MAX_POSITIONS = 4096


def measured_spaces(analysis: Analysis) -> dict[int, int]:
    """Space id -> channel axis of every space a data criterion measures (see the module doc)."""
    ctx = analysis.ctx
    consumer = {m.space for m in ctx.members if m.role is Role.CONSUMER}
    out: dict[int, int] = {}
    for g in analysis.groups:
        if not analysis.prunable_atoms(g):
            continue
        mine = [s for s in g.spaces if s in consumer]
        if not mine:
            mine = [s for s in g.spaces if s in ctx.source_spaces]
        out.update({s: ctx.spaces[s].axis for s in mine})
    return out


class _DataCriterion(ChannelCriterion):
    needs_data: ClassVar[bool] = True

    def __init__(self) -> None:
        # one run of the pass scores the same graph again after a latency-guard retry
        self._cache: dict[tuple[Any, ...], tuple[dict[str, ChannelMoments], dict[str, Any]]] = {}

    def moments(self, analysis: Analysis, model: Model, ctx: PassContext,
                spaces: dict[int, int]) -> tuple[dict[str, ChannelMoments], dict[str, Any]]:
        data = ctx.require_data(self.name, f"criterion={self.name}")
        tensors = {analysis.ctx.spaces[s].tensor: ax for s, ax in spaces.items()}
        key = (id(data), tuple(sorted(tensors.items())),
               tuple(analysis.ctx.spaces[s].size for s in sorted(spaces)))
        if key not in self._cache:
            mom, rep = channel_stats(model.to_onnx(), tensors, data, threads=ctx.target.threads, optimize=True,
                                     max_positions=MAX_POSITIONS)
            self._cache[key] = (mom, {"activation_stats": rep.to_dict(), "measured_tensors": len(tensors)})
        return self._cache[key]

    def channel_scores(self, m: ChannelMoments) -> np.ndarray:
        raise NotImplementedError

    def score(self, analysis: Analysis, model: Model, ctx: PassContext) -> tuple[np.ndarray, dict[str, Any]]:
        spaces = measured_spaces(analysis)
        mom, stats = self.moments(analysis, model, ctx, spaces)
        n = len(analysis.atoms)
        total, count = np.zeros(n), np.zeros(n)
        for s in spaces:
            sc = self.channel_scores(mom[analysis.ctx.spaces[s].tensor])
            np.add.at(total, analysis.atom_of[s], sc)
            np.add.at(count, analysis.atom_of[s], 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), np.nan), dict(stats)


@register
class APoZ(_DataCriterion):
    """1 − average percentage of zeros after the activation (Hu et al. 2016): dead channels go first."""

    name = "apoz"

    def channel_scores(self, m: ChannelMoments) -> np.ndarray:
        return 1.0 - m.zero_fraction


@register
class Variance(_DataCriterion):
    """Per-channel activation variance on the calibration data (Polyak & Wolf 2015)."""

    name = "variance"

    def channel_scores(self, m: ChannelMoments) -> np.ndarray:
        return m.var


def _consumer_rows(m: Member) -> np.ndarray | None:
    """‖W[:, c]‖ per input channel c of a consumer member (None: it has no weight slice)."""
    if m.role is not Role.CONSUMER or m.weight is None:
        return None
    w = np.asarray(m.weight, dtype=np.float64)
    return np.sqrt(np.einsum("ij,ij->i", w, w))


@register
class Activation(_DataCriterion):
    """A channel's contribution to its consumers' outputs, Σ ‖W[:, c]‖·sqrt(E[x_c²]) (channel Wanda)."""

    name = "activation"

    def score(self, analysis: Analysis, model: Model, ctx: PassContext) -> tuple[np.ndarray, dict[str, Any]]:
        spaces = measured_spaces(analysis)
        mom, stats = self.moments(analysis, model, ctx, spaces)
        n = len(analysis.atoms)
        total, hit = np.zeros(n), np.zeros(n)
        rms_sum, rms_count = np.zeros(n), np.zeros(n)
        for s in spaces:
            rms = np.sqrt(mom[analysis.ctx.spaces[s].tensor].second_moment)
            np.add.at(rms_sum, analysis.atom_of[s], rms)
            np.add.at(rms_count, analysis.atom_of[s], 1.0)
        for m in analysis.ctx.members:
            norms = _consumer_rows(m)
            if norms is None or m.space not in spaces:
                continue
            rms = np.sqrt(mom[analysis.ctx.spaces[m.space].tensor].second_moment)
            np.add.at(total, analysis.atom_of[m.space], norms * rms)
            np.add.at(hit, analysis.atom_of[m.space], 1.0)
        # atoms no weighted consumer reads (their channels only reach a depthwise conv, say) use their rms
        with np.errstate(invalid="ignore", divide="ignore"):
            fallback = np.where(rms_count > 0, rms_sum / np.maximum(rms_count, 1), np.nan)
        out = np.where(hit > 0, total, fallback)
        stats = dict(stats)
        stats["activation_rms_fallback_atoms"] = int(np.sum((hit == 0) & (rms_count > 0)))
        return out, stats
