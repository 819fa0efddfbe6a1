"""prune-channels: structured channel pruning with dependency propagation.

Before::  X ─Conv(W[64,C,3,3])─▶ BN ─▶ Relu ─▶ Conv(V[128,64,3,3]) ─▶ ...
After::   X ─Conv(W[48,C,3,3])─▶ BN(48) ─▶ Relu ─▶ Conv(V[128,48,3,3]) ─▶ ...

The channel analysis (:mod:`onnxprune.channels`) groups every tensor axis that must
lose the same channels (residual Adds, Concat/Split offsets, depthwise and grouped
convs, SE gates, Flatten→Gemm blocks) into atoms. Per group, with n atoms:

    remove k = ⌊ratio·n⌋ atoms (scope=local)   or   the ratio·N lowest-scoring atoms
    over the whole model, scores normalised by each group's mean (scope=global);
    kept = n − k is raised to ``min-channels`` and rounded UP to a multiple of ``round-to``.

Atoms are ranked by the criterion (:mod:`onnxprune.criteria`: the mean of every member
layer's normalised scores). Never: a blocked atom, a group pruned to zero, a tensor
left with no channels, a model input/output channel. With ``latency-guard`` the pruned
model is timed against the original in onnxruntime (interleaved, 1 thread); if it is not
faster, round-to is doubled and the choice redone, and if no choice is faster the pass
leaves the model as it was (and says so).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx

from onnxprune.channels import Analysis, analyze, apply_removal
from onnxprune.context import PassContext
from onnxprune.criteria import CRITERIA, get_criterion
from onnxprune.errors import UsageError
from onnxprune.manager import Pass, PassResult, check_range
from onnxprune.model import Model


@dataclass(frozen=True)
class Options:
    ratio: float = 0.3
    criterion: str = "l1"
    scope: Literal["local", "global"] = "local"
    round_to: int | None = None
    min_channels: int = 1
    protect: tuple[str, ...] = ()
    latency_guard: bool = True
    guard_runs: int = 30

    def __post_init__(self) -> None:
        check_range("prune-channels", "ratio", self.ratio, 0.0, 1.0, hi_open=True)
        if self.criterion not in CRITERIA:
            raise UsageError(f"pass prune-channels: criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}")
        if self.round_to is not None:
            check_range("prune-channels", "round-to", self.round_to, 1, 1024)
        check_range("prune-channels", "min-channels", self.min_channels, 1, 1 << 20)
        check_range("prune-channels", "guard-runs", self.guard_runs, 3, 10_000)


def choose_atoms(analysis: Analysis, scores: np.ndarray, opts: Options, round_to: int) -> list[int]:
    """The atoms to remove, per the module docstring."""
    left = {sp.id: sp.size for sp in analysis.ctx.spaces}
    quota: dict[int, int] = {}
    if opts.scope == "global":
        cands = []
        for g in analysis.groups:
            prunable = [a for a in analysis.prunable_atoms(g) if not np.isnan(scores[a])]
            if prunable:
                mean = float(np.mean(scores[prunable])) or 1.0
                cands += [(scores[a] / mean, a, g.id) for a in prunable]
        total = sum(len(g.atoms) for g in analysis.groups if analysis.prunable_atoms(g))
        cands.sort()
        for _, _, gid in cands[: int(math.floor(opts.ratio * total))]:
            quota[gid] = quota.get(gid, 0) + 1
    chosen: list[int] = []
    for g in analysis.groups:
        prunable = [a for a in analysis.prunable_atoms(g) if not np.isnan(scores[a])]
        if not prunable:
            continue
        n = len(g.atoms)
        k = quota.get(g.id, 0) if opts.scope == "global" else int(math.floor(opts.ratio * n))
        keep = max(n - k, opts.min_channels, 1)
        keep = min(n, int(math.ceil(keep / round_to)) * round_to)
        k = min(n - keep, len(prunable))
        for a in sorted(prunable, key=lambda x: (scores[x], x)):
            if k <= 0:
                break
            el = analysis.atoms[a].elements
            if any(left[s] - len(ix) < 1 for s, ix in el.items()):
                continue
            for s, ix in el.items():
                left[s] -= len(ix)
            chosen.append(a)
            k -= 1
    return chosen


def _latency_ratio(before: onnx.ModelProto, after: onnx.ModelProto, ctx: PassContext, runs: int) -> float:
    """After/before latency on one calibration batch at its real size (random at the
    context's input shapes when there is no data)."""
    from onnxprune.data import load_dataset
    from onnxprune.runtime import latency_ratio

    feed = ctx.feed() or load_dataset(before, None, limit=1, batch_size=1, shapes=ctx.input_shapes).batches[0]
    return latency_ratio(before, after, feed, threads=ctx.target.threads, runs=runs)


class PruneChannels(Pass):
    """Remove whole channels (filters) everywhere they live, by group importance."""

    name = "prune-channels"
    Options = Options

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        opts: Options = self.options
        round_to = opts.round_to or ctx.target.vector_width
        snapshot = model.to_onnx()
        analysis = analyze(model, opts.protect)
        criterion = get_criterion(opts.criterion)
        if criterion.needs_data:
            ctx.require_data(self.name, f"criterion={opts.criterion}")
        scores, crit_stats = criterion.score(analysis, model, ctx)
        stats: dict[str, Any] = {
            "criterion": opts.criterion, "scope": opts.scope, "importance": "mean of per-layer mean-normalised scores",
            "analysis_seconds": round(analysis.seconds, 4), "groups": len(analysis.groups),
            "prunable_groups": sum(1 for g in analysis.groups if analysis.prunable_atoms(g)),
            "blocked": [{"sources": g.sources, "node": n, "reason": r} for g in analysis.groups for n, r in g.blocked[:1]],
        }
        stats.update(crit_stats)
        tried = []
        while True:
            atoms = choose_atoms(analysis, scores, opts, round_to)
            if not atoms:
                stats.update(round_to=round_to, channels_removed=0, latency_tried=tried)
                if tried:
                    model.reset(snapshot)
                    stats["reverted"] = "no pruned variant was faster than the original"
                return PassResult(False, stats)
            removed = apply_removal(model, analysis, atoms)
            model.refresh_shapes()
            if not opts.latency_guard:
                break
            ratio = _latency_ratio(snapshot, model.to_onnx(), ctx, opts.guard_runs)
            tried.append({"round_to": round_to, "latency_ratio": round(ratio, 4)})
            if ratio <= 1.0 or round_to >= 64:
                if ratio <= 1.0:
                    break
                model.reset(snapshot)
                stats.update(round_to=round_to, channels_removed=0, latency_tried=tried,
                             reverted="no pruned variant was faster than the original")
                return PassResult(False, stats)
            model.reset(snapshot)
            round_to *= 2
            analysis = analyze(model, opts.protect)
            scores, _ = criterion.score(analysis, model, ctx)
        per_group = []
        for g in analysis.groups:
            gone = [a for a in atoms if analysis.atoms[a].group == g.id]
            if gone:
                per_group.append({"sources": g.sources, "channels": len(g.atoms), "removed": len(gone)})
        stats.update(round_to=round_to, channels_removed=len(atoms), tensors_changed=len(removed), per_group=per_group,
                     latency_tried=tried)
        return PassResult(True, stats)


def prune_channels(model: onnx.ModelProto, **options: Any) -> onnx.ModelProto:
    """Library twin of the pass: ``prune_channels(proto, ratio=0.3, criterion="fpgm")``."""
    from onnxprune.api import run_passes

    out, _ = run_passes(model, [PruneChannels(Options(**options))])
    return out


