"""Sentence-encoder helpers of the benchmark tools (``bench_minilm.py``, ``bench_compose.py``).

* :func:`load_sts`: the zoo's STS-B pairs (gold score, sentence 1, sentence 2);
* :func:`tokenizer`: the model's ``tokenizer.json`` (``tokenizers`` library), truncation
  128, padding id 0 to the longest sentence of each batch;
* :class:`Encoder`: sentence embeddings of one onnxruntime session, batched by length;
* :func:`sts_spearman`, :func:`embedding_agreement`: quality against the gold scores and
  against the original model's embeddings;
* :func:`latency_feed`: a batch-1 feed of exactly ``seq`` real tokens for timing;
* :func:`split_pairs`: a seeded split of the pairs into calibration and evaluation pairs
  whose sentences never meet (a calibration sentence also found in an evaluation pair is
  dropped from calibration).

Needs the ``bench`` extra (``pip install -e ".[bench]"``: tokenizers). Not part of the
onnxprune package: tools only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

MAX_LEN = 128
EMBEDDING = "sentence_embedding"
STS_FILE = Path("data") / "sts-b" / "sts-b-half-a.tsv"
TOKENIZER_FILE = Path("models") / "minilm" / "tokenizer.json"
STS_REFERENCE = 80.82  # the zoo README's Spearman x 100 of the original model on these pairs


@dataclass
class StsPairs:
    gold: np.ndarray  # float64 [n], 0-5
    first: list[str]
    second: list[str]

    def sentences(self) -> list[str]:
        """Every distinct sentence once, in first-seen order."""
        return list(dict.fromkeys(self.first + self.second))


def load_sts(zoo: Path) -> StsPairs:
    """The tab-separated pairs: genre, source, year, id, gold, sentence 1, sentence 2 and, on
    some lines, two extra source columns that are ignored. No CSV quoting: sentences may
    contain quote characters."""
    gold, first, second = [], [], []
    with open(zoo / STS_FILE, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 7:
                raise ValueError(f"{zoo / STS_FILE}:{n}: expected at least 7 tab-separated columns, got {len(cols)}")
            gold.append(float(cols[4]))
            first.append(cols[5])
            second.append(cols[6])
    return StsPairs(np.asarray(gold, dtype=np.float64), first, second)


def tokenizer(zoo: Path, max_len: int = MAX_LEN):
    """The zoo's WordPiece tokenizer: truncation to ``max_len``, pad id 0 to the longest of a batch
    (the file itself pads to a fixed 128; mean pooling over the mask makes the two equal)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(zoo / TOKENIZER_FILE))
    tok.enable_truncation(max_len)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


def encode(tok: Any, texts: Sequence[str]) -> dict[str, np.ndarray]:
    enc = tok.encode_batch(list(texts))
    return {"input_ids": np.asarray([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.asarray([e.type_ids for e in enc], dtype=np.int64)}


class Encoder:
    """Sentence embeddings from an onnxruntime session; sentences are sorted by length and
    batched so that padding stays short, then put back in order."""

    def __init__(self, tok: Any, batch: int = 32) -> None:
        self.tok, self.batch = tok, batch

    def embed(self, sess: Any, sentences: Sequence[str]) -> np.ndarray:
        lengths = [len(e.ids) for e in self.tok.encode_batch(list(sentences))] if sentences else []
        order = np.argsort(lengths, kind="stable")
        out: np.ndarray | None = None
        names = {i.name for i in sess.get_inputs()}
        for start in range(0, len(order), self.batch):
            idx = order[start:start + self.batch]
            feed = {k: v for k, v in encode(self.tok, [sentences[i] for i in idx]).items() if k in names}
            emb = sess.run([EMBEDDING], feed)[0]
            if out is None:
                out = np.empty((len(sentences), emb.shape[-1]), dtype=np.float64)
            out[idx] = emb
        if out is None:
            raise ValueError("no sentences to embed")
        return out


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n == 0, 1.0, n)


def sts_spearman(pairs: StsPairs, emb: Mapping[str, np.ndarray]) -> float:
    """Spearman x 100 between cos(emb(s1), emb(s2)) and the gold scores."""
    from scipy.stats import spearmanr

    a = _unit(np.stack([emb[s] for s in pairs.first]))
    b = _unit(np.stack([emb[s] for s in pairs.second]))
    return float(100 * spearmanr(np.sum(a * b, axis=1), pairs.gold).correlation)


def embedding_agreement(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Per-sentence cosine similarity of two models' embeddings: mean and min."""
    cos = np.sum(_unit(ref) * _unit(got), axis=1)
    if not np.all(np.isfinite(cos)):
        return {"mean_cosine": float("nan"), "min_cosine": float("nan")}
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}


def evaluate(sess: Any, enc: Encoder, pairs: StsPairs, sentences: Sequence[str],
             ref: np.ndarray | None = None) -> tuple[dict[str, float], np.ndarray]:
    """STS-B Spearman and (when ``ref`` is given) agreement with the reference embeddings."""
    emb = enc.embed(sess, sentences)
    out = {"spearman": sts_spearman(pairs, dict(zip(sentences, emb)))}
    if ref is not None:
        out.update(embedding_agreement(ref, emb))
    return out, emb


def latency_feed(tok: Any, pairs: StsPairs, seq: int = MAX_LEN) -> dict[str, np.ndarray]:
    """Batch 1 x exactly ``seq`` tokens of real text (the pairs joined, truncated), mask all ones."""
    text = " ".join(pairs.first + pairs.second)
    feed = encode(tok, [text])
    if feed["input_ids"].shape[1] != seq:
        raise ValueError(f"latency feed has {feed['input_ids'].shape[1]} tokens, expected {seq}")
    return feed


def subset_pairs(pairs: StsPairs, idx: Sequence[int]) -> StsPairs:
    return StsPairs(pairs.gold[np.asarray(idx, dtype=np.int64)], [pairs.first[i] for i in idx],
                    [pairs.second[i] for i in idx])


def split_pairs(pairs: StsPairs, n_calib_pairs: int, seed: int = 0,
                max_sentences: int = 256) -> tuple[list[str], StsPairs, dict[str, Any]]:
    """Calibration sentences and evaluation pairs, disjoint: a seeded permutation of the pairs,
    the first ``n_calib_pairs`` give their sentences to calibration (at most ``max_sentences``,
    none that also occurs in an evaluation pair), the rest are the evaluation pairs."""
    n = len(pairs.gold)
    perm = np.random.default_rng(seed).permutation(n)
    calib_idx, eval_idx = sorted(perm[:n_calib_pairs].tolist()), sorted(perm[n_calib_pairs:].tolist())
    evaluation = subset_pairs(pairs, eval_idx)
    seen = set(evaluation.first) | set(evaluation.second)
    cands = list(dict.fromkeys([pairs.first[i] for i in calib_idx] + [pairs.second[i] for i in calib_idx]))
    calib = [t for t in cands if t not in seen][:max_sentences]
    info = {"seed": seed, "calibration_pairs": len(calib_idx), "evaluation_pairs": len(eval_idx),
            "calibration_sentences": len(calib), "dropped_shared_sentences": sum(t in seen for t in cands)}
    return calib, evaluation, info
