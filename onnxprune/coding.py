"""Storage coding for shared weights: b-bit index packing and Huffman code lengths.

**Packing.** ``n`` indices of ``b`` bits (1 <= b <= 8) are written as one little-endian
bit stream: index ``i`` occupies bits ``[i·b, i·b + b)``. Eight indices fill exactly
``b`` bytes, so the stream is stored as a ``uint8`` array of shape ``[G, b]`` with
``G = ceil(n / 8)`` groups (the last group padded with index 0): ``ceil(n/8)·b`` bytes,
never more than ``b`` bytes over the ideal ``n·b/8``.

Unpacking needs nothing but integer arithmetic that every ONNX opset since 7 has
(Cast, Gather, Mul, Add, Div, Sub), so the same decoder works in a constant subgraph of
any model (see ``passes/share_weights.py``). Within a group, index ``j`` (0..7) starts at
bit ``j·b``: byte ``k = (j·b) // 8``, offset ``o = (j·b) % 8``. Since ``o + b <= 15`` it
lies within the 16-bit word ``lo + 256·hi`` of bytes ``k`` and ``k+1``, and::

    index_j = (word // 2**o) mod 2**b

When the index fits in byte ``k`` alone, byte ``k+1`` may not exist (``k = b-1``); any
byte can stand in for it, because ``256·hi // 2**o`` is a multiple of ``2**b`` there and the
``mod`` removes it. :func:`unpack_tables` gives the three 8-entry tables (``k``,
``min(k+1, b-1)``, ``2**o``) the decoder gathers with.

**Huffman.** :func:`huffman_code_lengths` builds an optimal prefix code over symbol
counts (the classic two-smallest merge); :func:`huffman_bits` is the coded size of a
symbol stream, the figure Deep Compression (Han et al. 2016) reports for its indices.
ONNX has no operator to decode it, so it is reported, not stored.
"""
from __future__ import annotations

import heapq
import itertools

import numpy as np

MAX_BITS = 8


def check_bits(bits: int) -> None:
    if isinstance(bits, bool) or int(bits) != bits or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer in [1, {MAX_BITS}], got {bits!r}")


def packed_shape(n: int, bits: int) -> tuple[int, int]:
    """Shape of the ``uint8`` array holding ``n`` indices of ``bits`` bits."""
    check_bits(bits)
    return (-(-n // 8), bits)


def packed_nbytes(n: int, bits: int) -> int:
    g, b = packed_shape(n, bits)
    return g * b


def pack_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    """``indices`` (any shape, values in ``[0, 2**bits)``) → ``uint8[G, bits]``, see the module doc."""
    check_bits(bits)
    flat = np.asarray(indices).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= (1 << bits)):
        raise ValueError(f"indices must lie in [0, {1 << bits}) for {bits} bits")
    g = -(-flat.size // 8)
    padded = np.zeros(g * 8, dtype=np.uint8)
    padded[: flat.size] = flat
    # Bit t of index i goes to stream position i·b + t; numpy's packbits takes bits in
    # little-endian order within each byte with bitorder="little".
    stream = np.unpackbits(padded[:, None], axis=1, count=bits, bitorder="little").reshape(-1)
    return np.packbits(stream, bitorder="little").reshape(g, bits)


def unpack_tables(bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The decoder's tables for the 8 indices of a group: first byte, second byte, 2**offset."""
    check_bits(bits)
    start = np.arange(8) * bits
    first = start // 8
    second = np.minimum(first + 1, bits - 1)
    divisor = 1 << (start % 8)
    return first.astype(np.int64), second.astype(np.int64), divisor.astype(np.int32)


def unpack_indices(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_indices` with the decoder's arithmetic (the reference for the ONNX subgraph)."""
    first, second, divisor = unpack_tables(bits)
    p = np.asarray(packed, dtype=np.int32).reshape(-1, bits)
    word = p[:, first] + 256 * p[:, second]
    q = word // divisor
    return (q - (q // (1 << bits)) * (1 << bits)).reshape(-1)[:n].astype(np.int64)


def huffman_code_lengths(counts: np.ndarray) -> np.ndarray:
    """Code length in bits of each symbol of an optimal prefix code for ``counts``.

    Symbols with count 0 get length 0 (they never occur). A single occurring symbol
    gets length 1 (a decoder still needs one bit per symbol to count them).
    """
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    lengths = np.zeros(counts.size, dtype=np.int64)
    live = [int(i) for i in np.flatnonzero(counts > 0)]
    if len(live) == 1:
        lengths[live[0]] = 1
        return lengths
    tie = itertools.count()
    heap: list[tuple[int, int, list[int]]] = [(int(counts[i]), next(tie), [i]) for i in live]
    heapq.heapify(heap)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:  # every symbol under the merged node moves one level down
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, next(tie), s1 + s2))
    return lengths


def huffman_bits(indices: np.ndarray, k: int) -> int:
    """Bits of the Huffman-coded stream of ``indices`` over an alphabet of ``k`` symbols."""
    counts = np.bincount(np.asarray(indices).reshape(-1), minlength=k)
    return int((counts * huffman_code_lengths(counts)).sum())
