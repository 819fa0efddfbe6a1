#!/usr/bin/env python3
"""Coverage of channel pruning on public architectures: onnxprune vs onnxsim (issue #3).

For every model exported by ``tools/export_models.py`` (``--archs``, default /work/archs,
read through its manifest.json; the files stay there), in a child process each, with a
time and memory limit:

* **onnxprune**: ``load_model``, ``channels.analyze`` (groups, prunable, blockers, seconds),
  then ``prune-channels:ratio=0.3,latency-guard=false`` through ``run_passes`` (verified
  after the pass); ok = no error, and the result runs in onnxruntime with the original's
  output shapes on a random input (batch 2 when the batch dim is dynamic).
* **onnxsim**: ``apply_structured_pruning(sparsity=0.3)`` on the file as ``onnx.load``
  reads it; valid = onnx.checker full check, an onnxruntime session, the original's
  output shapes on the same random input. A model it leaves unchanged is valid with 0 %.

FLOPs are onnxprune's cost model at batch 1. Results are cached per model file and tool
in ``build/bench-cache/coverage/`` (invalidated when the file, the onnxprune sources or
the onnxsim version change), so a rerun only measures what is new. Writes
``docs/benchmarks/coverage.md`` and ``coverage.json``.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402

RATIO = 0.3
WORKER_VERSION = 1  # bump when what a worker measures changes (invalidates cached results)
OURS_SPEC = f"prune-channels:ratio={RATIO:g},latency-guard=false"


# ---------------------------------------------------------------------------- workers (child processes)

def _quiet() -> None:
    import logging

    logging.disable(logging.WARNING)


def _feed_and_shapes(proto, batch_dynamic: bool):
    feed = bl.random_feed(proto, batch=2 if batch_dynamic else 1, seed=0)
    ref = bl.session(proto)
    return feed, bl.output_shapes(ref, feed)


def _dynamic_batch(proto) -> bool:
    from onnxprune.data import input_specs

    specs = input_specs(proto)
    return bool(specs) and all(s.shape and not isinstance(s.shape[0], int) for s in specs)


def reason_kind(reason: str) -> str:
    """A blocking reason without the tensor/node names and numbers in it."""
    r = re.sub(r"'[^']*'|\"[^\"]*\"", "<name>", reason)
    r = re.sub(r"\S*/\S*|\S*_output_\d+\S*|\bonnx::\S+", "<tensor>", r)
    r = re.sub(r"\bunk__\d+\b", "<sym>", r)
    r = re.sub(r"\b\d+\b", "N", r)
    return r.strip()


def ours_worker(path: str) -> dict[str, Any]:
    _quiet()
    import onnx

    from onnxprune.api import run_passes
    from onnxprune.channels.analysis import analyze
    from onnxprune.model import Model, load_model

    out: dict[str, Any] = {"stage": "load"}
    t0 = time.perf_counter()
    try:
        proto = load_model(path)
        out["load_s"] = round(time.perf_counter() - t0, 2)
        out["stage"] = "cost"
        out["before"] = bl.cost(proto)
        out["stage"] = "analyze"
        t1 = time.perf_counter()
        a = analyze(Model(proto))
        out["analysis_s"] = round(time.perf_counter() - t1, 3)
        d = a.to_dict()
        kinds: collections.Counter[str] = collections.Counter()
        examples: dict[str, dict] = {}
        for g in d["groups"]:
            for k in {reason_kind(b["reason"]) for b in g["blocked"]}:
                kinds[k] += 1
            for b in g["blocked"]:
                examples.setdefault(reason_kind(b["reason"]), b)
        out.update(groups=d["n_groups"], prunable_groups=d["n_prunable_groups"],
                   blocked_groups=sum(1 for g in d["groups"] if g["blocked"]),
                   channels=sum(g["channels"] for g in d["groups"]),
                   prunable_channels=sum(g["prunable_channels"] for g in d["groups"]),
                   reasons=dict(kinds.most_common()), reason_examples=examples)
        out["stage"] = "prune"
        t1 = time.perf_counter()
        pruned, records = run_passes(proto, [OURS_SPEC], verify_each=True)
        out["pass_s"] = round(time.perf_counter() - t1, 2)
        st = records[0].stats
        out.update(modified=records[0].modified, channels_removed=st.get("channels_removed"))
        out["stage"] = "check"
        raw = onnx.load(path)
        feed, shapes = _feed_and_shapes(raw, _dynamic_batch(raw))
        ok, why, _ = bl.check_valid(pruned, shapes, feed)
        out["valid"], out["error"] = ok, why
        if ok:
            out["after"] = bl.cost(pruned)
    except Exception as exc:
        import traceback

        out.update(valid=False, error=f"{out['stage']}: {bl.first_line(exc)}", error_detail=str(exc)[:2000],
                   traceback=traceback.format_exc()[-3000:])
    out["total_s"] = round(time.perf_counter() - t0, 2)
    return out


def onnxsim_worker(path: str) -> dict[str, Any]:
    _quiet()
    import onnx

    out: dict[str, Any] = {"stage": "load"}
    t0 = time.perf_counter()
    try:
        raw = onnx.load(path)
        out["before"] = bl.cost(raw)
        out["stage"] = "prune"
        t1 = time.perf_counter()
        pruned = bl.onnxsim_prune(raw, RATIO)
        out["pass_s"] = round(time.perf_counter() - t1, 2)
        old = {t.name: tuple(t.dims) for t in raw.graph.initializer}
        out["tensors_reshaped"] = sum(1 for t in pruned.graph.initializer if old.get(t.name, tuple(t.dims)) != tuple(t.dims))
        out["unchanged"] = pruned.SerializeToString(deterministic=True) == raw.SerializeToString(deterministic=True)
        out["stage"] = "check"
        feed, shapes = _feed_and_shapes(raw, _dynamic_batch(raw))
        ok, why, _ = bl.check_valid(pruned, shapes, feed)
        out["valid"], out["error"] = ok, why
        if ok:
            out["after"] = bl.cost(pruned)
    except Exception as exc:
        out.update(valid=False, error=f"{out['stage']}: {bl.first_line(exc)}", error_detail=str(exc)[:2000])
    out["total_s"] = round(time.perf_counter() - t0, 2)
    return out


WORKERS = {"onnxprune": ours_worker, "onnxsim": onnxsim_worker}


# ---------------------------------------------------------------------------- driver

def _code_version() -> str:
    """Hash of the code the onnxprune worker runs: the package and the prune-channels pass
    (other passes are not involved, and engineers edit them independently)."""
    h = hashlib.sha256()
    files = sorted((bl.REPO / "onnxprune").rglob("*.py"))
    files += [bl.REPO / "passes" / "__init__.py", bl.REPO / "passes" / "prune_channels.py"]
    for p in files:
        if p.exists():
            h.update(str(p.relative_to(bl.REPO)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _onnxsim_version() -> str:
    try:
        import onnxsim
        return str(getattr(onnxsim, "__version__", "?"))
    except ImportError:
        return "absent"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", type=Path, default=Path("/work/archs"))
    ap.add_argument("--names", default="", help="only these models (name or file stem), comma-separated")
    ap.add_argument("--tools", default="onnxprune,onnxsim")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per model and tool")
    ap.add_argument("--mem-gb", type=float, default=8.0, help="address-space limit of each child")
    ap.add_argument("--max-params", type=float, default=100e6, help="skip bigger models (recorded as skipped)")
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--out", type=Path, default=bl.DOCS)
    ap.add_argument("--stem", default="coverage")
    return ap.parse_args(argv)


def _reduction(r: dict | None) -> float | None:
    if not r or not r.get("valid") or not (r.get("before") or {}).get("flops") or not (r.get("after") or {}).get("flops"):
        return None
    return 1 - r["after"]["flops"] / r["before"]["flops"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    env = bl.environment()
    manifest_path = args.archs / "manifest.json"
    if not manifest_path.exists():
        print(f"{manifest_path} absent: nothing to measure (export models with tools/export_models.py)")
        return 0
    manifest = json.loads(manifest_path.read_text())
    names = {n for n in args.names.split(",") if n}
    tools = [t for t in args.tools.split(",") if t]
    versions = {"onnxprune": _code_version(), "onnxsim": _onnxsim_version(), "worker": WORKER_VERSION}
    cache_dir = bl.CACHE / "coverage"
    cache_dir.mkdir(parents=True, exist_ok=True)
    results, not_exported = [], []
    todo = [m for m in manifest if not names or m["name"] in names or Path(m.get("file", "")).stem in names]
    for i, m in enumerate(todo, 1):
        f = args.archs / m.get("file", "")
        rec: dict[str, Any] = {k: m.get(k) for k in ("source", "name", "file", "params", "input_shape", "exporter", "opset")}
        if m.get("status") != "ok" or not f.is_file():
            not_exported.append({**rec, "status": m.get("status"), "error": m.get("error", "")})
            continue
        if m.get("params") and m["params"] > args.max_params:
            rec["skipped"] = f"{m['params'] / 1e6:.0f} M params > --max-params {args.max_params / 1e6:.0f} M"
            print(f"[{i}/{len(todo)}] {m['source']}/{m['name']}: skipped ({rec['skipped']})", flush=True)
            results.append(rec)
            continue
        st = f.stat()
        for tool in tools:
            key = hashlib.sha256(json.dumps([f.name, st.st_size, st.st_mtime_ns, versions[tool],
                                                 WORKER_VERSION, tool]).encode()).hexdigest()[:16]
            cpath = cache_dir / f"{f.stem}__{tool}__{key}.json"
            if cpath.exists() and not args.no_cache:
                res = json.loads(cpath.read_text())
                res["cached"] = True
            else:
                res = bl.run_limited(WORKERS[tool], (str(f),), timeout=args.timeout, mem_gb=args.mem_gb)
                res = {**res.pop("value", {}), **{k: v for k, v in res.items() if k != "ok"}} if res["ok"] else \
                    {"valid": False, "error": res["error"], "seconds": res["seconds"], "maxrss_mb": res.get("maxrss_mb"),
                     "timeout": res.get("timeout", False)}
                res["mem_gb"] = args.mem_gb
                if not res.get("timeout"):  # a timeout may pass on a quieter machine: retry next run
                    cpath.write_text(json.dumps(res, default=bl._json_default))
            rec[tool] = res
        line = [f"[{i}/{len(todo)}] {m['source']}/{m['name']} ({(m.get('params') or 0) / 1e6:.1f} M):"]
        for tool in tools:
            r = rec[tool]
            red = _reduction(r)
            status = "ok" if r.get("valid") else "FAIL"
            line.append(f"{tool} {status}" + (f" -{100 * red:.1f}%" if red is not None else "")
                        + ("" if r.get("valid") else f" ({r.get('error', '')[:120]})")
                        + f" {r.get('seconds', 0):.0f}s" + (" (cached)" if r.get("cached") else ""))
        if "onnxprune" in rec:
            line.append(f"groups {rec['onnxprune'].get('prunable_groups')}/{rec['onnxprune'].get('groups')}")
        print(" ".join(line), flush=True)
        results.append(rec)
    data = {"env": env, "ratio": RATIO, "ours_spec": OURS_SPEC, "archs": str(args.archs),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "versions": versions, "models": results, "not_exported": not_exported,
            "seconds": round(time.perf_counter() - t_start, 1)}
    data["summary"] = summarize(results, tools)
    md = render(data, tools)
    print(md)
    paths = bl.write_report(args.stem, md, data, args.out)
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


# ---------------------------------------------------------------------------- report

EXPECTED = {"model output", "model input"}


def main_blocker(r: dict | None) -> str:
    reasons = (r or {}).get("reasons") or {}
    ranked = [k for k, _ in sorted(reasons.items(), key=lambda kv: -kv[1]) if k not in EXPECTED]
    return f"{ranked[0]} ({reasons[ranked[0]]})" if ranked else ""


def summarize(results: list[dict], tools: list[str]) -> dict[str, Any]:
    measured = [r for r in results if "skipped" not in r]
    s: dict[str, Any] = {"models": len(results), "measured": len(measured), "skipped": len(results) - len(measured)}
    for t in tools:
        reds = [_reduction(r.get(t)) for r in measured]
        valid = [x for x in reds if x is not None]
        s[t] = {
            "valid": sum(1 for r in measured if (r.get(t) or {}).get("valid")),
            "failed": sum(1 for r in measured if not (r.get(t) or {}).get("valid")),
            "reduced": sum(1 for x in valid if x > 1e-9),
            "median_reduction_valid": statistics.median(valid) if valid else None,
            "median_reduction_reduced": statistics.median([x for x in valid if x > 1e-9]) if any(x > 1e-9 for x in valid) else None,
            "median_reduction_all": statistics.median([x or 0.0 for x in reds]) if reds else None,
            "timeouts": sum(1 for r in measured if (r.get(t) or {}).get("timeout")),
        }
    kinds: collections.Counter[str] = collections.Counter()
    models: collections.Counter[str] = collections.Counter()
    example: dict[str, str] = {}
    for r in measured:
        reasons = (r.get("onnxprune") or {}).get("reasons") or {}
        for k, n in reasons.items():
            kinds[k] += n
            models[k] += 1
            example.setdefault(k, r["name"])
    s["reasons"] = [{"reason": k, "groups": n, "models": models[k], "example_model": example[k]}
                    for k, n in kinds.most_common()]
    return s


def _limits(data: dict, tools: list[str]) -> str:
    """The memory limits the results were measured under (cached results keep theirs)."""
    by: dict[float, list[str]] = {}
    for r in data["models"]:
        for t in tools:
            if t in r:
                by.setdefault(r[t].get("mem_gb", 8.0), []).append(f"{r['name']} ({t})")
    if len(by) <= 1:
        return f"{next(iter(by), data['args']['mem_gb']):g} GB"
    common = max(by, key=lambda k: len(by[k]))
    rest = "; ".join(f"{k:g} GB for " + ", ".join(v) for k, v in by.items() if k != common)
    return f"{common:g} GB ({rest})"


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def render(data: dict, tools: list[str]) -> str:
    s = data["summary"]
    L = ["# Channel-pruning coverage on public architectures: onnxprune vs onnxsim", ""]
    L += bl.env_lines(data["env"])
    L += [f"* models: {data['archs']} (random weights, BN folded and randomized by tools/export_models.py; "
          "see tools/README.md)",
          f"* run time: {data['seconds'] / 60:.1f} min (results cached per model; this includes cached ones)", "",
          f"onnxprune: `{data['ours_spec']}` via `run_passes` (verification on), then the result must run in "
          "onnxruntime with the original's output shapes on a random input (batch 2 when the batch dim is "
          f"dynamic). onnxsim: `apply_structured_pruning(model, sparsity={data['ratio']:g})`, valid = "
          "`onnx.checker` full check + onnxruntime session + same output shapes on the same input; a model it "
          "leaves unchanged is valid with 0 % reduction. FLOPs at batch 1 by `onnxprune.cost`. Each model and "
          f"tool ran in its own process ({data['args']['timeout']:.0f} s, {_limits(data, tools)} address-space "
          f"limit); models over {data['args']['max_params'] / 1e6:.0f} M parameters were skipped.", "",
          "## Summary", ""]
    rows = []
    for t in tools:
        x = s[t]
        rows.append([t, f"{x['valid']} / {s['measured']}", x["failed"], x["timeouts"], f"{x['reduced']} / {s['measured']}",
                     _pct(x["median_reduction_all"]), _pct(x["median_reduction_reduced"])])
    L += [bl.md_table(["tool", "valid", "failed", "of which timeouts", "valid with > 0 % FLOPs cut",
                       "median FLOPs cut, all measured (failures = 0) %", "median FLOPs cut where > 0 %"], rows), ""]
    L += [f"{s['models']} models in the manifest with a file; {s['skipped']} skipped by size; "
          f"{len(data['not_exported'])} not exported (failed or skipped by the exporter).", ""]
    both = [r for r in data["models"] if "skipped" not in r and all(t in r for t in tools)]
    if len(tools) == 2 and both:
        a, b = tools
        more = sum(1 for r in both if (_reduction(r[a]) or 0) > (_reduction(r[b]) or 0) + 1e-9)
        less = sum(1 for r in both if (_reduction(r[a]) or 0) + 1e-9 < (_reduction(r[b]) or 0))
        L += [f"Per model, {a} cuts more FLOPs than {b} on {more}, fewer on {less}, the same on "
              f"{len(both) - more - less} (failures count as 0 %). The two tools' ratios do not mean the same "
              "thing (see tools/ONNXSIM_PRUNING_NOTES.md and the README), so compare coverage, not amounts.", ""]
    L += ["## Why onnxprune leaves groups unpruned", "",
          "Each blocked group counts once per distinct reason (names and numbers removed). "
          "`model output` blocks the classifier's own channels in every model, as it should.", ""]
    L += [bl.md_table(["reason", "groups", "models", "e.g."],
                      [[x["reason"], x["groups"], x["models"], x["example_model"]] for x in s["reasons"][:25]]), ""]
    fails = [(r, t) for r in data["models"] for t in tools if t in r and not r[t].get("valid")]
    if fails:
        L += ["## Failures", ""]
        L += [bl.md_table(["tool", "model", "error"],
                          [[t, f"{r['source']}/{r['name']}", (r[t].get("error") or "")[:240]] for r, t in fails]), ""]
    L += ["## Per model", ""]
    rows = []
    for r in data["models"]:
        if "skipped" in r:
            rows.append([r["source"], r["name"], f"{(r['params'] or 0) / 1e6:.1f}", "skipped", "", "skipped", "", "",
                         r["skipped"], ""])
            continue
        o, x = r.get("onnxprune") or {}, r.get("onnxsim") or {}
        rows.append([r["source"], r["name"], f"{(r['params'] or 0) / 1e6:.1f}",
                     "yes" if o.get("valid") else ("**no**" if o else ""), _pct(_reduction(o)),
                     ("yes" + (" (unchanged)" if x.get("unchanged") else "")) if x.get("valid") else ("**no**" if x else ""),
                     _pct(_reduction(x)),
                     f"{o.get('prunable_groups', '')} / {o.get('groups', '')}" if o else "",
                     main_blocker(o), "" if o.get("analysis_s") is None else f"{o['analysis_s']:.2f}"])
    L += [bl.md_table(["source", "model", "params (M)", "onnxprune ok", "onnxprune FLOPs −%", "onnxsim ok",
                       "onnxsim FLOPs −%", "prunable / groups", "main blocker (groups)", "analysis s"], rows), ""]
    if data["not_exported"]:
        L += ["Not exported: " + ", ".join(f"{r['source']}/{r['name']} ({r['status']})" for r in data["not_exported"]), ""]
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
