"""``onnxprune sensitivity MODEL --data ...``: the sweep of :mod:`onnxprune.sensitivity` as a command.

Prints the table (the metric drop of every group and low-rank layer at each level, and
the milliseconds each saves); ``--json`` writes it for the auto pass to reuse
(``auto:sensitivity=PATH``), ``--report`` as Markdown or as HTML with the curves inline.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, NoReturn, Sequence

from onnxprune.errors import UsageError
from onnxprune.layer_latency import layer_times
from onnxprune.sensitivity import SweepSettings, curves_svg, sweep, table_markdown


def _settings_from_passes(specs: Sequence[str], base: SweepSettings) -> SweepSettings:
    """``--passes prune-channels:criterion=fpgm,reconstruct=ls lowrank spatial-svd`` -> settings."""
    from onnxprune.manager import parse_pass_spec

    fams: list[str] = []
    changes: dict[str, Any] = {}
    for spec in specs:
        name, raw = parse_pass_spec(spec)
        if name in ("prune", "prune-channels"):
            fams.append("prune")
            for k, v in raw.items():
                k = k.replace("-", "_")
                if k not in ("criterion", "reconstruct", "round_to", "protect"):
                    raise UsageError(f"sensitivity: prune-channels option {k!r} is not swept; "
                                     "give criterion, reconstruct, round-to or protect")
                changes[k] = int(v) if k == "round_to" else tuple(v.split("|")) if k == "protect" else v
        elif name in ("lowrank", "spatial-svd", "tucker", "cp"):
            fams.append("lowrank")
            if name != "lowrank":
                changes["conv_pass"] = name
            if raw:
                raise UsageError(f"sensitivity: {name} takes no options here (ranks come from --fractions)")
        else:
            raise UsageError(f"sensitivity: cannot sweep pass {name!r}; give prune-channels, lowrank, spatial-svd, tucker or cp")
    if fams:
        changes["families"] = tuple(dict.fromkeys(fams))
    return dataclasses.replace(base, **changes)


def main(argv: Sequence[str]) -> int:
    """``onnxprune sensitivity MODEL --data ...``: the table on stdout, JSON and a report on request."""
    import argparse

    from onnxprune.api import prepare_data
    from onnxprune.model import load_model

    class _P(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:  # one line, exit 2
            raise UsageError(f"sensitivity: {message}")

    p = _P(prog="onnxprune sensitivity", description="Metric drop of every prunable group and low-rank layer at a "
                                                    "ladder of ratios/ranks, on the calibration split; with the "
                                                    "milliseconds each saves in onnxruntime.")
    p.add_argument("model")
    p.add_argument("--data", help="data (split into calibration and evaluation parts as in the main command)")
    p.add_argument("--calib", help="calibration data (the sweep scores on it)")
    p.add_argument("--labels")
    p.add_argument("--recipe")
    p.add_argument("--calib-limit", type=int)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--passes", nargs="+", default=[], metavar="PASS",
                   help="what to sweep: prune-channels[:criterion=..,reconstruct=..,round-to=..] and/or lowrank, "
                        "spatial-svd, tucker, cp (default: prune-channels lowrank)")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.25])
    p.add_argument("--samples", type=int, help="calibration samples to score on (default: all)")
    p.add_argument("--metric", default="auto", choices=["auto", "accuracy", "soft-accuracy", "cosine", "agreement"],
                   help="what a drop is measured in (auto: top-1 with labels, else cosine; soft-accuracy: the "
                        "true label's mean probability: continuous, but it ranked mobilenetv2's cuts worse than top-1)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--executor", default="local", choices=["local", "ray"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--target", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", help="where the table and per-shape latencies are cached")
    p.add_argument("--no-latency", action="store_true", help="skip the per-layer timing")
    p.add_argument("--json", help="write the table (reusable by the auto pass's search) here")
    p.add_argument("--report", help="write a report: .md or .html (with the curves as inline SVG)")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(list(argv))
    proto = load_model(a.model)
    plan = prepare_data(proto, data=a.data, calib=a.calib, labels=a.labels, recipe=a.recipe, calib_limit=a.calib_limit,
                        batch_size=a.batch_size, seed=a.seed, target=a.target, threads=a.threads, cache_dir=a.cache_dir,
                        workers=a.workers, need_eval=False)
    settings = _settings_from_passes(a.passes, SweepSettings(ratios=tuple(a.ratios), fractions=tuple(a.fractions),
                                                             samples=a.samples))
    table = sweep(proto, plan.ctx, settings, workers=a.workers, executor=a.executor, metric=a.metric)
    times = None if a.no_latency else layer_times(table, plan.ctx)[0]
    text = table_markdown(table, times)
    for w in plan.warnings:
        print(f"warning: {w}")
    print(text, end="")
    if a.json:
        out = dict(table)
        if times is not None:
            out["layer_ms"] = times
        Path(a.json).write_text(json.dumps(out, indent=1), encoding="utf-8")
    if a.report:
        svg = curves_svg(table)
        path = Path(a.report)
        if path.suffix == ".html":
            body = "<pre>" + text + "</pre>"
            html = f"<!doctype html><meta charset='utf-8'><title>sensitivity</title><h1>{a.model}</h1>{svg or ''}{body}"
            path.write_text(html, encoding="utf-8")
        else:
            path.write_text(f"# Sensitivity of {a.model}\n\n{text}", encoding="utf-8")
    return 0
