"""Text input for text encoders: a file of one sentence a line, tokenised for the model.

``load_text(specs, path, tokenizer)`` reads ``path`` (UTF-8, one sentence a line; blank
lines are skipped), tokenises it with a ``tokenizer.json`` (the Hugging Face
``tokenizers`` library, the optional extra ``text``: ``pip install 'onnxprune[text]'``)
and returns one int array per model input, mapped by name:

* ``input_ids`` (or ``ids``): the token ids;
* ``attention_mask`` (or ``input_mask``, ``mask``): 1 for a real token, 0 for padding;
* ``token_type_ids`` (or ``segment_ids``, ``type_ids``): the segment ids (0 for one sentence);
* ``position_ids``: ``0 .. length-1``.

Every sentence is truncated and padded to one length, so that all samples stack into
one array (the calibration/evaluation split draws samples from it): the model's fixed
sequence dim when it has one, else ``max_length`` (``--input-shape input_ids:1xL``
sets it from the command line), else :data:`DEFAULT_MAX_LENGTH`. Padding uses the
tokenizer's own pad token when its file configures one, else ``[PAD]``/``<pad>``, else id 0.
An input that none of the names above fits is a DataError naming it.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from onnxprune.errors import DataError, UsageError

if TYPE_CHECKING:
    from onnxprune.data import InputSpec

DEFAULT_MAX_LENGTH = 128

_ROLES = {
    "ids": ("input_ids", "ids", "input"),
    "mask": ("attention_mask", "input_mask", "mask"),
    "type": ("token_type_ids", "segment_ids", "type_ids"),
    "position": ("position_ids",),
}


def role_of(name: str) -> str | None:
    """Which tokenizer output feeds the input ``name`` (``ids``, ``mask``, ``type``, ``position``)."""
    low = name.lower()
    for role, names in _ROLES.items():
        if low in names:
            return role
    return None


def read_sentences(path: Path, limit: int | None = None) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"data {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"data {path}: cannot read ({exc.strerror or exc})") from None
    lines = [line.strip() for line in text.splitlines()]
    sentences = [line for line in lines if line]
    if not sentences:
        raise DataError(f"data {path}: no sentences (one a line expected)")
    return sentences[:limit] if limit is not None else sentences


def load_tokenizer(path: str | Path) -> Any:
    """A ``tokenizers.Tokenizer`` from a ``tokenizer.json``; one-line errors when it cannot be had."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UsageError("text data needs the tokenizers library: pip install 'onnxprune[text]'") from None
    p = Path(path)
    if not p.is_file():
        raise DataError(f"tokenizer {p}: no such file")
    try:
        return Tokenizer.from_file(str(p))
    except Exception as exc:  # tokenizers raises plain Exception for a malformed file
        raise DataError(f"tokenizer {p}: cannot read it ({' '.join(str(exc).split())[:200]})") from None


def sequence_length(specs: Sequence[InputSpec], max_length: int | None = None) -> int:
    """The length every sentence is padded/truncated to: the model's fixed sequence dim, else
    ``max_length``, else :data:`DEFAULT_MAX_LENGTH`; a fixed dim that disagrees with
    ``max_length`` is a UsageError."""
    fixed = {int(s.shape[1]) for s in specs if role_of(s.name) and len(s.shape) >= 2
             and isinstance(s.shape[1], int) and s.shape[1] > 0}
    if len(fixed) > 1:
        raise DataError(f"text inputs disagree on the sequence length: {sorted(fixed)}")
    if fixed:
        length = fixed.pop()
        if max_length is not None and max_length != length:
            raise UsageError(f"the model's sequence length is fixed at {length}; cannot use {max_length}")
        return length
    if max_length is not None:
        if isinstance(max_length, bool) or int(max_length) != max_length or max_length < 1:
            raise UsageError(f"text max length must be a positive integer, got {max_length!r}")
        return int(max_length)
    return DEFAULT_MAX_LENGTH


def _pad_id(tok: Any) -> tuple[int, str]:
    pad = getattr(tok, "padding", None)
    if isinstance(pad, dict) and "pad_id" in pad:
        return int(pad["pad_id"]), str(pad.get("pad_token", "[PAD]"))
    for token in ("[PAD]", "<pad>"):
        idx = tok.token_to_id(token)
        if idx is not None:
            return int(idx), token
    return 0, "[PAD]"


def tokenize(tok: Any, sentences: Sequence[str], length: int) -> dict[str, np.ndarray]:
    """Token arrays ``[n, length]`` (int64) for each role; see the module doc."""
    pad_id, pad_token = _pad_id(tok)
    tok.enable_truncation(length)
    tok.enable_padding(length=length, pad_id=pad_id, pad_token=pad_token)
    enc = tok.encode_batch(list(sentences))
    ids = np.asarray([e.ids for e in enc], dtype=np.int64)
    return {"ids": ids,
            "mask": np.asarray([e.attention_mask for e in enc], dtype=np.int64),
            "type": np.asarray([e.type_ids for e in enc], dtype=np.int64),
            "position": np.broadcast_to(np.arange(length, dtype=np.int64), ids.shape).copy()}


def load_text(specs: Sequence[InputSpec], path: Path, tokenizer: str | Path | None, *,
              max_length: int | None = None, limit: int | None = None) -> dict[str, np.ndarray]:
    """One array per model input (see the module doc); the caller casts them to the inputs' types."""
    if tokenizer is None:
        raise UsageError(f"data {path}: a text file needs a tokenizer: give --tokenizer tokenizer.json")
    unmatched = [s.name for s in specs if role_of(s.name) is None]
    if unmatched:
        raise DataError(f"data {path}: text feeds inputs named input_ids, attention_mask, token_type_ids or "
                        f"position_ids; the model also has {', '.join(unmatched)}")
    bad = [s.name for s in specs if len(s.shape) != 2]
    if bad:
        raise DataError(f"data {path}: text inputs must be [batch, seq]; {', '.join(bad)} are not")
    tok = load_tokenizer(tokenizer)
    arrays = tokenize(tok, read_sentences(path, limit), sequence_length(specs, max_length))
    return {s.name: arrays[role_of(s.name) or "ids"] for s in specs}
