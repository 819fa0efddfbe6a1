"""Input data: random, npz/npy, IDX, image folders, recipes, batching, errors."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxprune.data import (
    PRESETS,
    Dataset,
    InputSpec,
    Recipe,
    input_specs,
    load_dataset,
    parse_recipe,
    preprocess_image,
)
from onnxprune.errors import DataError, UsageError

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


def identity_model(*inputs: tuple[str, int, list], initializers=()) -> onnx.ModelProto:
    """Each input -> Identity -> output ``<name>_out``."""
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"]) for n, _, _ in inputs]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(f"{n}_out", t, None) for n, t, _ in inputs],
        initializer=list(initializers),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def image_model(shape=("N", 3, 8, 8)) -> onnx.ModelProto:
    return identity_model(("img", TensorProto.FLOAT, list(shape)))


# ---------------------------------------------------------------------------- specs

def test_input_specs_skip_initializers_and_keep_symbolic_dims():
    w = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    m = identity_model(("x", TensorProto.FLOAT, ["batch", 3, None]), ("ids", TensorProto.INT64, [1, 5]))
    m.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [2]))  # IR<4 style
    m.graph.initializer.append(w)
    specs = input_specs(m)
    assert [s.name for s in specs] == ["x", "ids"]
    assert specs[0].shape == ("batch", 3, None) and specs[0].dtype == np.float32
    assert specs[1].shape == (1, 5) and specs[1].dtype == np.int64
    assert specs[0].describe() == "[batch,3,?]"


# ---------------------------------------------------------------------------- random

def test_random_matches_shapes_dtypes_and_is_seeded():
    m = identity_model(
        ("x", TensorProto.FLOAT, ["N", 3, "H"]),
        ("ids", TensorProto.INT64, ["N", 7]),
        ("mask", TensorProto.BOOL, ["N", 7]),
    )
    ds = load_dataset(m, None, batch_size=4, seed=3)
    assert "random" in ds.source and ds.labels is None
    assert len(ds.batches) == 1 and ds.n_samples == 4
    b = ds.batches[0]
    assert b["x"].shape == (4, 3, 1) and b["x"].dtype == np.float32
    assert b["ids"].shape == (4, 7) and b["ids"].dtype == np.int64
    assert set(np.unique(b["ids"])) <= {0, 1}
    assert b["mask"].dtype == np.bool_
    again = load_dataset(m, None, batch_size=4, seed=3).batches[0]
    other = load_dataset(m, None, batch_size=4, seed=4).batches[0]
    np.testing.assert_array_equal(b["x"], again["x"])
    assert not np.array_equal(b["x"], other["x"])


def test_random_fixed_batch_one_and_limit():
    m = identity_model(("x", TensorProto.FLOAT, [1, 2]))
    ds = load_dataset(m, None, batch_size=8, limit=5)
    assert ds.n_samples == 5 and len(ds.batches) == 5
    assert all(b["x"].shape == (1, 2) for b in ds.batches)


def test_random_rejects_recipe_and_labels():
    m = identity_model(("x", TensorProto.FLOAT, [1, 2]))
    with pytest.raises(UsageError):
        load_dataset(m, None, recipe=Recipe())
    with pytest.raises(UsageError):
        load_dataset(m, None, labels="x.npy")


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"limit": 0}, {"batch_size": 1.5}])
def test_bad_options_are_usage_errors(bad):
    m = identity_model(("x", TensorProto.FLOAT, [1, 2]))
    with pytest.raises(UsageError):
        load_dataset(m, None, **bad)


# ---------------------------------------------------------------------------- npz / npy

def test_npz_by_name_with_labels_and_batching(tmp_path):
    m = identity_model(("a", TensorProto.FLOAT, ["N", 2]), ("b", TensorProto.INT64, ["N", 3]))
    a = np.arange(14, dtype=np.float64).reshape(7, 2)
    b = np.arange(21).reshape(7, 3)
    lab = np.arange(7) % 2
    np.savez(tmp_path / "d.npz", a=a, b=b, labels=lab)
    ds = load_dataset(m, tmp_path / "d.npz", batch_size=3)
    assert [x["a"].shape[0] for x in ds.batches] == [3, 3, 1]
    assert ds.batches[0]["a"].dtype == np.float32  # cast to the input's type
    np.testing.assert_array_equal(np.concatenate([x["b"] for x in ds.batches]), b)
    np.testing.assert_array_equal(ds.labels, lab)
    assert ds.labels.dtype == np.int64 and ds.n_samples == 7
    lim = load_dataset(m, tmp_path / "d.npz", batch_size=3, limit=4)
    assert lim.n_samples == 4 and len(lim.labels) == 4


def test_npz_single_array_any_key_and_fixed_batch_wins(tmp_path):
    m = identity_model(("x", TensorProto.FLOAT, [1, 4]))
    np.savez(tmp_path / "d.npz", whatever=np.ones((3, 4), np.float32))
    ds = load_dataset(m, tmp_path / "d.npz", batch_size=16)
    assert len(ds.batches) == 3 and ds.batches[0]["x"].shape == (1, 4)


def test_npy_single_sample_without_batch_axis(tmp_path):
    m = identity_model(("x", TensorProto.FLOAT, [1, 2, 3]))
    np.save(tmp_path / "d.npy", np.ones((2, 3)))
    ds = load_dataset(m, tmp_path / "d.npy")
    assert ds.batches[0]["x"].shape == (1, 2, 3) and ds.n_samples == 1


def test_npy_needs_one_input_model(tmp_path):
    m = identity_model(("a", TensorProto.FLOAT, [1, 2]), ("b", TensorProto.FLOAT, [1, 2]))
    np.save(tmp_path / "d.npy", np.ones((1, 2)))
    with pytest.raises(DataError, match="2 inputs"):
        load_dataset(m, tmp_path / "d.npy")


def test_npz_wrong_names(tmp_path):
    m = identity_model(("a", TensorProto.FLOAT, [1, 2]), ("b", TensorProto.FLOAT, [1, 2]))
    np.savez(tmp_path / "d.npz", a=np.ones((1, 2)), c=np.ones((1, 2)))
    with pytest.raises(DataError, match=r"\['a', 'c'\].*\['a', 'b'\]"):
        load_dataset(m, tmp_path / "d.npz")


def test_shape_mismatch_names_input_expected_and_got(tmp_path):
    m = identity_model(("x", TensorProto.FLOAT, ["N", 3, 4]))
    np.save(tmp_path / "d.npy", np.ones((2, 3, 5), np.float32))
    with pytest.raises(DataError) as err:
        load_dataset(m, tmp_path / "d.npy")
    msg = str(err.value)
    assert "'x'" in msg and "[N,3,4]" in msg and "(2,3,5)" in msg and "\n" not in msg


def test_wrong_rank(tmp_path):
    m = identity_model(("x", TensorProto.FLOAT, ["N", 3, 4]))
    np.save(tmp_path / "d.npy", np.ones((3,), np.float32))
    with pytest.raises(DataError, match="expected shape"):
        load_dataset(m, tmp_path / "d.npy")


def test_fixed_batch_two_needs_a_multiple(tmp_path):
    m = identity_model(("x", TensorProto.FLOAT, [2, 3]))
    np.save(tmp_path / "d.npy", np.ones((5, 3), np.float32))
    with pytest.raises(DataError, match="fixed at 2"):
        load_dataset(m, tmp_path / "d.npy")
    np.save(tmp_path / "e.npy", np.ones((4, 3), np.float32))
    assert [b["x"].shape for b in load_dataset(m, tmp_path / "e.npy").batches] == [(2, 3), (2, 3)]


def test_non_numeric_and_non_integral_data(tmp_path):
    m = identity_model(("x", TensorProto.FLOAT, [1, 2]))
    np.save(tmp_path / "s.npy", np.array([["a", "b"]]))
    with pytest.raises(DataError, match="numeric"):
        load_dataset(m, tmp_path / "s.npy")
    mi = identity_model(("ids", TensorProto.INT64, [1, 2]))
    np.save(tmp_path / "f.npy", np.array([[1.5, 2.0]]))
    with pytest.raises(DataError, match="integers"):
        load_dataset(mi, tmp_path / "f.npy")
    np.save(tmp_path / "g.npy", np.array([[1.0, 2.0]]))
    assert load_dataset(mi, tmp_path / "g.npy").batches[0]["ids"].tolist() == [[1, 2]]


def test_missing_and_unsupported_files(tmp_path):
    m = identity_model(("x", TensorProto.FLOAT, [1, 2]))
    with pytest.raises(DataError, match="no such file"):
        load_dataset(m, tmp_path / "nope.npz")
    (tmp_path / "d.csv").write_text("1,2\n")
    with pytest.raises(DataError, match="unsupported"):
        load_dataset(m, tmp_path / "d.csv")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset(m, tmp_path / "bad.npy")


def test_recipe_with_arrays_is_a_usage_error(tmp_path):
    m = identity_model(("x", TensorProto.FLOAT, [1, 2]))
    np.save(tmp_path / "d.npy", np.ones((1, 2)))
    with pytest.raises(UsageError, match="image data only"):
        load_dataset(m, tmp_path / "d.npy", recipe=Recipe())


def test_labels_file_overrides_and_must_match(tmp_path):
    m = identity_model(("x", TensorProto.FLOAT, ["N", 2]))
    np.save(tmp_path / "d.npy", np.ones((3, 2)))
    (tmp_path / "l.txt").write_text("2\n0\n1\n")
    ds = load_dataset(m, tmp_path / "d.npy", labels=tmp_path / "l.txt", limit=2)
    assert ds.labels.tolist() == [2, 0]
    (tmp_path / "short.txt").write_text("2\n0\n")
    with pytest.raises(DataError, match="2 labels for 3 samples"):
        load_dataset(m, tmp_path / "d.npy", labels=tmp_path / "short.txt")


# ---------------------------------------------------------------------------- IDX

def write_idx(path: Path, arr: np.ndarray, code: int = 0x08) -> None:
    raw = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(">u1").tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def test_idx_images_with_labels_found_beside(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 4, 4), dtype=np.uint8)
    write_idx(tmp_path / "t-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t-labels-idx1-ubyte.gz", np.array([3, 1, 4, 1, 5], np.uint8))
    m = identity_model(("in", TensorProto.FLOAT, [1, 1, 4, 4]))
    ds = load_dataset(m, tmp_path / "t-images-idx3-ubyte.gz", batch_size=4)
    assert len(ds.batches) == 5 and ds.batches[0]["in"].shape == (1, 1, 4, 4)
    np.testing.assert_array_equal(ds.batches[2]["in"][0, 0], images[2].astype(np.float32))
    assert ds.labels.tolist() == [3, 1, 4, 1, 5]
    assert "idx" in ds.source


def test_idx_raw_files_explicit_labels_and_limit(tmp_path):
    images = np.arange(3 * 6, dtype=np.uint8).reshape(3, 2, 3)
    write_idx(tmp_path / "imgs-idx3-ubyte", images)
    write_idx(tmp_path / "mylabels-idx1-ubyte", np.array([0, 1, 2], np.uint8))
    m = identity_model(("in", TensorProto.FLOAT, ["N", 6]))
    ds = load_dataset(m, tmp_path / "imgs-idx3-ubyte", labels=tmp_path / "mylabels-idx1-ubyte", limit=2, batch_size=2)
    assert len(ds.batches) == 1
    np.testing.assert_array_equal(ds.batches[0]["in"], images[:2].reshape(2, 6))
    assert ds.labels.tolist() == [0, 1]


def test_idx_size_mismatch_and_bad_magic(tmp_path):
    write_idx(tmp_path / "x-idx3-ubyte", np.zeros((2, 5, 5), np.uint8))
    m = identity_model(("in", TensorProto.FLOAT, [1, 1, 4, 4]))
    with pytest.raises(DataError, match=r"'in'.*\[1,1,4,4\].*\(5, 5\)"):
        load_dataset(m, tmp_path / "x-idx3-ubyte")
    (tmp_path / "y-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="not an IDX"):
        load_dataset(m, tmp_path / "y-idx3-ubyte")
    write_idx(tmp_path / "z-idx3-ubyte", np.zeros((2, 4, 4), np.uint8))
    (tmp_path / "z-idx3-ubyte").write_bytes((tmp_path / "z-idx3-ubyte").read_bytes()[:-3])
    with pytest.raises(DataError, match="truncated"):
        load_dataset(m, tmp_path / "z-idx3-ubyte")


def test_idx_with_recipe_goes_through_the_image_pipeline(tmp_path):
    images = np.full((2, 4, 4), 200, np.uint8)
    write_idx(tmp_path / "x-idx3-ubyte", images)
    m = identity_model(("in", TensorProto.FLOAT, [1, 1, 4, 4]))
    r = Recipe(resize=4, crop=4, scale=1.0, mean=(100.0,), std=(50.0,), grayscale=True)
    ds = load_dataset(m, tmp_path / "x-idx3-ubyte", recipe=r)
    np.testing.assert_allclose(ds.batches[0]["in"], 2.0)


# ---------------------------------------------------------------------------- recipes

def test_presets():
    assert PRESETS["torchvision"] == Recipe()
    sq = PRESETS["caffe-bgr"]
    assert (sq.order, sq.scale, sq.mean, sq.std) == ("BGR", 1.0, (104.0, 117.0, 123.0), (1.0, 1.0, 1.0))
    ef = PRESETS["efficientnet-lite"]
    assert (ef.order, ef.scale, ef.mean, ef.std) == ("RGB", 1.0, (127.0,), (128.0,))
    raw = PRESETS["raw255"]
    assert (raw.scale, raw.mean, raw.std) == (1.0, (0.0,), (1.0,))


@pytest.mark.parametrize(
    "text, expect",
    [
        ("torchvision", Recipe()),
        ("torchvision,resize=256,crop=224", Recipe()),
        ("caffe-bgr,crop=200", Recipe(order="BGR", scale=1, mean=(104, 117, 123), std=(1, 1, 1), crop=200)),
        (
            "order=BGR,scale=1,mean=104;117;123,std=1;1;1",
            Recipe(order="BGR", scale=1, mean=(104, 117, 123), std=(1, 1, 1)),
        ),
        ("scale=1/255, layout=nhwc, grayscale=true, mean=0.5, std=0.25", Recipe(layout="NHWC", grayscale=True, mean=(0.5,), std=(0.25,))),
        ("raw255,grayscale=yes", Recipe(scale=1, mean=(0,), std=(1,), grayscale=True)),
    ],
)
def test_parse_recipe(text, expect):
    assert parse_recipe(text) == expect


def test_recipe_text_round_trips():
    for r in PRESETS.values():
        assert parse_recipe(r.to_text()) == r


@pytest.mark.parametrize(
    "text, match",
    [
        ("torchvision,size=3", "unknown key 'size'.*valid keys: resize, crop, order"),
        ("imagenet", "unknown preset 'imagenet'.*presets: torchvision"),
        ("crop=abc", "bad value for crop"),
        ("crop=-3", "bad value for crop"),
        ("order=GBR", "order must be RGB or BGR"),
        ("layout=CHW", "layout must be"),
        ("scale=0", "scale must be"),
        ("scale=x", "bad value for scale"),
        ("mean=1;2", "mean needs 1 or 3"),
        ("std=0", "non-zero"),
        ("resize=100,crop=200", "at least crop"),
        ("grayscale=maybe", "grayscale"),
        ("torchvision,grayscale=true", "grayscale images have one channel"),
        ("crop=100,crop=120", "given twice"),
        ("crop=100,torchvision", "not key=value"),
        ("", "empty"),
        ("torchvision,,crop=3", "empty"),
    ],
)
def test_parse_recipe_errors(text, match):
    with pytest.raises(UsageError, match=match):
        parse_recipe(text)


# ---------------------------------------------------------------------------- images

def gradient_rgb(w: int, h: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 10 % 256, y * 20 % 256, (x + y) * 7 % 256], axis=-1).astype(np.uint8)


def test_preprocess_one_pixel_by_hand():
    # 15x10 image, shorter side already 10 (no resize): crop 8 starts at
    # left = (15 - 8) // 2 = 3 (floored, not rounded to 4), top = (10 - 8) // 2 = 1.
    src = gradient_rgb(15, 10)
    r = Recipe(resize=10, crop=8, order="BGR", scale=0.5, mean=(1.0, 2.0, 3.0), std=(2.0, 4.0, 8.0))
    out = preprocess_image(Image.fromarray(src), r)
    assert out.shape == (3, 8, 8) and out.dtype == np.float32
    y, x = 3, 5
    pix = src[1 + y, 3 + x].astype(np.float64)  # R, G, B
    bgr = pix[::-1]
    want = (bgr * 0.5 - np.array([1.0, 2.0, 3.0])) / np.array([2.0, 4.0, 8.0])
    np.testing.assert_allclose(out[:, y, x], want, rtol=1e-6)
    nhwc = preprocess_image(Image.fromarray(src), Recipe(resize=10, crop=8, layout="NHWC"))
    assert nhwc.shape == (8, 8, 3)
    np.testing.assert_allclose(
        nhwc[y, x], (src[1 + y, 3 + x] / 255 - np.array(Recipe().mean)) / np.array(Recipe().std), rtol=1e-6
    )


def test_preprocess_resizes_the_shorter_side():
    # 30 wide x 12 tall, resize 24: 60 x 24 (longer = int(24 * 30 / 12)); a flat colour stays flat.
    im = Image.new("RGB", (30, 12), (10, 20, 30))
    out = preprocess_image(im, Recipe(resize=24, crop=20, scale=1.0, mean=(0.0,), std=(1.0,)))
    assert out.shape == (3, 20, 20)
    np.testing.assert_allclose(out[:, 7, 9], [10, 20, 30])
    # A left/right split survives in the right place: the crop is centred.
    arr = np.zeros((12, 30, 3), np.uint8)
    arr[:, 15:] = 255
    out = preprocess_image(Image.fromarray(arr), Recipe(resize=12, crop=10, scale=1.0, mean=(0.0,), std=(1.0,)))
    assert out[0, 5, 0] == 0 and out[0, 5, 9] == 255
    np.testing.assert_array_equal(out[0, 0] > 127, np.arange(10) >= 5)


def test_preprocess_upscales_bilinear():
    # 6x4 -> shorter side 8: 12x8 with Pillow's bilinear filter, then crop 8 at left 2.
    src = gradient_rgb(6, 4)
    out = preprocess_image(Image.fromarray(src), Recipe(resize=8, crop=8, scale=1.0, mean=(0.0,), std=(1.0,)))
    want = np.asarray(Image.fromarray(src).resize((12, 8), Image.BILINEAR), np.float32)[:, 2:10]
    np.testing.assert_array_equal(out, want.transpose(2, 0, 1))
    nearest = np.asarray(Image.fromarray(src).resize((12, 8), Image.NEAREST), np.float32)[:, 2:10]
    assert not np.array_equal(out, nearest.transpose(2, 0, 1))


def write_class_folders(root: Path) -> list[tuple[str, np.ndarray]]:
    written = []
    for cls, n in [("zebra", 2), ("ant", 1), ("cat", 2)]:
        (root / cls).mkdir(parents=True)
        for i in range(n):
            arr = gradient_rgb(9 + i, 8)
            Image.fromarray(arr).save(root / cls / f"img{i}.png")
            written.append((cls, arr))
    (root / "empty").mkdir()  # a class with no images still takes its index
    (root / "cat" / "notes.txt").write_text("not an image")
    return written


def test_image_class_folders(tmp_path):
    write_class_folders(tmp_path)
    r = Recipe(resize=8, crop=8)
    ds = load_dataset(image_model(), tmp_path, recipe=r, batch_size=2, progress=False)
    # sorted class folders: ant=0, cat=1, empty=2, zebra=3
    assert ds.labels.tolist() == [0, 1, 1, 3, 3]
    assert [b["img"].shape[0] for b in ds.batches] == [2, 2, 1]
    assert "4 class folders" in ds.source and ds.n_samples == 5
    first_cat = np.asarray(Image.open(tmp_path / "cat" / "img0.png"), np.float64)  # 9x8: left = 0
    want = (first_cat[2, 4] / 255 - np.array(r.mean)) / np.array(r.std)
    np.testing.assert_allclose(ds.batches[0]["img"][1][:, 2, 4], want, rtol=1e-6)
    lim = load_dataset(image_model(), tmp_path, recipe=r, limit=2)
    assert lim.labels.tolist() == [0, 1] and lim.n_samples == 2


def test_image_flat_folder_jpg_and_single_file(tmp_path):
    for i in range(3):
        Image.fromarray(gradient_rgb(12, 10)).save(tmp_path / f"{i}.jpg", quality=95)
    ds = load_dataset(image_model(), tmp_path, recipe=Recipe(resize=8, crop=8))
    assert ds.labels is None and ds.n_samples == 3
    assert np.isfinite(ds.batches[0]["img"]).all()
    one = load_dataset(image_model(), tmp_path / "1.jpg", recipe=Recipe(resize=8, crop=8))
    assert one.n_samples == 1


def test_image_default_recipe_is_torchvision(tmp_path):
    Image.new("RGB", (300, 256), (128, 128, 128)).save(tmp_path / "a.png")
    ds = load_dataset(image_model(("N", 3, 224, 224)), tmp_path)
    want = (128 / 255 - np.array(Recipe().mean)) / np.array(Recipe().std)
    np.testing.assert_allclose(ds.batches[0]["img"][0, :, 100, 100], want, rtol=1e-6)


def test_image_grayscale_nhwc(tmp_path):
    Image.new("RGB", (8, 8), (30, 60, 90)).save(tmp_path / "a.png")
    m = image_model(("N", 8, 8, 1))
    ds = load_dataset(m, tmp_path, recipe=parse_recipe("raw255,resize=8,crop=8,grayscale=true,layout=NHWC"))
    luma = np.asarray(Image.new("RGB", (1, 1), (30, 60, 90)).convert("L"))[0, 0]
    np.testing.assert_allclose(ds.batches[0]["img"], luma)


def test_image_shape_mismatch_is_named(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(DataError, match=r"'img'.*\[1,3,16,16\].*crop=8"):
        load_dataset(image_model((1, 3, 16, 16)), tmp_path, recipe=Recipe(resize=8, crop=8))
    with pytest.raises(DataError, match="1 channel"):
        load_dataset(image_model((1, 3, 8, 8)), tmp_path, recipe=parse_recipe("mnist,resize=8,crop=8"))


def test_image_errors(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(DataError, match="bad.jpg"):
        load_dataset(image_model(), tmp_path, recipe=Recipe(resize=8, crop=8))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no image files"):
        load_dataset(image_model(), empty, recipe=Recipe(resize=8, crop=8))
    mixed = tmp_path / "mixed"
    (mixed / "cls").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(mixed / "cls" / "a.png")
    Image.new("RGB", (8, 8)).save(mixed / "b.png")
    with pytest.raises(DataError, match="mixes"):
        load_dataset(image_model(), mixed, recipe=Recipe(resize=8, crop=8))
    two = identity_model(("a", TensorProto.FLOAT, [1, 3, 8, 8]), ("b", TensorProto.FLOAT, [1, 3, 8, 8]))
    with pytest.raises(DataError, match="one input"):
        load_dataset(two, mixed / "cls", recipe=Recipe(resize=8, crop=8))


def test_dataset_n_samples():
    ds = Dataset([{"x": np.zeros((2, 3))}, {"x": np.zeros((1, 3))}], None, "test")
    assert ds.n_samples == 3
    assert isinstance(InputSpec("x", (1,), np.dtype(np.float32)).dtype, np.dtype)


def test_batch_step_is_the_first_batch_size():
    from onnxprune.data import Dataset

    assert Dataset([{"x": np.zeros((4, 3)), "n": np.array(7)}, {"x": np.zeros((2, 3)), "n": np.array(7)}],
                   None, "t").batch_step == 4
    assert Dataset([], None, "t").batch_step == 1
    assert Dataset([{"n": np.array(7)}], None, "t").batch_step == 1
