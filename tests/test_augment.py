"""Flip-augmented calibration rows for the refit (prune-channels:augment=flip, reconstruct.augmented_views)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper
from onnxprune.passes import prune_channels as pc

from _support.graphgen import random_cnn
from _support.oracles import with_dead_atoms
from onnxprune import reconstruct as rc
from onnxprune.api import run_passes
from onnxprune.channels import analyze, apply_removal
from onnxprune.context import PassContext
from onnxprune.data import Dataset, load_dataset
from onnxprune.errors import UsageError
from onnxprune.model import Model, normalize
from onnxprune.testing import make_model, run, vinfo


def _outputs(model: onnx.ModelProto, data: Dataset) -> list[np.ndarray]:
    return [np.concatenate(ys) for ys in zip(*(run(model, b) for b in data.batches))]


def _assert_same(out: onnx.ModelProto, ref: onnx.ModelProto, data: Dataset, tol: float = 1e-4) -> None:
    onnx.checker.check_model(out, full_check=True)
    for want, got in zip(_outputs(ref, data), _outputs(out, data)):  # onnxruntime runs both
        scale = max(float(np.abs(want).max()), 1.0)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000))
def test_flip_refit_of_dead_channels_leaves_outputs_unchanged(seed):
    """Random CNN, random prunable atoms made exactly zero and removed, every consumer refit by
    ridge-0 least squares on the calibration batches and their mirror images: the kept channels
    reproduce every target exactly, so the outputs do not move (1e-4), on the data and on its flip."""
    dead, _, chosen = with_dead_atoms(random_cnn(seed), np.random.default_rng(seed))
    data = load_dataset(dead, None, limit=16, batch_size=4, seed=seed % 97)
    work = Model(dead)
    an = analyze(work)
    pruned = pc.removed_indices(an, chosen)
    apply_removal(work, an, chosen)
    work.refresh_shapes()
    only, axes = pc.refit_targets(an, pruned)
    rep = rc.reconstruct(work, dead, pruned, data, rc.Options("ls", 0.0, 4096, augment="flip"), only=only, axes=axes)
    assert rep.get("views", 2 * len(data.batches)) == 2 * len(data.batches)
    out = work.to_onnx()
    _assert_same(out, dead, data)
    mirrored = Dataset([{k: v[..., ::-1].copy() for k, v in b.items()} for b in data.batches], None, "flip")
    _assert_same(out, dead, mirrored)


def _dead_cnn() -> onnx.ModelProto:
    """X[N,3,8,8] ─Conv 3x3 (channels 2, 5 exactly zero)─▶ Relu ─▶ h[8] ─Conv 3x3 + bias─▶ Y[N,4,8,8]"""
    rng = np.random.default_rng(1)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32)
    w1[[2, 5]], b1[[2, 5]] = 0.0, 0.0
    inits = {"w1": w1, "b1": b1, "w2": rng.standard_normal((4, 8, 3, 3)).astype(np.float32),
             "b2": rng.standard_normal(4).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["X", "w1", "b1"], ["p"], name="c1", pads=[1] * 4),
             helper.make_node("Relu", ["p"], ["h"], name="r1"),
             helper.make_node("Conv", ["h", "w2", "b2"], ["Y"], name="c2", pads=[1] * 4)]
    return normalize(make_model(nodes, [vinfo("X", ["N", 3, 8, 8])], [vinfo("Y", ["N", 4, 8, 8])], inits))


def test_pass_flip_prunes_dead_channels_losslessly():
    model = _dead_cnn()
    data = load_dataset(model, None, limit=24, batch_size=4, seed=0)
    spec = "prune-channels:ratio=0.25,round-to=1,latency-guard=false,criterion=l1,reconstruct=ls,ridge=0,augment=flip"
    out, rec = run_passes(model, [spec], ctx=PassContext(calib=data, calib_kind="data"))
    st_ = rec[0].stats
    assert rec[0].modified and st_["channels_removed"] == 2
    assert st_["reconstruction"]["augment"] == "flip" and st_["reconstruction"]["views"] == 2 * len(data.batches)
    [layer] = [ln for ln in st_["reconstruction"]["layers"] if ln["name"] == "c2"]
    # the sliced weights are already exact: the held-out choice may keep them (bias only, a tie)
    assert layer["fit"] in ("conv", "bias") and layer["rel_error_after"] < 1e-8
    w2 = next(onnx.numpy_helper.to_array(t) for t in out.graph.initializer if t.dims[:2] == [4, 6])
    assert w2.shape == (4, 6, 3, 3)
    _assert_same(out, model, data)


def test_flipped_copy_in_its_originals_fold(monkeypatch):
    """Batches of 3 and 1 images, every row sampled: the even fold holds the 3 images and their
    mirrors (2·3·64 rows), the odd fold the 1 and its mirror (2·64). Folds by view parity would
    give 4·64 each (the mirror of batch 0 judged against the fit on batch 0)."""
    model = _dead_cnn()
    rng = np.random.default_rng(0)
    data = Dataset([{"X": rng.standard_normal((n, 3, 8, 8)).astype(np.float32)} for n in (3, 1)], None, "t")
    views = rc.augmented_views(data.batches, "flip")
    assert [src for src, _ in views] == [0, 0, 1, 1]
    for (src, feed), (src2, flipped) in zip(views[::2], views[1::2]):
        assert src == src2 and rc.fold_of(src) == rc.fold_of(src2)
        np.testing.assert_array_equal(flipped["X"], feed["X"][:, :, :, ::-1])
    seen: list[tuple[int, int]] = []
    real = rc.held_out_ridge

    def spy(folds, ridge, theta0, *rest):
        seen.append((folds[0].rows, folds[1].rows))
        return real(folds, ridge, theta0, *rest)

    monkeypatch.setattr(rc, "held_out_ridge", spy)
    work = Model(model)
    an = analyze(work)
    atoms = [a for a in range(len(an.atoms)) if 2 in an.atoms[a].elements.get(an.ctx.by_tensor["h"].id, [])]
    pruned = pc.removed_indices(an, atoms)
    apply_removal(work, an, atoms)
    work.refresh_shapes()
    only, axes = pc.refit_targets(an, pruned)
    rc.reconstruct(work, model, pruned, data, rc.Options("ls", 0.0, 1 << 20, augment="flip"), only=only, axes=axes)
    assert seen == [(2 * 3 * 64, 2 * 64)]


def _gemm() -> onnx.ModelProto:
    """X[N,6] ─Gemm─▶ Relu ─▶ h[8] ─Gemm─▶ Y[N,3]"""
    rng = np.random.default_rng(2)
    inits = {"w1": rng.standard_normal((6, 8)).astype(np.float32), "w2": rng.standard_normal((8, 3)).astype(np.float32)}
    nodes = [helper.make_node("Gemm", ["X", "w1"], ["p"], name="g1"), helper.make_node("Relu", ["p"], ["h"], name="r"),
             helper.make_node("Gemm", ["h", "w2"], ["Y"], name="g2")]
    return normalize(make_model(nodes, [vinfo("X", ["N", 6])], [vinfo("Y", ["N", 3])], inits))


@pytest.mark.parametrize("case", ["2d", "width1"])
def test_non_image_input_refused(case):
    if case == "2d":
        model = _gemm()
        data = load_dataset(model, None, limit=8, batch_size=4, seed=0)
    else:
        model = _dead_cnn()
        data = Dataset([{"X": np.zeros((4, 3, 8, 1), np.float32)}], None, "t")
    spec = "prune-channels:ratio=0.25,round-to=1,latency-guard=false,reconstruct=ls,augment=flip"
    with pytest.raises(UsageError) as exc:
        run_passes(model, [spec], ctx=PassContext(calib=data, calib_kind="data"))
    msg = str(exc.value)
    assert "\n" not in msg and "'X'" in msg and "augment=flip" in msg


def test_channels_last_input_refused():
    from onnxprune.reconstruct import check_augment

    with pytest.raises(UsageError, match="looks channels-last"):
        check_augment([{"X": np.zeros((2, 8, 8, 3), np.float32)}], "flip")
    check_augment([{"X": np.zeros((2, 3, 8, 8), np.float32)}], "flip")  # NCHW passes


def test_unknown_augment_refused():
    with pytest.raises(UsageError, match="augment must be one of none, flip"):
        pc.Options(augment="rotate")  # type: ignore[arg-type]
