"""Allocation on synthetic sensitivity/latency tables: the DP returns the brute-force optimum."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxprune.allocate import Choice, Knob, brute_force, max_gain, min_loss, predicted, uniform_levels
from onnxprune.errors import UsageError


def _table() -> list[Knob]:
    # Three groups; "b" is flat then a cliff (non-convex). For need=5 the optimum is
    # a=0.25 + b=0.5 (loss 0.4, gain 5); c alone at 0.5 reaches 5 but loses 4.
    return [
        Knob("a", (Choice(0.25, 0.1, 2), Choice(0.5, 1.0, 3), Choice(0.75, 5.0, 4))),
        Knob("b", (Choice(0.25, 0.2, 2), Choice(0.5, 0.3, 3), Choice(0.75, 9.0, 6))),
        Knob("c", (Choice(0.25, 2.0, 1), Choice(0.5, 4.0, 5))),
    ]


def test_known_optimum() -> None:
    knobs = _table()
    got = min_loss(knobs, 5, resolution=5)
    assert got is not None
    want = brute_force(knobs, 5)
    assert want is not None
    assert got.levels == want.levels == {"a": 0.25, "b": 0.5}
    assert math.isclose(got.loss, 0.4) and got.gain >= 5
    assert predicted(knobs, got.levels) == pytest.approx((got.loss, got.gain))


def test_unreachable_and_budget() -> None:
    knobs = _table()
    assert min_loss(knobs, 16, resolution=16) is None  # 4 + 6 + 5 = 15 at most
    assert min_loss(knobs, 5, resolution=5, max_loss=0.3) is None
    best = max_gain(knobs, 0.5, resolution=50)
    assert best.levels == {"a": 0.25, "b": 0.5} and best.gain == 5
    assert max_gain(knobs, 0.0).levels == {}
    assert min_loss(knobs, 0).levels == {}


def test_uniform_levels() -> None:
    assert uniform_levels(_table(), 0.5) == {"a": 0.5, "b": 0.5, "c": 0.5}


def test_bad_input() -> None:
    with pytest.raises(UsageError):
        min_loss(_table(), 1, resolution=0)
    with pytest.raises(UsageError):
        min_loss([Knob("a", ()), Knob("a", ())], 1)


_choice = st.tuples(st.integers(0, 6), st.integers(0, 20))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(_choice, min_size=0, max_size=3), min_size=1, max_size=4), st.integers(1, 30))
def test_dp_matches_brute_force(table: list[list[tuple[int, int]]], need: int) -> None:
    # integer gains and resolution = need make the discretisation exact
    knobs = [Knob(f"k{i}", tuple(Choice(0.1 * (j + 1), float(loss), float(gain)) for j, (loss, gain) in enumerate(cs)))
             for i, cs in enumerate(table)]
    got, want = min_loss(knobs, need, resolution=need), brute_force(knobs, need)
    assert (got is None) == (want is None)
    if got is not None and want is not None:
        assert math.isclose(got.loss, want.loss, abs_tol=1e-9)
        assert got.gain >= need
    # max_gain over integer losses with resolution = budget is exact too
    budget = need % 7
    mg = max_gain(knobs, float(budget), resolution=max(budget, 1))
    import itertools
    best = max(sum(k.all_choices()[p].gain for k, p in zip(knobs, picks))
               for picks in itertools.product(*[range(len(k.all_choices())) for k in knobs])
               if sum(max(k.all_choices()[p].loss, 0) for k, p in zip(knobs, picks)) <= budget)
    assert math.isclose(mg.gain, best) and mg.loss <= budget + 1e-9
