"""Model builders shared by the factorisation-pass tests (tucker, cp, spatial-svd, lowrank, diagonal).

Test modules cannot import each other (``--import-mode=importlib``), so the builders come
as a session fixture, ``factor``; hypothesis strategies are drawn with ``st.data()``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx
import pytest
from hypothesis import strategies as st
from onnx import helper

from onnxprune.api import run_passes
from onnxprune.model import normalize
from onnxprune.testing import make_model, random_feeds, run, vinfo

# Spatial size of generated conv inputs: non-square, big enough for two stride-2,
# dilation-2, 3-wide layers.
HW = (17, 14)


@dataclass(frozen=True)
class ConvSpec:
    cout: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]
    auto_pad: str
    bias: bool

    def attrs(self) -> dict:
        a = dict(kernel_shape=list(self.kernel), strides=list(self.strides), dilations=list(self.dilations))
        if self.auto_pad == "NOTSET":
            a["pads"] = list(self.pads)
        else:
            a["auto_pad"] = self.auto_pad
        return a


Weights = Callable[[int, int, tuple[int, int], np.random.Generator], np.ndarray]


def gaussian(cout: int, cin: int, kernel: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((cout, cin, *kernel)).astype(np.float32)


class FactorHelpers:
    """Builders and checks; see the module docstring."""

    HW = HW

    @staticmethod
    def conv_spec(kernels: Sequence[int] = (1, 2, 3), channels: Sequence[int] = (1, 2, 3, 4, 5, 6),
                  auto_pads: Sequence[str] = ("NOTSET", "NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")
                  ) -> st.SearchStrategy[ConvSpec]:
        pair = st.tuples(st.sampled_from([1, 2]), st.sampled_from([1, 2]))
        return st.builds(
            ConvSpec,
            cout=st.sampled_from(channels),
            kernel=st.tuples(st.sampled_from(kernels), st.sampled_from(kernels)),
            strides=pair,
            pads=st.tuples(*[st.integers(0, 2)] * 4),
            dilations=pair,
            auto_pad=st.sampled_from(auto_pads),
            bias=st.booleans(),
            # onnxruntime refuses dilation with SAME_UPPER/SAME_LOWER, in the original as much as after.
        ).map(lambda s: dataclasses.replace(s, dilations=(1, 1)) if s.auto_pad.startswith("SAME") else s)

    @staticmethod
    def conv_model(cin: int, specs: Sequence[ConvSpec], seed: int = 0, weights: Weights = gaussian,
                   opset: int = 17) -> onnx.ModelProto:
        """X[N, cin, 17, 14] ─Conv c0─▶ Relu ─▶ Conv c1 ─▶ Relu ... ─▶ Y"""
        rng = np.random.default_rng(seed)
        inits: dict[str, np.ndarray] = {}
        nodes = []
        x, c = "X", cin
        for i, s in enumerate(specs):
            inits[f"W{i}"] = weights(s.cout, c, s.kernel, rng)
            ins = [x, f"W{i}"]
            if s.bias:
                inits[f"B{i}"] = rng.standard_normal(s.cout).astype(np.float32)
                ins.append(f"B{i}")
            nodes.append(helper.make_node("Conv", ins, [f"conv{i}_out"], name=f"c{i}", **s.attrs()))
            y = "Y" if i == len(specs) - 1 else f"r{i}"
            nodes.append(helper.make_node("Relu", [f"conv{i}_out"], [y], name=f"relu{i}"))
            x, c = y, s.cout
        return normalize(make_model(nodes, [vinfo("X", ["N", cin, *HW])], [vinfo("Y", None)], inits, opset=opset))

    @staticmethod
    def run_pass(model: onnx.ModelProto, spec: str) -> tuple[onnx.ModelProto, dict]:
        out, records = run_passes(model, [spec])
        onnx.checker.check_model(out, full_check=True)
        rec = records[0].to_dict()
        return out, rec

    @staticmethod
    def max_rel_diff(a: onnx.ModelProto, b: onnx.ModelProto, seed: int = 1) -> float:
        """max |out_a - out_b| / max |out_b| over all outputs, on random inputs (batch 2)."""
        feeds = random_feeds(b, seed=seed)
        worst = 0.0
        for x, y in zip(run(a, feeds), run(b, feeds)):
            scale = max(float(np.abs(y).max()), 1e-6)
            worst = max(worst, float(np.abs(x - y).max()) / scale)
        return worst

    @staticmethod
    def ops(model: onnx.ModelProto) -> list[str]:
        return [n.op_type for n in model.graph.node]

    @staticmethod
    def layer(rec: dict, name: str) -> dict:
        return next(line for line in rec["stats"]["layers"] if line["name"] == name)


@pytest.fixture(scope="session")
def factor() -> type[FactorHelpers]:
    return FactorHelpers
