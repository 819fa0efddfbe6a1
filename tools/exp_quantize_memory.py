"""Peak RSS of passes on a zoo model, sampled every 0.2 s, and the top-1 on the evaluation
split (256 calibration / 744 evaluation images, seed 0). Used for the quantize
calibration-memory fix (docs/benchmarks/quantize.md, "Calibration memory"):

    python tools/exp_quantize_memory.py mobilenetv2 "quantize:exclude=none"
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib  # noqa: E402

from onnxprune.api import prepare_data, run_passes  # noqa: E402
from onnxprune.context import Evaluator  # noqa: E402
from onnxprune.model import load_model  # noqa: E402

RECIPES = {"mobilenetv2": "torchvision", "efficientnet-lite0": "efficientnet-lite", "squeezenet1.1": "caffe-bgr"}
PEAK = [0]


def rss_mb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    return 0


def monitor() -> None:
    while True:
        PEAK[0] = max(PEAK[0], rss_mb())
        time.sleep(0.2)


def main() -> int:
    name, specs = sys.argv[1], sys.argv[2:]
    threading.Thread(target=monitor, daemon=True).start()
    proto = load_model(benchlib.ZOO / "models" / f"{name}.onnx")
    plan = prepare_data(proto, data=benchlib.ZOO / "data" / "imagenet-sample", recipe=RECIPES[name], batch_size=32,
                        calib_limit=256, seed=0)
    print("data loaded: rss", rss_mb(), "MB, peak", PEAK[0], "MB", flush=True)
    out = proto
    for spec in specs:
        t = time.time()
        out, _ = run_passes(out, [spec], ctx=plan.ctx)
        print(f"{spec}: rss {rss_mb()} MB, peak {PEAK[0]} MB, {time.time() - t:.0f} s", flush=True)
    ev = Evaluator(proto, plan.evaluation)
    print(f"evaluation top-1: original {100 * ev.baseline():.2f} %, result {100 * ev.score(out):.2f} %; "
          f"peak {PEAK[0]} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
