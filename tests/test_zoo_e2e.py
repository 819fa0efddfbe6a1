"""End to end on the trained zoo models: fold-bn through the CLI, checked and validated."""
from __future__ import annotations

import json

import onnx
import pytest

from onnxprune.cli import main

# Zoo README baselines are 83.5 / 88.6 / 61.0. mobilenetv2 reproduces within one image
# (834/1000). efficientnet-lite0 gives 883/1000 with every resize/crop/decoder variant
# tried (see the closing note of issue 2); the README figure likely predates the
# images' re-save, so the test pins what these files give.
IMAGENET = [("mobilenetv2", "torchvision", 83.5), ("efficientnet-lite0", "efficientnet-lite", 88.3),
            ("squeezenet1.1", "caffe-bgr", 61.0)]

pytestmark = [pytest.mark.zoo, pytest.mark.slow]


@pytest.mark.parametrize("name, recipe, top1", IMAGENET)
def test_fold_bn_imagenet_accuracy(zoo, tmp_path, name, recipe, top1):
    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    batch = "1" if name == "squeezenet1.1" else "50"
    code = main([str(zoo / "models" / f"{name}.onnx"), "--passes", "fold-bn", "-o", str(out), "--report", str(rep),
                 "--data", str(zoo / "data" / "imagenet-sample"), "--recipe", recipe, "--batch-size", batch,
                 "--latency-runs", "5", "-q"])
    assert code == 0
    onnx.checker.check_model(onnx.load(out), full_check=True)
    r = json.loads(rep.read_text())
    v = r["validation"]
    # --data alone is split (seed 0): 256 calibration images, the other 744 evaluate.
    assert r["data"]["split"]["calibration"] == 256 and r["data"]["split"]["evaluation"] == 744
    assert v["data"]["n_samples"] == 744
    # The full-sample baseline is over 1000 images; a 744-image subset stays within a few points.
    assert abs(v["accuracy"]["before"] * 100 - top1) <= 3.0
    assert v["accuracy"]["after"] == v["accuracy"]["before"]
    for m in v["outputs"].values():
        assert m["max_rel"] < 1e-4  # max |difference| relative to the largest |output|


@pytest.mark.parametrize("name", ["mnist-8", "minilm/model"])
def test_fold_bn_other_zoo_models(zoo, tmp_path, name):
    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    argv = [str(zoo / "models" / f"{name}.onnx"), "--passes", "fold-bn", "-o", str(out), "--report", str(rep),
            "--latency-runs", "3", "-q"]
    if name == "mnist-8":
        argv += ["--data", str(zoo / "data" / "mnist" / "t10k-images-idx3-ubyte.gz")]
    assert main(argv) == 0
    onnx.checker.check_model(onnx.load(out), full_check=True)
    v = json.loads(rep.read_text())["validation"]
    for m in v["outputs"].values():
        assert m["max_rel"] < 1e-4 and m["cosine"] > 0.99999
    if name == "mnist-8":
        assert v["data"]["n_samples"] == 10000 - 256
        assert abs(v["accuracy"]["before"] * 100 - 98.91) < 0.5
        assert v["accuracy"]["after"] == v["accuracy"]["before"]
