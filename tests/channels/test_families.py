"""Per-op-family channel handlers on tiny hand-built graphs: lossless when dead channels are
pruned, and blocked (with the reason) where pruning cannot be proved safe."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from _support.oracles import dead_channel_oracle
from onnxprune.channels import analyze
from onnxprune.model import Model, normalize
from onnxprune.testing import make_model, vinfo

RNG = np.random.default_rng(0)


def W(*shape):
    return (RNG.standard_normal(shape) / np.sqrt(np.prod(shape[1:]) or 1)).astype(np.float32)


def conv(name, x, y, w, inits, **attrs):
    inits[name + "_w"] = w
    inits[name + "_b"] = (0.1 * RNG.standard_normal(w.shape[0])).astype(np.float32)
    return helper.make_node("Conv", [x, name + "_w", name + "_b"], [y], name=name, **attrs)


def model_convtranspose():
    """X ─Conv(3→8)─▶ Relu ─▶ ConvTranspose(8→6, s2) ─▶ Relu ─▶ ConvTranspose(6→4, g2) ─▶ Y"""
    i = {}
    i["t1_w"], i["t2_w"] = W(8, 6, 3, 3), W(6, 2, 2, 2)
    i["t1_b"] = np.zeros(6, np.float32)
    nodes = [conv("c", "X", "a", W(8, 3, 3, 3), i, pads=[1] * 4), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("ConvTranspose", ["b", "t1_w", "t1_b"], ["c2"], name="t1", strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["d"]),
             helper.make_node("ConvTranspose", ["d", "t2_w"], ["Y"], name="t2", group=2)]
    return make_model(nodes, [vinfo("X", ["N", 3, 5, 5])], [vinfo("Y", None)], i)


def model_norms():
    """X ─Conv(3→8)─▶ GroupNorm(4) ─▶ PRelu ─▶ Conv(8→6) ─▶ InstanceNorm ─▶ Resize×2 ─▶ Pad(spatial) ─▶ Conv(6→4) ─▶ Y"""
    i = {"gs": RNG.uniform(0.5, 1.5, 8).astype(np.float32), "gb": np.zeros(8, np.float32),
         "slope": RNG.uniform(0, 0.3, (8, 1, 1)).astype(np.float32),
         "is": np.ones(6, np.float32), "ib": np.zeros(6, np.float32),
         "roi": np.array([], np.float32), "scales": np.array([1, 1, 2, 2], np.float32),
         "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}
    nodes = [conv("c1", "X", "a", W(8, 3, 3, 3), i, pads=[1] * 4),
             helper.make_node("GroupNormalization", ["a", "gs", "gb"], ["b"], num_groups=4),
             helper.make_node("PRelu", ["b", "slope"], ["c"]),
             conv("c2", "c", "d", W(6, 8, 1, 1), i),
             helper.make_node("InstanceNormalization", ["d", "is", "ib"], ["e"]),
             helper.make_node("Resize", ["e", "roi", "scales"], ["f"], mode="nearest"),
             helper.make_node("Pad", ["f", "pads"], ["g"]),
             conv("c3", "g", "Y", W(4, 6, 3, 3), i)]
    # onnx infers no shapes past GroupNormalization-21, so the output shape is declared
    return make_model(nodes, [vinfo("X", ["N", 3, 4, 4])], [vinfo("Y", ["N", 4, 8, 8])], i, opset=21)


def model_nhwc_matmul():
    """X ─Conv(3→8)─▶ Relu ─▶ Transpose(NHWC) ─▶ MatMul(8→6) ─▶ Relu ─▶ Transpose(NCHW) ─▶ Conv(6→4) ─▶ Y"""
    i = {"mw": W(8, 6)}
    nodes = [conv("c1", "X", "a", W(8, 3, 3, 3), i, pads=[1] * 4), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Transpose", ["b"], ["c"], perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["c", "mw"], ["d"], name="mm"), helper.make_node("Relu", ["d"], ["e"]),
             helper.make_node("Transpose", ["e"], ["f"], perm=[0, 3, 1, 2]), conv("c2", "f", "Y", W(4, 6, 1, 1), i)]
    return make_model(nodes, [vinfo("X", ["N", 3, 4, 4])], [vinfo("Y", None)], i)


def model_ffn():
    """X[N,S,16] ─MatMul(16→32)─▶ +b ─▶ Erf-GELU ─▶ MatMul(32→16) ─▶ +b ─▶ Y (the transformer MLP)"""
    i = {"w1": W(16, 32), "b1": (0.1 * RNG.standard_normal(32)).astype(np.float32), "w2": W(32, 16),
         "b2": np.zeros(16, np.float32), "sq2": np.array(1.4142135, np.float32), "one": np.array(1, np.float32),
         "half": np.array(0.5, np.float32)}
    nodes = [helper.make_node("MatMul", ["X", "w1"], ["a"], name="fc1"), helper.make_node("Add", ["a", "b1"], ["b"]),
             helper.make_node("Div", ["b", "sq2"], ["c"]), helper.make_node("Erf", ["c"], ["d"]),
             helper.make_node("Add", ["d", "one"], ["e"]), helper.make_node("Mul", ["b", "e"], ["f"]),
             helper.make_node("Mul", ["f", "half"], ["g"]), helper.make_node("MatMul", ["g", "w2"], ["h"], name="fc2"),
             helper.make_node("Add", ["h", "b2"], ["Y"])]
    return make_model(nodes, [vinfo("X", ["N", 5, 16])], [vinfo("Y", ["N", 5, 16])], i)


def model_split_slice_opset11():
    """X ─Conv(3→12)─▶ Split(attr [4,8]) ─▶ (a: Conv 4→4), (b: Slice[-6:INT_MAX] ─▶ Relu) ─▶ Concat ─▶ Conv ─▶ Y"""
    i = {"st": np.array([-6], np.int64), "en": np.array([np.iinfo(np.int64).max], np.int64), "ax": np.array([1], np.int64)}
    nodes = [conv("c1", "X", "a", W(12, 3, 3, 3), i, pads=[1] * 4),
             helper.make_node("Split", ["a"], ["s1", "s2"], axis=1, split=[4, 8]),
             conv("c2", "s1", "t1", W(4, 4, 1, 1), i),
             helper.make_node("Slice", ["s2", "st", "en", "ax"], ["t2"]), helper.make_node("Relu", ["t2"], ["t3"]),
             helper.make_node("Concat", ["t1", "t3"], ["u"], axis=1), conv("c3", "u", "Y", W(2, 10, 1, 1), i)]
    return make_model(nodes, [vinfo("X", ["N", 3, 4, 4])], [vinfo("Y", None)], i, opset=11)


@pytest.mark.parametrize("build", [model_convtranspose, model_norms, model_nhwc_matmul, model_ffn, model_split_slice_opset11])
@pytest.mark.parametrize("seed", range(6))
def test_family_lossless(build, seed):
    dead_channel_oracle(build(), seed)


def test_families_really_prune():
    for build in (model_convtranspose, model_norms, model_nhwc_matmul, model_ffn, model_split_slice_opset11):
        assert sum(dead_channel_oracle(build(), s) for s in range(6)) > 0, build.__name__


def test_groupnorm_ties_whole_groups():
    a = analyze(Model(normalize(model_norms())))
    g = next(g for g in a.groups if g.sources == ["c1"])
    sizes = sorted({len(ix) for at in g.atoms for ix in a.atoms[at].elements.values()})
    assert len(g.atoms) == 4 and sizes == [2]


def _blocked(model: onnx.ModelProto, source: str) -> list[str]:
    a = analyze(Model(normalize(model)))
    g = next(g for g in a.groups if source in g.sources)
    assert not a.prunable_atoms(g)
    return [r for _, r in g.blocked]


def _after_conv(nodes_after, extra_inits=None, out_shape=None, opset=17):
    """X ─Conv(3→8, 'c1')─▶ a ─<nodes_after>─▶ Y"""
    i = dict(extra_inits or {})
    nodes = [conv("c1", "X", "a", W(8, 3, 3, 3), i, pads=[1] * 4)] + nodes_after
    return make_model(nodes, [vinfo("X", ["N", 3, 4, 4])], [vinfo("Y", out_shape)], i, opset=opset)


@pytest.mark.parametrize("nodes, inits, reason", [
    ([helper.make_node("LayerNormalization", ["a", "s", "b"], ["t"], axis=1), helper.make_node("Relu", ["t"], ["Y"])],
     {"s": np.ones((8, 4, 4), np.float32), "b": np.zeros((8, 4, 4), np.float32)}, "normalises over the channel axis"),
    ([helper.make_node("Softmax", ["a"], ["Y"], axis=1)], {}, "Softmax normalises over the channel axis"),
    ([helper.make_node("ReduceMean", ["a"], ["Y"], axes=[1], keepdims=1)], {}, "reduces over the channel axis"),
    ([helper.make_node("Reshape", ["a", "shp"], ["Y"])], {"shp": np.array([0, 2, 4, 16], np.int64)}, "splits the channel axis"),
    ([helper.make_node("DepthToSpace", ["a"], ["Y"], blocksize=2)], {}, "DepthToSpace has no channel handler"),
    ([helper.make_node("Pad", ["a", "pads"], ["Y"])], {"pads": np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64)},
     "Pad pads the channel axis"),
    ([helper.make_node("MatMul", ["a", "a"], ["Y"])], {}, "MatMul of two activations"),
])
def test_blocked_with_reason(nodes, inits, reason):
    reasons = _blocked(_after_conv(nodes, inits), "c1")
    assert any(reason in r for r in reasons), reasons


def test_shape_reading_channel_count_blocks():
    """a ─Shape─▶ Gather(1) is the channel count: pruning would change what the graph computes."""
    nodes = [helper.make_node("Shape", ["a"], ["s"]), helper.make_node("Gather", ["s", "i1"], ["c"], axis=0),
             helper.make_node("Cast", ["c"], ["cf"], to=onnx.TensorProto.FLOAT),
             helper.make_node("Mul", ["a", "cf"], ["Y"])]
    reasons = _blocked(_after_conv(nodes, {"i1": np.array(1, np.int64)}), "c1")
    assert any("channel count is read" in r for r in reasons), reasons


def test_protect_pattern_blocks():
    """Protecting the second MLP layer freezes its input channels, so the hidden group is blocked."""
    free = analyze(Model(normalize(model_ffn())))
    assert any(free.prunable_atoms(g) for g in free.groups)
    a = analyze(Model(normalize(model_ffn())), protect=["fc2*"])
    assert not any(a.prunable_atoms(g) for g in a.groups)
    assert any("protected by pattern 'fc2*'" in r for g in a.groups for _, r in g.blocked)


def test_operand_with_unknown_channels_blocks_the_arriving_group():
    """X ─Conv(3→8,'c1')─▶ a ;  Add(Z[N, C?, 4, 4], a) ─▶ Y. Z's channel count is symbolic, so the
    Add cannot be proved to carry a's channels: c1's group must be blocked, not pruned alone
    (regression: mobilevit/edgenext exports)."""
    i: dict = {}
    nodes = [conv("c1", "X", "a", W(8, 3, 3, 3), i, pads=[1] * 4), helper.make_node("Add", ["Z", "a"], ["Y"])]
    m = make_model(nodes, [vinfo("X", ["N", 3, 4, 4]), vinfo("Z", ["N", "C", 4, 4])], [vinfo("Y", ["N", 8, 4, 4])], i)
    a = analyze(Model(normalize(m)))
    assert not any(a.prunable_atoms(g) for g in a.groups)


def test_grouped_conv_output_atoms_include_its_input():
    """A depthwise conv's output channel may only go together with its input channel, whichever
    side the analysis reached first (regression: shufflenet_v2, where the input side was never
    reached and filters were pruned alone)."""
    i = {"dw_w": W(8, 1, 3, 3)}
    nodes = [helper.make_node("Relu", ["X"], ["r"]),
             helper.make_node("Conv", ["r", "dw_w"], ["d"], name="dw", group=8, pads=[1] * 4),
             conv("c2", "d", "Y", W(4, 8, 1, 1), i)]
    m = make_model(nodes, [vinfo("X", ["N", 8, 4, 4])], [vinfo("Y", ["N", 4, 4, 4])], i)
    a = analyze(Model(normalize(m)))
    x_sp, y_sp = a.ctx.by_tensor["r"].id, a.ctx.by_tensor["d"].id
    for atom in a.atoms:
        if y_sp in atom.elements:
            assert x_sp in atom.elements and not atom.prunable  # X is a model input: blocked
