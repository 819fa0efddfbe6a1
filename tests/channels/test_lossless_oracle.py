"""The lossless oracle: channels that are exactly dead can be pruned with no change in output.

For each generated architecture (_support.graphgen: residual Add, Concat, Split, Slice,
grouped/depthwise Conv, BN, SE blocks, Flatten→Gemm and Reshape→MatMul heads), pick a
random set of prunable atoms, make them dead (every source filter and bias zero, BN
γ = β = 0, per-channel constants zero), prune exactly those, and require the pruned
model's onnxruntime outputs to equal the dead model's within 1e-5, with verification
(checker, shapes, onnxruntime session, same output shapes) passing.
"""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _support.graphgen import random_cnn
from _support.oracles import dead_channel_oracle, pick_atoms
from onnxprune.channels import analyze, apply_removal
from onnxprune.model import Model, normalize
from onnxprune.testing import random_feeds, run


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6))
def test_dead_channels_prune_losslessly(seed):
    dead_channel_oracle(random_cnn(seed), seed)


def test_oracle_prunes_in_most_graphs():
    """Guard against an analysis that blocks everything (which would make the oracle vacuous)."""
    removed = [dead_channel_oracle(random_cnn(seed), seed) for seed in range(40)]
    assert sum(r > 0 for r in removed) >= 35 and sum(removed) >= 300


def test_live_channels_change_the_output():
    """The oracle can fail: pruning live channels must change the outputs."""
    for seed in range(10):
        model = Model(normalize(random_cnn(seed)))
        original = model.to_onnx()
        analysis = analyze(model)
        chosen = pick_atoms(analysis, np.random.default_rng(seed))
        if not chosen:
            continue
        apply_removal(model, analysis, chosen)
        feeds = random_feeds(original, seed=1)
        assert not np.allclose(run(model.to_onnx(), feeds)[0], run(original, feeds)[0], atol=1e-5)
        return
    raise AssertionError("no graph had prunable channels")
