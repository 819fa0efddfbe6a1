"""Pictures for the HTML report, as inline SVG strings, drawn with matplotlib.

matplotlib is optional (``pip install onnxprune[plots]``): without it every function
returns None and the report says the pictures were left out. Nothing here writes a
file; the report embeds the SVG text.
"""
from __future__ import annotations

import io
from typing import Any, Mapping, Sequence


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float = 7.0, height: float = 3.2) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    return fig, ax


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.tight_layout()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.find("<svg"):]  # drop the XML prologue: the SVG is embedded in HTML


def bar_chart(labels: Sequence[str], series: Mapping[str, Sequence[float]], *, title: str = "",
              ylabel: str = "", log: bool = False) -> str | None:
    """Grouped bars: one group per label, one bar per series (e.g. FLOPs before/after per layer)."""
    if not available() or not labels:
        return None
    import numpy as np

    fig, ax = _figure(max(6.0, min(0.22 * len(labels) * max(len(series), 1), 18.0)))
    x = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + i * width - 0.4 + width / 2, list(values), width, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=90, fontsize=6)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _svg(fig)


def line_chart(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str = "",
               xlabel: str = "", ylabel: str = "", legend: bool = True) -> str | None:
    """One line per curve (e.g. metric drop against pruning ratio, per group)."""
    if not available() or not curves:
        return None
    fig, ax = _figure()
    for name, (xs, ys) in curves.items():
        ax.plot(list(xs), list(ys), marker="o", markersize=3, linewidth=1, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if legend and len(curves) <= 12:
        ax.legend(fontsize=6, ncol=2)
    return _svg(fig)


def scatter(points: Sequence[tuple[float, float]], *, highlight: Sequence[tuple[float, float]] = (),
            front: Sequence[tuple[float, float]] = (), title: str = "", xlabel: str = "", ylabel: str = "",
            labels: Sequence[str] = ()) -> str | None:
    """Every evaluated candidate as a dot, the Pareto ``front`` as a line, ``highlight`` (the chosen point) as a star."""
    if not available() or not points:
        return None
    fig, ax = _figure()
    ax.scatter([p[0] for p in points], [p[1] for p in points], s=10, alpha=0.6, label="candidates")
    if front:
        f = sorted(front)
        ax.plot([p[0] for p in f], [p[1] for p in f], linewidth=1, color="tab:green", label="Pareto front")
    if highlight:
        ax.scatter([p[0] for p in highlight], [p[1] for p in highlight], s=120, marker="*", color="tab:red",
                   label="chosen", zorder=5)
    for (x, y), text in zip(points, labels):
        ax.annotate(text, (x, y), fontsize=6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return _svg(fig)
