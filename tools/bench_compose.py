#!/usr/bin/env python3
"""Composing passes end to end through the CLI on every zoo model and a ResNet-50 export (issue #4).

Runs ``onnxprune MODEL --passes prune-channels:ratio=0.2 tucker:energy=0.9
lowrank:energy=0.9 -o OUT --report OUT.json --no-validate`` as a subprocess on mnist-8,
squeezenet1.1, mobilenetv2, efficientnet-lite0 and minilm from ``../shared/zoo`` and on
the torchvision ResNet-50 export (random weights) at ``/work/archs`` (each skipped with a
message when absent), then, on what the CLI wrote:

* exit code, wall time, the exact error line of a failure;
* valid (onnx.checker full, onnxruntime session, one run with the original's output shapes);
* FLOPs and params after each pass (the report's ``passes[i].cost_after``: batch 1,
  other symbolic dims as 1) and each pass's own stats;
* latency ratio to the original (onnxruntime CPU, 1 thread, batch 1, interleaved, median);
* quality before/after: top-1 on the zoo's 1000 images (ImageNet models), MNIST test
  accuracy (mnist-8), STS-B Spearman and embedding cosine (minilm), output cosine and
  top-1 agreement on random inputs (ResNet-50, random weights).

Writes ``docs/benchmarks/compose.md`` and ``compose.json``; see tools/README.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402

PASSES = ["prune-channels:ratio=0.2", "tucker:energy=0.9", "lowrank:energy=0.9"]
IMAGENET = {"squeezenet1.1": "caffe-bgr", "mobilenetv2": "torchvision", "efficientnet-lite0": "efficientnet-lite"}
MODELS = ["mnist-8", "squeezenet1.1", "mobilenetv2", "efficientnet-lite0", "minilm", "resnet50"]
SLOW_PASS_S = 60.0  # a pass slower than this is named under the table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=bl.ZOO)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--passes", nargs="+", default=PASSES, metavar="PASS")
    ap.add_argument("--resnet50", type=Path, default=Path("/work/archs/torchvision__resnet50.onnx"))
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per CLI run")
    ap.add_argument("--latency-runs", type=int, default=60)
    ap.add_argument("--acc-threads", type=int, default=2, help="threads for the accuracy runs (latency is always 1)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images (quick runs)")
    ap.add_argument("--out", type=Path, default=bl.DOCS)
    ap.add_argument("--stem", default="compose")
    args = ap.parse_args(argv)
    if args.latency_runs < 50:
        ap.error("--latency-runs: at least 50")
    return args


def model_path(name: str, args: argparse.Namespace) -> Path:
    if name == "resnet50":
        return args.resnet50
    if name == "minilm":
        return args.zoo / "models" / "minilm" / "model.onnx"
    return args.zoo / "models" / f"{name}.onnx"


# ---------------------------------------------------------------------------- quality

class Quality:
    """Per model: a batch-1 feed for validity and timing, a cost function and a quality metric."""

    def __init__(self, name: str, raw: onnx.ModelProto, args: argparse.Namespace):
        self.name, self.raw, self.args = name, raw, args
        self.kind = ("imagenet" if name in IMAGENET else name if name in ("mnist-8", "minilm") else "random")
        if self.kind == "imagenet":
            from onnxprune.data import input_specs, parse_recipe

            self.images = bl.image_set(args.zoo / "data" / "imagenet-sample", limit=args.limit)
            self.recipe = parse_recipe(IMAGENET[name])
            spec = input_specs(raw)[0]
            self.batch = spec.shape[0] if isinstance(spec.shape[0], int) else 50
            self.feed = {spec.name: next(self.images.batches(self.recipe, 1))}
        elif self.kind == "mnist-8":
            from onnxprune.data import load_dataset

            idx = args.zoo / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
            self.data = load_dataset(raw, idx, batch_size=1, limit=args.limit)
            self.feed = self.data.batches[0]
        elif self.kind == "minilm":
            import benchlib_nlp as nlp

            self.nlp = nlp
            self.pairs = nlp.load_sts(args.zoo)
            self.sentences = self.pairs.sentences()
            self.enc = nlp.Encoder(nlp.tokenizer(args.zoo))
            self.feed = nlp.latency_feed(self.enc.tok, self.pairs)
        else:
            self.feed = bl.random_feed(raw, batch=1)
            self.eval_feed = bl.random_feed(raw, batch=8, seed=1)
        self.ref_shapes = bl.output_shapes(bl.session(raw), self.feed)
        self.before, self.ref = self.measure(raw)

    def cost(self, proto: onnx.ModelProto) -> dict[str, Any]:
        if self.kind != "minilm":
            return bl.cost(proto)
        from onnxprune.cost import model_cost

        c = model_cost(proto, batch=1, dims={"seq": 128})
        return {"flops": int(c.flops), "params": int(c.params), "unknown_shape_nodes": len(c.unknown_shape_nodes)}

    def measure(self, proto: onnx.ModelProto) -> tuple[dict[str, Any], Any]:
        """The quality figures of ``proto`` and what a later model is compared with."""
        sess = bl.session(proto, self.args.acc_threads)
        if self.kind == "imagenet":
            return {"top1": bl.top1(sess, self.images, self.recipe, self.batch)}, None
        if self.kind == "mnist-8":
            from onnxprune.validate import accuracy

            name = sess.get_inputs()[0].name
            outs = [sess.run(None, {name: b[name]})[0] for b in self.data.batches]
            return {"accuracy": accuracy(outs, self.data.labels)}, None
        if self.kind == "minilm":
            q, emb = self.nlp.evaluate(sess, self.enc, self.pairs, self.sentences, getattr(self, "ref", None))
            return q, emb
        names = [o.name for o in sess.get_outputs()]
        outs = sess.run(names, self.eval_feed)
        return {}, outs

    def compare(self, proto: onnx.ModelProto) -> dict[str, Any]:
        q, outs = self.measure(proto)
        if self.kind == "random":
            from onnxprune.validate import compare_outputs

            names = [o.name for o in self.raw.graph.output]
            m = compare_outputs(dict(zip(names, self.ref)), dict(zip(names, outs)))
            first = m[names[0]]
            q = {"output_cosine": first.get("cosine"), "top1_agreement": first.get("top1_agreement"),
                 "max_rel": first.get("max_rel")}
        return q


def _quality_text(kind: str, before: dict, after: dict | None) -> str:
    a = after or {}
    if kind == "imagenet":
        return f"top-1 {100 * before['top1']:.1f} → " + (f"{100 * a['top1']:.1f}" if "top1" in a else "–")
    if kind == "mnist-8":
        got = f"{100 * a['accuracy']:.2f}" if "accuracy" in a else "–"
        return f"accuracy {100 * before['accuracy']:.2f} → {got}"
    if kind == "minilm":
        if "spearman" not in a:
            return f"STS-B {before['spearman']:.2f} → –"
        return (f"STS-B {before['spearman']:.2f} → {a['spearman']:.2f}; embedding cos mean {a['mean_cosine']:.3f}, "
                f"min {a['min_cosine']:.3f}")
    if not a:
        return "–"
    agree = "" if a.get("top1_agreement") is None else f", top-1 agreement {100 * a['top1_agreement']:.0f} %"
    return f"output cosine {a['output_cosine']:.4f}{agree} (8 random inputs)"


# ---------------------------------------------------------------------------- one model

def run_cli(path: Path, passes: list[str], workdir: Path, timeout: float) -> dict[str, Any]:
    out, rep = workdir / "out.onnx", workdir / "report.json"
    cmd = [sys.executable, "-m", "onnxprune", str(path), "--passes", *passes, "-o", str(out),
           "--report", str(rep), "--no-validate", "-q"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=bl.REPO)
    except subprocess.TimeoutExpired:
        return {"rc": None, "error": f"timeout after {timeout:.0f}s", "wall_s": round(time.perf_counter() - t0, 1)}
    res: dict[str, Any] = {"rc": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1),
                           "command": "onnxprune MODEL --passes " + " ".join(passes) + " -o OUT --report R.json "
                                      "--no-validate -q"}
    err = [ln for ln in proc.stderr.splitlines() if ln.strip() and "%|" not in ln]
    if proc.returncode != 0:
        res["error"] = err[-1] if err else f"exit code {proc.returncode}, no message"
        res["stderr_tail"] = proc.stderr[-3000:]
        return res
    res["report"] = json.loads(rep.read_text())
    res["out"] = out
    return res


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    path = model_path(name, args)
    if not path.exists():
        print(f"[{name}] skipped: {path} absent", flush=True)
        return {"model": name, "skipped": f"{path} absent"}
    if name in IMAGENET and not (args.zoo / "data" / "imagenet-sample").is_dir():
        return {"model": name, "skipped": "data/imagenet-sample absent"}
    print(f"[{name}] {path.name}: onnxprune --passes {' '.join(args.passes)} ...", flush=True)
    raw = onnx.load(str(path))
    row: dict[str, Any] = {"model": name, "file": str(path), "passes": args.passes}
    with tempfile.TemporaryDirectory(prefix="bench-compose-") as tmp:
        cli = run_cli(path, args.passes, Path(tmp), args.timeout)
        row.update({k: v for k, v in cli.items() if k not in ("report", "out")})
        q = Quality(name, raw, args)
        row["kind"] = q.kind
        row["before"] = {**q.cost(raw), **q.before}
        if "report" not in cli:
            row.update(valid=False, bug=True)
            print(f"[{name}] FAILED (exit {cli['rc']}): {cli['error']}", flush=True)
            return row
        rep = cli["report"]
        row["cli_seconds"] = rep.get("seconds")
        row["report_before"] = {k: rep["before"].get(k) for k in ("flops", "params")}
        row["pass_records"] = [_pass_row(p) for p in rep["passes"]]
        out = onnx.load(str(cli["out"]))
    ok, why, _ = bl.check_valid(out, q.ref_shapes, q.feed)
    row.update(valid=ok, error=why or None)
    if not ok:
        row["bug"] = True
        print(f"[{name}] INVALID output: {why}", flush=True)
        return row
    row["after"] = {**q.cost(out), **q.compare(out)}
    lat = bl.latency_ratios([bl.session(raw, 1), bl.session(out, 1)], q.feed, runs=args.latency_runs)
    row["latency"] = lat[1]
    row["baseline_ms"] = lat[0]["median_ms"]
    row["latency_ratio"] = lat[1]["ratio"]
    row["quality"] = _quality_text(q.kind, q.before, {k: v for k, v in row["after"].items()})
    print(f"[{name}] ok in {row['wall_s']}s: FLOPs {100 * row['after']['flops'] / row['before']['flops']:.1f}%, "
          f"latency ratio {row['latency_ratio']:.2f}, {row['quality']}", flush=True)
    return row


def _pass_row(p: dict[str, Any]) -> dict[str, Any]:
    st = p.get("stats") or {}
    keep = ("channels_removed", "round_to", "reverted", "latency_tried", "rewritten", "skipped",
            "groups", "prunable_groups")
    ca = p.get("cost_after") or {}
    return {"name": p["name"], "modified": p["modified"], "seconds": p.get("seconds"),
            "flops_after": ca.get("flops"), "params_after": ca.get("params"),
            "stats": {k: st[k] for k in keep if k in st}}


# ---------------------------------------------------------------------------- report

def _pct(x: float | None, base: float | None) -> str:
    return "" if x is None or not base else f"{100 * x / base:.1f}"


def _pass_note(p: dict[str, Any]) -> str:
    st = p["stats"]
    if p["name"] == "prune-channels":
        if st.get("reverted"):
            return "reverted (latency guard)"
        return f"{st.get('channels_removed', 0)} channels removed (round-to {st.get('round_to')})"
    if "rewritten" in st:
        return f"{st['rewritten']} layer{'' if st['rewritten'] == 1 else 's'} rewritten"
    return "modified" if p["modified"] else "unchanged"


def render(data: dict) -> str:
    passes = data["args"]["passes"]
    L = ["# Composing passes end to end: " + " → ".join(f"`{p}`" for p in passes), ""]
    L += bl.env_lines(data["env"])
    L += [f"* run time: {data['seconds'] / 60:.1f} min", "",
          "Each model goes through the CLI in a fresh process: `onnxprune MODEL --passes "
          + " ".join(passes) + " -o OUT --report R.json --no-validate -q` (verification after every pass is on). "
          "*valid*: exit code 0, then onnx.checker (full), an onnxruntime session and one run giving the "
          "original's output shapes. *FLOPs/params after each pass*: the report's `passes[i].cost_after`, as % "
          "of the report's `before` (batch 1; the CLI counts other symbolic dims as 1, so MiniLM's per-pass "
          "figures are at 1 token; its *final* column is at 128 tokens). *latency ratio*: compressed / original, "
          f"onnxruntime CPU, 1 thread, batch 1 (MiniLM 1 x 128 tokens), interleaved, median of "
          f"{data['args']['latency_runs']} runs. *CLI time*: wall time of the subprocess (Python start and "
          "imports included); *per pass*: each pass's time in the report (its verification included). Layer "
          "decisions of the latency checks come partly from onnxprune's cache "
          "(`~/.cache/onnxprune/latency.json`), so a cold run is slower.", ""]
    head = (["model", "valid", "CLI time (s)", "per pass (s)"]
            + [f"after `{p.split(':')[0]}`: FLOPs % / params %" for p in passes]
            + ["final FLOPs %", "latency ratio", "quality (original → compressed)"])
    rows = []
    for m in data["models"]:
        if "skipped" in m:
            rows.append([m["model"], f"skipped: {m['skipped']}"] + [""] * (len(head) - 2))
            continue
        if not m.get("valid"):
            why = m.get("error") or ""
            rows.append([m["model"], f"**no** (exit {m.get('rc')}): {why}", m.get("wall_s")] + [""] * (len(head) - 3))
            continue
        rb = m["report_before"]
        cells = [f"{_pct(p['flops_after'], rb['flops'])} / {_pct(p['params_after'], rb['params'])} "
                 f"({_pass_note(p)})" for p in m["pass_records"]]
        times = " / ".join(f"{p['seconds']:.1f}" for p in m["pass_records"])
        rows.append([m["model"], "yes", m["wall_s"], times] + cells
                    + [_pct(m["after"]["flops"], m["before"]["flops"]), f"{m['latency_ratio']:.2f}", m["quality"]])
    L += [bl.md_table(head, rows), ""]
    L += ["Absolute figures of the originals:", ""]
    L += [bl.md_table(["model", "FLOPs (batch 1)", "params", "latency (1 thread, ms)"],
                      [[m["model"],
                        f"{m['before']['flops'] / 1e6:.1f} M" + (" (128 tokens)" if m["model"] == "minilm" else ""),
                        f"{m['before']['params'] / 1e6:.3f} M", f"{m['baseline_ms']:.2f}"]
                       for m in data["models"] if m.get("valid")]), ""]
    slow = [(m["model"], p) for m in data["models"] for p in m.get("pass_records", []) if p["seconds"] > SLOW_PASS_S]
    if slow:
        L += [f"Passes that took over {SLOW_PASS_S:.0f} s: "
              + "; ".join(f"{name} `{p['name']}` {p['seconds']:.0f} s" for name, p in slow) + ".", ""]
    bugs = [m for m in data["models"] if m.get("bug")]
    L += ["## Failures", ""]
    L += [f"* {m['model']}: exit {m.get('rc')}: `{m.get('error')}`" for m in bugs] or \
        ["None: every composition that ran exited 0 and wrote a valid model."]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    logging.disable(logging.WARNING)
    args = parse_args(argv)
    t0 = time.perf_counter()
    env = bl.environment()
    models = [run_model(n, args) for n in args.models.split(",") if n]
    data = {"env": env, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "models": models, "seconds": round(time.perf_counter() - t0, 1)}
    md = render(data)
    print(md)
    paths = bl.write_report(args.stem, md, data, args.out)
    print(f"wrote {paths[0]} and {paths[1]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
