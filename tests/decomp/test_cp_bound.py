"""The SVD lower bound on CP error: never above what ALS reaches, zero on kernels of that CP rank."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxprune.decomp import cp, cp_error_lower_bound, cp_relative_error


@settings(max_examples=25, deadline=None, derandomize=True)
@given(cout=st.integers(1, 6), cin=st.integers(1, 6), k=st.integers(1, 3), rank=st.integers(1, 4),
       seed=st.integers(0, 1000))
def test_bound_never_exceeds_als(cout, cin, k, rank, seed):
    W = np.random.default_rng(seed).standard_normal((cout, cin, k, k))
    rank = min(rank, W.size // max(W.shape))
    bound = cp_error_lower_bound(W, rank)
    assert 0.0 <= bound <= cp_relative_error(W, cp(W, rank, n_iter_max=200)) + 1e-9


def test_bound_is_zero_at_the_true_cp_rank_and_tight_for_dense_kernels():
    rng = np.random.default_rng(0)
    a, b, c, d = (rng.standard_normal((n, 3)) for n in (8, 6, 3, 3))
    W = np.einsum("or,ir,yr,xr->oiyx", a, b, c, d)
    assert cp_error_lower_bound(W, 3) < 1e-10
    dense = rng.standard_normal((64, 64, 3, 3))
    assert cp_error_lower_bound(dense, 32) > 0.3  # half the channels of a random 3x3: far from CP rank 32
