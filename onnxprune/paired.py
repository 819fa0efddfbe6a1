"""Paired comparison of two classifiers on the same samples: how sure is a top-1 drop?

A drop of top-1 measured on n samples is (lost − gained) / n, where *lost* counts the
samples the original classifies right and the compressed model wrong, *gained* the
reverse. Only those discordant samples carry information, so the drop's uncertainty is
theirs: with per-sample differences d ∈ {−1, 0, 1}, var(mean d) = ((lost + gained)/n −
mean²) / n, and the 95 % interval is ±1.96·sqrt(var) (normal approximation).

Why it is reported everywhere a drop is: at the sample counts users calibrate and check
with, the interval is as wide as the budget. Measured here on mobilenetv2 int8: 31
discordant images of 744 give ±1.5 points; on 128 images 3 to 7 discordant ones give ±2.6
to ±4.0 (tools/exp_quantize_folds.py), for a 1-point budget.
"""
from __future__ import annotations

import math

import numpy as np


def discordant(ref_correct: np.ndarray, new_correct: np.ndarray) -> tuple[int, int]:
    """(lost, gained) from two boolean per-sample correctness vectors of equal length."""
    a, b = np.asarray(ref_correct, bool), np.asarray(new_correct, bool)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs equal lengths, got {a.shape} and {b.shape}")
    return int((a & ~b).sum()), int((~a & b).sum())


def half_width(lost: int, gained: int, n: int) -> float:
    """Half-width of the paired 95 % interval of the drop, as a fraction (x100 for points)."""
    if n <= 0:
        return math.inf
    mean = (lost - gained) / n
    return 1.96 * math.sqrt(max((lost + gained) / n - mean * mean, 0.0) / n)


def describe(lost: int, gained: int, n: int) -> str:
    """"±1.47, 95 % paired: 18 lost, 13 gained of 744" (points; the text report's wording)."""
    return f"±{100 * half_width(lost, gained, n):.2f}, 95 % paired: {lost} lost, {gained} gained of {n}"
