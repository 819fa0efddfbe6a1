"""prune-channels: structured channel pruning with dependency propagation, and recovery.

Before::  X ─Conv(W[64,C,3,3])─▶ BN ─▶ Relu ─▶ Conv(V[128,64,3,3]) ─▶ ...
After::   X ─Conv(W[48,C,3,3])─▶ BN(48) ─▶ Relu ─▶ Conv(V'[128,48,3,3]) ─▶ ...   (V' refit)

The channel analysis (:mod:`onnxprune.channels`) groups every tensor axis that must
lose the same channels (residual Adds, Concat/Split offsets, depthwise and grouped
convs, SE gates, Flatten→Gemm blocks) into atoms. Per group, with n atoms:

    remove k = ⌊ratio·n⌋ atoms (scope=local)   or   the ratio·N lowest-scoring atoms
    over the whole model, scores normalised by each group's mean (scope=global)   or
    (scope=error, needs data) per-group k chosen greedily by the smallest increase of the
    group's consumers' relative output error after an LS refit per FLOP saved, until
    ratio·FLOPs (estimated) are gone;  ``group-ratios=SOURCE=R|...`` sets one group's ratio;
    kept = n − k is raised to ``min-channels`` and rounded UP to a multiple of ``round-to``,
    per *part* (``round-parts``, the default): where Split/Concat cut a group into pieces
    that different convs read or write (MixNet's 3x3/5x5/7x7 depthwise parts), each piece's
    kept count is rounded, so every conv keeps a channel count on its fast path.

Atoms are ranked by the criterion (:mod:`onnxprune.criteria`, :mod:`onnxprune.criteria_data`);
``reconstruct=lasso`` re-ranks within each group by LASSO on its consumers' outputs
(He et al. 2017). After the removal, ``reconstruct=ls`` (the default with calibration data)
refits every consumer of a pruned tensor by ridge least squares to the original model's
outputs, front to back on the pruned model's own activations (:mod:`onnxprune.reconstruct`);
``none`` leaves the sliced weights; ``augment=flip`` also feeds each calibration image mirrored
along W to the refit (image inputs [N,C,H,W] only; criteria and scope=error's Grams use the
images as given). Never: a blocked atom, a group pruned to zero, a tensor
left with no channels, a model input/output channel. With ``latency-guard`` the pruned
model is timed against the original in onnxruntime (interleaved, on a calibration batch at
its real size); if it is not faster, round-to is doubled and the choice redone, and if no
choice is faster the pass leaves the model as it was (and says so).
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx

from onnxprune import reconstruct as rc
from onnxprune.channels import Analysis, Role, analyze, apply_removal
from onnxprune.context import PassContext
from onnxprune.criteria import CRITERIA, get_criterion
from onnxprune.errors import UsageError
from onnxprune.manager import Pass, PassResult, check_range
from onnxprune.model import Model

#: rows per consumer for the refit and the Grams when calib-rows is not given (spread over the batches);
#: measured on mobilenetv2 (thinet, scope=error, held-out ridge): 32768 rows 82.0 % vs 8192 rows 81.5 %
#: at 90 % FLOPs, 69.6 % vs 64.4 % at 78.7 % (docs/benchmarks/recover.md)
DEFAULT_ROWS = 32768
#: points of each group's error curve (scope=error), interpolated in between
CURVE_POINTS = 10
#: scope=error never removes more than this fraction of a group (the error estimate is
#: layer-local; a layer cut to a sliver fails in ways the next layers' Grams do not see)
MAX_GROUP_CUT = 0.75


@dataclass(frozen=True)
class Options:
    """Options of prune-channels (see the module docstring for the selection rule).

    ratio: share of each group's channels to remove (scope=error: share of the model's FLOPs), in [0, 1)
    criterion: channel importance score: l1, l2, fpgm, bn-scale, or data-driven apoz, variance, activation, thinet, thinet-ls, car
    scope: local (ratio per group), global (lowest normalised scores model-wide) or error (greedy by refit error per FLOP, needs data)
    round-to: kept channels rounded up to a multiple of this (default: the target's vector width)
    min-channels: never keep fewer channels than this in a group
    protect: node-name glob patterns ('head*|conv1') whose channels are never pruned
    latency-guard: time pruned vs original in onnxruntime; if not faster, double round-to and retry, else revert
    guard-runs: timed runs per model for the latency guard
    reconstruct: consumer refit: auto (ls with calibration data, else none), ls (ridge least squares), lasso (LASSO re-rank, then ls), none
    ridge: ridge strength of the least-squares refit
    calib-rows: activation rows sampled per calibration batch for the refit and Grams (default: 32768 in all)
    calib-samples: calibration samples used for the refit and Grams (default: all)
    group-ratios: per-group ratio overrides, SOURCE=RATIO|... keyed by the group's source node name
    round-parts: round each Split/Concat piece of a group that a conv reads or writes to round-to, not only the group's total
    augment: refit rows also from each calibration image mirrored along W (flip; image inputs only), or none
    """

    ratio: float = 0.3
    criterion: str = "l1"
    scope: Literal["local", "global", "error"] = "local"
    round_to: int | None = None
    min_channels: int = 1
    protect: tuple[str, ...] = ()
    latency_guard: bool = True
    guard_runs: int = 30
    reconstruct: Literal["auto", "ls", "lasso", "none"] = "auto"
    ridge: float = 1e-3
    calib_rows: int | None = None
    calib_samples: int | None = None
    group_ratios: tuple[str, ...] = ()
    round_parts: bool = True
    augment: Literal["none", "flip"] = "none"

    def __post_init__(self) -> None:
        check_range("prune-channels", "ratio", self.ratio, 0.0, 1.0, hi_open=True)
        if self.criterion not in CRITERIA:
            raise UsageError(f"pass prune-channels: criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}")
        if self.round_to is not None:
            check_range("prune-channels", "round-to", self.round_to, 1, 1024)
        check_range("prune-channels", "min-channels", self.min_channels, 1, 1 << 20)
        check_range("prune-channels", "guard-runs", self.guard_runs, 3, 10_000)
        check_range("prune-channels", "ridge", self.ridge, 0.0, 1e6)
        if self.calib_rows is not None:
            check_range("prune-channels", "calib-rows", self.calib_rows, 16, 1 << 24)
        if self.calib_samples is not None:
            check_range("prune-channels", "calib-samples", self.calib_samples, 1, 1 << 30)
        if self.augment not in rc.AUGMENTS:
            raise UsageError(f"pass prune-channels: augment must be one of {', '.join(rc.AUGMENTS)}, got {self.augment!r}")
        self.parsed_group_ratios()

    def parsed_group_ratios(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for item in self.group_ratios:
            src, eq, val = item.rpartition("=")
            try:
                r = float(val)
            except ValueError:
                r = -1.0
            if not eq or not src or not 0.0 <= r < 1.0:
                raise UsageError(f"pass prune-channels: group-ratios entries are SOURCE=RATIO with 0 <= RATIO < 1, "
                                 f"got {item!r}")
            out[src] = r
        return out


def _prunable(analysis: Analysis, g: Any, scores: np.ndarray) -> list[int]:
    return [a for a in analysis.prunable_atoms(g) if not np.isnan(scores[a])]


def group_quotas(analysis: Analysis, scores: np.ndarray, opts: Options) -> dict[int, int]:
    """Atoms to remove per group id (before rounding) for scope local/global and group-ratios."""
    quota: dict[int, int] = {}
    if opts.scope == "global":
        cands = []
        for g in analysis.groups:
            prunable = _prunable(analysis, g, scores)
            if prunable:
                mean = float(np.mean(scores[prunable])) or 1.0
                cands += [(scores[a] / mean, a, g.id) for a in prunable]
        total = sum(len(g.atoms) for g in analysis.groups if analysis.prunable_atoms(g))
        cands.sort()
        for _, _, gid in cands[: int(math.floor(opts.ratio * total))]:
            quota[gid] = quota.get(gid, 0) + 1
    else:
        quota = {g.id: int(math.floor(opts.ratio * len(g.atoms))) for g in analysis.groups}
    return quota


def apply_group_ratios(analysis: Analysis, quota: dict[int, int], opts: Options) -> tuple[dict[int, int], list[str]]:
    """Override quotas of the groups named in group-ratios; returns the names that matched no group."""
    wanted = opts.parsed_group_ratios()
    quota = dict(quota)
    for g in analysis.groups:
        if g.sources and g.sources[0] in wanted:
            quota[g.id] = int(math.floor(wanted[g.sources[0]] * len(g.atoms)))
    known = {g.sources[0] for g in analysis.groups if g.sources}
    return quota, sorted(set(wanted) - known)


def choose_atoms(analysis: Analysis, scores: np.ndarray, opts: Options, round_to: int,
                 quota: dict[int, int] | None = None) -> list[int]:
    """The atoms to remove: per group the ``quota`` lowest-scoring prunable ones (kept count
    rounded up to ``round_to``), per the module docstring."""
    if quota is None:
        quota, _ = apply_group_ratios(analysis, group_quotas(analysis, scores, opts), opts)
    left = {sp.id: sp.size for sp in analysis.ctx.spaces}
    chosen: list[int] = []
    for g in analysis.groups:
        prunable = _prunable(analysis, g, scores)
        if not prunable:
            continue
        n = len(g.atoms)
        k = min(quota.get(g.id, 0), n - max(opts.min_channels, 1), len(prunable))
        if k <= 0:
            continue
        # the lowest k (never emptying a tensor), then each part's kept count rounded up:
        # rounding only gives atoms back, so the removal stays safe
        taken = analysis.take_lowest(prunable, scores, k, dict(left))
        taken = analysis.round_removal(taken, scores, round_to, _parts(analysis, g, opts))
        for a in taken:
            for s, ix in analysis.atoms[a].elements.items():
                left[s] -= len(ix)
        chosen += taken
    return chosen


def _parts(analysis: Analysis, g: Any, opts: Options) -> list[list[int]]:
    return analysis.parts(g) if opts.round_parts else [list(g.atoms)]


def refit_targets(analysis: Analysis, pruned: dict[str, np.ndarray]) -> tuple[set[str], dict[str, int]]:
    """The nodes that consume pruned channels (analysis CONSUMER members), and each pruned tensor's channel axis."""
    spaces = analysis.ctx.spaces
    only = {m.node for m in analysis.ctx.members if m.role is Role.CONSUMER and spaces[m.space].tensor in pruned}
    return only, {name: analysis.ctx.by_tensor[name].axis for name in pruned}


def removed_indices(analysis: Analysis, atoms: list[int]) -> dict[str, np.ndarray]:
    """Tensor name -> channel indices that ``atoms`` remove from it."""
    per: dict[int, list[np.ndarray]] = {}
    for a in atoms:
        for s, ix in analysis.atoms[a].elements.items():
            per.setdefault(s, []).append(ix)
    return {analysis.ctx.spaces[s].tensor: np.unique(np.concatenate(ix)) for s, ix in per.items()}


# ---------------------------------------------------------------------------- data-driven allocation


class _Grams:
    """The original model's consumer input Grams, computed once per run of the pass."""

    def __init__(self, snapshot: onnx.ModelProto, ctx: PassContext, opts: Options) -> None:
        self.snapshot, self.ctx, self.opts = snapshot, ctx, opts
        self.grams: dict[str, Any] | None = None
        self.seconds = 0.0
        # error curves per (analysis, scores, round-to): a ratio search re-allocates without recomputing them
        self.steps: dict[tuple[int, int, int], tuple[Any, float, int]] = {}
        self.alive: list[Any] = []

    def get(self, model: Model, analysis: Analysis) -> dict[str, Any]:
        if self.grams is None:
            import time

            t0 = time.perf_counter()
            data = self.ctx.require_data("prune-channels", "scope=error / reconstruct=lasso")
            tensors = {analysis.ctx.spaces[s].tensor for g in analysis.groups if analysis.prunable_atoms(g)
                       for s in g.spaces}
            only = {m.node for m in analysis.ctx.members if m.role is Role.CONSUMER}
            nodes = rc.consumers(model.graph, tensors, only)
            self.grams = rc.input_grams(self.snapshot, nodes, data, rows=_rows(self.opts, data),
                                        samples=self.opts.calib_samples, threads=self.ctx.target.threads,
                                        seed=self.ctx.seed)
            self.seconds = time.perf_counter() - t0
        return self.grams


def _rows(opts: Options, data: Any) -> int:
    n = len(data.batches) if opts.calib_samples is None else max(1, min(len(data.batches), opts.calib_samples))
    return opts.calib_rows * n if opts.calib_rows else DEFAULT_ROWS


def _group_consumers(analysis: Analysis, model: Model, grams: dict[str, Any], g: Any) -> list[tuple[Any, int]]:
    """(node, space id) of each consumer with a Gram that reads one of the group's tensors on its channel axis."""
    mine = set(g.spaces)
    member = {(m.node, m.space) for m in analysis.ctx.members if m.role is Role.CONSUMER and m.space in mine}
    by_tensor = {analysis.ctx.spaces[s].tensor: s for s in g.spaces}
    return [(n, by_tensor[n.inputs[0].name]) for n in model.graph.nodes
            if n.inputs and n.inputs[0].name in by_tensor and n.name in grams
            and (n.name, by_tensor[n.inputs[0].name]) in member]


def atom_flops(analysis: Analysis, snapshot: onnx.ModelProto, ctx: PassContext) -> tuple[np.ndarray, float]:
    """FLOPs each atom's removal saves (each member node's FLOPs shared over its channels), and the model's."""
    from onnxprune.cost import model_cost

    cost = model_cost(snapshot, inputs=ctx.input_shapes or None)
    flops = {n.name: n.flops for n in cost.nodes}
    share: dict[tuple[str, int], float] = {}
    for m in analysis.ctx.members:
        f = flops.get(m.node, 0)
        sp = analysis.ctx.spaces[m.space]
        if not f or not sp.size:
            continue
        atoms, counts = np.unique(analysis.atom_of[m.space], return_counts=True)
        for a, c in zip(atoms.tolist(), counts.tolist()):
            key = (m.node, a)
            share[key] = max(share.get(key, 0.0), f * c / sp.size)
    out = np.zeros(len(analysis.atoms))
    for (_, a), part in share.items():
        out[a] += part
    return out, float(cost.flops)


Steps = dict[int, tuple[list[int], list[float], list[float]]]


def error_steps(analysis: Analysis, model: Model, scores: np.ndarray, opts: Options, round_to: int,
                grams: dict[str, Any], snapshot: onnx.ModelProto, ctx: PassContext) -> tuple[Steps, float, int]:
    """Per group: the allowed removal counts k (kept count a multiple of round-to), the relative
    error of its consumers after an LS refit at each k, and the FLOPs saved; with the model's
    FLOPs and the number of prunable groups without an estimate (never pruned by scope=error)."""
    fl, total = atom_flops(analysis, snapshot, ctx)
    steps: Steps = {}
    no_estimate = 0
    for g in analysis.groups:
        prunable = sorted(_prunable(analysis, g, scores), key=lambda a: (scores[a], a))
        cons = _group_consumers(analysis, model, grams, g)
        if not prunable:
            continue
        if not cons:
            no_estimate += 1
            continue
        n = len(g.atoms)
        parts = _parts(analysis, g, opts)
        ks, sets = _rounded_prefixes(prunable, parts, round_to, min(len(prunable), n - max(opts.min_channels, 1)),
                                     MAX_GROUP_CUT * n)
        if not ks:
            continue
        sizes = [len(x) for x in sets]
        grid = sorted({0} | {min(len(ks) - 1, round(j * (len(ks) - 1) / (CURVE_POINTS - 1))) + 1
                             for j in range(CURVE_POINTS)})  # positions in [nothing] + sets
        at: list[list[int]] = [[], *sets]
        err = np.zeros(len(grid))
        for node, s in cons:
            gone_sets = [np.flatnonzero(np.isin(analysis.atom_of[s], at[i])) for i in grid]
            err += np.asarray(rc.error_curve(grams[node.name], node, gone_sets))
        grid_sizes = [0 if i == 0 else sizes[i - 1] for i in grid]
        e_k = [float(np.interp(c, grid_sizes, err)) for c in sizes]
        steps[g.id] = ([0] + ks, [0.0] + e_k, [0.0] + [float(fl[x].sum()) for x in sets])
    return steps, total, no_estimate


def _rounded_prefixes(order: list[int], parts: list[list[int]], round_to: int, k_max: int,
                      cut_max: float) -> tuple[list[int], list[list[int]]]:
    """Every distinct removal that rounding (Analysis.round_removal) makes of the first k atoms
    of ``order`` (sorted by score), k = 1..k_max, with at most ``cut_max`` atoms: the smallest
    such k of each, and its atoms. Incremental, since each part's rounded count only grows
    with k (choose_atoms turns that k back into the same atoms)."""
    part_of = {a: i for i, cell in enumerate(parts) for a in cell}
    size = [len(c) for c in parts]
    taken: list[list[int]] = [[] for _ in parts]
    final = [0] * len(parts)
    total = 0
    ks: list[int] = []
    sets: list[list[int]] = []
    for k, a in enumerate(order[:k_max], 1):
        c = part_of[a]
        taken[c].append(a)
        kept = min(size[c], -(-(size[c] - len(taken[c])) // round_to) * round_to)
        total += size[c] - kept - final[c]
        final[c] = size[c] - kept
        if total > cut_max:
            break
        if total > (len(sets[-1]) if sets else 0):
            ks.append(k)
            sets.append([x for i, t in enumerate(taken) for x in t[:final[i]]])
    return ks, sets


def allocate(steps: Steps, target: float) -> tuple[dict[int, int], float]:
    """Greedy: take the group step of smallest Δerror/ΔFLOPs until ``target`` FLOPs are saved."""
    heap = [(_slope(st, 0), gid, 0) for gid, st in steps.items()]
    heapq.heapify(heap)
    quota: dict[int, int] = {}
    removed = 0.0
    while heap and removed < target:
        _, gid, i = heapq.heappop(heap)
        ks, _, fs = steps[gid]
        removed += fs[i + 1] - fs[i]
        quota[gid] = ks[i + 1]
        if i + 2 < len(ks):
            heapq.heappush(heap, (_slope(steps[gid], i + 1), gid, i + 1))
    return quota, removed


def error_quotas(analysis: Analysis, model: Model, scores: np.ndarray, opts: Options, round_to: int,
                 grams: _Grams, snapshot: onnx.ModelProto, ctx: PassContext) -> tuple[dict[int, int], dict[str, Any]]:
    """scope=error: per-group removal counts by greedy smallest Δ(relative error)/ΔFLOPs (the error
    curves are computed once per analysis, scores and round-to, and kept in ``grams``)."""
    key = (id(analysis), id(scores), round_to)
    if key not in grams.steps:
        grams.steps[key] = error_steps(analysis, model, scores, opts, round_to, grams.get(model, analysis),
                                       snapshot, ctx)
        grams.alive.append((analysis, scores))  # the ids in the key stay theirs
    steps, total, no_estimate = grams.steps[key]
    target = opts.ratio * total
    quota, removed = allocate(steps, target)
    est = {gid: round(float(np.interp(k, steps[gid][0], steps[gid][1])), 6) for gid, k in quota.items()}
    return quota, {"flops_target_estimate": int(target), "flops_removed_estimate": int(removed),
                   "groups_without_error_estimate": no_estimate, "group_error_estimate": est}


def _slope(step: tuple[list[int], list[float], list[float]], i: int) -> float:
    _, es, fs = step
    return (es[i + 1] - es[i]) / max(fs[i + 1] - fs[i], 1e-9)


def lasso_rescore(analysis: Analysis, model: Model, scores: np.ndarray, counts: dict[int, int],
                  grams: dict[str, Any]) -> tuple[np.ndarray, int]:
    """Per group with a quota, scores replaced by |β| of the LASSO over its consumers (He et al. 2017)."""
    out = scores.copy()
    done = 0
    for g in analysis.groups:
        k = counts.get(g.id, 0)
        cons = _group_consumers(analysis, model, grams, g)
        if not k or not cons:
            continue
        atoms = list(g.atoms)
        loc = {a: i for i, a in enumerate(atoms)}
        a_mat = np.zeros((len(atoms), len(atoms)))
        for node, s in cons:
            idx = np.array([loc[int(a)] for a in analysis.atom_of[s]])
            ach = rc.contribution_gram(grams[node.name], node)
            np.add.at(a_mat, (idx[:, None], idx[None, :]), ach)
        free = np.array([not analysis.atoms[a].prunable or np.isnan(scores[a]) for a in atoms])
        beta = rc.lasso_beta(a_mat, free, k)
        base = np.array([0.0 if np.isnan(scores[a]) else scores[a] for a in atoms])
        rank = np.argsort(np.argsort(base)) / max(len(atoms), 1)
        for i, a in enumerate(atoms):
            if not free[i]:
                out[a] = abs(float(beta[i])) + 1e-9 * rank[i]  # ties among zeros broken by the criterion
        done += 1
    return out, done


def select_quota(analysis: Analysis, model: Model, scores: np.ndarray, opts: Options, round_to: int,
                 grams: _Grams, snapshot: onnx.ModelProto, ctx: PassContext, stats: dict[str, Any]) -> dict[int, int]:
    """Atoms to remove per group id before rounding (scope, group-ratios). Notes go into ``stats``."""
    if opts.scope == "error":
        quota, stats["allocation"] = error_quotas(analysis, model, scores, opts, round_to, grams, snapshot, ctx)
    else:
        quota = group_quotas(analysis, scores, opts)
    quota, unknown = apply_group_ratios(analysis, quota, opts)
    if unknown:
        stats["group_ratios_unmatched"] = unknown
    return quota


def select_atoms(analysis: Analysis, model: Model, scores: np.ndarray, opts: Options, round_to: int, method: str,
                 grams: _Grams, snapshot: onnx.ModelProto, ctx: PassContext, stats: dict[str, Any],
                 quota: dict[int, int] | None = None) -> list[int]:
    """The pass's whole choice: per-group quotas (scope, group-ratios; or ``quota`` as given), the
    lowest-scoring atoms, re-ranked within groups by LASSO when ``method`` is lasso. Notes go into ``stats``."""
    if quota is None:
        quota = select_quota(analysis, model, scores, opts, round_to, grams, snapshot, ctx, stats)
    atoms = choose_atoms(analysis, scores, opts, round_to, quota)
    if method == "lasso" and atoms:
        counts: dict[int, int] = {}
        for a in atoms:
            counts[analysis.atoms[a].group] = counts.get(analysis.atoms[a].group, 0) + 1
        lasso_scores, stats["lasso_groups"] = lasso_rescore(analysis, model, scores, counts, grams.get(model, analysis))
        atoms = choose_atoms(analysis, lasso_scores, opts, round_to, counts)
    return atoms


# ---------------------------------------------------------------------------- the pass


def _latency_ratio(before: onnx.ModelProto, after: onnx.ModelProto, ctx: PassContext, runs: int) -> float:
    """After/before latency on one calibration batch at its real size (random at the
    context's input shapes when there is no data)."""
    from onnxprune.data import load_dataset
    from onnxprune.runtime import latency_ratio

    feed = ctx.feed() or load_dataset(before, None, limit=1, batch_size=1, shapes=ctx.input_shapes).batches[0]
    return latency_ratio(before, after, feed, threads=ctx.target.threads, runs=runs)


class PruneChannels(Pass):
    """Remove whole channels (filters) everywhere they live, by group importance; refit what reads them."""

    name = "prune-channels"
    Options = Options

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        opts: Options = self.options
        method = opts.reconstruct if opts.reconstruct != "auto" else ("ls" if ctx.has_data else "none")
        if method != "none":
            ctx.require_data(self.name, f"reconstruct={method}")
        if opts.scope == "error":
            ctx.require_data(self.name, "scope=error")
        if opts.augment != "none":
            if method == "none":
                raise UsageError(f"pass {self.name}: augment={opts.augment} applies to the refit; reconstruct is none")
            rc.check_augment(ctx.require_data(self.name, f"augment={opts.augment}").batches, opts.augment, self.name)
        round_to = opts.round_to or ctx.target.vector_width
        snapshot = model.to_onnx()
        analysis = analyze(model, opts.protect)
        criterion = get_criterion(opts.criterion)
        if criterion.needs_data:
            ctx.require_data(self.name, f"criterion={opts.criterion}")
        scores, crit_stats = criterion.score(analysis, model, ctx)
        grams = _Grams(snapshot, ctx, opts)
        stats: dict[str, Any] = {
            "criterion": opts.criterion, "scope": opts.scope, "reconstruct": method,
            "importance": "mean of per-layer mean-normalised scores",
            "analysis_seconds": round(analysis.seconds, 4), "groups": len(analysis.groups),
            "prunable_groups": sum(1 for g in analysis.groups if analysis.prunable_atoms(g)),
            "blocked": [{"sources": g.sources, "node": n, "reason": r} for g in analysis.groups for n, r in g.blocked[:1]],
        }
        if analysis.ctx.not_sources:
            node, why = analysis.ctx.not_sources[0]
            stats["not_sources"] = f"{len(analysis.ctx.not_sources)} conv(s) not pruned: {why} (e.g. {node})"
        stats.update(crit_stats)
        tried: list[dict[str, Any]] = []
        while True:
            atoms = select_atoms(analysis, model, scores, opts, round_to, method, grams, snapshot, ctx, stats)
            if not atoms:
                stats.update(round_to=round_to, channels_removed=0, latency_tried=tried)
                if tried:
                    model.reset(snapshot)
                    stats["reverted"] = "no pruned variant was faster than the original"
                return PassResult(False, stats)
            pruned = removed_indices(analysis, atoms)
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
        if grams.grams is not None:
            stats["gram_seconds"] = round(grams.seconds, 3)
        if method != "none":
            data = ctx.require_data(self.name, f"reconstruct={method}")
            only, axes = refit_targets(analysis, pruned)
            unfitted = model.to_onnx()
            stats["reconstruction"] = rc.reconstruct(
                model, snapshot, pruned, data,
                rc.Options("ls", opts.ridge, _rows(opts, data), opts.calib_samples, ctx.target.threads, ctx.seed,
                           augment=opts.augment),
                only=only, axes=axes)
            model.refresh_shapes()
            # Each refit lowers its own layer's error, but bias-only corrections ahead of a
            # nonlinearity can still cost the model as a whole: keep the refit only when the
            # evaluator (calibration data, never the evaluation split) does not score it lower.
            if ctx.evaluator is not None:
                fitted = model.to_onnx()
                s_none, s_fit = ctx.evaluator.score(unfitted), ctx.evaluator.score(fitted)
                stats["reconstruction"]["calibration_score"] = {"none": round(s_none, 6), "refit": round(s_fit, 6),
                                                               "metric": ctx.evaluator.metric}
                if s_fit < s_none:
                    model.reset(unfitted)
                    stats["reconstruction"]["kept"] = "none: the refit scored lower on the calibration data"
        per_group = []
        for g in analysis.groups:
            gone = [a for a in atoms if analysis.atoms[a].group == g.id]
            if gone:
                per_group.append({"sources": g.sources, "channels": len(g.atoms), "removed": len(gone)})
        stats.update(round_to=round_to, channels_removed=len(atoms), tensors_changed=len(removed), per_group=per_group,
                     latency_tried=tried)
        return PassResult(True, stats)


def prune_channels(model: onnx.ModelProto, *, ctx: PassContext | None = None, **options: Any) -> onnx.ModelProto:
    """Library twin of the pass: ``prune_channels(proto, ratio=0.3, criterion="apoz", ctx=plan.ctx)``."""
    from onnxprune.api import run_passes

    out, _ = run_passes(model, [PruneChannels(Options(**options))], ctx=ctx)
    return out
