"""Per-layer allocation under a budget: which ratio for every group, which rank for every layer.

The search sees a list of :class:`Knob` s, one per prunable channel group or low-rank
candidate layer, each with a ladder of :class:`Choice` s (level 0, "untouched", is always
allowed and costs nothing). A choice has a predicted ``loss`` (metric drop measured by the
sensitivity sweep, clipped at 0: a candidate that scores a hair better than the original
is noise, not a gift) and a predicted ``gain`` (latency in ms saved, from the per-layer
latency model; or FLOPs or bytes saved for ``flops=``/``size=`` targets).

Assuming losses and gains add up across knobs, choosing one level per knob is a
multiple-choice knapsack:

    minimise  Σ_k loss_k(c_k)   subject to   Σ_k gain_k(c_k) ≥ need          (min_loss)
    maximise  Σ_k gain_k(c_k)   subject to   Σ_k loss_k(c_k) ≤ budget        (max_gain)

solved exactly by dynamic programming over the discretised constraint (``resolution``
bins; gains are floored and losses ceiled to their bin, so a solution of the discrete
problem also satisfies the real one). Why not greedy on marginal gain per unit of loss:
sensitivity curves are not convex (flat, then a cliff), and greedy on a non-convex ladder
stops before the cliff or jumps over a cheaper combination; the DP costs
O(knobs × levels × resolution), milliseconds for a hundred knobs, and is exact on the
additive model. The additivity itself is only a model: the budget search builds the
chosen model, measures it, and re-solves with corrected numbers (passes/auto.py).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from onnxprune.errors import UsageError


@dataclass(frozen=True)
class Choice:
    level: float  # the ratio removed (prune) or rank fraction dropped (low rank); 0 = untouched
    loss: float  # predicted metric drop (points for top-1, or 1 - cosine)
    gain: float  # predicted saving (ms of latency, FLOPs or bytes)


@dataclass(frozen=True)
class Knob:
    key: str  # "prune:<first source node>" or "lowrank:<node>"
    choices: tuple[Choice, ...]  # without the implicit level-0 choice

    def all_choices(self) -> tuple[Choice, ...]:
        return (Choice(0.0, 0.0, 0.0),) + tuple(self.choices)


@dataclass(frozen=True)
class Allocation:
    levels: dict[str, float]  # knob key -> chosen level (untouched knobs left out)
    loss: float
    gain: float
    method: str = "dp"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"levels": dict(self.levels), "predicted_loss": round(self.loss, 6), "predicted_gain": round(self.gain, 6),
                "method": self.method}


def _check(knobs: Sequence[Knob], resolution: int) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise UsageError(f"allocation resolution must be a positive integer, got {resolution!r}")
    keys = [k.key for k in knobs]
    if len(set(keys)) != len(keys):
        raise UsageError("allocation knobs must have distinct keys")


def _result(knobs: Sequence[Knob], picks: Sequence[int], method: str) -> Allocation:
    levels: dict[str, float] = {}
    loss = gain = 0.0
    for knob, p in zip(knobs, picks):
        c = knob.all_choices()[p]
        loss += max(c.loss, 0.0)
        gain += c.gain
        if p:
            levels[knob.key] = c.level
    return Allocation(levels, loss, gain, method)


def min_loss(knobs: Sequence[Knob], need: float, *, resolution: int = 2000,
             max_loss: float = math.inf) -> Allocation | None:
    """The least-loss choice whose total gain reaches ``need`` (None if no choice does,
    or if the least loss exceeds ``max_loss``)."""
    _check(knobs, resolution)
    if need <= 0:
        return _result(knobs, [0] * len(knobs), "dp")
    step = need / resolution
    inf = math.inf
    # best[b]: least loss with discretised gain min(b, resolution); back[k][b]: choice index used.
    best = np.full(resolution + 1, inf)
    best[0] = 0.0
    back = np.zeros((len(knobs), resolution + 1), dtype=np.int32)
    prev_of = np.zeros((len(knobs), resolution + 1), dtype=np.int32)
    idx = np.arange(resolution + 1)
    for k, knob in enumerate(knobs):
        new = best.copy()  # choice 0: nothing changes
        arg = np.zeros(resolution + 1, dtype=np.int32)
        prev = idx.copy().astype(np.int32)
        for ci, c in enumerate(knob.all_choices()[1:], start=1):
            bins = int(math.floor(max(c.gain, 0.0) / step + 1e-9))
            if bins <= 0:
                continue  # saves nothing at this resolution: never better than untouched
            cand = best + max(c.loss, 0.0)
            # bins below the top receive from exactly one source; the top bin (gain capped at
            # `need`) from every source at or above resolution - bins: keep the cheapest.
            src = idx[: max(resolution - bins, 0)]
            dst = src + bins
            better = cand[src] < new[dst] - 1e-12
            new[dst[better]], arg[dst[better]], prev[dst[better]] = cand[src][better], ci, src[better]
            top = max(resolution - bins, 0)
            b = top + int(np.argmin(cand[top:]))
            if cand[b] < new[resolution] - 1e-12:
                new[resolution], arg[resolution], prev[resolution] = cand[b], ci, b
        best = new
        back[k], prev_of[k] = arg, prev
    if not math.isfinite(best[resolution]) or best[resolution] > max_loss + 1e-12:
        return None
    picks = [0] * len(knobs)
    b = resolution
    for k in range(len(knobs) - 1, -1, -1):
        picks[k] = int(back[k][b])
        b = int(prev_of[k][b])
    return _result(knobs, picks, "dp")


def max_gain(knobs: Sequence[Knob], budget: float, *, resolution: int = 2000) -> Allocation:
    """The largest total gain whose total loss stays within ``budget``."""
    _check(knobs, resolution)
    if budget <= 0:
        # only loss-free choices (clipped losses of exactly 0) fit
        picks = []
        for knob in knobs:
            cs = knob.all_choices()
            free = [i for i, c in enumerate(cs) if c.loss <= 0]
            picks.append(max(free, key=lambda i: (cs[i].gain, -i)))
        return _result(knobs, picks, "dp")
    step = budget / resolution
    best = np.full(resolution + 1, -math.inf)  # best[b]: most gain with discretised loss exactly b
    best[0] = 0.0
    back = np.zeros((len(knobs), resolution + 1), dtype=np.int32)
    prev_of = np.zeros((len(knobs), resolution + 1), dtype=np.int32)
    idx = np.arange(resolution + 1)
    for k, knob in enumerate(knobs):
        new = best.copy()
        arg = np.zeros(resolution + 1, dtype=np.int32)
        prev = idx.copy().astype(np.int32)
        for ci, c in enumerate(knob.all_choices()[1:], start=1):
            bins = int(math.ceil(max(c.loss, 0.0) / step - 1e-9))
            if bins > resolution:
                continue
            src = idx[: resolution + 1 - bins]
            cand = best[src] + c.gain
            dst = src + bins
            better = cand > new[dst] + 1e-12
            new[dst[better]], arg[dst[better]], prev[dst[better]] = cand[better], ci, src[better]
        best = new
        back[k], prev_of[k] = arg, prev
    b = int(np.argmax(best))  # first (least-loss) bin among the best gains
    picks = [0] * len(knobs)
    for k in range(len(knobs) - 1, -1, -1):
        picks[k] = int(back[k][b])
        b = int(prev_of[k][b])
    return _result(knobs, picks, "dp")


def brute_force(knobs: Sequence[Knob], need: float) -> Allocation | None:
    """Exhaustive min_loss, for tests on small tables."""
    best: tuple[float, float, tuple[int, ...]] | None = None
    for picks in itertools.product(*[range(len(k.all_choices())) for k in knobs]):
        cs = [k.all_choices()[p] for k, p in zip(knobs, picks)]
        gain = sum(c.gain for c in cs)
        if gain + 1e-9 < need:
            continue
        loss = sum(max(c.loss, 0.0) for c in cs)
        if best is None or loss < best[0] - 1e-12:
            best = (loss, gain, picks)
    return None if best is None else _result(knobs, best[2], "brute-force")


def uniform_levels(knobs: Sequence[Knob], level: float) -> dict[str, float]:
    """Every knob at the ladder level nearest ``level`` (the uniform baseline)."""
    out: dict[str, float] = {}
    for k in knobs:
        if not k.choices:
            continue
        c = min(k.choices, key=lambda c: (abs(c.level - level), c.level))
        out[k.key] = c.level
    return out


def predicted(knobs: Sequence[Knob], levels: Mapping[str, float]) -> tuple[float, float]:
    """(loss, gain) the additive model predicts for ``levels``."""
    loss = gain = 0.0
    for k in knobs:
        lv = levels.get(k.key, 0.0)
        for c in k.choices:
            if abs(c.level - lv) < 1e-12:
                loss += max(c.loss, 0.0)
                gain += c.gain
    return loss, gain
