"""How much a quantization recipe's measured drop depends on which images fit its ranges and
which score it: the figures behind ``quantize:float-outputs`` and auto's cross-fitting
(passes/quantize.py, onnxprune/quantized.py, passes/auto.py ``cross_fit``).

The zoo's 1000 images are split as everywhere (256 calibration / 744 evaluation, seed 0); the
256 are split again as auto splits them (two halves of 128, ``split_dataset(seed=0)``). Per
pass-spec list, the recipe is built with its ranges from: half B (scored on half A and on the
744), half A (scored on half B and on the 744), all 256, and the first 64 (scored on the 744).
Every drop is printed with the images lost / gained against the float model.

    python tools/exp_quantize_folds.py mobilenetv2 "quantize" "quantize:float-outputs=false"
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib  # noqa: E402

from onnxprune.api import prepare_data, run_passes  # noqa: E402
from onnxprune.context import Evaluator  # noqa: E402
from onnxprune.data import split_dataset, subset  # noqa: E402
from onnxprune.model import load_model  # noqa: E402
from onnxprune.paired import discordant  # noqa: E402
from onnxprune.validate import correct  # noqa: E402

RECIPES = {"mobilenetv2": "torchvision", "efficientnet-lite0": "efficientnet-lite", "squeezenet1.1": "caffe-bgr"}


def main(argv: list[str]) -> int:
    name, specsets = argv[0], [s.split() for s in argv[1:]] or [["quantize"]]
    proto = load_model(benchlib.ZOO / "models" / f"{name}.onnx")
    plan = prepare_data(proto, data=benchlib.ZOO / "data" / "imagenet-sample", recipe=RECIPES[name], batch_size=32,
                        calib_limit=256, seed=0)
    calib = plan.ctx.calib
    half_a, half_b = split_dataset(calib, 128, seed=0, batch_size=calib.batch_step)
    first64 = subset(calib, np.arange(64), batch_size=calib.batch_step)

    def right(ds: Any, model: Any) -> np.ndarray:
        ev = Evaluator(proto, ds)
        ev.baseline()
        assert ev.classifier is not None
        return correct([o[ev.classifier] for o in ev.run(model)], ds.labels)

    base = {id(d): right(d, proto) for d in (half_a, half_b, plan.evaluation)}
    for specs in specsets:
        for fit, check, tag in ((half_b, half_a, "ranges B, check A"), (half_a, half_b, "ranges A, check B"),
                                (calib, None, "ranges all 256"), (first64, None, "ranges first 64")):
            t = time.perf_counter()
            q, _ = run_passes(proto, specs, ctx=plan.ctx.replace(calib=fit))
            parts = []
            for ds, what in ((check, "check"), (plan.evaluation, "eval")):
                if ds is None:
                    continue
                c0, c1 = base[id(ds)], right(ds, q)
                lost, gained = discordant(c0, c1)
                parts.append(f"{what} drop {100 * (c0.mean() - c1.mean()):.2f} (-{lost}/+{gained} of {len(c0)})")
            print(f"{' '.join(specs)} | {tag} | {' | '.join(parts)} | {time.perf_counter() - t:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
