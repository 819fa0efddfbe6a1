#!/usr/bin/env python3
"""lowrank and diagonal on the MiniLM sentence encoder (issue #4).

On ``../shared/zoo/models/minilm/model.onnx`` (all-MiniLM-L6-v2; skipped with a message
when absent), one row per setting of ``lowrank`` (energy, fraction) and ``diagonal``:

* layers rewritten (of the MatMul/Gemm candidates) and why the others were not;
* FLOPs and params at batch 1 x 128 tokens (``onnxprune.cost``, ``dims={"seq": 128}``);
* latency ratio to the original: onnxruntime CPU, 1 thread, batch 1 x 128 real tokens,
  the original and every distinct model timed interleaved in one run;
* STS-B Spearman x 100 on the zoo's 690 pairs (``data/sts-b/sts-b-half-a.tsv``: cosine of
  the two ``sentence_embedding`` outputs vs the gold score; the original gives 80.82);
* mean and min cosine similarity of each sentence's embedding to the original's.

Every setting runs as shipped (per-layer ``check-latency`` on) and again with
``check-latency=false``. Writes ``docs/benchmarks/minilm.md`` and ``minilm.json``;
needs ``tokenizers`` (the ``bench`` extra). See tools/README.md for how to rerun it.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from pathlib import Path
from typing import Any

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402
import benchlib_nlp as nlp  # noqa: E402
from bench_lowrank_zoo import layer_summary, shipped, unchecked  # noqa: E402

MODEL = Path("models") / "minilm" / "model.onnx"
SEQ = 128
SETTINGS = ["lowrank:energy=0.5", "lowrank:energy=0.7", "lowrank:energy=0.8", "lowrank:energy=0.9",
            "lowrank:energy=0.95", "lowrank:energy=0.98", "lowrank:energy=0.99", "lowrank:energy=0.995",
            "lowrank:energy=0.999", "lowrank:fraction=0.25", "lowrank:fraction=0.4",
            "diagonal", "diagonal:rank=64"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=bl.ZOO)
    ap.add_argument("--settings", default=";".join(SETTINGS),
                    help="pass specs separated by ';' (as shipped; each also runs with check-latency=false)")
    ap.add_argument("--no-unchecked", action="store_true", help="skip the check-latency=false rows")
    ap.add_argument("--latency-runs", type=int, default=60)
    ap.add_argument("--acc-threads", type=int, default=2, help="threads for the STS-B runs (latency is always 1)")
    ap.add_argument("--batch", type=int, default=32, help="sentences per batch for the STS-B runs")
    ap.add_argument("--out", type=Path, default=bl.DOCS)
    ap.add_argument("--stem", default="minilm")
    args = ap.parse_args(argv)
    if args.latency_runs < 50:
        ap.error("--latency-runs: at least 50 (the issue asks for a median of >= 50 runs)")
    return args


def cost128(proto: onnx.ModelProto) -> dict[str, Any]:
    from onnxprune.cost import model_cost

    try:
        c = model_cost(proto, batch=1, dims={"seq": SEQ})
        return {"flops": int(c.flops), "params": int(c.params), "unknown_shape_nodes": len(c.unknown_shape_nodes)}
    except Exception as exc:
        return {"flops": None, "params": None, "error": bl.first_line(exc)}


class Bench:
    def __init__(self, path: Path, args: argparse.Namespace):
        from onnxprune.model import load_model

        self.args = args
        self.raw = onnx.load(str(path))
        self.base = load_model(path)
        self.cost = cost128(self.raw)
        self.pairs = nlp.load_sts(args.zoo)
        self.sentences = self.pairs.sentences()
        self.tok = nlp.tokenizer(args.zoo)
        self.enc = nlp.Encoder(self.tok, args.batch)
        self.feed = nlp.latency_feed(self.tok, self.pairs, SEQ)
        self.ref_shapes = bl.output_shapes(bl.session(self.raw), self.feed)
        t0 = time.perf_counter()
        self.ref_quality, self.ref_emb = nlp.evaluate(bl.session(self.raw, args.acc_threads), self.enc, self.pairs,
                                                      self.sentences)
        self.eval_seconds = time.perf_counter() - t0
        self.measured: dict[str, dict[str, Any]] = {}
        self.protos: dict[str, onnx.ModelProto] = {}
        self.rows: list[dict[str, Any]] = []

    def evaluate(self, row: dict[str, Any], proto: onnx.ModelProto | None) -> dict[str, Any]:
        if proto is not None:
            digest = hashlib.sha1(proto.SerializeToString(deterministic=True)).hexdigest()
            row["model_sha1"] = digest
            if digest not in self.measured:
                self.measured[digest] = self._measure(proto)
                if self.measured[digest]["valid"]:
                    self.protos[digest] = proto
            row.update(self.measured[digest])
            if not row["valid"]:
                row["bug"] = True
        if row.get("flops") and self.cost["flops"]:
            row["flops_frac"] = row["flops"] / self.cost["flops"]
            row["params_frac"] = row["params"] / self.cost["params"]
        self.rows.append(row)
        q = "" if row.get("spearman") is None else (f" Spearman {row['spearman']:.2f} cos mean "
                                                    f"{row['mean_cosine']:.4f} min {row['min_cosine']:.4f}")
        fl = "" if row.get("flops_frac") is None else f" FLOPs {100 * row['flops_frac']:.1f}%"
        lay = "" if row.get("candidates") is None else f" rewritten {row['rewritten']}/{row['candidates']}"
        why = "" if row.get("valid") else f" INVALID ({row.get('error', '')})"
        print(f"  [minilm] {row['setting']:44s}{lay}{fl}{q} {row.get('seconds', '')}s{why}", flush=True)
        return row

    def _measure(self, proto: onnx.ModelProto) -> dict[str, Any]:
        ok, why, _ = bl.check_valid(proto, self.ref_shapes, self.feed)
        out: dict[str, Any] = {"valid": ok, "error": why}
        if not ok:
            return out
        out.update(cost128(proto))
        try:
            q, _ = nlp.evaluate(bl.session(proto, self.args.acc_threads), self.enc, self.pairs, self.sentences,
                                self.ref_emb)
            out.update(q)
        except Exception as exc:
            out.update(valid=False, error="STS-B run: " + bl.first_line(exc))
        return out

    def run(self, spec: str, group: str) -> dict[str, Any]:
        from onnxprune.api import run_passes

        row: dict[str, Any] = {"setting": spec, "group": group}
        t0 = time.perf_counter()
        try:
            out, records = run_passes(self.base, [spec], verify_each=True)
        except Exception as exc:
            row.update(valid=False, error=bl.first_line(exc), bug=True, seconds=round(time.perf_counter() - t0, 1))
            return self.evaluate(row, None)
        row.update(seconds=round(time.perf_counter() - t0, 1), modified=records[0].modified,
                   **layer_summary(records[0].stats))
        return self.evaluate(row, out)

    def latency(self) -> None:
        raw_digest = hashlib.sha1(self.raw.SerializeToString(deterministic=True)).hexdigest()
        digests = [d for d in self.protos if d != raw_digest]
        sessions = [bl.session(self.raw, 1)] + [bl.session(self.protos[d], 1) for d in digests]
        t0 = time.perf_counter()
        res = bl.latency_ratios(sessions, self.feed, runs=self.args.latency_runs)
        print(f"  [minilm] latency: {len(sessions)} sessions x {self.args.latency_runs} runs interleaved, "
              f"{time.perf_counter() - t0:.0f}s; original median {res[0]['median_ms']:.2f} ms", flush=True)
        self.baseline_ms = res[0]["median_ms"]
        by = {raw_digest: res[0], **dict(zip(digests, res[1:]))}
        for r in self.rows:
            if r.get("model_sha1") in by:
                r["latency"] = by[r["model_sha1"]]
                r["latency_ratio"] = r["latency"]["ratio"]


# ---------------------------------------------------------------------------- report

def _f(x: float | None, fmt: str = "{:.1f}") -> str:
    return "" if x is None else fmt.format(x)


def _why(r: dict) -> str:
    return ", ".join(f"{k} ×{v}" for k, v in sorted(r.get("skip_reasons", {}).items(), key=lambda kv: -kv[1]))


HEAD = ["setting", "rewritten / candidates", "FLOPs %", "params (M)", "latency ratio", "STS-B Spearman",
        "Δ Spearman", "embedding cos mean", "embedding cos min", "mean weight error", "not rewritten because"]


def _cells(r: dict, base: float) -> list[str]:
    if not r.get("valid"):
        return [f"`{r['setting']}`", "", "", "", "", f"**invalid**: {r.get('error', '')[:120]}"] + [""] * 5
    lay = "" if r.get("candidates") is None else f"{r['rewritten']} / {r['candidates']}"
    return [f"`{r['setting']}`", lay, _f(100 * r["flops_frac"]), _f(r["params"] / 1e6, "{:.2f}"),
            _f(r.get("latency_ratio"), "{:.2f}"), _f(r["spearman"], "{:.2f}"), _f(r["spearman"] - base, "{:+.2f}"),
            _f(r.get("mean_cosine", 1.0), "{:.4f}"), _f(r.get("min_cosine", 1.0), "{:.4f}"),
            _f(r.get("mean_rel_error"), "{:.2f}"), _why(r)]


def render(data: dict) -> str:
    L = ["# lowrank and diagonal on MiniLM (all-MiniLM-L6-v2)", ""]
    L += bl.env_lines(data["env"])
    L += [f"* run time: {data['seconds'] / 60:.1f} min", ""]
    m = data.get("minilm")
    if m is None or "skipped" in m:
        return "\n".join(L + [f"Skipped: {m['skipped'] if m else 'no data'}"])
    base = m["baseline"]
    ref = m["reference"]["spearman"]
    ok = abs(ref - nlp.STS_REFERENCE) < 0.005
    L += ["No fine-tuning. FLOPs and params at batch 1 x 128 tokens by `onnxprune.cost` (% of the original). "
          "Latency: onnxruntime CPU, 1 thread, batch 1 x 128 real tokens (the STS-B sentences joined and "
          "truncated, mask all ones); the original and every distinct model timed interleaved in one run, median "
          f"of {data['args']['latency_runs']} runs; ratio = model / original (< 1 is faster). STS-B: the zoo's "
          "690 pairs, tokenised with the model's `tokenizer.json` (truncation 128, pad id 0, padded per batch "
          "of sentences sorted by length), Spearman x 100 between the cosine of the two `sentence_embedding` "
          "outputs and the gold score. *embedding cos*: per sentence (all distinct sentences), cosine of the "
          "compressed model's embedding to the original's, mean and min. *rewritten / candidates*: MatMul/Gemm "
          "nodes replaced / looked at (12 of the 48 MatMuls are attention products with no constant weight). "
          "*mean weight error*: mean ‖W − W_approx‖ / ‖W‖ of the rewritten layers.", "",
          f"Original: {base['flops'] / 1e9:.3f} GFLOPs at 128 tokens, {base['params'] / 1e6:.2f} M params, "
          f"{m['baseline_ms']:.1f} ms (1 thread); STS-B Spearman **{ref:.2f}** (zoo README: "
          f"{nlp.STS_REFERENCE:.2f}{', reproduced' if ok else ', **not reproduced**'}). One STS-B evaluation "
          f"({m['n_sentences']} sentences) takes {m['eval_seconds']:.1f} s. Run time {m['seconds'] / 60:.1f} min.", ""]
    b = next(r for r in m["rows"] if r["group"] == "baseline")
    as_shipped = [r for r in m["rows"] if r["group"] == "shipped"]
    L += ["**As shipped** (`check-latency` on):", "",
          bl.md_table(HEAD, [_cells(b, ref)] + [_cells(r, ref) for r in as_shipped]), ""]
    free = [r for r in m["rows"] if r["group"] == "unchecked"]
    if free:
        same = {r["setting"]: r.get("model_sha1") for r in as_shipped}
        differ = [r for r in free if r.get("model_sha1") is None
                  or r["model_sha1"] != same.get(shipped(r["setting"]))]
        alike = [r["setting"] for r in free if r not in differ]
        L += ["**`check-latency=false`** (rows whose model differs from the as-shipped one):", "",
              bl.md_table(HEAD, [_cells(r, ref) for r in differ]) if differ else "(none)", ""]
        if alike:
            L += ["Same model as shipped: " + ", ".join(f"`{s}`" for s in alike) + ".", ""]
    bugs = [r for r in m["rows"] if r.get("bug")]
    L += ["## Failures", ""]
    L += [f"* `{r['setting']}`: {r.get('error')}" for r in bugs] or ["None: every setting produced a valid model."]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    logging.disable(logging.WARNING)
    args = parse_args(argv)
    t0 = time.perf_counter()
    env = bl.environment()
    path = args.zoo / MODEL
    need = [path, args.zoo / nlp.STS_FILE, args.zoo / nlp.TOKENIZER_FILE]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        print(f"[minilm] skipped: {', '.join(missing)} absent", flush=True)
        result: dict[str, Any] = {"skipped": f"{', '.join(missing)} absent"}
    else:
        b = Bench(path, args)
        print(f"[minilm] original: Spearman {b.ref_quality['spearman']:.2f} (README {nlp.STS_REFERENCE}), "
              f"{len(b.sentences)} sentences in {b.eval_seconds:.1f}s", flush=True)
        b.evaluate({"setting": "original", "group": "baseline"}, b.raw)
        specs = [s for s in args.settings.split(";") if s.strip()]
        for spec in specs:
            b.run(spec, "shipped")
        if not args.no_unchecked:
            for spec in specs:
                b.run(unchecked(spec), "unchecked")
        b.latency()
        result = {"baseline": b.cost, "reference": b.ref_quality, "baseline_ms": b.baseline_ms,
                  "n_pairs": len(b.pairs.gold), "n_sentences": len(b.sentences),
                  "eval_seconds": round(b.eval_seconds, 1), "rows": b.rows,
                  "seconds": round(time.perf_counter() - t0, 1)}
    data = {"env": env, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "minilm": result, "seconds": round(time.perf_counter() - t0, 1)}
    md = render(data)
    print(md)
    paths = bl.write_report(args.stem, md, data, args.out)
    print(f"wrote {paths[0]} and {paths[1]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
