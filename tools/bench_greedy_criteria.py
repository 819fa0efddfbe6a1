"""Benchmark of the greedy data criteria (thinet, car) on mobilenetv2.

Calibrates on 256 zoo images and evaluates top-1 on the other 744 (seeded split,
``onnxprune.api.prepare_data``), at one pruning ratio, for l1 (the weight anchor),
thinet and car, with each reconstruction setting asked for; the criterion's own time
is read from the pass stats, with 1 and 2 workers. Latency: after/before median in
onnxruntime (1 thread, interleaved), three repeats (min-max shown).

    python tools/bench_greedy_criteria.py            # -> docs/benchmarks/greedy_criteria.{md,json}

Tools only: not part of the onnxprune package.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib import ZOO, env_lines, environment, md_table, write_report  # noqa: E402

from onnxprune import criteria_greedy as cg  # noqa: E402
from onnxprune.api import prepare_data, run_passes  # noqa: E402
from onnxprune.channels import analyze  # noqa: E402
from onnxprune.cost import model_cost  # noqa: E402
from onnxprune.criteria import get_criterion  # noqa: E402
from onnxprune.model import Model, load_model, model_size_bytes  # noqa: E402
from onnxprune.runtime import latency_ratio, make_session  # noqa: E402
from onnxprune.validate import accuracy  # noqa: E402


def top1(model: onnx.ModelProto, ds: Any) -> float:
    sess = make_session(model, 1)
    names = [o.name for o in sess.get_outputs()]
    return accuracy([sess.run(names[:1], b)[0] for b in ds.batches], ds.labels)


def weights_hash(model: onnx.ModelProto) -> str:
    h = hashlib.sha1()
    for t in model.graph.initializer:
        h.update(t.name.encode())
        h.update(onnx.numpy_helper.to_array(t).tobytes())
    return h.hexdigest()[:12]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenetv2")
    ap.add_argument("--recipe", default="torchvision")
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--criteria", default="l1,thinet,car")
    ap.add_argument("--reconstruct", default="ls,none")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--out", default="greedy_criteria")
    ap.add_argument("--options", default="", help="more prune-channels options, e.g. ',scope=error'")
    ap.add_argument("--car-timing", type=int, default=0,
                    help="time CAR alone (no pass) with this evaluation budget, for each worker count")
    ap.add_argument("--reuse", help="log of an earlier run: rows with the same settings are taken from it")
    args = ap.parse_args()
    env = environment()
    proto = load_model(ZOO / "models" / f"{args.model}.onnx")
    t0 = time.perf_counter()
    plan = prepare_data(proto, data=str(ZOO / "data" / "imagenet-sample"), recipe=args.recipe, calib_limit=256,
                        batch_size=16, seed=0)
    print(f"data: {time.perf_counter() - t0:.1f} s, {plan.report['split']}", flush=True)
    feed = {k: v[:1] for k, v in plan.ctx.calib.batches[0].items()}
    base = top1(proto, plan.evaluation)
    base_flops = model_cost(proto, inputs=plan.ctx.input_shapes).flops
    rows: list[dict[str, Any]] = [{"criterion": "original", "top1": base, "flops": 1.0, "latency": [1.0, 1.0, 1.0],
                                   "size_mb": model_size_bytes(proto) / 1e6}]
    reuse = {}
    if args.reuse:  # rows printed by an earlier run of this script (its log), keyed by their settings
        for line in Path(args.reuse).read_text().splitlines():
            if line.startswith("{"):
                r = ast.literal_eval(line)
                reuse[(r["criterion"], r["reconstruct"], r["workers"], r.get("mode", "pass"))] = r
    counts = [int(w) for w in args.workers.split(",")]
    for crit in args.criteria.split(","):
        for rec in args.reconstruct.split(","):
            # the pass (top-1) with 1 worker; CAR also with more (determinism: equal weights);
            # thinet's own time with more workers (it streams in one process).
            plan_runs = [(counts[0], "pass")]
            if crit == "car" and args.car_timing:  # CAR's own time only, with a smaller evaluation budget
                plan_runs = [(w, "criterion") for w in counts]
            elif crit == "car":
                plan_runs += [(w, "pass") for w in counts[1:]]
            elif crit.startswith("thinet"):
                plan_runs += [(w, "criterion") for w in counts[1:]]
            for w, mode in plan_runs:
                key = (crit, rec, w, mode)
                if key not in reuse and crit not in ("car", "thinet", "thinet-ls"):  # workers do not matter
                    key = next((k for k in reuse if k[0] == crit and k[1] == rec and k[3] == mode), key)
                if key in reuse:
                    rows.append(reuse[key])
                    print("reused", reuse[key], flush=True)
                    continue
                if mode == "criterion":
                    work = Model(proto)
                    if crit == "car" and args.car_timing:
                        cg.CAR_MAX_EVALUATIONS = args.car_timing
                    t = time.perf_counter()
                    scores, cst = get_criterion(crit).score(analyze(work), work, plan.ctx.replace(workers=w))
                    row = {"criterion": crit, "reconstruct": rec, "workers": w, "mode": mode,
                           "criterion_seconds": round(time.perf_counter() - t, 1),
                           "evaluations": (cst.get("car") or {}).get("evaluations"),
                           "scores": hashlib.sha1(np.nan_to_num(scores, nan=-1.0).tobytes()).hexdigest()[:12]}
                    rows.append(row)
                    print(row, flush=True)
                    continue
                spec = f"prune-channels:ratio={args.ratio},criterion={crit},reconstruct={rec}{args.options}"
                t = time.perf_counter()
                out, recs = run_passes(proto, [spec], ctx=plan.ctx.replace(workers=w))
                seconds = time.perf_counter() - t
                st = recs[0].stats
                cs = st.get(crit, {}) if isinstance(st.get(crit), dict) else {}
                lat = sorted(latency_ratio(proto, out, feed, runs=40) for _ in range(3))
                row = {"criterion": crit, "reconstruct": rec, "workers": w, "mode": mode,
                       "pass_seconds": round(seconds, 1),
                       "criterion_seconds": cs.get("seconds"), "evaluations": cs.get("evaluations"),
                       "top1": top1(out, plan.evaluation),
                       "flops": model_cost(out, inputs=plan.ctx.input_shapes).flops / base_flops,
                       "latency": lat, "size_mb": model_size_bytes(out) / 1e6, "weights": weights_hash(out),
                       "channels_removed": st.get("channels_removed"), "round_to": st.get("round_to"),
                       "reverted": st.get("reverted")}
                print(row, flush=True)
                row["criterion_stats"] = cs
                rows.append(row)
    table = []
    for r in rows:
        if "top1" not in r:  # criterion-only timing rows
            table.append([r["criterion"], r["reconstruct"], r["workers"], "", "", "", "", "", r["criterion_seconds"],
                          r.get("evaluations") or "", "(criterion only)", f"scores {r['scores']}"])
            continue
        table.append([r["criterion"], r.get("reconstruct", ""), r.get("workers", ""), f"{100 * r['top1']:.1f}",
                      f"{100 * (r['top1'] - base):+.1f}" if r["criterion"] != "original" else "",
                      f"{100 * r['flops']:.1f}", f"{r['latency'][1]:.3f} ({r['latency'][0]:.3f}-{r['latency'][2]:.3f})",
                      f"{r['size_mb']:.2f}", r.get("criterion_seconds", ""), r.get("evaluations", "") or "",
                      r.get("pass_seconds", ""), r.get("weights", "")])
    md = [f"# Greedy data criteria on {args.model}: thinet and car", "",
          f"`prune-channels:ratio={args.ratio}{args.options}` with each criterion; calibration: 256 zoo images, "
          f"top-1 on the other {plan.evaluation.n_samples} (seeded split, seed 0, disjoint).", "",
          "Anchor to beat: l1 (the weight criterion) with the same reconstruction. Latency: after/before median "
          "(1 thread, interleaved, 3 repeats: median (min-max)); FLOPs by `onnxprune.cost`.", "",
          md_table(["criterion", "reconstruct", "workers", "top-1 %", "Δ points", "FLOPs %", "latency ratio",
                    "size MB", "criterion s", "CAR evaluations", "pass s", "weights"], table), "",
          "`weights` is a hash of the output model's initializers: equal hashes for 1 and 2 workers mean the "
          "sweep is deterministic. Criterion time is the criterion's own (`stats[criterion].seconds`); the pass "
          "time adds analysis, reconstruction and the latency guard. The machine is shared (2 cores, 8 "
          "concurrent sessions): absolute seconds are inflated, and 2 workers only help when a core is free.", "",
          *env_lines(env)]
    write_report(args.out, "\n".join(md), {"environment": env, "rows": rows, "split": plan.report.get("split")})


if __name__ == "__main__":
    main()
