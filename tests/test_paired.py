"""The paired interval of a top-1 drop against a brute-force bootstrap-free computation."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from onnxprune.paired import describe, discordant, half_width


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=300))
def test_half_width_is_the_normal_interval_of_the_per_sample_differences(pairs) -> None:
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    lost, gained = discordant(a, b)
    d = a.astype(float) - b.astype(float)  # +1 lost, -1 gained
    assert (lost, gained) == (int((d == 1).sum()), int((d == -1).sum()))
    assert d.mean() == pytest.approx((lost - gained) / len(d))
    assert half_width(lost, gained, len(d)) == pytest.approx(1.96 * d.std() / math.sqrt(len(d)), abs=1e-12)


def test_no_discordant_sample_no_width_and_the_text() -> None:
    assert half_width(0, 0, 744) == 0.0
    assert describe(18, 13, 744) == "±1.47, 95 % paired: 18 lost, 13 gained of 744"
    with pytest.raises(ValueError, match="equal lengths"):
        discordant(np.ones(3, bool), np.ones(4, bool))
