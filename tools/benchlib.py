"""Shared helpers of the benchmark tools (``bench_prune_zoo.py``, ``bench_coverage.py``).

* :func:`environment`: the header every benchmark writes (command, date, CPU, versions);
* :func:`image_set`: the zoo's labelled images, resized and cropped once and cached as
  uint8 pixels; each recipe's normalisation is applied per batch when read;
* :func:`onnxsim_prune`: onnxsim's structured pruner, on a copy, errors as one line;
* :func:`check_valid`: the validity test both tools use (full checker, onnxruntime
  session, a run with the reference's output shapes);
* :func:`cost`, :func:`top1`, :func:`latency_ratios`: measuring a model;
* :func:`run_limited`: a Python function in a child process with a time and memory limit;
* :func:`md_table`, :func:`write_report`: the markdown/JSON output.

Not part of the onnxprune package: tools only.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import multiprocessing as mp
import os
import platform
import resource
import shlex
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import onnx

REPO = Path(__file__).resolve().parent.parent
ZOO = (REPO.parent / "shared" / "zoo").resolve()
CACHE = REPO / "build" / "bench-cache"
DOCS = REPO / "docs" / "benchmarks"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line}"[:300]


# ---------------------------------------------------------------------------- environment

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import onnxruntime as ort

    try:
        import onnxsim
        sim = getattr(onnxsim, "__version__", "?")
    except ImportError:
        sim = None
    from onnxprune.context import Target

    argv = list(sys.argv if argv is None else argv)
    return {
        "git": git_version(),
        "command": " ".join(shlex.quote(a) for a in ["python", os.path.relpath(argv[0], REPO)] + argv[1:]),
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "vector_width_fp32": Target.detect().vector_width,
        "python": platform.python_version(),
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "onnxsim": sim,
        "numpy": np.__version__,
    }


def git_version() -> str:
    """Commit of the checkout, with '+local changes' when onnxprune/ or passes/ differ from it."""
    import subprocess

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "onnxprune", "passes"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev or "unknown") + (" + local changes" if dirty else "")


def env_lines(env: Mapping[str, Any]) -> list[str]:
    return [
        f"* command: `{env['command']}`" + (f" at commit {env['git']}" if env.get("git") else ""),
        f"* date: {env['date']}",
        f"* CPU: {env['cpu']} ({env['cores']} cores, fp32 vector width {env['vector_width_fp32']})",
        f"* onnxruntime {env['onnxruntime']}, onnx {env['onnx']}, onnxsim {env['onnxsim']}, "
        f"numpy {env['numpy']}, Python {env['python']}",
    ]


# ---------------------------------------------------------------------------- images

@dataclass
class ImageSet:
    """uint8 RGB pixels [N, H, W, 3] (resized, centre-cropped) and int64 labels."""

    pixels: np.ndarray
    labels: np.ndarray
    source: str

    def batches(self, recipe: Any, batch: int) -> Iterator[np.ndarray]:
        """Float32 model inputs, ``batch`` samples at a time, normalised by ``recipe``
        exactly as :func:`onnxprune.data.preprocess_image` does (float64, then cast)."""
        mean, std = np.asarray(recipe.mean), np.asarray(recipe.std)
        for i in range(0, len(self.pixels), batch):
            x = self.pixels[i:i + batch].astype(np.float64)
            if recipe.order == "BGR":
                x = x[..., ::-1]
            x = (x * recipe.scale - mean) / std
            if recipe.layout == "NCHW":
                x = x.transpose(0, 3, 1, 2)
            yield np.ascontiguousarray(x.astype(np.float32))


def _pixel_model(size: int) -> onnx.ModelProto:
    """A stand-in model whose only role is to give load_dataset an [N,size,size,3] input."""
    h = onnx.helper
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", size, size, 3])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", size, size, 3])
    g = h.make_graph([h.make_node("Identity", ["x"], ["y"])], "pixels", [x], [y])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)])


def image_set(data: Path, *, resize: int = 256, crop: int = 224, limit: int | None = None,
              cache: Path = CACHE, log: Callable[[str], None] = print) -> ImageSet:
    """The class-folder images under ``data`` as uint8 pixels, via onnxprune's own loader
    (same file order, labels, resize and crop), cached in ``cache`` as .npy.

    The cache key covers the file list, the sizes and the source of
    ``onnxprune.data.preprocess_image``, so a change to the library's preprocessing
    rebuilds it. On a rebuild, a few images (resized ones included) are checked bit for
    bit against the library with a full recipe.
    """
    import inspect

    from onnxprune.data import Recipe, load_dataset, preprocess_image

    paths = sorted(p for p in data.rglob("*") if p.is_file())
    files = [str(p.relative_to(data)) for p in paths]
    code = inspect.getsource(preprocess_image)
    key = hashlib.sha256(json.dumps([str(data), resize, crop, limit, files, code]).encode()).hexdigest()[:16]
    px_path, lab_path = cache / f"pixels-{key}.npy", cache / f"labels-{key}.npy"
    if px_path.exists() and lab_path.exists():
        return ImageSet(np.load(px_path), np.load(lab_path), f"{data} (cached {px_path.name})")
    t0 = time.perf_counter()
    raw = Recipe(resize=resize, crop=crop, scale=1.0, mean=(0.0,), std=(1.0,), layout="NHWC")
    ds = load_dataset(_pixel_model(crop), data, recipe=raw, batch_size=100, limit=limit)
    x = np.concatenate([b["x"] for b in ds.batches])  # NHWC because of the recipe's layout
    pixels = x.astype(np.uint8)
    if not np.array_equal(pixels, x):
        raise RuntimeError("onnxprune's resize/crop no longer yields integer pixels; "
                           "tools/benchlib.py must cache float arrays per recipe instead")
    if ds.labels is None:
        raise RuntimeError(f"{data}: no labels (expected a class-folder layout)")
    from PIL import Image

    check = Recipe(resize=resize, crop=crop, order="BGR", scale=0.5, mean=(1.0, 2.0, 3.0), std=(0.5, 2.0, 4.0))
    picks = list(range(min(4, len(pixels))))
    picks += [i for i, p in enumerate(paths[: len(pixels)]) if min(Image.open(p).size) != resize][:4]
    ours = ImageSet(pixels[picks], ds.labels[picks], "")
    for i, got in zip(picks, next(ours.batches(check, len(picks)))):
        lib = preprocess_image(Image.open(paths[i]).convert("RGB"), check)
        if not np.array_equal(lib, got):
            raise RuntimeError(f"cached preprocessing differs from onnxprune.data on {paths[i]}")
    cache.mkdir(parents=True, exist_ok=True)
    np.save(px_path, pixels)
    np.save(lab_path, ds.labels.astype(np.int64))
    log(f"  preprocessed {len(pixels)} images in {time.perf_counter() - t0:.1f}s -> {px_path}")
    return ImageSet(pixels, ds.labels.astype(np.int64), str(data))


# ---------------------------------------------------------------------------- onnxsim

def onnxsim_prune(model: onnx.ModelProto, sparsity: float, importance_norm: str = "l2",
                  global_sparsity: bool = False) -> onnx.ModelProto:
    """onnxsim's ``apply_structured_pruning`` on a copy of ``model`` (it copies too, but a
    benchmark must not depend on that); any exception propagates to the caller."""
    from onnxsim import pruning

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return pruning.apply_structured_pruning(copy, sparsity=sparsity, importance_norm=importance_norm,
                                            global_sparsity=global_sparsity)


# ---------------------------------------------------------------------------- measuring

def session(model: onnx.ModelProto, threads: int = 1):
    from onnxprune.validate import make_session

    return make_session(model, threads=threads)


def random_feed(model: onnx.ModelProto, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    from onnxprune.data import load_dataset

    return load_dataset(model, None, batch_size=batch, limit=batch, seed=seed).batches[0]


def check_valid(model: onnx.ModelProto, ref_shapes: Mapping[str, tuple[int, ...]],
                feed: Mapping[str, np.ndarray], threads: int = 1) -> tuple[bool, str, Any]:
    """(valid, one-line reason, session): onnx.checker full check, an onnxruntime session,
    one run on ``feed`` whose outputs have the names and shapes in ``ref_shapes``."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        return False, "checker: " + first_line(exc), None
    try:
        sess = session(model, threads)
    except Exception as exc:
        return False, "onnxruntime load: " + first_line(exc), None
    try:
        names = [o.name for o in sess.get_outputs()]
        outs = sess.run(names, dict(feed))
    except Exception as exc:
        return False, "onnxruntime run: " + first_line(exc), None
    got = {n: tuple(o.shape) for n, o in zip(names, outs)}
    if got != dict(ref_shapes):
        return False, f"output shapes {got} differ from {dict(ref_shapes)}", None
    if any(not np.all(np.isfinite(o)) for o in outs if np.issubdtype(o.dtype, np.floating)):
        return False, "non-finite outputs", None
    return True, "", sess


def output_shapes(sess, feed: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    names = [o.name for o in sess.get_outputs()]
    return {n: tuple(o.shape) for n, o in zip(names, sess.run(names, dict(feed)))}


class MeasureOnce:
    """Measure each distinct model once (keyed by its deterministic serialisation's SHA-1):
    ``measured[digest]`` holds the result of ``measure``, ``protos[digest]`` the valid ones."""

    def __init__(self, measure: Callable[[onnx.ModelProto], dict[str, Any]]) -> None:
        self.measure = measure
        self.measured: dict[str, dict[str, Any]] = {}
        self.protos: dict[str, onnx.ModelProto] = {}

    def __call__(self, row: dict[str, Any], proto: onnx.ModelProto) -> dict[str, Any]:
        """Adds ``model_sha1`` and the (possibly cached) measurement to ``row``."""
        digest = hashlib.sha1(proto.SerializeToString(deterministic=True)).hexdigest()
        row["model_sha1"] = digest
        if digest not in self.measured:
            self.measured[digest] = self.measure(proto)
            if self.measured[digest]["valid"]:
                self.protos[digest] = proto
        row.update(self.measured[digest])
        return row


def cost(model: onnx.ModelProto) -> dict[str, Any]:
    """FLOPs and params at batch 1 (onnxprune's cost model), or an error."""
    from onnxprune.cost import model_cost

    try:
        c = model_cost(model)
        return {"flops": int(c.flops), "params": int(c.params), "unknown_shape_nodes": len(c.unknown_shape_nodes)}
    except Exception as exc:
        return {"flops": None, "params": None, "error": first_line(exc)}


def top1(sess, images: ImageSet, recipe: Any, batch: int) -> float:
    """Top-1 accuracy (fraction) of a classifier session on ``images``."""
    from onnxprune.validate import accuracy

    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: x})[0] for x in images.batches(recipe, batch)]
    return accuracy(outs, images.labels)


def latency_ratios(sessions: Sequence[Any], feed: Mapping[str, np.ndarray], runs: int = 60,
                   warmup: int = 5) -> list[dict[str, float]]:
    """One interleaved timing run over every session (1 thread each: build them so);
    ratios are each session's median over the first session's median."""
    from onnxprune.validate import measure_latency

    t = measure_latency(sessions, feed, warmup=warmup, runs=runs)
    base = t[0]["median_ms"]
    return [{"median_ms": r["median_ms"], "p10_ms": r["p10_ms"], "p90_ms": r["p90_ms"],
             "ratio": r["median_ms"] / base, "runs": r["runs"]} for r in t]


# ---------------------------------------------------------------------------- isolation

def _child(conn, fn: Callable[..., Any], args: tuple, mem_bytes: int | None) -> None:
    if mem_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
    try:
        result = {"ok": True, "value": fn(*args)}
    except MemoryError:
        result = {"ok": False, "error": "MemoryError: over the memory limit"}
    except BaseException as exc:  # report, never hang the parent
        result = {"ok": False, "error": first_line(exc), "traceback": traceback.format_exc()[-4000:]}
    result["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    conn.send(result)
    conn.close()


def run_limited(fn: Callable[..., Any], args: tuple = (), *, timeout: float = 600,
                mem_gb: float | None = 6.0) -> dict[str, Any]:
    """Run ``fn(*args)`` in a fresh (spawned) process with a wall-clock timeout and an
    address-space limit; returns {"ok", "value" | "error", "seconds", "maxrss_mb"}."""
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args, int(mem_gb * 2**30) if mem_gb else None))
    t0 = time.perf_counter()
    proc.start()
    send.close()
    result: dict[str, Any] | None = None
    if recv.poll(timeout):
        try:
            result = recv.recv()
        except EOFError:
            result = None
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()
        if result is None:
            result = {"ok": False, "error": f"timeout after {timeout:.0f}s", "timeout": True}
    if result is None:
        result = {"ok": False, "error": f"child died (exit code {proc.exitcode}; out of memory?)"}
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


# ---------------------------------------------------------------------------- output

def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return ("" if v is None else str(v)).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def write_report(stem: str, markdown: str, data: Mapping[str, Any], out_dir: Path = DOCS) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    md.write_text(markdown.rstrip() + "\n", encoding="utf-8")
    js.write_text(json.dumps(data, indent=1, default=_json_default) + "\n", encoding="utf-8")
    return md, js


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path, set, tuple)):
        return list(o) if not isinstance(o, Path) else str(o)
    return str(o)


def pct(x: float | None, digits: int = 1) -> str:
    return "" if x is None else f"{100 * x:.{digits}f}"
