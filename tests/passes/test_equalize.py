"""equalize: exact in float for Conv-Relu-Conv (depthwise included), Clip modes, absorption, bias correction."""
from __future__ import annotations

import numpy as np
import onnx
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from onnxprune.api import run_passes
from onnxprune.context import PassContext
from onnxprune.data import Dataset
from onnxprune.testing import make_model, run, vinfo

HW = 9


def chain_model(channels: list[int], groups: list[int], kernels: list[int], acts: list[str], seed: int,
                spread: float = 2.0) -> onnx.ModelProto:
    """x ─Conv₀─ act₀ ─Conv₁─ act₁ … ─Conv_n─▶ y; output channels of each conv get very
    different magnitudes (10^±spread) so that equalization has work to do."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], {}
    prev, cin = "x", 3
    for i, (cout, g, k) in enumerate(zip(channels, groups, kernels)):
        w = rng.standard_normal((cout, cin // g, k, k)) * 10 ** rng.uniform(-spread, spread, (cout, 1, 1, 1))
        inits[f"w{i}"] = w.astype(np.float32)
        inits[f"b{i}"] = (rng.standard_normal(cout) * 0.5).astype(np.float32)
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[k, k],
                                      pads=[k // 2] * 4, group=g))
        prev = f"c{i}"
        if i < len(acts):
            if acts[i] == "relu":
                nodes.append(helper.make_node("Relu", [prev], [f"a{i}"]))
            elif acts[i] == "clip":
                nodes.append(helper.make_node("Clip", [prev, "lo", "hi"], [f"a{i}"]))
                inits["lo"], inits["hi"] = np.array(0.0, np.float32), np.array(6.0, np.float32)
            prev = f"a{i}" if acts[i] != "none" else prev
        cin = cout
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    return make_model(nodes, [vinfo("x", [2, 3, HW, HW])], [vinfo("y", [2, cin, HW, HW])], inits, opset=13)


@st.composite
def chains(draw, acts=("relu",)):
    n = draw(st.integers(2, 4))
    channels, groups, kernels = [], [], []
    cin = 3
    for i in range(n):
        depthwise = i > 0 and draw(st.booleans())
        cout = cin if depthwise else draw(st.sampled_from([2, 4, 6, 8]))
        channels.append(cout)
        groups.append(cin if depthwise else 1)
        kernels.append(draw(st.sampled_from([1, 3])))
        cin = cout
    a = [draw(st.sampled_from(acts)) for _ in range(n - 1)]
    return channels, groups, kernels, a, draw(st.integers(0, 10_000))


def ranges(model: onnx.ModelProto) -> list[float]:
    """max/min per-output-channel weight range of each Conv."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type == "Conv":
            r = np.abs(inits[n.input[1]]).reshape(inits[n.input[1]].shape[0], -1).max(1)
            out.append(float(r.max() / r.min()))
    return out


def feeds(seed: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((2, 3, HW, HW)).astype(np.float32)}


def assert_same(a: onnx.ModelProto, b: onnx.ModelProto, rtol: float = 1e-4) -> None:
    ya, yb = run(a, feeds())[0], run(b, feeds())[0]
    assert np.max(np.abs(ya - yb)) <= rtol * (np.max(np.abs(ya)) + 1e-6)


@settings(max_examples=15, deadline=None)
@given(chains(acts=("relu", "none")))
def test_lossless_relu_and_depthwise(spec):
    m = chain_model(*spec)
    out, rec = run_passes(m, ["equalize:bias-correction=none"])
    onnx.checker.check_model(out, full_check=True)
    assert_same(m, out)
    if rec[0].stats["pairs"]:
        assert rec[0].modified
    if rec[0].stats["pairs"] == 1 and len(spec[0]) == 2:
        # one pair: after equalization each channel's range is the same in both layers
        r1, r2 = channel_ranges(out)
        assert np.allclose(r1, r2, rtol=1e-3)


def channel_ranges(model: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray]:
    """Output-channel ranges of the first Conv, input-channel ranges of the second."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    c1, c2 = [n for n in model.graph.node if n.op_type == "Conv"][:2]
    w1, w2 = inits[c1.input[1]], inits[c2.input[1]]
    g = next((a.i for a in c2.attribute if a.name == "group"), 1)
    r1 = np.abs(w1).reshape(w1.shape[0], -1).max(1)
    r2 = np.abs(w2.reshape(g, w2.shape[0] // g, w2.shape[1], -1)).max(axis=(1, 3)).reshape(-1)
    return r1, r2


@settings(max_examples=10, deadline=None)
@given(chains(acts=("clip", "relu")))
def test_clip_exact_is_lossless(spec):
    m = chain_model(*spec, spread=0.5)
    out, _ = run_passes(m, ["equalize:clip=exact,bias-correction=none"])
    onnx.checker.check_model(out, full_check=True)
    assert_same(m, out)


def test_depthwise_pair_equalizes():
    # x ─Conv 1x1 (6)─ Relu ─Conv dw 3x3 (6)─ Relu ─Conv 1x1 (4)─▶ y
    m = chain_model([6, 6, 4], [1, 6, 1], [1, 3, 1], ["relu", "relu"], seed=5)
    out, rec = run_passes(m, ["equalize:bias-correction=none"])
    assert rec[0].stats["pairs"] == 2
    assert_same(m, out)
    before, after = ranges(m), ranges(out)
    assert after[0] < before[0] / 5 and after[1] < before[1] / 5


def test_clip_modes():
    m = chain_model([6, 6, 4], [1, 6, 1], [1, 3, 1], ["clip", "clip"], seed=2, spread=0.3)
    skip, rs = run_passes(m, ["equalize:clip=skip,bias-correction=none"])
    assert rs[0].modified is False and rs[0].stats["pairs"] == 0
    relu, rr = run_passes(m, ["equalize:clip=relu,bias-correction=none"])
    assert not [n for n in relu.graph.node if n.op_type == "Clip"]
    exact, re_ = run_passes(m, ["equalize:clip=exact,bias-correction=none"])
    assert [n.op_type for n in exact.graph.node].count("Min") == 2
    assert_same(m, exact)


def data_ctx(n: int = 16) -> PassContext:
    rng = np.random.default_rng(11)
    ds = Dataset([{"x": rng.standard_normal((2, 3, HW, HW)).astype(np.float32)} for _ in range(n // 2)], None, "noise")
    return PassContext(calib=ds, calib_kind="data")


def test_bias_absorption_exact_on_calibration_data():
    # the second conv is 1x1 without padding, the ReLU input has positive-offset channels
    m = chain_model([4, 5], [1, 1], [3, 1], ["relu"], seed=4, spread=0.2)
    for t in m.graph.initializer:
        if t.name == "b0":
            t.CopyFrom(numpy_helper.from_array(np.array([8.0, 9.0, -1.0, 10.0], np.float32), "b0"))
    ctx = data_ctx()
    out, rec = run_passes(m, ["equalize:bias-correction=none"], ctx=ctx)
    assert rec[0].stats["bias_absorbed_channels"] >= 1
    for b in ctx.calib.batches:  # type: ignore[union-attr]
        ya, yb = run(m, b)[0], run(out, b)[0]
        assert np.max(np.abs(ya - yb)) <= 1e-4 * np.max(np.abs(ya))


def _with_quantized_weights(model: onnx.ModelProto, bits: int) -> onnx.ModelProto:
    from onnxprune.passes.equalize import _quantize_sim

    q = onnx.ModelProto()
    q.CopyFrom(model)
    convs = {n.input[1] for n in q.graph.node if n.op_type == "Conv"}
    for t in q.graph.initializer:
        if t.name in convs:
            w = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array(_quantize_sim(w, bits, True).astype(np.float32), t.name))
    return q


def test_bias_correction_empirical_cancels_mean_shift():
    m = chain_model([8, 8], [1, 1], [3, 1], ["relu"], seed=9, spread=0.0)
    ctx = data_ctx(32)
    plain, _ = run_passes(m, ["equalize:absorb=false,bias-correction=none"], ctx=ctx)
    corrected, rec = run_passes(m, ["equalize:absorb=false,bits=4"], ctx=ctx)
    assert rec[0].stats["bias_corrected"]["convs"] == 2
    assert rec[0].stats["bias_corrected"]["how"].startswith("empirical")

    def mean_out(model: onnx.ModelProto) -> np.ndarray:
        return np.mean([run(model, b)[0].mean(axis=(0, 2, 3)) for b in ctx.calib.batches], axis=0)  # type: ignore[union-attr]

    ref = mean_out(plain)
    shift_plain = np.abs(mean_out(_with_quantized_weights(plain, 4)) - ref).sum()
    shift_corr = np.abs(mean_out(_with_quantized_weights(corrected, 4)) - ref).sum()
    assert shift_corr < 0.5 * shift_plain


def test_bias_correction_analytic_from_batchnorm():
    # x ─Conv─ BatchNormalization ─ Relu ─Conv─▶ y: E[x] of the second Conv from γ, β
    rng = np.random.default_rng(0)
    inits = {"w0": rng.standard_normal((4, 3, 1, 1)).astype(np.float32),
             "s": np.array([1.0, 0.5, 2.0, 1.5], np.float32), "bb": np.array([0.5, -0.2, 1.0, 0.0], np.float32),
             "mu": np.zeros(4, np.float32), "var": np.ones(4, np.float32),
             "w1": rng.standard_normal((5, 4, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], kernel_shape=[1, 1]),
             helper.make_node("BatchNormalization", ["c0", "s", "bb", "mu", "var"], ["n0"]),
             helper.make_node("Relu", ["n0"], ["a0"]),
             helper.make_node("Conv", ["a0", "w1"], ["y"], kernel_shape=[1, 1])]
    m = make_model(nodes, [vinfo("x", [2, 3, HW, HW])], [vinfo("y", [2, 5, HW, HW])], inits, opset=13)
    out, rec = run_passes(m, ["equalize:bits=3"])
    assert rec[0].stats["bias_corrected"]["convs"] == 1
    assert rec[0].stats["bias_corrected"]["how"].startswith("analytic")
    onnx.checker.check_model(out, full_check=True)


def test_no_pairs_not_modified():
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    m = make_model(nodes, [vinfo("x", [2, 3, HW, HW])], [vinfo("y", [2, 3, HW, HW])], {}, opset=13)
    _, rec = run_passes(m, ["equalize"])
    assert rec[0].modified is False
