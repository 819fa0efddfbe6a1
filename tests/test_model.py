"""Loading, normalising and atomic saving."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxprune.errors import ModelError, UnsupportedError
from onnxprune.model import Model, load_model, normalize, save_model
from onnxprune.testing import make_model, random_feeds, run, vinfo


def _const_identity_model() -> onnx.ModelProto:
    """X ─Conv(W from Constant node, via Identity)─▶ Y, plus an unused initializer."""
    w = np.arange(12, dtype=np.float32).reshape(3, 1, 2, 2) / 10
    nodes = [
        helper.make_node("Constant", [], ["w0"], value=numpy_helper.from_array(w)),
        helper.make_node("Identity", ["w0"], ["w1"]),
        helper.make_node("Conv", ["X", "w1"], ["Y"]),
    ]
    return make_model(nodes, [vinfo("X", [1, 1, 4, 4])], [vinfo("Y", [1, 3, 3, 3])], {"unused": np.zeros(3, np.float32)})


def test_normalize_constants_identity_unused():
    m = _const_identity_model()
    n = normalize(m)
    assert [node.op_type for node in n.graph.node] == ["Conv"]
    assert [t.name for t in n.graph.initializer] == ["w0"]
    assert all(node.name for node in n.graph.node)
    feeds = random_feeds(m)
    np.testing.assert_array_equal(run(n, feeds)[0], run(m, feeds)[0])
    assert len(m.graph.node) == 3  # the argument is untouched


def test_ir3_initializers_as_inputs_lifted():
    m = make_model([helper.make_node("Add", ["X", "b"], ["Y"])], [vinfo("X", [2]), vinfo("b", [2])],
                   [vinfo("Y", [2])], {"b": np.ones(2, np.float32)}, opset=7)
    m.ir_version = 3
    n = normalize(m)
    assert n.ir_version == 4 and [i.name for i in n.graph.input] == ["X"]


def test_load_errors(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        load_model(tmp_path / "missing.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        load_model(tmp_path / "empty.onnx")
    (tmp_path / "text.onnx").write_text("hello, I am not a model\n" * 10)
    with pytest.raises(ModelError, match="not an ONNX model"):
        load_model(tmp_path / "text.onnx")
    good = _const_identity_model().SerializeToString()
    (tmp_path / "trunc.onnx").write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelError):
        load_model(tmp_path / "trunc.onnx")
    old = make_model([helper.make_node("Relu", ["X"], ["Y"])], [vinfo("X", [2])], [vinfo("Y", [2])], opset=6)
    onnx.save(old, tmp_path / "old.onnx")
    with pytest.raises(UnsupportedError, match="opset 6"):
        load_model(tmp_path / "old.onnx")


def test_save_atomic_and_external_roundtrip(tmp_path):
    m = normalize(_const_identity_model())
    p = save_model(m, tmp_path / "a.onnx")
    assert onnx.load(p).SerializeToString() == m.SerializeToString()
    q = save_model(m, tmp_path / "b.onnx", external_data=True)
    assert (tmp_path / "b.onnx.data").exists()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".onnxprune-")]  # no temp leftovers
    back = load_model(q)
    feeds = random_feeds(m)
    np.testing.assert_array_equal(run(back, feeds)[0], run(m, feeds)[0])
    # the in-memory model is unchanged by saving with external data
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in m.graph.initializer)


def test_external_data_missing_is_model_error(tmp_path):
    m = normalize(_const_identity_model())
    save_model(m, tmp_path / "b.onnx", external_data=True)
    os.remove(tmp_path / "b.onnx.data")
    with pytest.raises(ModelError, match="external data"):
        load_model(tmp_path / "b.onnx")


def test_model_roundtrip_keeps_metadata():
    m = normalize(_const_identity_model())
    m.producer_name = "me"
    m.metadata_props.add(key="k", value="v")
    out = Model(m).to_onnx()
    assert out.producer_name == "me" and out.metadata_props[0].value == "v"
    assert out.opset_import == m.opset_import and out.ir_version == m.ir_version


def test_zoo_models_load(zoo):
    for name in ["squeezenet1.1", "mobilenetv2", "efficientnet-lite0", "mnist-8", "minilm/model"]:
        m = load_model(zoo / "models" / f"{name}.onnx")
        assert not any(n.op_type == "Constant" and n.attribute[0].name == "value" for n in m.graph.node)


# --- odd exports -------------------------------------------------------------------


def _conv_model(batch_dim: int | str = 1) -> onnx.ModelProto:
    """X[b, 3, 6, 6] ─Conv(8)─Relu─Conv(4)─▶ Y."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["X", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "W2"], ["Y"], pads=[1, 1, 1, 1], name="conv2")]
    inits = {"W1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
             "B1": rng.standard_normal(8).astype(np.float32),
             "W2": rng.standard_normal((4, 8, 3, 3)).astype(np.float32)}
    return make_model(nodes, [vinfo("X", [batch_dim, 3, 6, 6])], [vinfo("Y", [batch_dim, 4, 6, 6])], inits)


def test_negative_batch_dim_becomes_symbolic_and_passes_run(tmp_path):
    """Older Paddle exports write the dynamic batch as dim_value -1: every pass used to
    crash with 'negative dimensions are not allowed'."""
    from onnxprune.api import run_passes

    m = _conv_model(batch_dim=1)
    for v in (m.graph.input[0], m.graph.output[0]):
        v.type.tensor_type.shape.dim[0].dim_value = -1
    onnx.save(m, tmp_path / "neg.onnx")
    loaded = load_model(tmp_path / "neg.onnx")
    dim = loaded.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "batch" and not dim.HasField("dim_value")
    out, records = run_passes(loaded, ["fold-bn", "prune-channels:ratio=0.5,round-to=4,latency-guard=false"])
    assert records[1].modified
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    feeds = {"X": np.ones((2, 3, 6, 6), np.float32)}
    assert run(out, feeds)[0].shape == (2, 4, 6, 6)


def test_initializer_listed_as_input_is_kept_with_its_new_shape():
    """IR >= 4: an initializer that is also a graph input is an overridable default and
    part of the signature; onnx-graphsurgeon drops such inputs on export."""
    from onnxprune.api import run_passes

    m = _conv_model()
    m.graph.input.append(vinfo("B1", [8]))
    out = Model(m).to_onnx()
    assert [i.name for i in out.graph.input] == ["X", "B1"]
    pruned, records = run_passes(m, ["prune-channels:ratio=0.5,round-to=4,latency-guard=false"])
    assert records[0].modified
    inputs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in pruned.graph.input}
    b1 = next(t for t in pruned.graph.initializer if t.name in inputs and t.name != "X")
    assert inputs[b1.name] == list(b1.dims) and b1.dims[0] < 8
    onnx.checker.check_model(pruned, full_check=True)


def _loop_model() -> onnx.ModelProto:
    """X ─Loop(3 trips; body: acc ← acc · W)─▶ Y, W an outer-scope initializer."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["acc_in", "W"], ["acc_out"]), helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body", [vinfo("i", [], onnx.TensorProto.INT64), vinfo("cond_in", [], onnx.TensorProto.BOOL), vinfo("acc_in", [1, 4])],
        [vinfo("cond_out", [], onnx.TensorProto.BOOL), vinfo("acc_out", [1, 4])])
    nodes = [helper.make_node("Loop", ["trips", "cond", "X"], ["Y"], body=body, name="loop")]
    inits = {"W": (np.eye(4) * 0.5).astype(np.float32), "trips": np.array(3, np.int64), "cond": np.array(True)}
    return make_model(nodes, [vinfo("X", [1, 4])], [vinfo("Y", [1, 4])], inits)


def test_loop_body_does_not_get_the_outer_weight():
    m = normalize(_loop_model())
    out = Model(m).to_onnx()
    body = out.graph.node[0].attribute[0].g
    assert [t.name for t in body.initializer] == []
    assert "W" in {t.name for t in out.graph.initializer}
    feeds = {"X": np.ones((1, 4), np.float32)}
    np.testing.assert_allclose(run(out, feeds)[0], run(m, feeds)[0])


# --- internals ------------------------------------------------------------------------


def test_to_onnx_is_cached_per_version_and_unedited_export_is_the_source():
    m = normalize(_conv_model())
    model = Model(m)
    first = model.to_onnx()
    assert first is m and model.exports == 0  # nothing edited: no export, no copy
    model.touch()
    a = model.to_onnx()
    assert model.to_onnx() is a and model.exports == 1
    model.touch()
    assert model.to_onnx() is not a and model.exports == 2


def test_model_shares_the_weights_of_its_proto():
    """Model.__init__ used to copy the whole model (and its shape-inferred twin): the
    working graph now reads the source's own tensors, loaded on first use."""
    m = normalize(_conv_model())
    big = numpy_helper.from_array(np.zeros((64, 64, 3, 3), np.float32), "W_big")  # 147 KiB: stubbed in the skeleton
    m.graph.initializer.append(big)
    m.graph.node.append(helper.make_node("Conv", ["X", "W_big"], ["Z"], name="conv_big"))
    model = Model(m)
    # Change the source after the fact: a graph that shares it sees the change.
    src = next(t for t in m.graph.initializer if t.name == "W_big")
    src.raw_data = np.ones((64, 64, 3, 3), np.float32).tobytes()
    const = model.graph.tensors()["W_big"]
    assert float(np.asarray(const.values).sum()) == 64 * 64 * 9


# --- saving -------------------------------------------------------------------------


def test_external_save_is_aligned_streamed_and_leaves_no_temporaries(tmp_path):
    m = normalize(_conv_model())
    p = save_model(m, tmp_path / "m.onnx", external_data=True)
    stub = onnx.load(str(p), load_external_data=False)
    offsets = [int(e.value) for t in stub.graph.initializer for e in t.external_data if e.key == "offset"]
    assert offsets and all(o % 4096 == 0 for o in offsets)
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]
    feeds = random_feeds(m)
    np.testing.assert_array_equal(run(load_model(p), feeds)[0], run(m, feeds)[0])


def test_check_writable_refuses_before_any_work(tmp_path):
    from onnxprune.errors import UsageError
    from onnxprune.model import check_writable

    with pytest.raises(UsageError, match="does not exist"):
        check_writable(tmp_path / "nope" / "m.onnx")
    (tmp_path / "adir").mkdir()
    with pytest.raises(UsageError, match="not a file"):
        check_writable(tmp_path / "adir")
    assert check_writable(tmp_path / "m.onnx") == tmp_path / "m.onnx"
    assert os.listdir(tmp_path) == ["adir"]  # the probe file is gone
    if os.geteuid() != 0:  # root writes through permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            with pytest.raises(UsageError, match="cannot write"):
                check_writable(ro / "m.onnx")
        finally:
            ro.chmod(0o755)


def test_sigterm_during_save_removes_temporaries(tmp_path):
    """A save interrupted by SIGTERM leaves neither the target nor temporary files."""
    import signal
    import subprocess
    import sys

    m = normalize(_conv_model())
    onnx.save(m, tmp_path / "src.onnx")
    code = f"""
import os, signal, onnx
import onnxprune.model as om
real = om.write_external
def interrupted(model, path, **kw):
    real(model, path, **kw)          # the temporaries exist now
    os.kill(os.getpid(), signal.SIGTERM)
    raise SystemExit("signal was not delivered")
om.write_external = interrupted
om.save_model(onnx.load({str(tmp_path / 'src.onnx')!r}), {str(tmp_path / 'out.onnx')!r}, external_data=True)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGTERM, proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["src.onnx"]


def test_stale_temporaries_of_a_killed_save_are_swept(tmp_path):
    m = normalize(_conv_model())
    dead = tmp_path / ".out.onnx.onnxprune-tmp-999999999"  # no such pid
    dead.write_bytes(b"half a model")
    save_model(m, tmp_path / "out.onnx")
    assert sorted(os.listdir(tmp_path)) == ["out.onnx"]


def test_nfnet_weight_standardisation_runs_through_every_pass(monkeypatch):
    """NFNet standardises each conv weight with a BatchNormalization in training mode
    (batch statistics of the weight itself). Small weights fold into constants on load;
    big ones (over the folding limit, as in timm's NFNets) stay as nodes, and the passes
    must leave them be, neither fold them as inference BNs nor fail."""
    import onnxprune.model as om
    from onnxprune.api import run_passes

    monkeypatch.setattr(om, "FOLD_SIZE_LIMIT", 0)  # as if every weight were over the limit
    rng = np.random.default_rng(0)

    def standardised(p: str, co: int, k: int) -> list[onnx.NodeProto]:
        return [helper.make_node("Reshape", [f"{p}W", f"{p}flat"], [f"{p}w3"]),
                helper.make_node("BatchNormalization", [f"{p}w3", f"one{co}", f"zero{co}", f"zero{co}", f"one{co}"],
                                 [f"{p}wn", f"{p}rm", f"{p}rv"], training_mode=1),
                helper.make_node("Reshape", [f"{p}wn", f"{p}shape"], [f"{p}Ws"])]

    nodes = [*standardised("a", 8, 27), helper.make_node("Conv", ["X", "aWs"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]), *standardised("b", 4, 72),
             helper.make_node("Conv", ["r1", "bWs"], ["Y"], pads=[1, 1, 1, 1])]
    inits = {"aW": rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "aflat": np.array([1, -1, 27], np.int64),
             "ashape": np.array([8, 3, 3, 3], np.int64), "bW": rng.standard_normal((4, 8, 3, 3)).astype(np.float32),
             "bflat": np.array([1, -1, 72], np.int64), "bshape": np.array([4, 8, 3, 3], np.int64),
             "one8": np.ones(8, np.float32), "zero8": np.zeros(8, np.float32),
             "one4": np.ones(4, np.float32), "zero4": np.zeros(4, np.float32)}
    m = make_model(nodes, [vinfo("X", [1, 3, 6, 6])], [vinfo("Y", [1, 4, 6, 6])], inits, opset=15)
    loaded = normalize(m)
    assert [n.op_type for n in loaded.graph.node].count("BatchNormalization") == 2
    feeds = random_feeds(m)
    for spec in ["fold-bn", "prune-channels:ratio=0.5,round-to=4,latency-guard=false"]:
        out, records = run_passes(loaded, [spec])
        assert [n.op_type for n in out.graph.node].count("BatchNormalization") == 2, spec
        np.testing.assert_allclose(run(out, feeds)[0], run(m, feeds)[0], rtol=1e-4, atol=1e-4)


def test_streamed_write_parses_to_the_same_model():
    """save_model writes one initializer at a time (SerializeToString would hold the
    whole file in memory once more); the bytes must parse to the very same model."""
    import io

    from onnxprune.model import write_streamed

    for m in (normalize(_conv_model()), normalize(_loop_model())):
        m.producer_name, m.doc_string = "me", "streamed"
        buf = io.BytesIO()
        assert write_streamed(m, buf) == len(buf.getvalue())
        assert onnx.load_model_from_string(buf.getvalue()).SerializeToString() == m.SerializeToString()
