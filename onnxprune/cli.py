"""Command line: ``onnxprune MODEL --passes ... -o OUT [--report R] [--data D]``.

Only this module prints. Expected failures print one line on stderr and exit with the
code of their :mod:`onnxprune.errors` class; ``-v`` adds logging and tracebacks.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

from onnxprune import __version__
from onnxprune.errors import OnnxPruneError, UsageError

PROG = "onnxprune"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Compress a trained ONNX model: run passes, verify, validate, report, save.",
                epilog="Exit codes: 0 ok, 1 internal error, 2 usage, 3 bad model file, 4 bad data, "
                       "5 verification failed, 6 unsupported model, 7 quality gate failed. "
                       "Subcommand: 'onnxprune explain MODEL'.")
    p.add_argument("model", nargs="?", help="input .onnx file (never modified)")
    p.add_argument("--passes", nargs="+", default=[], metavar="PASS",
                   help="passes in order, each 'name' or 'name:key=value,key=value' (lists: a|b)")
    p.add_argument("-o", "--output", help="where to write the compressed model (atomically)")
    p.add_argument("--report", action="append", default=[], metavar="PATH",
                   help="write the report: .json, .md or .html (repeatable)")
    p.add_argument("--list-passes", action="store_true", help="list the passes and exit")
    g = p.add_argument_group("data (calibration for the passes, evaluation for validation; never the same sample)")
    g.add_argument("--data", help=".npz/.npy arrays, an image folder (class sub-folders = labels), or MNIST IDX file; "
                                  "without --calib it is split (seeded) into calibration and evaluation parts; "
                                  "random data when omitted")
    g.add_argument("--calib", help="calibration data for the passes (same forms as --data); --data then only evaluates")
    g.add_argument("--calib-limit", type=int, help="calibration samples (default 256; at most half of --data when split)")
    g.add_argument("--input-shape", nargs="+", metavar="NAME:DxD..",
                   help="the shapes the model runs at, for dynamic dims (e.g. input:1x3x736x1280): random data, "
                        "cost, latency guard and validation use them")
    g.add_argument("--labels", help="labels file for IDX data")
    g.add_argument("--recipe", help="image preprocessing: a preset (torchvision, caffe-bgr, efficientnet-lite, raw255) "
                                    "optionally followed by ,key=value overrides")
    g.add_argument("--limit", type=int, help="use at most N samples")
    g.add_argument("--batch-size", type=int, default=1, help="batch size for validation runs (default 1)")
    g.add_argument("--samples", type=int, default=8, help="random samples when no --data is given (default 8)")
    g.add_argument("--threads", type=int, default=1, help="onnxruntime threads for validation and latency (default 1)")
    g.add_argument("--latency-runs", type=int, default=50, help="interleaved latency runs, 0 to skip (default 50)")
    g.add_argument("--warmup", type=int, default=5, help="warm-up runs before timing (default 5)")
    g.add_argument("--no-validate", action="store_true", help="skip comparing outputs in onnxruntime")
    g.add_argument("--seed", type=int, default=0, help="seed for the data split, random data and sampling (default 0)")
    g.add_argument("--max-drop", type=float, metavar="POINTS",
                   help="fail (exit 7, nothing written) when top-1 on the evaluation data drops by more than POINTS")
    g.add_argument("--min-fidelity", type=float, metavar="C",
                   help="fail (exit 7, nothing written) when output cosine or top-1 agreement is below C (0..1)")
    t = p.add_argument_group("target")
    t.add_argument("--target", default="auto", help="CPU to build for: auto (this machine), generic, avx2, avx2-vnni, "
                                                    "avx512, avx512-vnni (recorded in the report)")
    t.add_argument("--cache-dir", help="keep per-shape latency measurements here across runs (default: this run only)")
    t.add_argument("--workers", type=int, default=1, help="worker processes for sweeps (CAR, sensitivity; default 1)")
    o = p.add_argument_group("other")
    o.add_argument("--no-verify-each", action="store_true", help="verify only the final model, not after every pass")
    o.add_argument("--external-data", action="store_true", help="always save weights as external data")
    o.add_argument("-q", "--quiet", action="store_true", help="no summary on the terminal")
    o.add_argument("-v", "--verbose", action="store_true", help="log progress details; show tracebacks")
    o.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.model is None:
        raise UsageError("missing MODEL (see --help)")
    for name in ("batch_size", "samples", "threads", "workers"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("latency_runs", "warmup"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be 0 or more")
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    if args.calib_limit is not None and args.calib_limit < 1:
        raise UsageError("--calib-limit must be at least 1")
    import math

    if args.max_drop is not None and not (math.isfinite(args.max_drop) and args.max_drop >= 0):
        raise UsageError("--max-drop must be a number of points, 0 or more")
    if args.min_fidelity is not None and not (math.isfinite(args.min_fidelity) and 0 <= args.min_fidelity <= 1):
        raise UsageError("--min-fidelity must be between 0 and 1")
    if args.no_validate and (args.max_drop is not None or args.min_fidelity is not None):
        raise UsageError("--max-drop/--min-fidelity need validation; drop --no-validate")
    from onnxprune.context import Target

    Target.named(args.target, args.threads)
    if args.output:
        out = Path(args.output)
        if out.exists() and out.resolve() == Path(args.model).resolve():
            raise UsageError("--output is the input file; onnxprune never overwrites its input")
        if not (out.parent if str(out.parent) else Path(".")).is_dir():
            raise UsageError(f"--output {out}: folder does not exist")
        if out.suffix.lower() != ".onnx":
            raise UsageError(f"--output {out}: expected a .onnx file name")
    from onnxprune.report import check_report_path

    for r in args.report:
        check_report_path(r)


def list_passes() -> str:
    from onnxprune.passes import REGISTRY

    width = max(len(n) for n in REGISTRY.names())
    return "\n".join(f"{name.ljust(width)}  {cls.summary()}" for name, cls in REGISTRY.items()) + "\n"


def _progress_bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="pass", file=sys.stderr, disable=None, leave=False)


def run(args: argparse.Namespace) -> int:
    from onnxprune.api import make_passes, prepare_data, run_passes
    from onnxprune.cost import model_cost
    from onnxprune.model import load_model, save_model
    from onnxprune.report import render_text, write_report

    _check_args(args)
    passes = make_passes(args.passes)  # unknown passes/keys fail before any work
    t0 = time.perf_counter()
    original = load_model(args.model)
    plan = prepare_data(original, data=args.data, calib=args.calib, labels=args.labels, recipe=args.recipe,
                        calib_limit=args.calib_limit, limit=args.limit, batch_size=args.batch_size, seed=args.seed,
                        samples=args.samples, input_shapes=args.input_shape, target=args.target, threads=args.threads,
                        cache_dir=args.cache_dir, workers=args.workers, progress=True,
                        need_eval=not args.no_validate)
    ctx = plan.ctx
    shapes = dict(ctx.input_shapes)

    def cost(m: Any) -> dict[str, Any]:
        return model_cost(m, batch=1, inputs=shapes).to_dict()

    bar = _progress_bar(len(passes), "passes")
    started: list[str] = []

    def tick(name: str) -> None:  # called as each pass starts: the one before it is done
        if started:
            bar.update(1)
        started.append(name)
        bar.set_postfix_str(name)

    before = cost(original)
    result, records = run_passes(original, passes, verify_each=not args.no_verify_each, cost=cost, progress=tick,
                                 ctx=ctx)
    bar.update(bar.total - bar.n)
    bar.close()
    after = records[-1].cost_after if records and records[-1].cost_after else cost(result)
    report: dict[str, Any] = {
        "tool": {"name": PROG, "version": __version__},
        "input": str(args.model),
        "output": str(args.output) if args.output else None,
        "warnings": list(plan.warnings),
        "before": before,
        "after": after,
        "context": ctx.to_dict(),
        "data": plan.report,
        "passes": [r.to_dict() for r in records],
        "conventions": {"flops": "FLOPs = 2 x MACs for Conv/ConvTranspose/Gemm/MatMul, plus 1 per element for bias "
                                 "adds and elementwise ops; batch 1, inputs at "
                                 + (", ".join(f"{k} {list(v)}" for k, v in shapes.items()) or
                                    "their declared shapes, symbolic dims as 1")},
    }
    if plan.evaluation is not None:
        from onnxprune.validate import validate

        report["validation"] = validate(original, result, plan.evaluation, threads=args.threads,
                                        latency_runs=args.latency_runs, warmup=args.warmup, progress=True)
        report["warnings"] += _quality_warnings(report["validation"])
        _gate(report["validation"], args)
    else:
        report["validation"] = {"skipped": "--no-validate"}
    if args.output:
        save_model(result, args.output, external_data=True if args.external_data else None)
        report["after"]["size_bytes"] = _file_size(Path(args.output))
    report["seconds"] = round(time.perf_counter() - t0, 3)
    for r in args.report:
        write_report(report, r)
    if not args.quiet:
        for w in report["warnings"]:
            print(f"warning: {w}")
        print(render_text(report), end="")
        if args.output:
            print(f"wrote {args.output}")
    return 0


def _fidelity(validation: dict[str, Any]) -> tuple[str, float] | None:
    """The fidelity figure the gate and the collapse warning read: top-1 agreement for
    classifiers, else the lowest per-output cosine."""
    if validation.get("top1_agreement") is not None:
        return "top-1 agreement", float(validation["top1_agreement"])
    cos = [o.get("cosine") for o in validation.get("outputs", {}).values()]
    if any(c is None for c in cos):
        return "cosine", float("nan")
    return ("cosine", float(min(cos))) if cos else None


def _quality_warnings(validation: dict[str, Any]) -> list[str]:
    out = []
    acc = validation.get("accuracy")
    if acc and acc["before"] - acc["after"] > 0.05:
        out.append(f"accuracy collapsed: top-1 {acc['before'] * 100:.2f}% -> {acc['after'] * 100:.2f}% "
                   f"on {acc['n']} evaluation samples")
    fid = _fidelity(validation)
    if fid is not None:
        name, value = fid
        limit = 0.5 if name == "top-1 agreement" else 0.9
        if not value >= limit:
            out.append(f"outputs collapsed: {name} {value:.4f} (below {limit}) on the evaluation data")
    return out


def _gate(validation: dict[str, Any], args: argparse.Namespace) -> None:
    from onnxprune.errors import QualityError
    from onnxprune.errors import UsageError as _Usage

    if args.max_drop is not None:
        acc = validation.get("accuracy")
        if not acc:
            raise _Usage("--max-drop needs labelled evaluation data (class folders, IDX labels or an npz 'labels' array)")
        drop = (acc["before"] - acc["after"]) * 100
        if drop > args.max_drop:
            raise QualityError(f"top-1 dropped {drop:.2f} points ({acc['before'] * 100:.2f}% -> "
                               f"{acc['after'] * 100:.2f}%), more than --max-drop {args.max_drop}; nothing written")
    if args.min_fidelity is not None:
        fid = _fidelity(validation)
        if fid is None:
            raise _Usage("--min-fidelity: the model has no float output to compare")
        name, value = fid
        if not value >= args.min_fidelity:
            raise QualityError(f"{name} {value:.4f} is below --min-fidelity {args.min_fidelity}; nothing written")


def _file_size(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def explain(argv: Sequence[str]) -> int:
    try:
        from onnxprune.explain import main as explain_main
    except ImportError:
        raise UsageError("'explain' is not available in this build") from None
    return explain_main(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv or "--verbose" in argv
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        if argv and argv[0] == "explain":
            return explain(argv[1:])
        args = build_parser().parse_args(argv)
        if args.list_passes:
            print(list_passes(), end="")
            return 0
        return run(args)
    except OnnxPruneError as exc:
        if verbose:
            traceback.print_exc()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line unless -v
        if verbose:
            traceback.print_exc()
        print(f"{PROG}: internal error: {type(exc).__name__}: {exc} (rerun with -v for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
