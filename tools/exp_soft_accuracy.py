"""Experiment: does soft-accuracy (mean true-label probability) on 64 calibration images
predict the evaluation-split top-1 drop of a single-group pruning better than top-1 on the
same 64? One channel group at a time pruned at ratio 0.25 (criterion l1, round-to 16,
default reconstruction, guard off).

    python tools/exp_soft_accuracy.py mobilenetv2 [GROUP ...]   # rows to build/soft_exp_<model>.json

Without GROUPs every 1/14th of the model's channel groups is cut. The rows in
docs/benchmarks/soft_accuracy.md were measured on the groups listed there (taken from
auto's sweep table by a predecessor of this script); pass them to reproduce those rows.

Result: docs/benchmarks/soft_accuracy.md (top-1 ranked better; soft-accuracy stays opt-in).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from onnxprune.api import prepare_data, run_passes  # noqa: E402
from onnxprune.context import Evaluator  # noqa: E402
from onnxprune.data import subset  # noqa: E402
from onnxprune.model import load_model  # noqa: E402

RECIPES = {"mobilenetv2": "torchvision", "efficientnet-lite0": "efficientnet-lite", "squeezenet1.1": "caffe-bgr"}


def main() -> int:
    name = sys.argv[1] if len(sys.argv) > 1 else "mobilenetv2"
    proto = load_model(benchlib.ZOO / "models" / f"{name}.onnx")
    plan = prepare_data(proto, data=benchlib.ZOO / "data" / "imagenet-sample", recipe=RECIPES[name], batch_size=32,
                        calib_limit=256, seed=0, cache_dir=benchlib.CACHE / "auto" / name)
    ctx = plan.ctx
    assert ctx.calib is not None
    s64 = subset(ctx.calib, np.arange(64), batch_size=32)
    evs = {"top1_64": Evaluator(proto, s64), "soft_64": Evaluator(proto, s64, metric="soft-accuracy"),
           "top1_256": Evaluator(proto, ctx.calib), "soft_256": Evaluator(proto, ctx.calib, metric="soft-accuracy"),
           "eval_top1": Evaluator(proto, plan.evaluation)}
    base = {k: e.baseline() for k, e in evs.items()}
    from onnxprune.channels import analyze
    from onnxprune.model import Model

    groups = sys.argv[2:] or sorted({g.sources[0] for g in analyze(Model(proto)).groups if g.sources})
    rows = []
    for k in (groups if sys.argv[2:] else groups[:: max(1, len(groups) // 14)]):
        t = time.time()
        spec = f"prune-channels:ratio=0,group-ratios={k}=0.25,criterion=l1,round-to=16,latency-guard=false"
        out, _ = run_passes(proto, [spec], ctx=ctx)
        r = {"group": k, **{m: 100 * (base[m] - e.score(out)) for m, e in evs.items()}}
        rows.append(r)
        print(json.dumps(r), round(time.time() - t, 1), flush=True)
    for m in ("top1_64", "soft_64", "top1_256", "soft_256"):
        rho = spearmanr([r[m] for r in rows], [r["eval_top1"] for r in rows]).correlation
        print(m, "spearman vs eval top-1 drop:", round(float(rho), 3))
    (benchlib.REPO / "build").mkdir(exist_ok=True)
    (benchlib.REPO / "build" / f"soft_exp_{name}.json").write_text(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
