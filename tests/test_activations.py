"""Streamed activation statistics: moments, Gram matrices and im2col rows against direct computation."""
from __future__ import annotations

import numpy as np
import onnx
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxprune.activations import (
    ChannelMoments,
    ConvGeom,
    Gram,
    Tap,
    channel_stats,
    conv_rows,
    feature_rows,
    output_rows,
    sample_positions,
    stream,
)
from onnxprune.data import Dataset


def _conv_model(w: np.ndarray, b: np.ndarray, h: int, wd: int, **attrs) -> onnx.ModelProto:
    # x ─Conv(W, b)─▶ y ─Relu─▶ z
    cin = w.shape[1] * attrs.get("group", 1)
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", **attrs),
             helper.make_node("Relu", ["y"], ["z"], name="relu")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", cin, h, wd])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@settings(max_examples=25, deadline=None)
@given(k=st.sampled_from([1, 2, 3]), stride=st.sampled_from([1, 2]), dil=st.sampled_from([1, 2]),
       pad=st.integers(0, 2), seed=st.integers(0, 1000))
def test_conv_rows_reproduce_the_conv(k, stride, dil, pad, seed):
    rng = np.random.default_rng(seed)
    cin, cout, h = 3, 4, 9
    w = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    attrs = dict(kernel_shape=[k, k], strides=[stride, stride], dilations=[dil, dil], pads=[pad, pad + 1, pad, pad])
    model = _conv_model(w, b, h, h, **attrs)
    x = rng.standard_normal((2, cin, h, h)).astype(np.float32)
    tap = Tap(model, ["y"])
    y = tap.run({"x": x})["y"]
    geom = ConvGeom.of_node(model.graph.node[0], w.shape)
    assert geom.out_hw(h, h) == y.shape[2:]
    pos = sample_positions(2, y.shape[2], y.shape[3], 17, np.random.default_rng(0))
    rows = conv_rows(x, geom, pos)
    np.testing.assert_allclose(rows @ w.reshape(cout, -1).T + b, output_rows(y, pos), rtol=1e-4, atol=1e-4)


def test_channel_moments_and_apoz():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 4, 4))
    x[:, 1] = 0.0  # dead channel
    x[:, 2] = 2.5  # constant channel
    m = ChannelMoments(axis=1)
    m.update(x[:2])
    m.update(x[2:])  # streamed in two parts
    flat = np.moveaxis(x, 1, -1).reshape(-1, 3)
    np.testing.assert_allclose(m.mean, flat.mean(0), atol=1e-12)
    np.testing.assert_allclose(m.var, flat.var(0), atol=1e-10)
    assert m.zero_fraction[1] == 1.0 and m.zero_fraction[0] == 0.0
    assert m.var[2] < 1e-12 and m.abs_max[2] == 2.5
    assert m.count == 5 * 16


def test_gram_streams_exactly():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((50, 6)), rng.standard_normal((50, 2))
    g = Gram()
    for i in range(0, 50, 7):
        g.update(x[i:i + 7], y[i:i + 7])
    np.testing.assert_allclose(g.xtx, x.T @ x, atol=1e-10)
    np.testing.assert_allclose(g.xty, x.T @ y, atol=1e-10)
    assert g.rows == 50
    np.testing.assert_allclose(feature_rows(np.ones((2, 3, 4)), -1), np.ones((6, 4)))


def test_channel_stats_over_dataset_matches_all_at_once():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    model = _conv_model(w, np.zeros(4, np.float32), 8, 8, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    xs = rng.standard_normal((6, 3, 8, 8)).astype(np.float32)
    data = Dataset([{"x": xs[i:i + 2]} for i in range(0, 6, 2)], None, "test")
    stats, rep = channel_stats(model, {"z": 1}, data)
    z = np.concatenate([g[0]["z"] for g in stream([Tap(model, ["z"])], data)])
    flat = np.moveaxis(z, 1, -1).reshape(-1, 4)
    np.testing.assert_allclose(stats["z"].mean, flat.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["z"].zero_fraction, (flat == 0).mean(0))
    assert rep.samples == 6 and rep.batches == 3 and rep.peak_activation_bytes > 0
