"""Text input: a file of sentences, tokenised with a tokenizer.json built here (WordLevel), round trip
through load_dataset / prepare_data, inputs mapped by name, length from the model or --input-shape."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxprune.api import prepare_data
from onnxprune.data import load_dataset, stacked
from onnxprune.errors import DataError, UsageError
from onnxprune.model import normalize
from onnxprune.testing import make_model, run, vinfo

tokenizers = pytest.importorskip("tokenizers")

VOCAB = {"[PAD]": 0, "[UNK]": 1, "the": 2, "cat": 3, "sat": 4, "on": 5, "mat": 6, "a": 7, "dog": 8, "ran": 9}
SENTENCES = ["the cat sat on the mat", "a dog ran", "", "the dog sat on a cat mat", "unknownword cat"]


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tok = Tokenizer(WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok_path = tmp_path / "tokenizer.json"
    tok.save(str(tok_path))
    text = tmp_path / "sentences.txt"
    text.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return text, tok_path


def encoder(seq: int | str = "seq", names=("input_ids", "attention_mask", "token_type_ids"),
            dtype: int = TensorProto.INT64) -> onnx.ModelProto:
    """ids, mask, types ─Cast─▶ float ─Add─▶ Y   (a stand-in text encoder that echoes its inputs)"""
    nodes = [helper.make_node("Cast", [n], [f"{n}_f"], to=TensorProto.FLOAT) for n in names]
    nodes.append(helper.make_node("Sum", [f"{n}_f" for n in names], ["Y"]))
    return normalize(make_model(nodes, [vinfo(n, ["batch", seq], dtype) for n in names], [vinfo("Y", None)]))


def expected_ids(sentence: str, length: int) -> list[int]:
    ids = [VOCAB.get(w, 1) for w in sentence.split()][:length]
    return ids + [0] * (length - len(ids))


def test_round_trip(files):
    text, tok = files
    ds = load_dataset(encoder(), text, tokenizer=tok, batch_size=2)
    arrays = stacked(ds)
    real = [s for s in SENTENCES if s]
    assert ds.n_samples == len(real) == 4 and len(ds.batches) == 2  # the blank line is skipped
    assert arrays["input_ids"].shape == (4, 128) and arrays["input_ids"].dtype == np.int64
    for i, s in enumerate(real):
        assert arrays["input_ids"][i].tolist() == expected_ids(s, 128)
        assert arrays["attention_mask"][i].tolist() == [1] * len(s.split()) + [0] * (128 - len(s.split()))
    assert not arrays["token_type_ids"].any()
    # The loaded batches run through the model.
    out = run(encoder(), ds.batches[0])[0]
    assert out.shape == (2, 128)


def test_length_from_fixed_dim_and_from_input_shape(files):
    text, tok = files
    ds = load_dataset(encoder(seq=4), text, tokenizer=tok)
    assert stacked(ds)["input_ids"][0].tolist() == expected_ids(SENTENCES[0], 4)  # truncated to the fixed 4
    plan = prepare_data(encoder(), data=text, tokenizer=tok, input_shapes=["input_ids:1x8"], calib_limit=2)
    assert plan.ctx.has_data and plan.ctx.calib.batches[0]["input_ids"].shape == (1, 8)
    assert plan.ctx.calib.n_samples == 2 and plan.evaluation.n_samples == 2


def test_int32_inputs_and_subset_of_names(files):
    text, tok = files
    ds = load_dataset(encoder(names=("input_ids", "attention_mask"), dtype=TensorProto.INT32), text, tokenizer=tok)
    arrays = stacked(ds)
    assert set(arrays) == {"input_ids", "attention_mask"} and arrays["input_ids"].dtype == np.int32


def test_errors(files, tmp_path):
    text, tok = files
    with pytest.raises(UsageError, match="--tokenizer"):
        load_dataset(encoder(), text)
    with pytest.raises(DataError, match="pixel_values"):
        load_dataset(encoder(names=("input_ids", "pixel_values")), text, tokenizer=tok)
    with pytest.raises(DataError, match="no such file"):
        load_dataset(encoder(), text, tokenizer=tmp_path / "missing.json")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no sentences"):
        load_dataset(encoder(), empty, tokenizer=tok)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset(encoder(), text, tokenizer=bad)


def test_text_calibrates_whitened_lowrank_end_to_end(files, tmp_path):
    """sentences.txt ─prepare_data(tokenizer)─▶ calibration ─lowrank:whiten=true─▶ a model whose
    embedding-space outputs on those tokens are closer to the original's than plain SVD's."""
    from onnxprune.api import run_passes

    text, tok = files
    many = tmp_path / "many.txt"
    rng = np.random.default_rng(0)
    words = [w for w in VOCAB if not w.startswith("[")]
    many.write_text("\n".join(" ".join(rng.choice(words, rng.integers(2, 8))) for _ in range(40)) + "\n",
                    encoding="utf-8")
    # input_ids ─Gather(E[10, 16])─▶ ─MatMul(W[16, 12])─▶ Y; E has correlated, unevenly scaled columns.
    emb = (rng.standard_normal((10, 16)) @ (rng.standard_normal((16, 16)) * np.geomspace(5, 0.05, 16)[:, None]))
    nodes = [helper.make_node("Gather", ["E", "input_ids"], ["h"], name="embed"),
             helper.make_node("MatMul", ["h", "W"], ["Y"], name="proj")]
    model = normalize(make_model(nodes, [vinfo("input_ids", ["batch", "seq"], TensorProto.INT64),
                                         vinfo("attention_mask", ["batch", "seq"], TensorProto.INT64)],
                                 [vinfo("Y", ["batch", "seq", 12])],
                                 {"E": emb.astype(np.float32), "W": rng.standard_normal((16, 12)).astype(np.float32)}))
    plan = prepare_data(model, data=many, tokenizer=tok, input_shapes=["input_ids:1x8"], calib_limit=20)
    spec = "lowrank:rank=3,check-latency=false,only-cheaper=false"
    white, recs = run_passes(model, [spec + ",whiten=true"], ctx=plan.ctx)
    plain, _ = run_passes(model, [spec])
    line = recs[0].stats["layers"][0]
    assert line["calibration_rows"] == int(stacked(plan.ctx.calib)["attention_mask"].sum())  # real tokens only
    feed = stacked(plan.evaluation)
    mask = feed["attention_mask"].astype(bool)
    ref = run(model, feed)[0][mask]

    def err(m: onnx.ModelProto) -> float:
        return float(np.linalg.norm(run(m, feed)[0][mask] - ref) / np.linalg.norm(ref))

    assert err(white) < 0.8 * err(plain)
