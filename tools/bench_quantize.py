"""Benchmark of issue 8's int8/fp16 passes on the zoo: ours against what a user does today.

For mobilenetv2, efficientnet-lite0 and squeezenet1.1 (calibration: 256 zoo images,
evaluation: the other 744, split by ``onnxprune.api.prepare_data`` with seed 0):

* ``float``: the model as loaded;
* ``(a) quantize_static defaults``: ``onnxruntime.quantization.quantize_static`` on the raw
  file with nothing but the calibration reader (QDQ, int8 activations and weights,
  per-tensor, MinMax, no pre-processing), on the 256 calibration images;
* ``(b) anchor``: the issue's hand-made path: opset 13, ``quant_pre_process``, QDQ,
  per-channel int8 weights, uint8 activations, MinMax, 64 calibration images;
* ours: ``quantize`` (its defaults: percentile calibration, measured exclusion),
  ``equalize quantize``, ``quantize:calibrate=minmax``, ``fp16``.

Each row: validity (full checker + onnxruntime), file size, top-1 on the evaluation split,
and the latency ratio float/variant (1 thread, all of a model's variants timed interleaved
by ``onnxprune.runtime.measure_latency``, repeated; median and spread of the repeats).
MiniLM (``--minilm``): ``quantize:mode=dynamic`` against plain ``quantize_dynamic``
(the anchor), STS-B Spearman on the zoo's half-a pairs, latency at batch 1, seq 128.

    python tools/bench_quantize.py            # all three CNNs and MiniLM
    python tools/bench_quantize.py --models squeezenet1.1 --no-minilm

Results merge into ``docs/benchmarks/quantize.json`` model by model (a rerun of one model
replaces its rows), and the Markdown is rendered from the JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402

RECIPES = {"mobilenetv2": "torchvision", "efficientnet-lite0": "efficientnet-lite", "squeezenet1.1": "caffe-bgr"}
# The issue author's anchor, measured on an AVX2 machine (speed-up, top-1 change in points).
ISSUE_ANCHOR = {"mobilenetv2": "1.85x at -0.96 (MinMax) / 1.90x at -0.11 (Percentile)",
                "efficientnet-lite0": "1.93x at -0.96", "squeezenet1.1": "2.13x at +0.4",
                "minilm": "2.13x at -0.24 STS-B"}
STEM = "quantize"


def log(msg: str) -> None:
    print(msg, flush=True)


class _Reader:
    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self.it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)


def ort_static(src: onnx.ModelProto, batches: list[dict[str, np.ndarray]], *, anchor: bool) -> onnx.ModelProto:
    """(a) quantize_static at its defaults, or (b) the hand-made anchor path."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.onnx"
        model = src
        if anchor and next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 13:
            model = onnx.version_converter.convert_version(model, 13)
            model.ir_version = max(model.ir_version, 7)  # the converter keeps IR 3, which opset 13 forbids
        onnx.save(model, str(path))
        if anchor:
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(path), str(pre), skip_symbolic_shape=True)
            path = pre
        out = Path(tmp) / "q.onnx"
        if anchor:
            quantize_static(str(path), str(out), _Reader(batches), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        else:
            quantize_static(str(path), str(out), _Reader(batches))
        return onnx.load(str(out))


def validity(model: onnx.ModelProto) -> str | None:
    from onnxprune.runtime import make_session

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        problem = "checker: " + bl.first_line(exc)
    else:
        problem = None
    try:
        make_session(model)
    except Exception as exc:
        return (problem + "; " if problem else "") + "onnxruntime: " + bl.first_line(exc)
    return problem


def time_sessions(models: dict[str, onnx.ModelProto], feed: dict[str, np.ndarray], repeats: int,
                  runs: int) -> dict[str, dict[str, float]]:
    """float/variant latency ratio per repeat (interleaved), median and spread."""
    from onnxprune.runtime import make_session, measure_latency

    names = list(models)
    sessions = [make_session(models[n], 1) for n in names]
    per: dict[str, list[float]] = {n: [] for n in names}
    ms: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(repeats):
        t = measure_latency(sessions, feed, warmup=5, runs=runs)
        base = t[0]["median_ms"]
        for n, r in zip(names, t):
            per[n].append(base / r["median_ms"])
            ms[n].append(r["median_ms"])
    return {n: {"ratio": statistics.median(per[n]), "ratio_min": min(per[n]), "ratio_max": max(per[n]),
                "ms": statistics.median(ms[n])} for n in names}


def bench_cnn(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from onnxprune.api import prepare_data, run_passes
    from onnxprune.context import Evaluator
    from onnxprune.model import load_model

    zoo = args.zoo
    raw = onnx.load(str(zoo / "models" / f"{name}.onnx"))
    model = load_model(zoo / "models" / f"{name}.onnx")
    plan = prepare_data(model, data=zoo / "data" / "imagenet-sample", recipe=RECIPES[name], calib_limit=256, seed=0)
    ctx, evaluation = plan.ctx, plan.evaluation
    assert ctx.calib is not None and evaluation is not None
    ev = Evaluator(model, evaluation)
    log(f"[{name}] calibration {ctx.calib.n_samples}, evaluation {evaluation.n_samples}")
    variants: dict[str, onnx.ModelProto] = {"float": model}
    rows: dict[str, dict[str, Any]] = {"float": {}}
    t0 = time.perf_counter()
    if not args.skip_plain:
        rows["(a) quantize_static defaults"] = {}
        try:
            variants["(a) quantize_static defaults"] = ort_static(raw, ctx.calib.batches, anchor=False)
        except Exception as exc:
            rows["(a) quantize_static defaults"]["error"] = bl.first_line(exc)
        rows["(a) quantize_static defaults"]["seconds"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    variants["(b) anchor (hand-made, 64 images)"] = ort_static(raw, ctx.calib.batches[:64], anchor=True)
    rows["(b) anchor (hand-made, 64 images)"] = {"seconds": round(time.perf_counter() - t0, 1)}
    for spec in args.specs:
        t0 = time.perf_counter()
        key = "ours: " + " ".join(spec)
        try:
            out, recs = run_passes(model, list(spec), ctx=ctx)
            variants[key] = out
            rows[key] = {"stats": [r.stats for r in recs]}
        except Exception as exc:
            rows[key] = {"error": bl.first_line(exc)}
        rows[key]["seconds"] = round(time.perf_counter() - t0, 1)
        log(f"[{name}] {key}: {rows[key].get('error', 'ok')} in {rows[key]['seconds']}s")
    usable: dict[str, onnx.ModelProto] = {}
    for key, proto in variants.items():
        bad = validity(proto)
        rows[key]["valid"] = bad is None
        if bad:
            rows[key]["invalid"] = bad
        rows[key]["size_bytes"] = proto.ByteSize()
        try:
            rows[key]["top1"] = ev.score(proto)
            if rows[key]["top1"] >= 0:
                usable[key] = proto
        except Exception as exc:
            rows[key]["error"] = bl.first_line(exc)
        log(f"[{name}] {key}: top-1 {rows[key].get('top1')}, size {rows[key]['size_bytes']}, problem {bad}")
    feed = ctx.feed()
    assert feed is not None
    lat = time_sessions(usable, feed, args.repeats, args.runs)
    for key, v in lat.items():
        rows[key]["latency"] = v
    return {"calibration": ctx.calib.n_samples, "evaluation": evaluation.n_samples, "split": plan.report.get("split"),
            "rows": rows, "anchor_issue": ISSUE_ANCHOR[name], "repeats": args.repeats, "runs": args.runs}


def bench_minilm(args: argparse.Namespace) -> dict[str, Any]:
    import benchlib_nlp as nlp
    from onnxruntime.quantization import quantize_dynamic

    from onnxprune.api import run_passes
    from onnxprune.model import load_model
    from onnxprune.runtime import make_session

    path = args.zoo / "models" / "minilm" / "model.onnx"
    model = load_model(path)
    pairs = nlp.load_sts(args.zoo)
    sentences = pairs.sentences()
    tok = nlp.tokenizer(args.zoo)
    enc = nlp.Encoder(tok, 32)
    feed = nlp.latency_feed(tok, pairs, 128)
    variants: dict[str, onnx.ModelProto] = {"float": model}
    rows: dict[str, dict[str, Any]] = {"float": {}}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        quantize_dynamic(str(path), str(Path(tmp) / "q.onnx"))
        variants["anchor: quantize_dynamic defaults"] = onnx.load(str(Path(tmp) / "q.onnx"))
        rows["anchor: quantize_dynamic defaults"] = {"seconds": round(time.perf_counter() - t0, 1)}
    t0 = time.perf_counter()
    out, recs = run_passes(model, ["quantize:mode=dynamic"])
    variants["ours: quantize:mode=dynamic"] = out
    rows["ours: quantize:mode=dynamic"] = {"seconds": round(time.perf_counter() - t0, 1), "stats": [r.stats for r in recs]}
    out16, recs16 = run_passes(model, ["fp16"])
    variants["ours: fp16"] = out16
    rows["ours: fp16"] = {"stats": [r.stats for r in recs16]}
    ref = None
    for key, proto in variants.items():
        bad = validity(proto)
        rows[key]["valid"] = bad is None
        if bad:
            rows[key]["invalid"] = bad
        rows[key]["size_bytes"] = proto.ByteSize()
        quality, emb = nlp.evaluate(make_session(proto, 1), enc, pairs, sentences, ref)
        if ref is None:
            ref = emb
        rows[key]["spearman"] = quality["spearman"]
        rows[key]["mean_cosine"] = quality.get("mean_cosine")
        log(f"[minilm] {key}: Spearman {quality['spearman']:.2f}, size {rows[key]['size_bytes']}")
    lat = time_sessions(variants, feed, args.repeats, max(10, args.runs // 2))
    for key, v in lat.items():
        rows[key]["latency"] = v
    return {"pairs": len(pairs.gold), "rows": rows, "anchor_issue": ISSUE_ANCHOR["minilm"], "repeats": args.repeats}


def _fmt(v: float | None, f: str = "{:.2f}") -> str:
    return "" if v is None else f.format(v)


def render(data: dict[str, Any]) -> str:
    env = data.get("environment", {})
    out = ["# int8 and fp16 on the zoo: `quantize`, `equalize quantize`, `fp16`", ""]
    out += bl.env_lines(env) if env else []
    out += ["", "Top-1 on the evaluation split (744 zoo images the tool did not calibrate on; 256 calibration "
            "images, seed 0). Latency: float / variant, 1 thread, every variant of a model timed interleaved, "
            "median of the repeats [min-max]. Size: the serialised model. The issue's anchor was measured on an "
            "AVX2 machine; the anchor row here is the same recipe measured on this machine, side by side.", ""]
    sections = [("models", "")] + [(k, f" ({k})") for k, v in data.items() if k.startswith("followup")
                                   and isinstance(v, dict) and v]
    for section, suffix in sections:
        if section != "models":
            out += [f"# Follow-up run: {section}", ""] + data.get(section + "_notes", [""]) + [""]
        for name, res in data.get(section, {}).items():
            out += _cnn_table(name + suffix, res)
    return _tail(data, out)


def _cnn_table(name: str, res: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if True:
        rows = res["rows"]
        base = rows["float"].get("top1")
        out += [f"## {name}", "", f"Issue anchor (AVX2): {res['anchor_issue']}.", ""]
        table = []
        for key, r in rows.items():
            lat = r.get("latency", {})
            top1 = r.get("top1")
            delta = None if top1 is None or base is None or top1 < 0 else 100 * (top1 - base)
            note = r.get("invalid") or r.get("error") or ""
            st = r.get("stats") or []
            q = next((s for s in st if "excluded" in s), None)
            if q is not None and q.get("excluded"):
                note += f" float nodes: {', '.join(q['excluded'])}"
            table.append([key, "yes" if r.get("valid") else "no", _fmt(r.get("size_bytes", 0) / 1e6, "{:.2f}"),
                          _fmt(None if top1 is None or top1 < 0 else 100 * top1), _fmt(delta, "{:+.2f}"),
                          (f"{lat['ratio']:.2f}x [{lat['ratio_min']:.2f}-{lat['ratio_max']:.2f}]" if lat else ""),
                          _fmt(lat.get("ms"), "{:.2f}"), r.get("seconds", ""), note.strip()])
        out += [bl.md_table(["variant", "valid", "MB", "top-1 %", "Δ points", "speed-up", "ms", "build s", "notes"],
                            table), ""]
    return out


def _tail(data: dict[str, Any], out: list[str]) -> str:
    m = data.get("minilm")
    if m:
        rows = m["rows"]
        base = rows["float"]["spearman"]
        out += ["## MiniLM (all-MiniLM-L6-v2), dynamic int8", "",
                f"STS-B Spearman x100 on the {m['pairs']} half-a pairs (dynamic quantization uses no calibration "
                f"data); latency at batch 1, seq 128. Issue anchor (AVX2): {m['anchor_issue']}.", ""]
        table = []
        for key, r in rows.items():
            lat = r.get("latency", {})
            table.append([key, "yes" if r.get("valid") else "no", _fmt(r["size_bytes"] / 1e6), _fmt(r["spearman"]),
                          _fmt(r["spearman"] - base, "{:+.2f}"), _fmt(r.get("mean_cosine"), "{:.4f}"),
                          (f"{lat['ratio']:.2f}x [{lat['ratio_min']:.2f}-{lat['ratio_max']:.2f}]" if lat else ""),
                          r.get("invalid", "")])
        out += [bl.md_table(["variant", "valid", "MB", "Spearman", "Δ", "cos to float", "speed-up", "notes"], table), ""]
    out += data.get("notes", [])
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=bl.ZOO)
    ap.add_argument("--models", default="mobilenetv2,efficientnet-lite0,squeezenet1.1")
    ap.add_argument("--no-minilm", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--specs", default="quantize;equalize quantize;quantize:calibrate=minmax;fp16",
                    help="our pass lists, ';'-separated, passes space-separated")
    ap.add_argument("--skip-plain", action="store_true", help="leave out (a), quantize_static at its defaults")
    ap.add_argument("--render", action="store_true", help="only re-render the Markdown from the JSON")
    ap.add_argument("--section", default="models",
                    help="JSON key the CNN results go to ('models'; another name adds a follow-up section)")
    ap.add_argument("--out-json", type=Path, default=None,
                    help="write this run's JSON here instead of merging into docs (merge later with --merge)")
    ap.add_argument("--merge", type=Path, default=None, help="merge a --out-json file's sections into the docs JSON")
    args = ap.parse_args(argv)
    if args.render or args.merge:
        data = json.loads((bl.DOCS / f"{STEM}.json").read_text())
        if args.merge:
            extra = json.loads(args.merge.read_text())
            data.setdefault("runs", []).append(extra.get("environment"))
            data.update({k: v for k, v in extra.items() if k not in ("environment", "models")})
        bl.write_report(STEM, render(data), data)
        return 0
    args.specs = [s.split() for s in args.specs.split(";") if s.strip()]
    if not (args.zoo / "models").is_dir():
        log(f"zoo not found at {args.zoo}: skipped")
        return 0
    js = bl.DOCS / f"{STEM}.json"
    data: dict[str, Any] = json.loads(js.read_text()) if js.exists() and args.out_json is None else {}
    data["environment"] = bl.environment(argv if argv is None else [sys.argv[0], *argv])
    data.setdefault(args.section, {})
    for name in [m for m in args.models.split(",") if m]:
        data[args.section][name] = bench_cnn(name, args)
        if args.out_json is not None:
            args.out_json.write_text(json.dumps(data, indent=1, default=bl._json_default) + "\n")
        else:
            bl.write_report(STEM, render(data), data)
    if not args.no_minilm:
        data["minilm"] = bench_minilm(args)
        if args.out_json is not None:
            args.out_json.write_text(json.dumps(data, indent=1, default=bl._json_default) + "\n")
        else:
            bl.write_report(STEM, render(data), data)
    log(f"wrote {bl.DOCS / STEM}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
