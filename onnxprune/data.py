"""Input data for validation and calibration: a model's inputs fed from files or noise.

Sources (``load_dataset``):

* ``None``: seeded random data shaped like each input (symbolic dims 1, the batch dim
  ``batch_size``); floats standard normal, integers 0 or 1 (safe as ids, masks and
  token types), ``limit`` samples (default one batch).
* ``.npz``: one array per input, keyed by input name (or one array for a one-input
  model), optional ``labels`` array.  ``.npy``: one array, one-input models only.
* a folder of images: ``<root>/<class>/<img>`` (class index = position of the folder
  name in sorted order) or a flat folder (no labels), or one image file; preprocessed
  with a :class:`Recipe` through Pillow.
* MNIST-style IDX files (``*-idx3-ubyte[.gz]``), reshaped to the model's input; the
  matching ``*-labels-idx1-ubyte[.gz]`` beside it supplies labels.
* ``.txt``: one sentence a line, tokenised with ``tokenizer`` (a ``tokenizer.json``) for
  text encoders (:mod:`onnxprune.text`).

Axis 0 of every input is the sample axis.  A fixed leading dim k batches samples k at
a time (so a fixed batch of 1 wins over ``batch_size``); a symbolic one takes
``batch_size`` (the last batch may be smaller).  All batches are views of one array.
"""
from __future__ import annotations

import gzip
import math
import os
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx

from onnxprune.errors import DataError, UnsupportedError, UsageError
from onnxprune.images import PRESETS, Recipe, parse_recipe, preprocess_image  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class InputSpec:
    """One graph input: ints are fixed dims, str (dim_param) or None are symbolic."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype

    def describe(self) -> str:
        return "[" + ",".join("?" if d is None else str(d) for d in self.shape) + "]"


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs that are not initializers (IR < 4 models list weights as inputs)."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        if not vi.type.HasField("tensor_type"):
            raise UnsupportedError(f"input {vi.name!r} is not a tensor; only tensor inputs are supported")
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            raise UnsupportedError(f"input {vi.name!r} has no shape in the model; inputs must have a known rank")
        shape: list[int | str | None] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                shape.append(d.dim_param)
            else:
                shape.append(None)
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except (KeyError, TypeError, ValueError) as exc:
            raise UnsupportedError(f"input {vi.name!r} has element type {tt.elem_type}, which numpy cannot hold") from exc
        specs.append(InputSpec(vi.name, tuple(shape), dtype))
    return specs


# ---------------------------------------------------------------------------- dataset

@dataclass
class Dataset:
    """Feed dicts for onnxruntime, with int64 labels (one per sample) when known."""

    batches: list[dict[str, np.ndarray]]
    labels: np.ndarray | None
    source: str
    #: which samples of the source these are (their positions in it), when known.
    indices: np.ndarray | None = None

    @property
    def batch_step(self) -> int:
        """Samples in the first batch (the step a subset of this data keeps; 1 when empty)."""
        arrs = [a for a in self.batches[0].values() if np.ndim(a) > 0] if self.batches else []
        return max(1, int(np.shape(arrs[0])[0])) if arrs else 1

    @property
    def n_samples(self) -> int:
        n = 0
        for b in self.batches:
            arrs = [a for a in b.values() if a.ndim > 0]
            n += arrs[0].shape[0] if arrs else 1
        return n


IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


def load_dataset(
    model: onnx.ModelProto,
    data: str | os.PathLike[str] | None,
    *,
    recipe: Recipe | None = None,
    labels: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    seed: int = 0,
    progress: bool = False,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    tokenizer: str | Path | None = None,
) -> Dataset:
    """Load ``data`` as batches for ``model``'s inputs; raise DataError when it does not fit.

    ``recipe`` applies to image data only (folders, image files, IDX images; IDX without
    a recipe is fed raw); ``labels`` (.npy, .txt, IDX) overrides labels found in the data.
    ``shapes`` (input name -> shape) sizes random data (the batch dim still follows
    ``batch_size``); without it symbolic dims are 1.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch size must be a positive integer, got {batch_size!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UsageError(f"limit must be a positive integer, got {limit!r}")
    specs = input_specs(model)
    step = _batch_step(specs, batch_size)
    if data is None:
        if recipe is not None:
            raise UsageError("a preprocessing recipe applies to image data only; no data was given")
        if labels is not None:
            raise UsageError("labels were given without data")
        arrays = _random_arrays(specs, limit or step, seed, shapes)
        sizes = ", ".join(f"{k} {list(v.shape[1:])}" for k, v in arrays.items() if v.ndim)
        return Dataset(_split(specs, arrays, step), None, f"random (no data given), seed {seed}, per sample {sizes}")

    path = Path(data)
    if not path.exists():
        raise DataError(f"data {path}: no such file or folder")
    # Loaders return labels for all `total` samples in the source, and may stop
    # reading after `limit` samples (images are expensive).
    if path.is_dir() or path.suffix.lower() in IMAGE_EXTS:
        arrays, found, what, total = _load_images(specs, path, recipe or Recipe(), limit, progress)
    elif _is_idx(path):
        arrays, found, what, total = _load_idx(specs, path, recipe, labels is None, limit, progress)
    elif path.suffix.lower() in (".npz", ".npy"):
        if recipe is not None:
            raise UsageError(f"a preprocessing recipe applies to image data only, not to {path.suffix} arrays")
        arrays, found, what = _load_numpy(specs, path)
        total = None
    elif path.suffix.lower() == ".txt":  # one sentence a line, tokenised (onnxprune.text)
        from onnxprune.text import load_text

        length = next((int(v[1]) for v in (shapes or {}).values() if len(v) >= 2), None)
        arrays, found, what, total = load_text(specs, path, tokenizer, max_length=length, limit=limit), None, "text", None
    else:
        raise DataError(
            f"data {path}: unsupported kind; expected .npz, .npy, a folder of images, "
            "an image file, IDX (*-idx3-ubyte[.gz]) or a .txt of sentences (with --tokenizer)"
        )
    arrays = {s.name: _fit(s, arrays[s.name]) for s in specs}
    n = _count_samples(specs, arrays)
    total = n if total is None else total
    if labels is not None:
        found = _read_labels(Path(labels))
    if found is not None and len(found) != total:
        raise DataError(f"labels: {len(found)} labels for {total} samples in {path}")
    if limit is not None and limit < n:
        arrays = {k: (a[:limit] if a.ndim else a) for k, a in arrays.items()}
        n = limit
    found = None if found is None else found[:n]
    if n == 0:
        raise DataError(f"data {path}: no samples")
    _check_steps(specs, n, step)
    return Dataset(_split(specs, arrays, step), found, f"{what}: {n} samples from {path}")


def parse_input_shapes(text: str | Sequence[str] | None) -> dict[str, tuple[int, ...]]:
    """``'input:1x3x736x1280'`` (several separated by spaces or ';') → ``{'input': (1, 3, 736, 1280)}``.
    A lone shape without a name (``1x3x224x224``) is keyed ``''``: the model's only input."""
    if not text:
        return {}
    items = text.replace(";", " ").split() if isinstance(text, str) else [p for t in text for p in t.replace(";", " ").split()]
    out: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, dims = item.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise UsageError(f"--input-shape {item!r}: expected NAME:DxDxD, e.g. input:1x3x736x1280") from None
        if not shape or any(d < 1 for d in shape):
            raise UsageError(f"--input-shape {item!r}: every dim must be a positive integer")
        if name in out:
            raise UsageError(f"--input-shape names {name or 'the input'} twice")
        out[name] = shape
    return out


def resolve_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Check ``shapes`` against the model's inputs: known names, right rank, fixed dims kept."""
    specs = {s.name: s for s in input_specs(model)}
    shapes = dict(shapes)
    if "" in shapes:
        if len(specs) != 1:
            raise UsageError(f"--input-shape without a name needs a one-input model; inputs: {', '.join(specs)}")
        shapes[next(iter(specs))] = shapes.pop("")
    for name, shape in shapes.items():
        if name not in specs:
            raise UsageError(f"--input-shape: {name!r} is not an input; inputs: {', '.join(specs)}")
        spec = specs[name]
        if len(spec.shape) != len(shape):
            raise UsageError(f"--input-shape {name}: rank {len(shape)}, but the input is {spec.describe()}")
        for i, (d, g) in enumerate(zip(spec.shape, shape)):
            if isinstance(d, int) and d > 0 and d != g:
                raise UsageError(f"--input-shape {name}: dim {i} is fixed at {d} in the model, got {g}")
    return shapes


def dynamic_dims(model: onnx.ModelProto) -> list[str]:
    """``'input[2]'`` for every symbolic non-batch input dim (those need real sizes)."""
    out = []
    for s in input_specs(model):
        out += [f"{s.name}[{i}]" for i, d in enumerate(s.shape) if i > 0 and not isinstance(d, int)]
    return out


def split_dataset(ds: Dataset, n_calib: int, *, seed: int = 0, batch_size: int = 1) -> tuple[Dataset, Dataset]:
    """A seeded split of ``ds`` into disjoint calibration and evaluation parts.

    ``n_calib`` samples (at most half of them) go to calibration, the rest to evaluation;
    which ones is a permutation drawn with ``seed``. Both keep the source's batch step.
    """
    n = ds.n_samples
    if n < 2:
        raise DataError(f"cannot split {n} sample(s) into calibration and evaluation parts; give --calib separately")
    n_calib = max(1, min(int(n_calib), n // 2))
    perm = np.random.default_rng(seed).permutation(n)
    calib_idx, eval_idx = np.sort(perm[:n_calib]), np.sort(perm[n_calib:])
    calib = subset(ds, calib_idx, batch_size=batch_size)
    evaluation = subset(ds, eval_idx, batch_size=batch_size)
    calib.source = f"{ds.source}; calibration split: {len(calib_idx)} samples (seed {seed})"
    evaluation.source = f"{ds.source}; evaluation split: {len(eval_idx)} samples (seed {seed}, disjoint from calibration)"
    return calib, evaluation


def stacked(ds: Dataset) -> dict[str, np.ndarray]:
    """All samples of ``ds`` as one array per input (0-d inputs as they are)."""
    keys = list(ds.batches[0]) if ds.batches else []
    return {k: (np.concatenate([b[k] for b in ds.batches], axis=0) if np.ndim(ds.batches[0][k]) else ds.batches[0][k])
            for k in keys}


def subset(ds: Dataset, idx: np.ndarray, *, batch_size: int = 1) -> Dataset:
    """The samples at positions ``idx`` of ``ds``, in batches of ``batch_size`` (pass the
    model's batch step, :func:`batch_step`, for a model with a fixed batch dim)."""
    arrays = stacked(ds)
    picked = {k: (a[idx] if np.ndim(a) else a) for k, a in arrays.items()}
    batches = [{k: (a[i: i + batch_size] if np.ndim(a) else a) for k, a in picked.items()}
               for i in range(0, len(idx), batch_size)]
    labels = None if ds.labels is None else ds.labels[idx]
    base = np.arange(ds.n_samples) if ds.indices is None else ds.indices
    return Dataset(batches, labels, ds.source, indices=base[idx])


def batch_step(model: onnx.ModelProto, batch_size: int) -> int:
    """Samples per batch for ``model``: its fixed batch dim, else ``batch_size``."""
    return _batch_step(input_specs(model), batch_size)


def _batch_step(specs: list[InputSpec], batch_size: int) -> int:
    fixed = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)}
    if len(fixed) > 1:
        raise UnsupportedError(
            "inputs disagree on the leading (batch) dim: "
            + ", ".join(f"{s.name} {s.describe()}" for s in specs)
        )
    return fixed.pop() if fixed else batch_size


def _check_steps(specs: list[InputSpec], n: int, step: int) -> None:
    fixed = any(s.shape and isinstance(s.shape[0], int) for s in specs)
    if fixed and n % step:
        raise DataError(f"the model's batch dim is fixed at {step}, but there are {n} samples (not a multiple)")


def _split(specs: list[InputSpec], arrays: dict[str, np.ndarray], step: int) -> list[dict[str, np.ndarray]]:
    n = _count_samples(specs, arrays)
    if n == 0:
        return [dict(arrays)]
    return [
        {k: (a[i : i + step] if a.ndim else a) for k, a in arrays.items()}
        for i in range(0, n, step)
    ]


def _count_samples(specs: list[InputSpec], arrays: dict[str, np.ndarray]) -> int:
    counts = {s.name: arrays[s.name].shape[0] for s in specs if arrays[s.name].ndim}
    if len(set(counts.values())) > 1:
        raise DataError("inputs have different numbers of samples: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return next(iter(counts.values()), 0)


def _random_arrays(specs: list[InputSpec], n: int, seed: int,
                   shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        given = (shapes or {}).get(s.name)
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in s.shape] if given is None else list(given)
        if shape and not isinstance(s.shape[0], int):
            shape[0] = n
        elif shape and shape[0] and n % shape[0] == 0:
            shape[0] = n
        if s.dtype == np.bool_:
            a = rng.integers(0, 2, size=shape).astype(bool)
        elif np.issubdtype(s.dtype, np.integer):
            a = rng.integers(0, 2, size=shape).astype(s.dtype)
        elif np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.complexfloating):
            a = rng.standard_normal(size=shape).astype(s.dtype)
        else:
            raise UnsupportedError(f"input {s.name!r}: cannot make random data of type {s.dtype}")
        out[s.name] = a
    return out


def _fit(spec: InputSpec, arr: np.ndarray, hint: str = "") -> np.ndarray:
    """Check ``arr`` against ``spec`` (a missing batch axis is added) and cast it."""
    arr = np.asarray(arr)
    rank = len(spec.shape)
    if rank and arr.ndim == rank - 1:  # one sample without its batch axis
        arr = arr[None]
    got = "(" + ",".join(str(d) for d in arr.shape) + ")"
    bad = arr.ndim != rank or any(
        isinstance(d, int) and d != g for i, (d, g) in enumerate(zip(spec.shape, arr.shape)) if i > 0
    )
    if bad:
        raise DataError(f"input {spec.name!r}: expected shape {spec.describe()}, got {got}{hint}")
    return _cast(spec, arr)


def _cast(spec: InputSpec, arr: np.ndarray) -> np.ndarray:
    want = spec.dtype
    if arr.dtype == want:
        return arr
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise DataError(f"input {spec.name!r}: expected numeric data ({want}), got {arr.dtype}")
    if want == np.bool_ or np.issubdtype(want, np.integer):
        if arr.size and np.issubdtype(arr.dtype, np.inexact):
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise DataError(f"input {spec.name!r}: expected integers ({want}), got non-integral {arr.dtype} values")
        lo, hi = (0, 1) if want == np.bool_ else (np.iinfo(want).min, np.iinfo(want).max)
        if arr.size and (arr.min() < lo or arr.max() > hi):
            raise DataError(f"input {spec.name!r}: values {arr.min()}..{arr.max()} do not fit {want}")
    return arr.astype(want)


# ---------------------------------------------------------------------------- numpy

def _load_numpy(specs: list[InputSpec], path: Path) -> tuple[dict[str, np.ndarray], np.ndarray | None, str]:
    names = [s.name for s in specs]
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"data {path}: cannot read ({exc})") from exc
    if path.suffix.lower() == ".npy":
        if len(specs) != 1:
            raise DataError(f"data {path}: a .npy holds one array, but the model has {len(specs)} inputs {names}; use .npz")
        return {names[0]: loaded}, None, "npy"
    with loaded:
        contents = {k: loaded[k] for k in loaded.files}
    lab = contents.pop("labels", None)
    if set(contents) == set(names):
        arrays = contents
    elif len(specs) == 1 and len(contents) == 1:
        arrays = {names[0]: next(iter(contents.values()))}
    else:
        raise DataError(f"data {path}: arrays {sorted(contents)} do not match the model's inputs {names}")
    return arrays, (None if lab is None else _as_labels(lab, f"{path}[labels]")), "npz"


def _as_labels(arr: np.ndarray, where: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    integral = np.issubdtype(arr.dtype, np.integer) or (
        np.issubdtype(arr.dtype, np.floating) and bool(np.all(np.isfinite(arr) & (arr == np.round(arr))))
    )
    if arr.ndim != 1 or not integral or (arr.size and arr.min() < 0):
        raise DataError(f"labels {where}: expected one non-negative integer class index per sample, got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64)


def _read_labels(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"labels {path}: no such file")
    if _is_idx(path):
        return _as_labels(_read_idx(path), str(path))
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            arr = np.loadtxt(path, dtype=np.int64, ndmin=1, delimiter=None)
    except (OSError, ValueError) as exc:
        raise DataError(f"labels {path}: cannot read ({exc})") from exc
    return _as_labels(arr, str(path))


# ---------------------------------------------------------------------------- IDX

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _is_idx(path: Path) -> bool:
    return bool(re.search(r"idx\d", path.name)) or path.name.endswith(("-ubyte", "-ubyte.gz"))


def _read_idx(path: Path) -> np.ndarray:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(f"data {path}: cannot read ({exc})") from exc
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] not in _IDX_TYPES:
        raise DataError(f"data {path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"data {path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dt = np.dtype(_IDX_TYPES[raw[2]])
    count = math.prod(dims)
    if len(raw) - 4 - 4 * ndim < count * dt.itemsize:
        raise DataError(f"data {path}: truncated IDX data (header says {dims})")
    arr = np.frombuffer(raw, dt, count=count, offset=4 + 4 * ndim)
    return arr.reshape(dims).astype(dt.newbyteorder("="))


def _idx_labels_beside(path: Path) -> Path | None:
    name = path.name.replace("images", "labels").replace("idx3", "idx1")
    for cand in (name, name + ".gz", name.removesuffix(".gz")):
        p = path.with_name(cand)
        if p != path and p.is_file():
            return p
    found = sorted(p for p in path.parent.glob("*labels-idx1-ubyte*") if p.is_file())
    return found[0] if len(found) == 1 else None


def _load_idx(
    specs: list[InputSpec], path: Path, recipe: Recipe | None, find_labels: bool, limit: int | None, progress: bool
) -> tuple[dict[str, np.ndarray], np.ndarray | None, str, int]:
    spec = _one_input(specs, "IDX data")
    images = _read_idx(path)
    if images.ndim < 1:
        raise DataError(f"data {path}: IDX file holds a scalar, not samples")
    total = images.shape[0]
    images = images[:limit]
    lab = None
    if find_labels:
        beside = _idx_labels_beside(path)
        if beside is not None:
            lab = _as_labels(_read_idx(beside), str(beside))
    if recipe is not None:
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(f"data {path}: a recipe needs 8-bit grayscale images (N,H,W), got {images.dtype} {images.shape}")
        from PIL import Image

        pil = ((Image.fromarray(im, "L"), f"{path}[{i}]") for i, im in enumerate(images))
        arr = _preprocess_all(spec, pil, recipe, progress, total=len(images))
        return {spec.name: arr}, lab, "idx images", total
    sample = tuple(spec.shape[1:])
    if sample and all(isinstance(d, int) for d in sample):
        have, want = math.prod(images.shape[1:]), math.prod(sample)  # type: ignore[arg-type]
        if have != want:
            raise DataError(
                f"input {spec.name!r}: expected shape {spec.describe()}, got IDX samples of shape "
                f"{tuple(images.shape[1:])} ({have} values, not {want})"
            )
        images = images.reshape((images.shape[0],) + sample)
    return {spec.name: images}, lab, "idx", total


# ---------------------------------------------------------------------------- images

def _one_input(specs: list[InputSpec], what: str) -> InputSpec:
    if len(specs) != 1:
        raise DataError(f"{what} feeds one input, but the model has {len(specs)}: {[s.name for s in specs]}")
    return specs[0]


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))


def _load_images(
    specs: list[InputSpec], root: Path, recipe: Recipe, limit: int | None, progress: bool
) -> tuple[dict[str, np.ndarray], np.ndarray | None, str, int]:
    spec = _one_input(specs, "image data")
    _check_image_input(spec, recipe)
    from PIL import Image, UnidentifiedImageError

    labels: list[int] | None = None
    if root.is_file():
        files, what = [root], "image"
    else:
        classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        loose = _image_files(root, recursive=False)
        per_class = [_image_files(root / c, recursive=True) for c in classes]
        if any(per_class):
            if loose:
                raise DataError(f"data {root}: mixes images at the top level ({loose[0].name}, ...) with class folders")
            files = [f for fs in per_class for f in fs]
            labels = [i for i, fs in enumerate(per_class) for _ in fs]
            what = f"images in {len(classes)} class folders"
        else:
            files, what = loose, "images"
        if not files:
            raise DataError(f"data {root}: no image files ({', '.join(sorted(IMAGE_EXTS))})")
    total = len(files)
    files = files[:limit]

    def opened():
        for f in files:
            try:
                with Image.open(f) as im:
                    im.load()
                    yield im.convert("L" if recipe.grayscale else "RGB"), str(f)
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise DataError(f"image {f}: cannot read ({exc})") from exc

    arr = _preprocess_all(spec, opened(), recipe, progress, total=len(files))
    return {spec.name: arr}, (None if labels is None else np.asarray(labels, np.int64)), what, total


def _check_image_input(spec: InputSpec, recipe: Recipe) -> None:
    want = recipe.sample_shape()
    if len(spec.shape) != 4 or any(isinstance(d, int) and d != w for d, w in zip(spec.shape[1:], want)):
        raise DataError(
            f"input {spec.name!r}: expected shape {spec.describe()}, got images of shape "
            f"[N,{','.join(map(str, want))}] (recipe crop={recipe.crop}, layout={recipe.layout}, "
            f"{recipe.channels} channel{'s' if recipe.channels > 1 else ''})"
        )


def _preprocess_all(spec: InputSpec, images: Iterable[tuple[Any, str]], recipe: Recipe, progress: bool, total: int) -> np.ndarray:
    """Preprocess (PIL image, name) pairs into one preallocated array (batches are views of it)."""
    from tqdm import tqdm

    _check_image_input(spec, recipe)
    mode = "L" if recipe.grayscale else "RGB"
    out = np.empty((total,) + recipe.sample_shape(), np.float32)
    for i, (im, _name) in enumerate(
        tqdm(images, total=total, desc="loading images", unit="img", file=sys.stderr, disable=not progress)
    ):
        out[i] = preprocess_image(im if im.mode == mode else im.convert(mode), recipe)
    return out
