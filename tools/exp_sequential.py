#!/usr/bin/env python3
"""Sequential channel selection for prune-channels (an experiment; issue 7, docs/benchmarks/recover.md).

He et al. 2017 and ThiNet prune layer by layer: the channels of group k are chosen on the
activations of the model ALREADY pruned and refit up to k. Here, with the pass's own per-group
amounts (``prune_channels.select_quota`` on the original, so the same FLOPs and latency), for each
group in topological order (of its first source):

    scores ← criterion on the CURRENT model, that group's tensors only (a one-group analysis view),
             or (select=refit) greedy backward elimination of the least-squares refit error of its
             consumers to the ORIGINAL's outputs:  Δ(S) = tr(B_Sᵀ (A⁻¹)_SS⁻¹ B_S),
             A = [X 1]ᵀ[X 1] + λ (current inputs X), B = A⁻¹ [X 1]ᵀ Y (original outputs Y)
    remove the quota's lowest (rounded as choose_atoms does); refit its consumers to the original;
    finally (final_refit) one more front-to-back refit of every consumer on the final model.

Measured on mobilenetv2 it is no better than the pass's one-shot choice (ties at 90 % FLOPs, worse
at 80 %), so it is not in the package. Cost: one criterion pass and one refit pass over the
calibration data per pruned group.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune import reconstruct as rc
from onnxprune.activations import PEAK, Gram, Tap
from onnxprune.data import Dataset

# ---------------------------------------------------------------------------- select=refit: choose by the refit


def selection_grams(current: onnx.ModelProto, original: onnx.ModelProto, nodes: Sequence[gs.Node],
                    pruned: Mapping[str, np.ndarray], data: Dataset, opts: rc.Options,
                    axes: Mapping[str, int] | None = None) -> dict[str, Gram]:
    """Per consumer: the Gram of its input rows in ``current`` (every channel still there) against
    the ORIGINAL model's output at the same rows (the kept output channels where ``pruned`` cut
    them): what :func:`refit_elimination` needs to choose channels by the refit they leave.
    One batch in memory at a time; consumers over rc.MAX_FEATURES inputs or without Θ are skipped."""
    nodes = [n for n in nodes if rc.fit_kind(n) in (rc.FitKind.CONV, rc.FitKind.GEMM, rc.FitKind.MATMUL)
             and rc._features(n) <= rc.MAX_FEATURES]
    batches = rc.calibration_batches(data, opts.samples)
    if not nodes or not batches:
        return {}
    per_batch = max(16, opts.rows // len(batches))
    rng = np.random.default_rng(opts.seed)
    plans = {n.name: rc.row_plan(n, rc.fit_kind(n)) for n in nodes}
    outs = {n.name: n.outputs[0].name for n in nodes}
    t_orig = Tap(original, list(outs.values()), opts.threads, optimize=True, prefix=True)
    t_cur = Tap(current, [n.inputs[0].name for n in nodes], opts.threads, optimize=True, prefix=True)
    grams = {n.name: Gram() for n in nodes}
    for b, feed in enumerate(batches):
        ys, xs = t_orig.run(feed), t_cur.run(feed)
        PEAK[0] = max(PEAK[0], sum(v.nbytes for v in ys.values()) + sum(v.nbytes for v in xs.values()))
        for n in nodes:
            y = ys[outs[n.name]]
            if outs[n.name] in pruned:
                axis = (axes or {}).get(outs[n.name], 1 if n.op != "MatMul" else y.ndim - 1)
                y = np.delete(y, pruned[outs[n.name]], axis=axis)
            plans[n.name].pick(b, y.shape, per_batch, rng)
            grams[n.name].update(plans[n.name].x_rows(xs[n.inputs[0].name], b),
                                 plans[n.name].y_rows(y, b).astype(np.float32))
    return grams


class _Elimination:
    """One consumer's ridge least squares [X 1]·B ≈ Y over its active input variables: A⁻¹ of the
    regularised augmented Gram and B = A⁻¹[XᵀY; Σy], kept compact as variables go."""

    def __init__(self, g: Gram, atom_of_var: np.ndarray, ridge: float) -> None:
        a, bmat = rc._augmented(g)
        assert bmat is not None and g.yty_diag is not None and g.ysum is not None
        f = a.shape[0] - 1
        a[np.arange(f), np.arange(f)] += max(ridge * float(np.mean(np.diag(a)[:f])), 1e-12)
        self.ginv = np.linalg.inv(a)
        self.b = self.ginv @ bmat
        self.energy = max(float(g.yty_diag.sum() - g.ysum @ g.ysum / max(g.rows, 1)), 1e-30)
        self.pos = np.arange(f + 1)
        blocks: dict[int, list[int]] = {}
        for v, at in enumerate(atom_of_var.tolist()):
            blocks.setdefault(int(at), []).append(v)
        self.blocks = {at: np.asarray(ix) for at, ix in blocks.items()}

    def delta(self, atom: int) -> float:
        """Increase of ‖[X 1]B − Y‖² + λ‖W‖² (over the centred target energy) if ``atom`` went alone."""
        ix = self.blocks.get(atom)
        if ix is None:
            return 0.0
        s = self.pos[ix]
        bs = self.b[s]
        if len(s) == 1:
            return float((bs ** 2).sum() / max(self.ginv[s[0], s[0]], 1e-300)) / self.energy
        return float(np.sum(bs * np.linalg.solve(self.ginv[np.ix_(s, s)], bs))) / self.energy

    def remove(self, atoms: list[int]) -> None:
        parts = [self.blocks[a] for a in atoms if a in self.blocks]
        if not parts:
            return
        var = np.concatenate(parts)
        s = self.pos[var]
        k = self.ginv[:, s]
        inv = np.linalg.inv(k[s])
        keep = np.setdiff1d(np.arange(len(self.ginv)), s)
        self.b = (self.b - k @ (inv @ self.b[s]))[keep]
        self.ginv = (self.ginv - k @ inv @ k.T)[np.ix_(keep, keep)]
        gone = np.zeros(len(self.pos), dtype=bool)
        gone[var] = True
        alive = np.flatnonzero(~gone & (self.pos >= 0))
        self.pos = np.full(len(self.pos), -1)
        self.pos[alive] = np.arange(len(alive))


def refit_elimination(items: Sequence[tuple[Gram, np.ndarray]], candidates: Sequence[int], k: int,
                      ridge: float = 1e-3, steps: int = 64) -> list[int]:
    """Backward elimination of ``k`` of ``candidates`` (atom ids): each step removes the atoms whose
    removal, after a ridge refit of every consumer on the rest TO THE ORIGINAL'S OUTPUTS, raises the
    mean relative error least (He et al. 2017's objective, greedy instead of LASSO). ``items``: per
    consumer its :func:`selection_grams` Gram and the atom id of each input variable. At most
    ``steps`` steps (the best ⌈left/steps left⌉ per step); k ≤ steps is the exact greedy."""
    elims = [_Elimination(g, av, ridge) for g, av in items]
    alive = list(candidates)
    order: list[int] = []
    for step in range(steps):
        left = k - len(order)
        if left <= 0 or not alive:
            break
        d = np.array([sum(e.delta(a) for e in elims) for a in alive])
        take = -(-left // max(steps - step, 1))
        pick = [alive[i] for i in np.argsort(d, kind="stable")[:take]]
        for e in elims:
            e.remove(pick)
        order += pick
        gone = set(pick)
        alive = [a for a in alive if a not in gone]
    return order


# ---------------------------------------------------------------------------- group by group


def group_order(analysis: Any, model: Any) -> list[Any]:
    """The prunable groups, by the topological position of their first source node."""
    model.graph.toposort()
    pos = {n.name: i for i, n in enumerate(model.graph.nodes)}
    return sorted((g for g in analysis.groups if g.sources and analysis.prunable_atoms(g)),
                  key=lambda g: (min(pos.get(s, 1 << 30) for s in g.sources), g.id))


def only_group(analysis: Any, gid: int) -> Any:
    """A view of ``analysis`` in which only group ``gid``'s atoms are prunable: a criterion then
    measures (taps, Grams) that group's tensors alone."""
    atoms = [dataclasses.replace(a, prunable=a.prunable and a.group == gid) for a in analysis.atoms]
    return dataclasses.replace(analysis, atoms=atoms)


def _refit_scores(view: Any, g: Any, model: Any, snapshot: onnx.ModelProto, k: int,
                  pruned: dict[str, np.ndarray], axes: dict[str, int], opts: Any, ctx: Any) -> np.ndarray | None:
    """select=refit: scores (the elimination rank; NaN where not prunable) of group ``g``'s atoms by
    :func:`refit_elimination` on its consumers (None: no consumer has a Gram)."""
    from onnxprune.passes.prune_channels import _rows

    from onnxprune.channels import Role

    data = ctx.require_data("prune-channels", "select=refit")
    tensors = {view.ctx.spaces[s].tensor for s in g.spaces}
    only = {m.node for m in view.ctx.members if m.role is Role.CONSUMER and m.space in set(g.spaces)}
    nodes = rc.consumers(model.graph, tensors, only)
    grams = selection_grams(model.to_onnx(), snapshot, nodes, pruned, data,
                               rc.Options("ls", opts.ridge, _rows(opts, data), opts.calib_samples,
                                          ctx.target.threads, ctx.seed), axes)
    items = []
    for n in nodes:
        if n.name in grams and grams[n.name].xtx is not None:
            sp = view.ctx.by_tensor[n.inputs[0].name]
            items.append((grams[n.name], np.repeat(view.atom_of[sp.id], rc.channel_blocks(n))))
    if not items:
        return None
    cands = [a for a in view.prunable_atoms(g)]
    order = refit_elimination(items, cands, min(k, len(cands)), max(opts.ridge, 1e-6))
    scores = np.full(len(view.atoms), np.nan)
    rank = {a: i for i, a in enumerate(order)}
    for j, a in enumerate(cands):
        scores[a] = rank.get(a, len(order) + j)
    return scores


def sequential_prune(model: Any, snapshot: onnx.ModelProto, quota: dict[str, int], opts: Any, round_to: int,
                     method: str, ctx: Any, *, select: str = "criterion", final_refit: bool = True) -> dict[str, Any]:
    """Sequential selection: per group, in topological order, score its atoms with the criterion on
    the CURRENT model (earlier groups already pruned and their consumers refit), remove the
    ``quota[first source]`` lowest (rounded as choose_atoms does), then refit that group's consumers
    to the original's outputs on the calibration data. ``model`` starts as ``snapshot``."""
    from onnxprune.passes.prune_channels import _rows, choose_atoms, refit_targets, removed_indices

    from onnxprune.channels import Role, analyze, apply_removal
    from onnxprune.criteria import get_criterion

    t0 = time.perf_counter()
    data = ctx.require_data("prune-channels", "sequential selection")
    pruned_all: dict[str, np.ndarray] = {}
    axes_all: dict[str, int] = {}
    report: dict[str, Any] = {"method": "ls", "ridge": opts.ridge, "layers": [], "waves": 0, "samples": 0,
                              "peak_activation_bytes": 0}
    steps: list[dict[str, Any]] = []
    removed = 0
    order = [g.sources[0] for g in group_order(analyze(model, opts.protect), model) if quota.get(g.sources[0], 0) > 0]
    for src in order:
        t1 = time.perf_counter()
        analysis = analyze(model, opts.protect)
        g = next((x for x in analysis.groups if x.sources and x.sources[0] == src), None)
        if g is None or not analysis.prunable_atoms(g):
            steps.append({"source": src, "removed": 0, "note": "group no longer prunable"})
            continue
        view = only_group(analysis, g.id)
        scores = None
        if select == "refit":
            scores = _refit_scores(view, g, model, snapshot, quota[src], pruned_all, axes_all, opts, ctx)
        if scores is None:
            # a fresh criterion each step: a data criterion caches by tensor names and sizes, which an
            # upstream removal leaves as they were
            scores, _ = get_criterion(opts.criterion).score(view, model, ctx)
        t_score = time.perf_counter() - t1
        atoms = choose_atoms(view, scores, opts, round_to, {g.id: quota[src]})
        if not atoms:
            steps.append({"source": src, "removed": 0, "score_seconds": round(t_score, 2)})
            continue
        pruned = removed_indices(view, atoms)
        only, axes = refit_targets(view, pruned)
        apply_removal(model, view, atoms)
        model.refresh_shapes()
        # each tensor is pruned in one step only (its group's), so indices stay those of the original
        pruned_all.update(pruned)
        axes_all.update(axes)
        removed += len(atoms)
        line: dict[str, Any] = {"source": src, "sources": list(g.sources), "channels": len(g.atoms), "removed": len(atoms),
                                "score_seconds": round(t_score, 2)}
        if method != "none":
            rep = rc.reconstruct(model, snapshot, pruned_all, data,
                                 rc.Options("ls", opts.ridge, _rows(opts, data), opts.calib_samples,
                                            ctx.target.threads, ctx.seed), only=only, axes=axes_all)
            model.refresh_shapes()
            report["layers"] += rep["layers"]
            report["waves"] += rep["waves"]
            report["samples"] = rep["samples"]
            report["peak_activation_bytes"] = max(report["peak_activation_bytes"], rep.get("peak_activation_bytes", 0))
            line["refit_seconds"] = rep["seconds"]
        line["seconds"] = round(time.perf_counter() - t1, 2)
        steps.append(line)
    if method != "none" and final_refit and pruned_all:
        # a consumer refit at its group's step has not seen the groups pruned after it upstream of it
        # (a residual group's later readers): one more front-to-back refit on the final model
        analysis = analyze(model, opts.protect)
        # a MatMul refit at its step wrote its bias as an Add after it (its output renamed): not again
        named = {o for n in snapshot.graph.node for o in n.output}
        nodes = {n.name: n for n in model.graph.nodes}
        only = {m.node for m in analysis.ctx.members if m.role is Role.CONSUMER
                and analysis.ctx.spaces[m.space].tensor in pruned_all and nodes[m.node].outputs[0].name in named}
        rep = rc.reconstruct(model, snapshot, pruned_all, data,
                             rc.Options("ls", opts.ridge, _rows(opts, data), opts.calib_samples,
                                        ctx.target.threads, ctx.seed), only=only, axes=axes_all)
        model.refresh_shapes()
        # "layers" is then the final refit's (the state of the model); each step's are kept beside it
        report.update(step_layers=report["layers"], layers=rep["layers"], final_refit_seconds=rep["seconds"])
        report["waves"] += rep["waves"]
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return {"steps": steps, "channels_removed": removed, "reconstruction": report if method != "none" else None,
            "seconds": round(time.perf_counter() - t0, 2)}
