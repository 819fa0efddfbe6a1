"""thinet and car: greedy data criteria (onnxprune.criteria_greedy).

The tiny model used throughout::

    x[N,3,8,8] ─Conv1(6,3x3,pad 1)─▶ Relu ─▶ Conv2(4,1x1) ─▶ GlobalAveragePool ─▶ Flatten ─▶ Gemm(4→3) ─▶ y

Two groups: Conv1's 6 channels (terminal consumer Conv2) and Conv2's 4 channels
(terminal consumer the Gemm, through pooling and Flatten).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from onnxprune import criteria_greedy as cg
from onnxprune.activations import Tap
from onnxprune.api import run_passes
from onnxprune.channels import analyze, apply_removal
from onnxprune.context import Evaluator, PassContext
from onnxprune.criteria import get_criterion
from onnxprune.data import Dataset
from onnxprune.errors import UsageError
from onnxprune.model import Model, normalize
from onnxprune.testing import make_model, run, vinfo

N = 24


def tiny(seed: int = 0, dead: int | None = None, unused: int | None = None, combo: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    b1 = (rng.standard_normal(6) * 0.1).astype(np.float32)
    w2 = rng.standard_normal((4, 6, 1, 1)).astype(np.float32)
    if dead is not None:  # Relu output exactly 0: zero contribution
        w1[dead] = 0.0
        b1[dead] = -1.0
    if unused is not None:  # Conv2 reads it with zero weights
        w2[:, unused] = 0.0
    if combo:  # no Relu, and channel 5 = channel 0 - 2·channel 1 exactly (so each of the three is redundant)
        w1[5], b1[5] = w1[0] - 2 * w1[1], b1[0] - 2 * b1[1]
    inits = {"w1": w1, "b1": b1, "w2": w2, "b2": (rng.standard_normal(4) * 0.1).astype(np.float32),
             "w3": rng.standard_normal((3, 4)).astype(np.float32), "b3": np.zeros(3, np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Identity" if combo else "Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], name="fc", transB=1),
    ]
    return normalize(make_model(nodes, [vinfo("x", ["N", 3, 8, 8])], [vinfo("y", ["N", 3])], inits))


def dataset(proto: onnx.ModelProto, labels: bool, seed: int = 1, batch: int = 4) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, 3, 8, 8)).astype(np.float32)
    lab = rng.integers(0, 3, N).astype(np.int64) if labels else None
    return Dataset([{"x": x[i: i + batch]} for i in range(0, N, batch)], lab, "test")


def context(proto: onnx.ModelProto, ds: Dataset, workers: int = 1) -> PassContext:
    return PassContext(calib=ds, calib_kind="data", evaluator=Evaluator(proto, ds), workers=workers)


def group_order(analysis, scores: np.ndarray, gid: int) -> list[int]:
    atoms = [a for a in analysis.prunable_atoms(analysis.groups[gid]) if not np.isnan(scores[a])]
    return sorted(atoms, key=lambda a: (scores[a], a))


def channel_of(analysis, gid: int, atom: int) -> int:
    g = analysis.groups[gid]
    src = [s for s in g.spaces if s in analysis.ctx.source_spaces][0]
    return int(analysis.atoms[atom].elements[src][0])


def conv1_group(analysis) -> int:
    return next(g.id for g in analysis.groups if g.sources == ["conv1"])


# ---------------------------------------------------------------------------- thinet


@pytest.mark.parametrize("dead,unused", [(2, None), (None, 4), (2, 4)])
def test_thinet_picks_zero_contribution_channels_first(dead, unused):
    proto = tiny(3, dead=dead, unused=unused)
    model = Model(proto)
    analysis = analyze(model)
    scores, stats = get_criterion("thinet").score(analysis, model, context(proto, dataset(proto, False)))
    gid = conv1_group(analysis)
    order = group_order(analysis, scores, gid)
    want = {c for c in (dead, unused) if c is not None}
    first = [channel_of(analysis, gid, a) for a in order[: len(want)]]
    assert set(first) == want
    assert all(scores[a] < 1e-9 for a in order[: len(want)])
    assert scores[order[len(want)]] > 1e-6
    assert stats["thinet"]["groups_measured"] == 2 and stats["thinet"]["fallback_l1_groups"] == 0


def test_thinet_loss_is_the_energy_lost_at_the_consumer():
    """Every position is sampled (8x8 < rows cap), so E(T_t) is exact: compare with the
    output change of Conv2 when the first t channels are zeroed."""
    proto = tiny(5)
    model = Model(proto)
    analysis = analyze(model)
    ds = dataset(proto, False)
    scores, _ = get_criterion("thinet").score(analysis, model, context(proto, ds))
    gid = conv1_group(analysis)
    order = group_order(analysis, scores, gid)
    tap = Tap(proto, ["r1"])
    r = np.concatenate([tap.run(b)["r1"] for b in ds.batches]).astype(np.float64)
    w2 = next(t for t in proto.graph.initializer if t.name == "w2")
    w = onnx.numpy_helper.to_array(w2)[:, :, 0, 0].astype(np.float64)
    full = np.einsum("oc,nchw->nohw", w, r)
    for t in range(1, len(order) + 1):
        chans = [channel_of(analysis, gid, a) for a in order[:t]]
        lost = np.einsum("oc,nchw->nohw", w[:, chans], r[:, chans])
        want = float((lost ** 2).sum() / (full ** 2).sum())
        np.testing.assert_allclose(scores[order[t - 1]], want, rtol=1e-6, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 9), st.integers(0, 10_000))
def test_greedy_energy_is_greedy(n, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n + 2))
    m = a @ a.T
    order, losses = cg.greedy_energy(m, list(range(n)))
    assert sorted(order) == list(range(n))
    for t in range(n):
        chosen = order[: t + 1]
        assert losses[t] == pytest.approx(m[np.ix_(chosen, chosen)].sum(), rel=1e-9, abs=1e-9)
        rest = [j for j in range(n) if j not in order[:t]]
        best = min(m[np.ix_(order[:t] + [j], order[:t] + [j])].sum() for j in rest)
        assert losses[t] == pytest.approx(best, rel=1e-9, abs=1e-9)


def test_thinet_ls_drops_a_linear_combination_first():
    proto = tiny(9, combo=True)
    model = Model(proto)
    analysis = analyze(model)
    ctx = context(proto, dataset(proto, False))
    gid = conv1_group(analysis)
    scores, stats = get_criterion("thinet-ls").score(analysis, model, ctx)  # default ridge: loss ~ ridge
    order = group_order(analysis, scores, gid)
    assert channel_of(analysis, gid, order[0]) in (0, 1, 5) and scores[order[0]] < 0.02 * scores[order[1]]
    assert stats["thinet-ls"]["groups_measured"] == 2
    scores, _ = cg.thinet_scores(analysis, model, ctx, refit=True, ridge=1e-8)
    order = group_order(analysis, scores, gid)
    assert channel_of(analysis, gid, order[0]) in (0, 1, 5) and scores[order[0]] < 1e-6 < 1e-3 < scores[order[1]]
    raw, _ = get_criterion("thinet").score(analysis, model, ctx)  # without the refit it is not free
    assert min(raw[a] for a in analysis.prunable_atoms(analysis.groups[gid])) > 1e-3


def test_thinet_ls_loss_is_the_ridge_refit_objective():
    """Oracle: the cumulative loss equals, for every prefix of the order, the increase of
    min ‖[X_keep 1]θ − XW‖² + λ‖θ_W‖² over its value with every channel, / centred ‖XW‖²."""
    proto = tiny(4)
    model = Model(proto)
    analysis = analyze(model)
    ds = dataset(proto, False)
    scores, _ = get_criterion("thinet-ls").score(analysis, model, context(proto, ds))
    gid = conv1_group(analysis)
    order = group_order(analysis, scores, gid)
    tap = Tap(proto, ["r1"])
    r = np.concatenate([tap.run(b)["r1"] for b in ds.batches]).astype(np.float64)
    x = r.transpose(0, 2, 3, 1).reshape(-1, 6)
    w = onnx.numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == "w2"))[:, :, 0, 0].T
    y = x @ w.astype(np.float64)
    lam = cg.THINET_RIDGE * float(np.mean(np.diag(x.T @ x)))

    def objective(keep: list[int]) -> float:
        a = np.hstack([x[:, keep], np.ones((len(x), 1))])
        reg = a.T @ a + np.diag([lam] * len(keep) + [0.0])
        theta = np.linalg.solve(reg, a.T @ y)
        return float(((a @ theta - y) ** 2).sum() + lam * (theta[:-1] ** 2).sum())

    energy = float(((y - y.mean(0)) ** 2).sum())
    j0 = objective(list(range(6)))
    for t in range(1, len(order)):
        gone = {channel_of(analysis, gid, a) for a in order[:t]}
        want = (objective([c for c in range(6) if c not in gone]) - j0) / energy
        np.testing.assert_allclose(scores[order[t - 1]], want, rtol=1e-6, atol=1e-9)


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 5), st.integers(1, 4), st.integers(0, 10_000))
def test_refit_downdates_match_direct_ridge_solves(n_atoms, block, seed):
    """Blocks of several variables per atom (a KxK consumer): every greedy step's loss equals
    the direct ridge objective on the variables left, and each step is the best one."""
    rng = np.random.default_rng(seed)
    v, o, rows = n_atoms * block, 3, 40
    x = rng.standard_normal((rows, v)) @ rng.standard_normal((v, v)) + rng.standard_normal(v)
    w = rng.standard_normal((v, o))
    cons = cg._Consumer(cg.Terminal("c", "Conv", 0, 0, "t", 1, n_atoms), w, block, None, cg.Gram())
    cons.gram.update(x)
    lam = 1e-2 * float(np.mean(np.diag(x.T @ x)))
    y = x @ w

    def objective(keep_atoms: list[int]) -> float:
        cols = [a * block + k for a in keep_atoms for k in range(block)]
        a = np.hstack([x[:, cols], np.ones((rows, 1))])
        theta = np.linalg.solve(a.T @ a + np.diag([lam] * len(cols) + [0.0]), a.T @ y)
        return float(((a @ theta - y) ** 2).sum() + lam * (theta[:-1] ** 2).sum())

    energy = float(((y - y.mean(0)) ** 2).sum())
    order, losses = cg.greedy_refit([cg._Refit(cons, np.repeat(np.arange(n_atoms), block), 1e-2)],
                                    list(range(n_atoms)))
    j0 = objective(list(range(n_atoms)))
    for t in range(1, n_atoms):
        left = [a for a in range(n_atoms) if a not in order[:t]]
        assert losses[t - 1] == pytest.approx((objective(left) - j0) / energy, rel=1e-6, abs=1e-9)
        prior = left + [order[t - 1]]
        best = min(objective([a for a in prior if a != b]) for b in prior)
        assert losses[t - 1] == pytest.approx((best - j0) / energy, rel=1e-6, abs=1e-9)
    # two steps: each atom's loss is measured on top of its step's start (a joint rank-k downdate)
    order, losses = cg.greedy_refit([cg._Refit(cons, np.repeat(np.arange(n_atoms), block), 1e-2)],
                                    list(range(n_atoms)), steps=2)
    first = -(-n_atoms // 2)
    for t, a in enumerate(order):
        start = list(range(n_atoms)) if t < first else [b for b in range(n_atoms) if b not in order[:first]]
        want = (objective([b for b in start if b != a]) - j0) / energy
        assert losses[t] == pytest.approx(want, rel=1e-6, abs=1e-9)


# ---------------------------------------------------------------------------- car


def brute_force_greedy(proto: onnx.ModelProto, ds: Dataset, gid: int) -> list[int]:
    """CAR's greedy, the slow way: really prune every candidate set and run it."""
    ref = run(proto, {"x": np.concatenate([b["x"] for b in ds.batches])})[0].astype(np.float64)

    def measure(removed: list[int]) -> tuple[float, float]:
        work = Model(proto)
        an = analyze(work)
        apply_removal(work, an, removed)
        out = run(work.to_onnx(), {"x": np.concatenate([b["x"] for b in ds.batches])})[0].astype(np.float64)
        cos = float(np.mean((out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))))
        acc = float(np.mean(out.argmax(1) == ds.labels)) if ds.labels is not None else cos
        return acc, cos

    a0, c0 = measure([])

    def loss(removed: list[int]) -> float:
        a, c = measure(removed)
        return c0 - c if ds.labels is None else (a0 - a) + (c0 - c) / (4 * N)

    an = analyze(Model(proto))
    left = list(an.prunable_atoms(an.groups[gid]))
    order: list[int] = []
    while len(left) > 1:  # a conv cannot lose every channel; the last one is what is left
        best = min(left, key=lambda a: (loss(order + [a]), a))
        order.append(best)
        left.remove(best)
    return order + left


@pytest.mark.parametrize("labels", [True, False])
def test_car_exact_greedy_matches_brute_force(labels):
    proto = tiny(7)
    ds = dataset(proto, labels)
    model = Model(proto)
    analysis = analyze(model)
    scores, stats = cg.car_scores(analysis, model, context(proto, ds), fraction=1.0, max_candidates=99,
                                  rounds=99, max_evaluations=10 ** 6)
    assert stats["car"]["metric"] == ("accuracy" if labels else "cosine")
    assert stats["car"]["evaluations"] == 6 * 7 // 2 + 4 * 5 // 2
    for g in analysis.groups:
        if analysis.prunable_atoms(g):
            assert group_order(analysis, scores, g.id) == brute_force_greedy(proto, ds, g.id)


def test_car_bounded_by_preselection_and_budget():
    proto = tiny(7)
    ds = dataset(proto, True)
    model = Model(proto)
    analysis = analyze(model)
    l1, _ = get_criterion("l1").score(analysis, model, context(proto, ds))
    scores, stats = cg.car_scores(analysis, model, context(proto, ds), fraction=0.5, max_candidates=2,
                                  rounds=2, max_evaluations=3)
    assert stats["car"]["evaluations"] <= 3 + 1
    gid = conv1_group(analysis)
    evaluated = set(group_order(analysis, scores, gid)[:2])
    assert evaluated <= set(sorted(analysis.prunable_atoms(analysis.groups[gid]), key=lambda a: (l1[a], a))[:2])
    # atoms not evaluated rank after every evaluated one, in l1 order
    rest = group_order(analysis, scores, gid)[2:]
    assert rest == sorted(rest, key=lambda a: (l1[a], a))


def test_car_workers_are_deterministic():
    proto = tiny(11)
    ds = dataset(proto, True)
    model = Model(proto)
    analysis = analyze(model)
    one, s1 = cg.car_scores(analysis, model, context(proto, ds, workers=1), fraction=1.0, rounds=3)
    two, s2 = cg.car_scores(analysis, model, context(proto, ds, workers=2), fraction=1.0, rounds=3)
    np.testing.assert_array_equal(one, two)
    assert s2["car"]["sweep"]["workers"] == 2 and s1["car"]["sweep"]["workers"] == 1


# ---------------------------------------------------------------------------- through the pass


@pytest.mark.parametrize("criterion", ["car", "thinet", "thinet-ls"])
def test_without_data_one_line_usage_error(criterion):
    with pytest.raises(UsageError) as exc:
        run_passes(tiny(), [f"prune-channels:criterion={criterion}"], ctx=PassContext())
    msg = str(exc.value)
    assert "\n" not in msg and "calibration data" in msg and criterion in msg


@pytest.mark.parametrize("criterion", ["car", "thinet", "thinet-ls"])
def test_pass_prunes_the_dead_channel(criterion):
    proto = tiny(3, dead=2)
    ds = dataset(proto, True)
    out, records = run_passes(proto, [f"prune-channels:ratio=0.2,criterion={criterion},latency-guard=false,round-to=1"],
                              ctx=context(proto, ds))
    onnx.checker.check_model(out, full_check=True)
    w_name = next(n.input[1] for n in out.graph.node if n.name == "conv1")
    w1 = next(onnx.numpy_helper.to_array(t) for t in out.graph.initializer if t.name == w_name)
    assert w1.shape[0] == 5 and not np.any(np.all(w1 == 0, axis=(1, 2, 3)))  # the dead filter is the one gone
    x = np.concatenate([b["x"] for b in ds.batches])
    assert run(out, {"x": x})[0].shape == (N, 3)
    assert criterion in records[0].stats


def test_car_sample_subset_keeps_reference_and_labels_aligned():
    proto = tiny(7)
    ds = dataset(proto, True)
    ev = Evaluator(proto, ds)
    batches, reference, labels = cg._sample(ds.batches, ev.reference, ds.labels, 12, seed=3)
    assert sum(len(b["x"]) for b in batches) == 12 and len(labels) == 12
    x_all = np.concatenate([b["x"] for b in ds.batches])
    for b, r in zip(batches, reference):
        np.testing.assert_allclose(run(proto, b)[0], r["y"], rtol=1e-5, atol=1e-6)
    chosen = [int(np.flatnonzero((x_all == s).all(axis=(1, 2, 3)))[0]) for b in batches for s in b["x"]]
    assert chosen == sorted(set(chosen)) and list(ds.labels[chosen]) == list(labels)


@pytest.mark.zoo
@pytest.mark.slow
def test_zoo_mobilenetv2_every_group_measured(zoo):
    """On a real network every prunable group has a terminal consumer that thinet measures
    and CAR masks (no l1 fallback), and CAR stays within its evaluation budget."""
    from onnxprune.api import prepare_data
    from onnxprune.model import load_model

    proto = load_model(zoo / "models" / "mobilenetv2.onnx")
    plan = prepare_data(proto, data=str(zoo / "data" / "imagenet-sample"), recipe="torchvision", limit=48,
                        calib_limit=24, batch_size=8)
    model = Model(proto)
    analysis = analyze(model)
    prunable = [g for g in analysis.groups if analysis.prunable_atoms(g)]
    for name in ("thinet", "thinet-ls"):
        scores, stats = get_criterion(name).score(analysis, model, plan.ctx)
        assert stats[name]["groups_measured"] == len(prunable) and stats[name]["fallback_l1_groups"] == 0
        assert not any(np.isnan(scores[a]) for g in prunable for a in analysis.prunable_atoms(g))
    scores, stats = cg.car_scores(analysis, model, plan.ctx, max_evaluations=len(prunable), max_samples=8)
    assert stats["car"]["evaluations"] <= len(prunable) and stats["car"]["groups_evaluated"] == len(prunable)
    assert not any(np.isnan(scores[a]) for g in prunable for a in analysis.prunable_atoms(g))
