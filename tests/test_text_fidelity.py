"""Padded text: the latency feed is the longest sample, fidelity leaves padded positions out.

The oracle model is a tiny "encoder": token ids -> embedding rows (Gather) -> MatMul, so
``last_hidden_state`` [B, T, H] at a position depends on that position's token only, plus a
mask-pooled [B, H] embedding. Padded positions hold token 0 and mask 0; a candidate whose
embedding row 0 differs therefore differs from the reference ONLY at padded positions.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxprune.context import Evaluator, PassContext
from onnxprune.data import Dataset
from onnxprune.layer_latency import batch1_feed
from onnxprune.padding import output_mask, real_positions, representative_sample
from onnxprune.validate import compare_outputs, padding_masks, validate

VOCAB, HIDDEN, T = 10, 4, 6


def encoder(emb: np.ndarray, w: np.ndarray) -> onnx.ModelProto:
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", T])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", T])
    hidden = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["B", T, HIDDEN])
    pooled = helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["B", HIDDEN])
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["e"], axis=0),
        helper.make_node("MatMul", ["e", "w"], ["last_hidden_state"]),
        helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mf", "ax2"], ["m3"]),
        helper.make_node("Mul", ["last_hidden_state", "m3"], ["hm"]),
        helper.make_node("ReduceSum", ["hm", "ax1"], ["sentence_embedding"], keepdims=0),
    ]
    inits = [numpy_helper.from_array(emb.astype(np.float32), "emb"), numpy_helper.from_array(w.astype(np.float32), "w"),
             numpy_helper.from_array(np.array([2], np.int64), "ax2"), numpy_helper.from_array(np.array([1], np.int64), "ax1")]
    g = helper.make_graph(nodes, "enc", [ids, mask], [hidden, pooled], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(m, full_check=True)
    return m


def text_batch(lengths: list[int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), T), np.int64)
    mask = np.zeros((len(lengths), T), np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(1, VOCAB, n)  # real tokens never use id 0, the pad id
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


def text_data(*lengths: list[int]) -> Dataset:
    return Dataset([text_batch(b, i) for i, b in enumerate(lengths)], None, "test text")


@pytest.fixture(scope="module")
def models() -> tuple[onnx.ModelProto, onnx.ModelProto, onnx.ModelProto]:
    rng = np.random.default_rng(0)
    emb, w = rng.standard_normal((VOCAB, HIDDEN)), rng.standard_normal((HIDDEN, HIDDEN))
    pad_only, real = emb.copy(), emb.copy()
    pad_only[0] += 3.0  # the pad token's row: only padded positions change
    real[5] += 3.0  # a token real positions use
    return encoder(emb, w), encoder(pad_only, w), encoder(real, w)


def plain_cosine(ev: Evaluator, outputs: list[dict[str, np.ndarray]]) -> float:
    """The unmasked score (every position counted): what the evaluator computed before."""
    sims = []
    for ref, got in zip(ev.reference, outputs):
        for k in ref:
            r, g = ref[k].reshape(len(ref[k]), -1).astype(np.float64), got[k].reshape(len(got[k]), -1).astype(np.float64)
            sims.append((r * g).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)))
    return float(np.mean(np.concatenate(sims)))


def test_padding_only_difference_scores_exactly_one(models):
    ref, pad_only, real = models
    data = text_data([3, 6], [2, 1], [4])
    ev = Evaluator(ref, data)
    assert ev.baseline() == 1.0
    out = ev.run(pad_only)
    assert any(np.abs(o["last_hidden_state"] - r["last_hidden_state"]).max() > 0.1 for o, r in zip(out, ev.reference))
    assert ev.metric == "cosine"
    assert ev.score(pad_only) == 1.0
    assert plain_cosine(ev, out) < 0.99  # unmasked, the padded positions drag it down
    # a difference at a real position still counts
    assert ev.score(real) < 0.999


def test_pooled_output_is_compared_whole(models):
    ref, _, _ = models
    data = text_data([3, 6])
    ev = Evaluator(ref, data)
    out = [{k: v.copy() for k, v in o.items()} for o in ev.reference]
    out[0]["sentence_embedding"][0] *= -1.0  # the pooled output has no sequence axis: no mask applies
    assert ev.score_outputs(out) == pytest.approx(0.5)  # (1 + 1 | -1 + 1) / 4
    assert output_mask(real_positions(data.batches[0]), out[0]["sentence_embedding"]) is None


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, T), min_size=1, max_size=4), st.integers(0, 2**31 - 1))
def test_masked_cosine_equals_cosine_over_real_positions(models, lengths, seed):
    ref, _, _ = models
    data = text_data(lengths)
    ev = Evaluator(ref, data)
    rng = np.random.default_rng(seed)
    r = ev.reference[0]
    got = {k: (v + rng.standard_normal(v.shape).astype(np.float32)) for k, v in r.items()}
    keep = data.batches[0]["attention_mask"] != 0
    sims = []
    for b in range(len(lengths)):  # the oracle: cosine over the real positions' values only
        for a, g in ((r["last_hidden_state"][b][keep[b]], got["last_hidden_state"][b][keep[b]]),
                     (r["sentence_embedding"][b], got["sentence_embedding"][b])):
            a, g = a.ravel().astype(np.float64), g.ravel().astype(np.float64)
            den = np.linalg.norm(a) * np.linalg.norm(g)
            sims.append(float(a @ g / den) if den > 0 else float(np.abs(a).sum() == np.abs(g).sum()))
    assert ev.score_outputs([got]) == pytest.approx(float(np.mean(sims)), abs=1e-12)


def test_validate_compares_real_positions_only(models):
    ref, pad_only, real = models
    data = text_data([3, 6], [2, 1], [6])
    rep = validate(ref, pad_only, data, latency_runs=0)
    hid = rep["outputs"]["last_hidden_state"]
    assert hid["masked"] == "attention_mask" and hid["positions"] == 3 + 6 + 2 + 1 + 6
    assert hid["cosine"] == 1.0 and hid["max_abs"] == 0.0 and hid["mean_abs"] == 0.0
    assert "masked" not in rep["outputs"]["sentence_embedding"]
    assert rep["outputs"]["sentence_embedding"]["max_abs"] == 0.0
    # the same comparison without the mask sees the padded positions
    ev = Evaluator(ref, data)
    plain = compare_outputs(ev.reference, ev.run(pad_only))
    assert plain["last_hidden_state"]["cosine"] < 0.99 and plain["last_hidden_state"]["max_abs"] > 0.1
    masked = compare_outputs(ev.reference, ev.run(pad_only), padding_masks(data))
    assert masked["last_hidden_state"] == hid
    bad = validate(ref, real, data, latency_runs=0)["outputs"]["last_hidden_state"]
    assert bad["cosine"] < 0.999 and bad["max_abs"] > 0.1


def test_latency_feed_is_the_longest_sample(models):
    data = text_data([2, 3], [5, 1], [5, 6], [6])
    assert representative_sample(data) == (2, 1)  # 6 real tokens, first seen in batch 2 row 1 (tie -> first)
    ctx = PassContext(calib=data, calib_kind="data")
    feed = ctx.feed()
    assert feed is not None and np.array_equal(feed["attention_mask"], data.batches[2]["attention_mask"])
    one = batch1_feed(ctx)
    assert one["attention_mask"].shape == (1, T) and int(one["attention_mask"].sum()) == 6
    assert np.array_equal(one["input_ids"], data.batches[2]["input_ids"][1:2])
    ties = text_data([4, 2], [4, 4])
    assert representative_sample(ties) == (0, 0)
    # validation times the batch holding it too (here a batch of one, where the others hold two)
    rep = validate(models[0], models[0], text_data([2, 3], [6]), latency_runs=2, warmup=1)
    assert rep["latency"]["batch"] == 1


def test_images_keep_the_first_sample():
    rng = np.random.default_rng(0)
    data = Dataset([{"x": rng.standard_normal((2, 3, 4, 4)).astype(np.float32)} for _ in range(3)], None, "imgs")
    assert representative_sample(data) == (0, 0)
    ctx = PassContext(calib=data, calib_kind="data")
    feed = ctx.feed()
    assert feed is not None and feed["x"] is data.batches[0]["x"]
    assert np.array_equal(batch1_feed(ctx)["x"], data.batches[0]["x"][:1])
    # a float input named like a mask is not a padding mask; nor is an int input named otherwise
    fmask = Dataset([{"mask": np.ones((2, 5), np.float32)}, {"mask": np.ones((2, 5), np.float32)}], None, "f")
    assert real_positions(fmask.batches[0]) is None and representative_sample(fmask) == (0, 0)
    ids = Dataset([{"input_ids": np.ones((2, 5), np.int64)}], None, "ids")
    assert real_positions(ids.batches[0]) is None


def test_sweep_cache_key_names_the_masked_fidelity_for_padded_text() -> None:
    """Sensitivity tables scored before the masked cosine must not be read back for text."""
    from onnxprune.data import Dataset
    from onnxprune.sensitivity import _padded

    ids = np.ones((2, 4), np.int64)
    text = Dataset([{"input_ids": ids, "attention_mask": ids}], None, "text")
    images = Dataset([{"x": np.zeros((2, 3, 4, 4), np.float32)}], None, "images")
    assert _padded(text) and not _padded(images)
