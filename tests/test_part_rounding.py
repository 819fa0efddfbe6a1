"""prune-channels rounds each Split/Concat part of a group, not only the group's total.

The graph is a MixNet mixed-kernel block::

    X ─Conv 1x1 'pw' (3→C)─▶ Relu ─▶ Split(s0, s1, ..) ─┬─▶ Conv dw k0 'dw0' ─┐
                                                         ├─▶ Conv dw k1 'dw1' ─┼─▶ Concat ─▶ Relu ─▶ tail
                                                         └─▶ Conv dw k2 'dw2' ─┘
    tail:  Conv 1x1 'pwl' (C→D)                                  (split_pwl=False)
       or  Split(C//2, C−C//2) ─▶ Conv 1x1 'pwl0' / 'pwl1' ─▶ Concat   (split_pwl=True:
           a second partition whose boundaries cross the depthwise one)
    then GlobalAveragePool ─▶ Flatten ─▶ Gemm(D→4) ─▶ Y

Every depthwise part (and every pwl part) must keep a multiple of round-to channels, or
all of them; with dead channels (all their weights zero) the pruned model's outputs
equal the original's.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper
from onnxprune.passes import prune_channels as pc

from onnxprune.api import run_passes
from onnxprune.channels import analyze
from onnxprune.model import Model, normalize
from onnxprune.testing import make_model, random_feeds, run, vinfo


def mixed_block(sizes: list[int], kernels: list[int], *, dead: dict[int, list[int]] | None = None,
                split_pwl: bool = False, d: int = 24, seed: int = 0) -> onnx.ModelProto:
    """The block drawn in the module docstring; ``dead`` (part -> channel indices in that
    part) zeroes every weight of those channels, so removing them changes nothing."""
    rng = np.random.default_rng(seed)
    c = sum(sizes)
    offs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
    gone = sorted(int(offs[p] + i) for p, ix in (dead or {}).items() for i in ix)
    w_pw = (rng.standard_normal((c, 3, 1, 1)) / np.sqrt(3)).astype(np.float32)
    b_pw = rng.uniform(0.1, 0.5, c).astype(np.float32)
    w_pw[gone], b_pw[gone] = 0, 0
    inits: dict[str, np.ndarray] = {"w_pw": w_pw, "b_pw": b_pw, "split": np.array(sizes, np.int64)}
    nodes = [helper.make_node("Conv", ["X", "w_pw", "b_pw"], ["pw_out"], name="pw"),
             helper.make_node("Relu", ["pw_out"], ["pw_act"], name="pw_relu"),
             helper.make_node("Split", ["pw_act", "split"], [f"part{i}" for i in range(len(sizes))], name="split",
                              axis=1)]
    for i, (s, k) in enumerate(zip(sizes, kernels)):
        w = (rng.standard_normal((s, 1, k, k)) / k).astype(np.float32)
        b = rng.uniform(0.1, 0.5, s).astype(np.float32)
        local = [g - int(offs[i]) for g in gone if offs[i] <= g < offs[i] + s]
        w[local], b[local] = 0, 0
        inits[f"w_dw{i}"], inits[f"b_dw{i}"] = w, b
        nodes.append(helper.make_node("Conv", [f"part{i}", f"w_dw{i}", f"b_dw{i}"], [f"dw{i}_out"], name=f"dw{i}",
                                      group=s, kernel_shape=[k, k], pads=[k // 2] * 4))
    nodes += [helper.make_node("Concat", [f"dw{i}_out" for i in range(len(sizes))], ["cat"], name="cat", axis=1),
              helper.make_node("Relu", ["cat"], ["cat_act"], name="cat_relu")]
    halves = [c // 2, c - c // 2] if split_pwl else [c]
    dd = [d // 2, d - d // 2] if split_pwl else [d]
    ins = ["cat_act"]
    if split_pwl:
        inits["split_pwl"] = np.array(halves, np.int64)
        nodes.append(helper.make_node("Split", ["cat_act", "split_pwl"], ["h0", "h1"], name="split_pwl", axis=1))
        ins = ["h0", "h1"]
    outs = []
    lo = 0
    for j, (h, dj, x) in enumerate(zip(halves, dd, ins)):
        w = (rng.standard_normal((dj, h, 1, 1)) / np.sqrt(h)).astype(np.float32)
        w[:, [g - lo for g in gone if lo <= g < lo + h]] = 0
        lo += h
        name = f"pwl{j}" if split_pwl else "pwl"
        inits[f"w_{name}"] = w
        nodes.append(helper.make_node("Conv", [x, f"w_{name}"], [f"{name}_out"], name=name))
        outs.append(f"{name}_out")
    if split_pwl:
        nodes.append(helper.make_node("Concat", outs, ["pwl_out"], name="cat_pwl", axis=1))
    inits["fc"] = (rng.standard_normal((4, d)) / np.sqrt(d)).astype(np.float32)
    inits["fcb"] = np.zeros(4, np.float32)
    nodes += [helper.make_node("GlobalAveragePool", ["pwl_out"], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
              helper.make_node("Gemm", ["flat", "fc", "fcb"], ["Y"], name="fc", transB=1)]
    return normalize(make_model(nodes, [vinfo("X", ["N", 3, 8, 8])], [vinfo("Y", ["N", 4])], inits))


def _channels(m: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """Conv name -> (input channels, output channels)."""
    init = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    out = {}
    for n in m.graph.node:
        if n.op_type == "Conv":
            w = init[n.input[1]]
            g = next((a.i for a in n.attribute if a.name == "group"), 1)
            out[n.name] = (w.shape[1] * g, w.shape[0])
    return out


def _assert_parts_rounded(before: onnx.ModelProto, after: onnx.ModelProto, r: int) -> None:
    was, now = _channels(before), _channels(after)
    for name, (cin, cout) in now.items():
        if name.startswith(("dw", "pwl")):
            assert cin % r == 0 or cin == was[name][0], f"{name} reads {cin} channels (round-to {r})"
        if name.startswith("dw"):
            assert cout % r == 0 or cout == was[name][1], f"{name} writes {cout} channels (round-to {r})"


#: the pwl group's channels are live: leave it whole so that only dead channels go
LIVE = "group-ratios=pwl=0|pwl0=0"


def _prune(model: onnx.ModelProto, spec: str) -> tuple[onnx.ModelProto, dict]:
    out, records = run_passes(model, [spec])
    return out, records[0]


def _assert_exact(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    onnx.checker.check_model(after, full_check=True)
    feeds = random_feeds(before, seed=1, batch=2)
    np.testing.assert_allclose(run(after, feeds)[0], run(before, feeds)[0], rtol=1e-5, atol=1e-5)


def test_parts_of_a_mixed_kernel_group():
    # the depthwise partition 40|40|40 crossed by the pwl halves 60|60: cells 40|20|20|40
    a = analyze(Model(mixed_block([40, 40, 40], [3, 5, 7], split_pwl=True)))
    g = next(g for g in a.groups if "pw" in g.sources)
    assert sorted(len(p) for p in a.parts(g)) == [20, 20, 40, 40]
    plain = analyze(Model(mixed_block([40, 40, 40], [3, 5, 7])))
    g = next(g for g in plain.groups if "pw" in plain.groups[g.id].sources)
    assert sorted(len(p) for p in plain.parts(g)) == [40, 40, 40]
    # the pwl output (24 channels, one conv) has no pieces: one part
    g = next(g for g in plain.groups if "pwl" in g.sources)
    assert [len(p) for p in plain.parts(g)] == [24]


def test_each_depthwise_part_keeps_a_multiple_of_round_to():
    # 3 parts of 40 with 30 dead channels each; ratio 0.5 removes 60 of 120 lowest-first
    # (the dead ones, by id: 30 of part 0, 30 of part 1): rounded per part, parts 0 and 1
    # keep 16 each; rounded as a whole (64 kept), part 0 keeps 10 and part 1 keeps 14
    dead = {p: list(range(5, 35)) for p in range(3)}
    model = mixed_block([40, 40, 40], [3, 5, 7], dead=dead)
    out, rec = _prune(model, f"prune-channels:ratio=0.5,round-to=8,latency-guard=false,{LIVE}")
    assert rec.modified
    _assert_parts_rounded(model, out, 8)
    ch = _channels(out)
    assert sum(ch[f"dw{i}"][0] for i in range(3)) < 120
    _assert_exact(model, out)
    # the whole-group rounding (round-parts=false) leaves a depthwise part off the grid
    old, _ = _prune(model, f"prune-channels:ratio=0.5,round-to=8,latency-guard=false,round-parts=false,{LIVE}")
    with pytest.raises(AssertionError, match="round-to 8"):
        _assert_parts_rounded(model, old, 8)
    _assert_exact(model, old)


def test_group_without_parts_unchanged():
    # the pwl/fc group has no pieces: part rounding equals the group rounding
    model = mixed_block([16, 16], [3, 5], d=40)
    a, _ = _prune(model, "prune-channels:ratio=0.3,round-to=8,latency-guard=false,protect=pw")
    b, _ = _prune(model, "prune-channels:ratio=0.3,round-to=8,latency-guard=false,protect=pw,round-parts=false")
    assert _channels(a)["pwl"] == _channels(b)["pwl"] == (32, 32)


def _cells_rounded(model: onnx.ModelProto, spec: dict, r: int) -> int:
    """choose_atoms on ``model``: every part of every group keeps a multiple of ``r`` or all of
    it (a part is a whole Split piece, or where two partitions cross, their intersection);
    returns the atoms chosen."""
    opts = pc.Options(**spec)
    m = Model(model)
    a = analyze(m)
    scores, _ = pc.get_criterion(opts.criterion).score(a, m, None)  # type: ignore[arg-type]
    chosen = set(pc.choose_atoms(a, scores, opts, r))
    for g in a.groups:
        for part in a.parts(g):
            kept = len(part) - len(chosen.intersection(part))
            assert kept % r == 0 or kept == len(part), (g.sources, len(part), kept)
    return len(chosen)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(5, 40), min_size=2, max_size=4), split_pwl=st.booleans(),
       r=st.sampled_from([4, 8, 16]), ratio=st.sampled_from([0.25, 0.5, 0.7]), seed=st.integers(0, 1000))
def test_parts_rounded_and_dead_channels_exact(sizes, split_pwl, r, ratio, seed):
    rng = np.random.default_rng(seed)
    kernels = [3 + 2 * i for i in range(len(sizes))]
    # more dead channels than the ratio removes, spread over the parts, so the lowest
    # scores (all zero) are dead ones and their removal is exact
    dead = {p: sorted(rng.choice(s, size=min(s - 1, int(np.ceil(0.8 * s))), replace=False).tolist())
            for p, s in enumerate(sizes)}
    model = mixed_block(sizes, kernels, dead=dead, split_pwl=split_pwl, seed=seed)
    _cells_rounded(model, {"ratio": ratio, "group_ratios": tuple(LIVE.split("=", 1)[1].split("|"))}, r)
    out, rec = _prune(model, f"prune-channels:ratio={ratio},round-to={r},latency-guard=false,{LIVE}")
    if not split_pwl:  # each depthwise part is one part of its group
        was, now = _channels(model), _channels(out)
        for i in range(len(sizes)):
            cin = now[f"dw{i}"][0]
            assert cin % r == 0 or cin == was[f"dw{i}"][0]
    if rec.modified:
        _assert_exact(model, out)
    else:
        assert _channels(out) == _channels(model)


@settings(max_examples=60, deadline=None)
@given(cells=st.lists(st.integers(1, 30), min_size=1, max_size=5), r=st.integers(1, 16), seed=st.integers(0, 1000))
def test_rounded_prefixes_match_round_removal(cells, r, seed):
    """scope=error's candidate removals are exactly what choose_atoms makes of each quota."""
    rng = np.random.default_rng(seed)
    n = sum(cells)
    parts = np.split(rng.permutation(n), np.cumsum(cells)[:-1])
    parts_l = [p.tolist() for p in parts]
    scores = rng.random(n)
    order = sorted(range(n), key=lambda a: (scores[a], a))
    a = analyze(Model(mixed_block([8, 8], [3, 5])))  # any analysis: round_removal reads only its arguments
    ks, sets = pc._rounded_prefixes(order, parts_l, r, n, 0.75 * n)
    want: list[tuple[int, list[int]]] = []
    for k in range(1, n + 1):
        gone = a.round_removal(order[:k], scores, r, parts_l)
        if len(gone) > 0.75 * n:
            break
        if gone and (not want or len(gone) > len(want[-1][1])):
            want.append((k, gone))
    assert ks == [k for k, _ in want]
    assert [sorted(s) for s in sets] == [sorted(g) for _, g in want]
    for s in sets:
        for p in parts_l:
            kept = len(p) - len(set(p) & set(s))
            assert kept % r == 0 or kept == len(p)
