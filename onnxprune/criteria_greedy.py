"""Greedy data criteria: ``thinet`` (Luo et al. 2017), ``thinet-ls`` and ``car`` (Abbasi-Asl & Yu 2017).

Both read the calibration data and rank a group's atoms by a greedy removal order:
the first atom removed gets the lowest score. Scores are cumulative losses on an
absolute scale (a fraction of output energy, a fraction of accuracy), so they are
comparable across groups.

Where a group's channels leave the group. A *terminal consumer* of a group is a
member with the CONSUMER role whose output lies outside the group (a 1x1 projection
after the depthwise conv of an inverted residual, the classifier after pooling);
grouped and depthwise convs tie their outputs into the group and are not terminal.
Removing an atom is, for everything outside the group, the same as zeroing its
channels at the inputs of the terminal consumers.

``thinet``. For a terminal consumer with weights W [V, O] over V input variables
(channel c of a KxK conv owns variables c·K … c·K+K−1, im2col order) and input rows x
(im2col rows at sampled positions, or feature rows), the output without the variables
of a removed set T changes by Σ_{v∈T} x_v W_v, whose energy over the calibration rows is

    E(T) = Σ_{v,w ∈ T} M[v, w],   M = G ∘ (W Wᵀ),   G = Σ_rows xᵀx   (streamed, float64)

M is collapsed onto atoms (summing the variables of each atom) and divided by the
consumer's output energy Σ M; a group's matrix is the mean over its terminal
consumers. The greedy step adds the atom j minimising E(T ∪ {j}) = E(T) + 2 Σ_{i∈T}
M[i, j] + M[j, j]; the score of the t-th atom removed is E(T_t) (made strictly
increasing), the fraction of the consumers' output energy lost. Consumers whose G
would exceed ``THINET_MAX_VARS`` variables (or of other kinds) are skipped; a group
with none measured falls back to l1 (scaled to the median measured group) and is
counted in the stats.

``thinet-ls``. The same greedy on the loss left after the consumers are refit by ridge
least squares on the kept variables, with an intercept (what ``reconstruct=ls`` then
does): backward elimination on the inverse of ``A = [X 1]ᵀ[X 1] + λ`` (λ = ``THINET_RIDGE``
· mean diag XᵀX, the intercept unpenalised) and the refit weights B = A⁻¹[X 1]ᵀXW.
Removing the variables S of an atom raises the ridge objective by

    Δ(S) = tr(B_Sᵀ (A⁻¹)_SS⁻¹ B_S),   then   B ← B − A⁻¹_:S (A⁻¹)_SS⁻¹ B_S,   A⁻¹ ← A⁻¹ − A⁻¹_:S (A⁻¹)_SS⁻¹ A⁻¹_S:

divided by the consumer's centred output energy. Groups of more than ``THINET_LS_STEPS``
atoms remove several per step (a rank-k downdate; each scored by its own Δ at the step's
start), so the cost is O(steps·V²) per consumer rather than O(V³). A channel that is a linear combination
of the others costs (almost) nothing here and is removed first; plain ``thinet`` charges
it its whole contribution.

``car``. The loss of an atom set T is the drop of the evaluator's metric on the
calibration data when T's channels are zeroed: with labels, accuracy (+ the cosine
fidelity drop / (4·n) as a tie-break below one sample), without labels the cosine
fidelity to the original outputs (the paper's RAR). The model gets one mask input per
terminal-consumer tensor (``x · mask`` before the consumer), so one session per worker
serves every candidate. Bounded: per group only the ``CAR_FRACTION`` lowest atoms by
``CAR_PRESELECT`` (at most ``CAR_MAX_CANDIDATES``) are evaluated, in ``CAR_ROUNDS``
rounds (each round evaluates every remaining candidate on top of the removals so far
and removes the best 1/rounds-left of them; rounds ≥ candidates is the exact greedy),
and the candidate counts shrink until the whole sweep fits ``CAR_MAX_EVALUATIONS``.
Each evaluation runs a seeded subset of ``CAR_MAX_SAMPLES`` calibration samples (one
evaluation costs that many forward passes; mobilenetv2 on one core, about 2 s).
Groups are independent tasks for :func:`onnxprune.executor.run_tasks` on
``ctx.workers`` processes. Atoms not evaluated score above every evaluated one, in
preselect order.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune import ir
from onnxprune.activations import (
    ConvGeom,
    Gram,
    Tap,
    conv_rows,
    feature_rows,
    sample_positions,
    stream,
)
from onnxprune.channels.analysis import Analysis
from onnxprune.channels.core import Role
from onnxprune.context import sample_cosines
from onnxprune.criteria import ChannelCriterion, get_criterion, register

if TYPE_CHECKING:
    from onnxprune.context import PassContext
    from onnxprune.data import Dataset
    from onnxprune.model import Model

log = logging.getLogger(__name__)

#: im2col rows sampled per calibration sample and consumer (all rows when fewer).
THINET_ROWS_PER_SAMPLE = 64
#: consumers with more input variables (C·kh·kw) than this are not measured (G is V×V float64).
THINET_MAX_VARS = 4608
#: thinet-ls: λ = ridge · mean(diag XᵀX), as in :mod:`onnxprune.reconstruct`.
THINET_RIDGE = 1e-3
#: thinet-ls: at most this many elimination steps per group (each a rank-k downdate).
THINET_LS_STEPS = 64
#: cheap criterion that picks CAR's candidates.
CAR_PRESELECT = "l1"
CAR_FRACTION = 0.2
CAR_MAX_CANDIDATES = 16
CAR_ROUNDS = 4
CAR_MAX_EVALUATIONS = 240
CAR_MAX_SAMPLES = 64

_TINY = 1e-12  # keeps the greedy order strict where losses tie


@dataclass(frozen=True)
class Terminal:
    node: str
    op: str
    space: int
    group: int
    tensor: str
    axis: int
    size: int


def terminal_consumers(analysis: Analysis, model: Model) -> dict[int, list[Terminal]]:
    """Per group id, the consumers through which its channels leave it."""
    ctx = analysis.ctx
    group_of = {s: g.id for g in analysis.groups for s in g.spaces}
    nodes = {n.name: n for n in model.graph.nodes}
    out: dict[int, list[Terminal]] = {}
    seen: set[tuple[str, int]] = set()
    for m in ctx.members:
        if m.role is not Role.CONSUMER or m.node not in nodes or (m.node, m.space) in seen:
            continue
        seen.add((m.node, m.space))
        node = nodes[m.node]
        gid = group_of[m.space]
        y = ctx.by_tensor.get(node.outputs[0].name)
        if y is not None and group_of.get(y.id) == gid:
            continue  # grouped/depthwise: its outputs are still in the group
        sp = ctx.spaces[m.space]
        out.setdefault(gid, []).append(Terminal(node.name, node.op, sp.id, gid, sp.tensor, sp.axis, sp.size))
    return out


def _local(analysis: Analysis, gid: int) -> tuple[list[int], dict[int, int]]:
    atoms = analysis.groups[gid].atoms
    return atoms, {a: i for i, a in enumerate(atoms)}


def _strict(values: list[float]) -> list[float]:
    out: list[float] = []
    for v in values:
        out.append(v if not out or v > out[-1] else out[-1] + _TINY + abs(out[-1]) * 1e-12)
    return out


def _fallback(analysis: Analysis, scores: np.ndarray, groups: list[int], scale: float) -> None:
    """l1 scores (mean 1 per group) times ``scale`` for groups the criterion could not measure."""
    from onnxprune.criteria import Criterion, atom_scores

    l1, _ = atom_scores(analysis, Criterion.L1)
    for gid in groups:
        for a in analysis.prunable_atoms(analysis.groups[gid]):
            if not np.isnan(l1[a]):
                scores[a] = l1[a] * scale


# ---------------------------------------------------------------------------- thinet


@dataclass
class _Consumer:
    term: Terminal
    weight: np.ndarray  # [V, O]
    k: int  # variables per channel
    geom: ConvGeom | None
    gram: Gram


def _thinet_consumer(term: Terminal, node: gs.Node) -> _Consumer | str:
    """What the statistics need of one terminal consumer, or why it is skipped."""
    w = ir.constant_value(node.inputs[1])
    if w is None:
        return "weight not constant"
    if node.op == "Conv":
        if int(node.attrs.get("group", 1)) != 1 or w.ndim != 4 or term.axis != 1:
            return "not a 2-D dense conv"
        try:
            geom = ConvGeom.of_node(node, w.shape)
        except ValueError as exc:
            return str(exc)
        k = int(w.shape[2] * w.shape[3])
        wv = w.reshape(w.shape[0], -1).T
        cons = _Consumer(term, wv, k, geom, Gram())
    elif node.op in ("Gemm", "MatMul") and w.ndim == 2:
        if node.op == "Gemm" and int(node.attrs.get("transA", 0)):
            return "Gemm with transA"
        wv = w.T if node.op == "Gemm" and int(node.attrs.get("transB", 0)) else w
        cons = _Consumer(term, wv, 1, None, Gram())
    else:
        return f"{node.op} consumer"
    if cons.weight.shape[0] > THINET_MAX_VARS:
        return f"{cons.weight.shape[0]} input variables > {THINET_MAX_VARS}"
    return cons


def _rows(c: _Consumer, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if c.geom is not None:
        n = x.shape[0]
        oh, ow = c.geom.out_hw(x.shape[2], x.shape[3])
        pos = sample_positions(n, oh, ow, THINET_ROWS_PER_SAMPLE * n, rng)
        return conv_rows(x, c.geom, pos)
    rows = feature_rows(x, c.term.axis)
    cap = THINET_ROWS_PER_SAMPLE * max(1, x.shape[0])
    if len(rows) > cap:
        rows = rows[np.sort(rng.choice(len(rows), cap, replace=False))]
    return rows


def _atom_matrix(c: _Consumer, analysis: Analysis, local: dict[int, int]) -> np.ndarray | None:
    """The consumer's M collapsed onto the group's atoms, divided by its output energy."""
    assert c.gram.xtx is not None
    m = c.gram.xtx * (c.weight @ c.weight.T).astype(np.float64)
    energy = float(m.sum())
    if not energy > 0:
        return None
    idx = np.repeat([local[int(a)] for a in analysis.atom_of[c.term.space]], c.k)
    n = len(local)
    flat = (idx[:, None] * n + idx[None, :]).ravel()
    return np.bincount(flat, weights=m.ravel(), minlength=n * n).reshape(n, n) / energy


def greedy_energy(m: np.ndarray, prunable: list[int]) -> tuple[list[int], list[float]]:
    """ThiNet's greedy over the local indices ``prunable``: removal order and E(T_t)."""
    s = np.zeros(len(m))
    left = list(prunable)
    order: list[int] = []
    losses: list[float] = []
    err = 0.0
    diag = np.diag(m)
    while left:
        inc = 2.0 * s[left] + diag[left]
        j = int(np.argmin(inc))
        a = left.pop(j)
        err += float(inc[j])
        s += m[a]
        order.append(a)
        losses.append(err)
    return order, losses


class _Refit:
    """One consumer's least-squares state over its active input variables (and an intercept):
    ``ginv`` the inverse of the ridge-regularised ``[X 1]ᵀ[X 1]``, ``b`` the refit weights.
    Both are kept compact (removed variables are deleted); ``pos`` maps a variable to its row."""

    def __init__(self, c: _Consumer, local_of_var: np.ndarray, ridge: float) -> None:
        g = c.gram
        assert g.xtx is not None and g.xsum is not None
        v = len(g.xtx)
        a = np.empty((v + 1, v + 1))
        a[:v, :v], a[:v, v], a[v, :v], a[v, v] = g.xtx, g.xsum, g.xsum, g.rows
        reg = a.copy()
        reg[np.arange(v), np.arange(v)] += ridge * float(np.mean(np.diag(g.xtx)))
        self.ginv = np.linalg.inv(reg)
        w = np.vstack([c.weight.astype(np.float64), np.zeros((1, c.weight.shape[1]))])
        self.b = self.ginv @ (a @ w)
        cov = g.xtx - np.outer(g.xsum, g.xsum) / max(g.rows, 1)
        self.energy = float(np.einsum("vo,vo->", cov @ w[:v], w[:v]))
        self.pos = np.arange(v + 1)
        blocks: dict[int, list[int]] = {}
        for var, la in enumerate(local_of_var.tolist()):
            blocks.setdefault(la, []).append(var)
        self.blocks = {la: np.asarray(ix) for la, ix in blocks.items()}
        by_size: dict[int, list[int]] = {}
        for la, ix in self.blocks.items():
            by_size.setdefault(len(ix), []).append(la)
        self.classes = [(np.asarray(sorted(ids)), np.stack([self.blocks[i] for i in sorted(ids)]))
                        for ids in by_size.values()]

    def deltas(self, cand: np.ndarray) -> np.ndarray:
        """Increase of the refit error (over output energy) when each candidate atom goes alone."""
        out = np.zeros(len(cand))
        for ids, idx in self.classes:
            keep = np.isin(ids, cand)
            if not keep.any():
                continue
            ids, idx = ids[keep], self.pos[idx[keep]]
            bb = self.b[idx]  # [m, s, O]
            if idx.shape[1] == 1:
                d = (bb[:, 0] ** 2).sum(1) / np.maximum(self.ginv[idx[:, 0], idx[:, 0]], 1e-300)
            else:
                gb = self.ginv[idx[:, :, None], idx[:, None, :]]
                d = np.einsum("mso,mso->m", bb, np.linalg.solve(gb, bb))
            out[np.searchsorted(cand, ids)] += d / self.energy
        return out

    def remove(self, atoms: list[int]) -> float:
        """Remove the atoms' variables together; returns the joint loss increase (over output energy)."""
        parts = [self.blocks[a] for a in atoms if a in self.blocks]
        if not parts:
            return 0.0
        s = self.pos[np.concatenate(parts)]
        k = self.ginv[:, s]
        inv = np.linalg.inv(k[s])
        proj = inv @ self.b[s]
        delta = float(np.einsum("so,so->", self.b[s], proj))
        keep = np.setdiff1d(np.arange(len(self.ginv)), s)
        self.b = (self.b - k @ proj)[keep]
        self.ginv = (self.ginv - k @ inv @ k.T)[np.ix_(keep, keep)]
        gone = np.zeros(len(self.pos), dtype=bool)
        gone[np.concatenate(parts)] = True
        alive = np.flatnonzero(~gone & (self.pos >= 0))
        self.pos = np.full(len(self.pos), -1)
        self.pos[alive] = np.arange(len(alive))
        return delta / self.energy


def greedy_refit(refits: list[_Refit], prunable: list[int],
                 steps: int | None = None) -> tuple[list[int], list[float]]:
    """Backward elimination: each step removes the atoms whose loss, after refitting every
    consumer on the rest, grows least (mean over the consumers); order and cumulative loss.

    At most ``steps`` steps (default ``THINET_LS_STEPS``): a group with more atoms removes
    the best ⌈left/steps left⌉ per step, each scored by its own increase on top of the
    step's start; with atoms ≤ steps it is the exact one-at-a-time greedy."""
    steps = THINET_LS_STEPS if steps is None else steps
    alive = sorted(prunable)
    order: list[int] = []
    losses: list[float] = []
    err = 0.0
    for step in range(len(alive)):
        if not alive:
            break
        cand = np.asarray(alive)
        total = sum((r.deltas(cand) for r in refits), np.zeros(len(cand))) / len(refits)
        take = math.ceil(len(alive) / max(steps - step, 1))
        pick = np.argsort(total, kind="stable")[:take]
        chosen = [alive[i] for i in pick]
        order += chosen
        losses += [err + float(total[i]) for i in pick]
        err += sum(r.remove(chosen) for r in refits) / len(refits)
        alive = [a for a in alive if a not in set(chosen)]
    return order, losses


def thinet_scores(analysis: Analysis, model: Model, ctx: PassContext, *, refit: bool = False,
                  ridge: float = THINET_RIDGE) -> tuple[np.ndarray, dict[str, Any]]:
    """ThiNet scores; ``refit`` ranks by the loss left after a least-squares refit of the consumers."""
    t0 = time.perf_counter()
    name = "thinet-ls" if refit else "thinet"
    data = ctx.require_data("prune-channels", f"criterion={name}")
    scores = np.full(len(analysis.atoms), np.nan)
    nodes = {n.name: n for n in model.graph.nodes}
    consumers: list[_Consumer] = []
    skipped: list[dict[str, str]] = []
    wanted = {g.id for g in analysis.groups if analysis.prunable_atoms(g)}
    for gid, terms in terminal_consumers(analysis, model).items():
        if gid not in wanted:
            continue
        for t in terms:
            c = _thinet_consumer(t, nodes[t.node])
            if isinstance(c, str):
                skipped.append({"node": t.node, "reason": c})
            else:
                consumers.append(c)
    rng = np.random.default_rng(ctx.seed)
    if consumers:
        tap = Tap(model.to_onnx(), [c.term.tensor for c in consumers], threads=ctx.target.threads)
        for (got,) in stream([tap], data):
            for c in consumers:
                c.gram.update(_rows(c, np.asarray(got[c.term.tensor], dtype=np.float32), rng))
    t_stats = time.perf_counter() - t0
    per_group: dict[int, list[Any]] = {}
    locals_: dict[int, tuple[list[int], dict[int, int]]] = {}
    for c in consumers:
        gid = c.term.group
        atoms, local = locals_.setdefault(gid, _local(analysis, gid))
        if refit:
            lv = np.repeat([local[int(a)] for a in analysis.atom_of[c.term.space]], c.k)
            try:
                r = _Refit(c, lv, ridge)
            except np.linalg.LinAlgError:
                continue
            if r.energy > 0:
                per_group.setdefault(gid, []).append(r)
        else:
            mat = _atom_matrix(c, analysis, local)
            if mat is not None:
                per_group.setdefault(gid, []).append(mat)
    means = []
    for gid, items in per_group.items():
        atoms, local = locals_[gid]
        prunable = [local[a] for a in analysis.prunable_atoms(analysis.groups[gid])]
        order, losses = greedy_refit(items, prunable) if refit else greedy_energy(np.mean(items, axis=0), prunable)
        strict = _strict(losses)
        for li, v in zip(order, strict):
            scores[atoms[li]] = v
        means.append(float(np.mean(strict)))
    missing = sorted(wanted - set(per_group))
    _fallback(analysis, scores, missing, float(np.median(means)) if means else 1.0)
    stats = {name: {
        "seconds": round(time.perf_counter() - t0, 3), "statistics_seconds": round(t_stats, 3),
        "samples": data.n_samples, "consumers": len(consumers),
        "rows_per_consumer": max((c.gram.rows for c in consumers), default=0),
        "accumulator_bytes": sum(c.gram.nbytes for c in consumers), "skipped_consumers": skipped[:20],
        "groups_measured": len(per_group), "fallback_l1_groups": len(missing), **({"ridge": ridge} if refit else {})}}
    return scores, stats


@register
class ThiNet(ChannelCriterion):
    """Greedy: drop the atom that least increases the next layers' output energy lost (Luo et al. 2017)."""

    name = "thinet"
    needs_data = True

    def score(self, analysis: Analysis, model: Model, ctx: PassContext) -> tuple[np.ndarray, dict[str, Any]]:
        return thinet_scores(analysis, model, ctx)


@register
class ThiNetLS(ChannelCriterion):
    """ThiNet's greedy on the error left after a least-squares refit of the consumers (pairs with reconstruct=ls)."""

    name = "thinet-ls"
    needs_data = True

    def score(self, analysis: Analysis, model: Model, ctx: PassContext) -> tuple[np.ndarray, dict[str, Any]]:
        return thinet_scores(analysis, model, ctx, refit=True)


# ---------------------------------------------------------------------------- car


def mask_name(space: int) -> str:
    return f"onnxprune_car_mask_{space}"


def masked_model(model: Model, terms: list[Terminal]) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]]]:
    """The model with ``x · mask`` before every terminal consumer (one mask per tensor);
    returns it and each mask input's shape. Tensors of unknown rank are left out."""
    live = model.graph.tensors()  # the exported copy has no intermediate shapes
    graph = gs.import_onnx(model.to_onnx())
    tensors = graph.tensors()
    nodes = {n.name: n for n in graph.nodes}
    shapes: dict[str, tuple[int, ...]] = {}
    masked: dict[int, gs.Variable] = {}
    for t in terms:
        x = tensors[t.tensor]
        if t.space not in masked:
            known = live[t.tensor].shape
            if known is None or not 0 <= t.axis < len(known):
                continue
            shape = [1] * len(known)
            shape[t.axis] = t.size
            mask = gs.Variable(mask_name(t.space), dtype=np.float32, shape=shape)
            out = gs.Variable(f"{t.tensor}_car_masked", dtype=x.dtype)
            graph.nodes.append(gs.Node("Mul", name=f"onnxprune_car_mul_{t.space}", inputs=[x, mask], outputs=[out]))
            graph.inputs.append(mask)
            masked[t.space] = out
            shapes[mask.name] = tuple(shape)
        node = nodes[t.node]
        node.inputs[0] = masked[t.space]
    graph.toposort()
    proto = gs.export_onnx(graph, do_type_check=False)
    return proto, shapes



def _car_init(shared: dict[str, Any]) -> dict[str, Any]:
    from onnxprune.runtime import make_session

    state = dict(shared)
    state["session"] = make_session(shared["model"], shared["threads"])
    state["ones"] = {k: np.ones(s, dtype=np.float32) for k, s in shared["masks"].items()}
    state["base"] = _measure(state, {})
    return state


def _measure(state: dict[str, Any], zero: dict[str, list[np.ndarray]]) -> tuple[float, float]:
    """(primary metric, cosine fidelity) with the channels in ``zero`` (mask name -> indices) zeroed."""
    masks = dict(state["ones"])
    for k, parts in zero.items():
        m = masks[k].copy()
        m.reshape(-1)[np.concatenate(parts)] = 0.0
        masks[k] = m
    names, sess = state["names"], state["session"]
    outs = [dict(zip(names, sess.run(names, {**b, **masks}))) for b in state["batches"]]
    sims = sample_cosines(state["reference"], outs, state["batches"])  # the evaluator's rule, padding included
    cos = float(np.mean(sims)) if sims.size else 0.0
    metric, cls = state["metric"], state["classifier"]
    if metric == "cosine" or cls is None:
        return cos, cos
    pred = np.concatenate([np.asarray(o[cls]).reshape(len(o[cls]), -1).argmax(1) for o in outs])
    if metric == "accuracy":
        want = state["labels"][: len(pred)]
    else:  # agreement with the reference's top-1
        want = np.concatenate([np.asarray(r[cls]).reshape(len(r[cls]), -1).argmax(1) for r in state["reference"]])
    return float(np.mean(pred == want)), cos


def _loss(state: dict[str, Any], got: tuple[float, float]) -> float:
    (p0, c0), (p, c) = state["base"], got
    if state["metric"] == "cosine" or state["classifier"] is None:
        return c0 - c
    return (p0 - p) + (c0 - c) / (4.0 * state["n_samples"])


def rounds_plan(m: int, rounds: int) -> list[int]:
    """How many candidates each round removes (evaluations of a round = candidates left)."""
    plan, left = [], m
    for r in range(rounds):
        if left <= 0:
            break
        take = math.ceil(left / (rounds - r))
        plan.append(take)
        left -= take
    return plan


def _evaluations(m: int, rounds: int) -> int:
    total, left = 0, m
    for take in rounds_plan(m, rounds):
        total += left
        left -= take
    return total


def _car_task(state: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """The bounded greedy over one group's candidates."""
    t0 = time.perf_counter()
    masks: dict[int, dict[str, np.ndarray]] = task["masks"]  # atom -> mask name -> indices
    left = list(task["candidates"])
    zero: dict[str, list[np.ndarray]] = {}
    order: list[int] = []
    losses: list[float] = []
    n_eval = 0
    for take in rounds_plan(len(left), task["rounds"]):
        measured = []
        for a in left:
            trial = {k: v + [masks[a][k]] if k in masks[a] else v for k, v in zero.items()}
            trial.update({k: [ix] for k, ix in masks[a].items() if k not in zero})
            measured.append((_loss(state, _measure(state, trial)), a))
            n_eval += 1
        measured.sort()
        for loss, a in measured[:take]:
            order.append(a)
            losses.append(loss)
            for k, ix in masks[a].items():
                zero.setdefault(k, []).append(ix)
        left = [a for _, a in measured[take:]]
    return {"group": task["group"], "order": order, "losses": losses, "evaluations": n_eval,
            "seconds": time.perf_counter() - t0}


def _sample(batches: list[dict[str, np.ndarray]], reference: list[dict[str, np.ndarray]], labels: np.ndarray | None,
            limit: int, seed: int) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]], np.ndarray | None]:
    """A seeded subset of ``limit`` samples, in batches of the same size, with their reference outputs."""
    n = sum(len(next(iter(b.values()))) for b in batches) if batches else 0
    if n <= limit or not batches or any(np.ndim(v) == 0 for b in batches for v in b.values()):
        return batches, reference, labels
    idx = np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
    step = len(next(iter(batches[0].values())))

    def pick(parts: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        whole = {k: np.concatenate([np.asarray(p[k]) for p in parts])[idx] for k in parts[0]}
        return [{k: v[i: i + step] for k, v in whole.items()} for i in range(0, limit, step)]

    return pick(batches), pick(reference), None if labels is None else labels[idx]


def car_scores(analysis: Analysis, model: Model, ctx: PassContext, *, preselect: str | None = None,
               fraction: float | None = None, max_candidates: int | None = None, rounds: int | None = None,
               max_evaluations: int | None = None, max_samples: int | None = None,
               executor: str = "local") -> tuple[np.ndarray, dict[str, Any]]:
    """CAR scores per the module doc; a setting left None takes the module default (read at call time)."""
    from onnxprune.context import Evaluator
    from onnxprune.executor import run_tasks

    preselect = CAR_PRESELECT if preselect is None else preselect
    fraction = CAR_FRACTION if fraction is None else fraction
    max_candidates = CAR_MAX_CANDIDATES if max_candidates is None else max_candidates
    rounds = CAR_ROUNDS if rounds is None else rounds
    max_evaluations = CAR_MAX_EVALUATIONS if max_evaluations is None else max_evaluations
    max_samples = CAR_MAX_SAMPLES if max_samples is None else max_samples
    t0 = time.perf_counter()
    data: Dataset = ctx.require_data("prune-channels", "criterion=car")
    ev = ctx.evaluator or Evaluator(model.to_onnx(), data, threads=ctx.target.threads)
    batches, reference, labels = _sample(ev.data.batches, ev.reference, ev.data.labels, max_samples, ctx.seed)
    base, base_stats = get_criterion(preselect).score(analysis, model, ctx)
    terms = terminal_consumers(analysis, model)
    proto, mask_shapes = masked_model(model, [t for ts in terms.values() for t in ts])
    tasks: list[dict[str, Any]] = []
    budget: dict[int, int] = {}
    cands: dict[int, list[int]] = {}
    for g in analysis.groups:
        prunable = [a for a in analysis.prunable_atoms(g) if not np.isnan(base[a])]
        gterms = terms.get(g.id, [])
        if not prunable or not gterms or any(mask_name(t.space) not in mask_shapes for t in gterms):
            continue
        cands[g.id] = sorted(prunable, key=lambda a: (base[a], a))
        budget[g.id] = min(len(prunable), max_candidates, max(2, math.ceil(fraction * len(prunable))))
    while sum(_evaluations(m, rounds) for m in budget.values()) > max_evaluations and max(budget.values(), default=1) > 1:
        gid = max(budget, key=lambda k: (budget[k], -k))
        budget[gid] -= 1
    for gid, m in budget.items():
        chosen = cands[gid][:m]
        spaces = {t.space for t in terms[gid]}
        masks = {a: {mask_name(s): np.asarray(ix, dtype=np.int64) for s, ix in analysis.atoms[a].elements.items()
                     if s in spaces} for a in chosen}
        tasks.append({"group": gid, "candidates": chosen, "masks": masks, "rounds": rounds})
    n_samples = sum(len(next(iter(b.values()))) for b in batches) if batches else 0
    shared = {"model": proto.SerializeToString(), "masks": mask_shapes, "batches": batches,
              "labels": labels, "reference": reference, "names": list(ev.names), "classifier": ev.classifier,
              "metric": ev.metric, "threads": 1, "n_samples": n_samples}
    results, sweep = run_tasks(_car_task, tasks, init=_car_init, shared=shared, workers=ctx.workers,
                               executor=executor) if tasks else ([], None)
    scores = np.full(len(analysis.atoms), np.nan)
    evaluated: set[int] = set()
    for res in results:
        for a, v in zip(res["order"], _strict(res["losses"])):
            scores[a] = v
            evaluated.add(a)
    top = float(np.nanmax(scores)) if evaluated else 0.0
    for g in analysis.groups:
        prunable = [a for a in analysis.prunable_atoms(g) if not np.isnan(base[a]) and a not in evaluated]
        if prunable:
            mean = float(np.nanmean(base[analysis.prunable_atoms(g)])) or 1.0
            for a in prunable:
                scores[a] = top + _TINY + max(float(base[a]), 0.0) / mean
    stats = {"car": {
        "seconds": round(time.perf_counter() - t0, 3), "evaluations": sum(r["evaluations"] for r in results),
        "sweep": sweep.to_dict() if sweep else None, "groups_evaluated": len(results),
        "candidates": sum(budget.values()), "rounds": rounds, "preselect": preselect,
        "metric": ev.metric if ev.classifier else "cosine", "samples": n_samples,
        "max_evaluations": max_evaluations, **({"preselect_stats": base_stats} if base_stats else {})}}
    return scores, stats


@register
class CAR(ChannelCriterion):
    """Greedy: drop the atom whose removal least reduces calibration accuracy (fidelity without labels; Abbasi-Asl & Yu 2017)."""

    name = "car"
    needs_data = True

    def score(self, analysis: Analysis, model: Model, ctx: PassContext) -> tuple[np.ndarray, dict[str, Any]]:
        return car_scores(analysis, model, ctx)
