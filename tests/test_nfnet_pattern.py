"""timm NFNet's weight standardisation (ScaledStdConv2d) through every pass.

timm exports each standardised conv weight as a BatchNormalization in training mode over
the weight itself, with its mean and variance computed by ReduceMeans of a transposed
copy::

    Wt[1,k,Co] ─ReduceMean(0,1)──────────────────────────────▶ mean ─┐
    Wt ─ReduceMean(0,1,keep)─▶ Sub(Wt, ·) ─▶ Mul(·,·) ─ReduceMean─▶ var ─┤
    W3[1,Co,k] ──────────────────────────────────────▶ BatchNormalization(training_mode=1, gain, 0)
                                                          ─▶ Reshape[Co,Ci,kh,kw] ─▶ Conv weight

    X ─Conv a─▶ Relu ─Conv b─▶ Mul(alpha) ─▶ Add(·, Conv a) ─▶ Relu ─▶ GAP ─▶ Flatten ─▶ Gemm ─▶ Y

Loaded normally, the standardisation folds into constant weights and the model is an
ordinary CNN. Left as nodes (a model over the folding limits: FOLD_SIZE_LIMIT forced to 0
here), every pass must still either work (checker + onnxruntime, the training-mode BNs
left alone) or refuse with a documented error, and prune-channels says in one line why
those convs are not pruned.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from onnxprune.passes import REGISTRY

import onnxprune.model as om
from onnxprune.api import prepare_data, run_passes
from onnxprune.errors import OnnxPruneError, PassCrash, VerificationError
from onnxprune.model import normalize
from onnxprune.testing import make_model, random_feeds, run, vinfo


def _standardised(p: str, co: int) -> list[onnx.NodeProto]:
    return [helper.make_node("ReduceMean", [f"{p}Wt"], [f"{p}mu"], axes=[0, 1], keepdims=0),
            helper.make_node("ReduceMean", [f"{p}Wt"], [f"{p}mu1"], axes=[0, 1], keepdims=1),
            helper.make_node("Sub", [f"{p}Wt", f"{p}mu1"], [f"{p}d"]),
            helper.make_node("Mul", [f"{p}d", f"{p}d"], [f"{p}d2"]),
            helper.make_node("ReduceMean", [f"{p}d2"], [f"{p}var"], axes=[0, 1], keepdims=0),
            helper.make_node("BatchNormalization", [f"{p}W3", f"{p}gain", f"zero{co}", f"{p}mu", f"{p}var"],
                             [f"{p}wn", f"{p}rm", f"{p}rv"], training_mode=1, epsilon=1e-5, momentum=1.0),
            helper.make_node("Reshape", [f"{p}wn", f"{p}shape"], [f"{p}Ws"])]


def nf_block(c: int = 16, seed: int = 0) -> onnx.ModelProto:
    """The graph in the module docstring."""
    rng = np.random.default_rng(seed)
    inits: dict[str, np.ndarray] = {f"zero{c}": np.zeros(c, np.float32), "alpha": np.array(0.2, np.float32),
                                    "fcW": rng.standard_normal((10, c)).astype(np.float32),
                                    "fcB": np.zeros(10, np.float32)}
    for p, cin in (("a", 3), ("b", c)):
        w = rng.standard_normal((c, cin, 3, 3)).astype(np.float32)
        w3 = w.reshape(1, c, -1)
        inits.update({f"{p}W3": w3, f"{p}Wt": w3.transpose(0, 2, 1).copy(),
                      f"{p}shape": np.array(w.shape, np.int64), f"{p}B": np.zeros(c, np.float32),
                      f"{p}gain": rng.uniform(0.5, 1.5, c).astype(np.float32) / np.float32(np.sqrt(cin * 9))})
    nodes = [*_standardised("a", c), helper.make_node("Conv", ["X", "aWs", "aB"], ["c1"], name="conv_a", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"]), *_standardised("b", c),
             helper.make_node("Conv", ["r1", "bWs", "bB"], ["c2"], name="conv_b", pads=[1] * 4),
             helper.make_node("Mul", ["c2", "alpha"], ["c2s"]), helper.make_node("Add", ["c2s", "c1"], ["res"]),
             helper.make_node("Relu", ["res"], ["r2"]), helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fcW", "fcB"], ["Y"], name="fc", transB=1)]
    m = make_model(nodes, [vinfo("X", [1, 3, 8, 8])], [vinfo("Y", [1, 10])], inits, opset=17)
    onnx.checker.check_model(m, full_check=True)
    return m


def _bns(m: onnx.ModelProto) -> int:
    return [n.op_type for n in m.graph.node].count("BatchNormalization")


def test_standardisation_folds_and_prunes_like_a_plain_cnn():
    m = nf_block()
    loaded = normalize(m)
    assert _bns(loaded) == 0  # folded into constant weights
    feeds = random_feeds(m)
    np.testing.assert_allclose(run(loaded, feeds)[0], run(m, feeds)[0], rtol=1e-4, atol=1e-4)
    out, rec = run_passes(loaded, ["prune-channels:ratio=0.5,round-to=4,latency-guard=false"])
    assert rec[0].modified
    onnx.checker.check_model(out, full_check=True)


#: every registered pass, with options that let it run on random data (static quantize
#: refuses random data, by design: that refusal is tested elsewhere)
SPECS = {"quantize": "quantize:mode=dynamic", "auto": "auto:speedup=1.05"}


@pytest.mark.parametrize("name", REGISTRY.names())
def test_unfolded_standardisation_every_pass_works_or_refuses(name, monkeypatch):
    monkeypatch.setattr(om, "FOLD_SIZE_LIMIT", 0)  # as if every weight were over the folding limit
    m = nf_block()
    loaded = normalize(m)
    assert _bns(loaded) == 2
    ctx = prepare_data(loaded, samples=4, need_eval=False).ctx
    try:
        out, records = run_passes(loaded, [SPECS.get(name, name)], ctx=ctx)
    except (VerificationError, PassCrash):
        raise
    except OnnxPruneError as exc:  # a documented refusal: one line
        assert "\n" not in str(exc) and exc.exit_code != 1
        return
    onnx.checker.check_model(out, full_check=True)
    # (quantize's onnxruntime pre-processing evaluates the standardisation itself: folded, valid)
    assert _bns(out) == 2 or name == "quantize", "the weight standardisation must stay as it is"
    feeds = random_feeds(m)
    got, want = run(out, feeds)[0], run(m, feeds)[0]
    assert got.shape == want.shape and np.isfinite(got).all()
    if name == "prune-channels":
        assert not records[0].modified
        assert "2 conv(s) not pruned: weight computed at run time" in records[0].stats["not_sources"]
