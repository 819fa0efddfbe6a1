#!/usr/bin/env python3
"""prune-channels on timm mixnet_s: whole-group vs per-part rounding (issue #10, item 6).

MixNet's mixed-kernel blocks split a group's channels into 3x3/5x5/7x7 depthwise parts
(Split -> Conv dw -> Concat). Rounding only the group's kept count to round-to left
each part with an odd count, off onnxruntime's fast path, and every pruned variant ran
slower, so the latency guard reverted. This measures both roundings
(``round-parts=false`` = the old behaviour, ``true`` = the new default) at ratio 0.25 and
0.5, with the latency guard on (what a user gets) and off at round-to 16 (the variant the
guard first tries), then times each result against the original again, interleaved,
``--repeats`` times (median, min, max of the per-repeat median ratios).

The export has random weights (``pretrained=False``: no hub access), so there is no
accuracy to report: the question is whether the pruned model is faster. The model comes
from ``tools/export_models.py --names mixnet_s`` (in the torch venv).

    python tools/bench_mixnet_parts.py --model /tmp/archs/timm__mixnet_s.onnx

Writes docs/benchmarks/mixnet_parts.md and .json.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="/tmp/archs/timm__mixnet_s.onnx")
    ap.add_argument("--ratios", default="0.25,0.5")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--runs", type=int, default=40, help="interleaved runs per repeat")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="mixnet_parts", help="stem in docs/benchmarks/")
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)

    from onnxprune.api import prepare_data, run_passes
    from onnxprune.cost import model_cost
    from onnxprune.model import load_model
    from onnxprune.runtime import latency_ratio

    t0 = time.time()
    proto = load_model(args.model)
    plan = prepare_data(proto, samples=1, threads=args.threads, need_eval=False)
    ctx = plan.ctx
    feed = ctx.feed() or bl.random_feed(proto, batch=1)
    base = model_cost(proto, inputs=ctx.input_shapes or None)
    rows: list[dict[str, Any]] = []
    for ratio in [float(r) for r in args.ratios.split(",")]:
        for guard in (True, False):
            for parts in (False, True):
                spec = f"prune-channels:ratio={ratio:g},round-parts={str(parts).lower()}"
                spec += "" if guard else ",round-to=16,latency-guard=false"
                out, rec = run_passes(proto, [spec], ctx=ctx)
                rec = rec[0]
                cost = model_cost(out, inputs=ctx.input_shapes or None)
                ratios = ([latency_ratio(proto, out, feed, threads=args.threads, runs=args.runs)
                           for _ in range(args.repeats)] if rec.modified else [])
                row = {"ratio": ratio, "round_parts": parts, "latency_guard": guard, "spec": spec,
                       "modified": bool(rec.modified), "round_to": rec.stats.get("round_to"),
                       "guard_tried": rec.stats.get("latency_tried", []),
                       "flops_cut": 1 - cost.flops / base.flops, "params_cut": 1 - cost.params / base.params,
                       "latency_ratios": [round(x, 4) for x in ratios]}
                if ratios:
                    row.update(latency_median=statistics.median(ratios), latency_min=min(ratios),
                               latency_max=max(ratios))
                rows.append(row)
                print(f"{spec}: modified={row['modified']} flops-{row['flops_cut']:.1%} "
                      f"lat={row.get('latency_median', 1.0):.3f} tried={row['guard_tried']}", flush=True)
    env = bl.environment(sys.argv)
    data = {"environment": env, "model": args.model, "flops": base.flops, "params": base.params,
            "repeats": args.repeats, "runs": args.runs, "threads": args.threads, "rows": rows,
            "seconds": round(time.time() - t0, 1)}
    md = ["# prune-channels on timm mixnet_s: whole-group vs per-part rounding", "", *bl.env_lines(env),
          f"* model: {args.model} (timm mixnet_s, random weights, exported by tools/export_models.py), "
          f"{base.flops / 1e6:.0f} MFLOPs, {base.params / 1e6:.2f} M params at batch 1",
          f"* latency: after/before median, {args.runs} interleaved runs per repeat, {args.repeats} repeats "
          f"(median [min, max] of the repeats), {args.threads} thread, batch 1, 224x224 random input",
          f"* run time: {data['seconds']:.0f} s", "",
          "No accuracy column: random weights (no hub access), nothing to score. `round-parts=false` is the "
          "old behaviour (the group's kept count rounded as a whole); `true` rounds each Split/Concat part "
          "that a conv reads or writes.", "",
          bl.md_table(["ratio", "rounding", "latency guard", "kept", "round-to", "guard tried (round-to: ratio)",
                       "FLOPs cut", "params cut", "latency after/before"],
                      [[f"{r['ratio']:g}", "per part" if r["round_parts"] else "whole group",
                        "on" if r["latency_guard"] else "off (round-to 16)",
                        "pruned" if r["modified"] else "reverted / unchanged", r["round_to"],
                        ", ".join(f"{t['round_to']}: {t['latency_ratio']:.3f}" for t in r["guard_tried"]) or "-",
                        bl.pct(r["flops_cut"]), bl.pct(r["params_cut"]),
                        (f"{r['latency_median']:.3f} [{r['latency_min']:.3f}, {r['latency_max']:.3f}]"
                         if r["modified"] else "1 (original)")] for r in rows]), ""]
    bl.write_report(args.out, "\n".join(md), data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
