"""lowrank:whiten=true on generated MatMul/Gemm graphs: exact at full rank, lower output error than
plain SVD at the same rank on correlated inputs, the reported output error equals the measured one,
padded tokens left out, refuses without real data; per-shape latency timed once per rank bucket."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper
from onnxprune.passes.lowrank import LowRankFactorize, Options, lowrank

from onnxprune import latency
from onnxprune.api import run_passes
from onnxprune.context import PassContext, Target
from onnxprune.data import Dataset
from onnxprune.errors import UsageError
from onnxprune.model import normalize
from onnxprune.testing import make_model, run, vinfo

NOCHECK = "check-latency=false,only-cheaper=false,round-to=1"


def _chain(dims: list[int], seed: int, gemm_first: bool = False) -> onnx.ModelProto:
    """X[N, S, d0] ─MatMul(W0)─▶ Relu ─▶ MatMul(W1) ... ─▶ Y   (no biases: Y = X W exactly)"""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], {}, "X"
    for i, (k, n) in enumerate(zip(dims, dims[1:])):
        inits[f"W{i}"] = rng.standard_normal((k, n)).astype(np.float32)
        last = i == len(dims) - 2
        out = "Y" if last else f"m{i}"
        nodes.append(helper.make_node("MatMul", [x, f"W{i}"], [out], name=f"mm{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    return normalize(make_model(nodes, [vinfo("X", ["N", "S", dims[0]])], [vinfo("Y", None)], inits))


def _correlated(n: int, s: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((k, k)) * np.geomspace(10.0, 0.01, k)[:, None]
    return (rng.standard_normal((n, s, k)) @ mix).astype(np.float32)


def _ctx(x: np.ndarray, batch: int = 4, kind: str = "data", **extra: np.ndarray) -> PassContext:
    batches = [{"X": x[i:i + batch], **{k: v[i:i + batch] for k, v in extra.items()}}
               for i in range(0, len(x), batch)]
    return PassContext(calib=Dataset(batches, None, "test rows"), calib_kind=kind, target=Target.named("avx2"))


def _out_error(model: onnx.ModelProto, out: onnx.ModelProto, x: np.ndarray) -> float:
    ref, got = run(model, {"X": x})[0], run(out, {"X": x})[0]
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


@settings(max_examples=20, deadline=None, derandomize=True)
@given(dims=st.lists(st.integers(2, 12), min_size=2, max_size=3), seed=st.integers(0, 100))
def test_full_rank_is_lossless(factor, dims, seed):
    model = _chain(dims, seed)
    x = _correlated(16, 3, dims[0], seed)
    out, recs = run_passes(model, [f"lowrank:whiten=true,fraction=1.0,{NOCHECK}"], ctx=_ctx(x))
    assert recs[0].modified
    assert factor.ops(out).count("MatMul") == 2 * (len(dims) - 1)
    assert _out_error(model, out, x) < 1e-4
    onnx.checker.check_model(out, full_check=True)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(k=st.integers(6, 16), n=st.integers(6, 16), seed=st.integers(0, 100), data=st.data())
def test_beats_plain_svd_in_output_error(k, n, seed, data):
    """One MatMul on correlated inputs: at every rank below full, the whitened cut's output error
    on the calibration rows is no larger than plain SVD's, and clearly smaller at rank 2."""
    model = _chain([k, n], seed)
    x = _correlated(32, 4, k, seed)
    r = data.draw(st.integers(1, min(k, n) - 1))
    white, recs = run_passes(model, [f"lowrank:whiten=true,rank={r},ridge=0,{NOCHECK}"], ctx=_ctx(x))
    plain, _ = run_passes(model, [f"lowrank:rank={r},{NOCHECK}"])
    e_white, e_plain = _out_error(model, white, x), _out_error(model, plain, x)
    assert e_white <= e_plain * (1 + 1e-4) + 1e-5
    line = recs[0].stats["layers"][0]
    # The reported output error is the one measured on the calibration rows (float32 round-off).
    assert line["output_error"] == pytest.approx(e_white, rel=1e-3, abs=1e-5)
    assert 0 < line["output_energy"] <= 1 and line["calibration_rows"] == 32 * 4


def test_clear_margin_at_low_rank():
    model = _chain([24, 16], 3)
    x = _correlated(64, 4, 24, 3)
    white, _ = run_passes(model, [f"lowrank:whiten=true,rank=3,{NOCHECK}"], ctx=_ctx(x))
    plain, _ = run_passes(model, [f"lowrank:rank=3,{NOCHECK}"])
    assert _out_error(model, white, x) < 0.7 * _out_error(model, plain, x)


def test_energy_counts_output_energy_and_gemm():
    """energy=E keeps the smallest rank with output energy >= E; Gemm with transB and alpha too."""
    rng = np.random.default_rng(5)
    b = rng.standard_normal((10, 12)).astype(np.float32)
    c = rng.standard_normal(10).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["X", "B", "C"], ["Y"], name="gemm", transB=1, alpha=0.5)]
    model = normalize(make_model(nodes, [vinfo("X", ["M", 12])], [vinfo("Y", None)], {"B": b, "C": c}))
    x = _correlated(64, 1, 12, 5)[:, 0]
    out, recs = run_passes(model, [f"lowrank:whiten=true,energy=0.95,{NOCHECK}"], ctx=_ctx(x))
    line = recs[0].stats["layers"][0]
    assert line["output_energy"] >= 0.95
    full, _ = run_passes(model, [f"lowrank:whiten=true,fraction=1.0,{NOCHECK}"], ctx=_ctx(x))
    np.testing.assert_allclose(run(full, {"X": x})[0], run(model, {"X": x})[0], rtol=1e-3, atol=1e-3)
    assert recs[0].stats["calibration"]["samples"] == 64


def test_padded_tokens_are_left_out():
    """Rows where attention_mask is 0 carry garbage; the result equals the one calibrated on the
    real tokens alone."""
    k = 12
    w = np.random.default_rng(0).standard_normal((k, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")]
    model = normalize(make_model(nodes, [vinfo("X", ["N", "S", k]), vinfo("attention_mask", ["N", "S"], onnx.TensorProto.INT64)],
                                 [vinfo("Y", None)], {"W": w}))
    x = _correlated(8, 6, k, 1)
    mask = np.ones((8, 6), dtype=np.int64)
    mask[:, 4:] = 0
    garbage = x.copy()
    garbage[:, 4:] = 1e3 * np.random.default_rng(2).standard_normal(garbage[:, 4:].shape)
    spec = f"lowrank:whiten=true,rank=3,{NOCHECK}"
    a, _ = run_passes(model, [spec], ctx=_ctx(garbage, attention_mask=mask))
    b, _ = run_passes(model, [spec], ctx=_ctx(np.ascontiguousarray(x[:, :4]), attention_mask=mask[:, :4]))
    wa = {t.name: onnx.numpy_helper.to_array(t) for t in a.graph.initializer}
    wb = {t.name: onnx.numpy_helper.to_array(t) for t in b.graph.initializer}
    assert wa.keys() == wb.keys()
    for name in wa:
        np.testing.assert_allclose(wa[name], wb[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ctx", [None, "random"])
def test_refuses_without_real_data(ctx):
    model = _chain([8, 6], 0)
    context = None if ctx is None else _ctx(_correlated(4, 2, 8, 0), kind="random")
    with pytest.raises(UsageError, match="whiten=true needs") as err:
        run_passes(model, ["lowrank:whiten=true,check-latency=false"], ctx=context)
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError):
        lowrank(model, whiten=True)


def test_plain_function_twin_with_ctx():
    model = _chain([10, 8], 1)
    x = _correlated(16, 2, 10, 1)
    out = lowrank(model, whiten=True, fraction=1.0, check_latency=False, only_cheaper=False, ctx=_ctx(x))
    assert _out_error(model, out, x) < 1e-4


def test_distinct_shapes_are_timed_once_per_rank_bucket():
    """Six 64x64 MatMuls whose energy ranks are 3, 4, 5, 6, 7 and 7, and two 64x48 ones: with the
    avx2 target the ranks round up to 8, so the pass times one chain per shape (2), not 8."""
    rng = np.random.default_rng(0)
    ranks = [3, 4, 5, 6, 7, 7, 5, 6]
    shapes = [(64, 64)] * 6 + [(64, 48)] * 2
    nodes, inits = [], {}
    for i, ((k, n), r) in enumerate(zip(shapes, ranks)):
        q = np.linalg.qr(rng.standard_normal((k, k)))[0][:, :r]
        p = np.linalg.qr(rng.standard_normal((n, n)))[0][:, :r]
        inits[f"W{i}"] = (q @ np.diag(np.linspace(2, 1, r)) @ p.T).astype(np.float32)
        nodes.append(helper.make_node("MatMul", ["X", f"W{i}"], [f"Y{i}"], name=f"mm{i}"))
    model = normalize(make_model(nodes, [vinfo("X", [1, 16, 64])], [vinfo(f"Y{i}", None) for i in range(8)], inits))
    before = latency.MEASUREMENTS[0]
    ctx = PassContext(target=Target.named("avx2"))
    out, recs = run_passes(model, [LowRankFactorize(Options(energy=0.999, only_cheaper=False))], ctx=ctx)
    lines = recs[0].stats["layers"]
    assert [line["ranks"]["r"] for line in lines] == [8] * 8
    assert latency.MEASUREMENTS[0] - before == 2
    assert sum(not line["latency"]["cached"] for line in lines) == 2
    # Without rounding every distinct rank is a distinct chain: 5 + 2 measurements.
    before = latency.MEASUREMENTS[0]
    run_passes(model, [LowRankFactorize(Options(energy=0.999, only_cheaper=False, round_to=1))], ctx=ctx)
    assert latency.MEASUREMENTS[0] - before == 7


@pytest.mark.zoo
@pytest.mark.slow
def test_zoo_minilm_whitened_keeps_embeddings_closer_than_plain(zoo, tmp_path):
    """MiniLM at fraction=0.5 (the same ranks for both): calibrated on 48 STS-B sentences, the
    whitened model's embeddings of 48 *other* sentences are closer to the original's than plain SVD's."""
    pytest.importorskip("tokenizers")
    from onnxprune.api import prepare_data
    from onnxprune.model import load_model
    from onnxprune.text import load_tokenizer, tokenize

    lines = (zoo / "data" / "sts-b" / "sts-b-half-a.tsv").read_text(encoding="utf-8").splitlines()
    sentences = list(dict.fromkeys(line.split("\t")[5] for line in lines))
    calib, held_out = sentences[:48], sentences[48:96]
    text = tmp_path / "calib.txt"
    text.write_text("\n".join(calib) + "\n", encoding="utf-8")
    tok_path = zoo / "models" / "minilm" / "tokenizer.json"
    model = load_model(zoo / "models" / "minilm" / "model.onnx")
    ctx = prepare_data(model, calib=text, tokenizer=tok_path, need_eval=False,
                       input_shapes=[f"{n}:1x64" for n in ("input_ids", "attention_mask", "token_type_ids")]).ctx
    spec = "lowrank:fraction=0.5,check-latency=false"
    white, recs = run_passes(model, [spec + ",whiten=true"], ctx=ctx)
    plain, _ = run_passes(model, [spec])
    # rank 192 of a 384x384 weight is not cheaper: the 12 FFN MatMuls are the ones rewritten.
    assert recs[0].stats["rewritten"] == 12 and recs[0].stats["calibration"]["samples"] == 48
    arrays = tokenize(load_tokenizer(tok_path), held_out, 64)
    feeds = {"input_ids": arrays["ids"], "attention_mask": arrays["mask"], "token_type_ids": arrays["type"]}

    def emb(m: onnx.ModelProto) -> np.ndarray:
        names = [o.name for o in m.graph.output]
        return run(m, feeds)[names.index("sentence_embedding")]

    ref = emb(model)
    cos_white = float(np.mean(np.sum(emb(white) * ref, axis=1)))  # unit-norm embeddings
    cos_plain = float(np.mean(np.sum(emb(plain) * ref, axis=1)))
    assert cos_white > cos_plain + 0.05, (cos_white, cos_plain)
