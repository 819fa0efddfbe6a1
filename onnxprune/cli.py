"""Command line: ``onnxprune MODEL --passes ... -o OUT [--report R] [--data D]``.

Only this module prints (and its progress line, :mod:`onnxprune.progress`). Expected
failures print one line on stderr and exit with the code of their :mod:`onnxprune.errors`
class; ``-v`` adds logging and tracebacks.

Order of a run: everything that can be checked before the work is (arguments, pass
options, that the output and report folders are writable, that onnxruntime can run the
model, that the data holds no NaN); then the passes, validation and the quality gate;
then the reports are rendered (a renderer failing fails here, with nothing written);
then the model is saved and the reports written beside it with the model's permissions.
On a terminal one progress line shows the stage and the elapsed time; when stderr is
not a terminal nothing but the one error line ever goes there. Library warnings are
collected into the report and the summary instead of stderr. What the validation and a
missed target make of the run (collapse warnings, ``--max-drop``/``--min-fidelity``, the
miss's records and error line) is in :mod:`onnxprune.gate`.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn, Sequence

from onnxprune import __version__
from onnxprune.errors import OnnxPruneError, PassCrash, QualityError, UnsupportedError, UsageError
from onnxprune.gate import gate, miss_line, missed_records, quality_warnings
from onnxprune.progress import PROG, Collect, Progress, collector


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage too)
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Compress a trained ONNX model: run passes, verify, validate, report, save.",
                epilog="Exit codes: 0 ok, 1 internal error, 2 usage, 3 bad model file, 4 bad data, "
                       "5 verification failed, 6 unsupported model, 7 quality gate failed or the auto pass "
                       "missed its target (the --report files are still written, with the search's points; "
                       "with --keep-best also the best point that held the quality budget, to -o). "
                       "Subcommands: 'onnxprune explain MODEL', 'onnxprune help PASS', 'onnxprune sensitivity MODEL'.")
    p.add_argument("model", nargs="?", help="input .onnx file (never modified)")
    p.add_argument("--passes", nargs="+", default=[], metavar="PASS",
                   help="passes in order, each 'name' or 'name:key=value,key=value' (lists: a|b)")
    p.add_argument("-o", "--output", help="where to write the compressed model (atomically)")
    p.add_argument("--report", action="append", default=[], metavar="PATH",
                   help="write the report: .json, .md or .html (repeatable)")
    p.add_argument("--list-passes", action="store_true", help="list the passes and exit (with -v: every option)")
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
    g.add_argument("--tokenizer", help="tokenizer.json for text data (.txt, one sentence a line); length: --input-shape")
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
    g.add_argument("--keep-best", action="store_true",
                   help="when auto cannot meet its target (exit 7), still write the best point it found that held "
                        "the quality budget to -o (none held it: no model); the reports are written either way")
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
    if args.max_drop is not None and not (math.isfinite(args.max_drop) and args.max_drop >= 0):
        raise UsageError("--max-drop must be a number of points, 0 or more")
    if args.min_fidelity is not None and not (math.isfinite(args.min_fidelity) and 0 <= args.min_fidelity <= 1):
        raise UsageError("--min-fidelity must be between 0 and 1")
    if args.no_validate and (args.max_drop is not None or args.min_fidelity is not None):
        raise UsageError("--max-drop/--min-fidelity need validation; drop --no-validate")
    if args.keep_best and not args.output:
        raise UsageError("--keep-best writes the best point to -o; give -o")
    from onnxprune.context import Target

    Target.named(args.target, args.threads)
    from onnxprune.errors import DataError

    for flag in ("data", "calib", "labels"):  # a typo'd path fails now, not after the model loads
        value = getattr(args, flag, None)
        if value is not None and not Path(value).exists():
            raise DataError(f"--{flag} {value}: no such file or folder")
    if args.output:
        out = Path(args.output)
        if out.exists() and out.resolve() == Path(args.model).resolve():
            raise UsageError("--output is the input file; onnxprune never overwrites its input")
        if not (out.parent if str(out.parent) else Path(".")).is_dir():
            raise UsageError(f"--output {out}: folder does not exist")
        if out.suffix.lower() != ".onnx":
            raise UsageError(f"--output {out}: expected a .onnx file name")
        check_writable(out, "--output")
    from onnxprune.report import check_report_path

    for r in args.report:
        check_writable(check_report_path(r), "--report")


def check_writable(path: Path, flag: str) -> None:
    """Fail before any work when ``path``'s folder cannot take a new file (read-only, full).

    Probing with a real file is the only test that also holds for root and for
    read-only mounts, where permission bits say nothing.
    """
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a folder, not a file name")
    try:
        fd, probe = tempfile.mkstemp(prefix=".onnxprune-probe-", dir=folder)
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot write in {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def list_passes(verbose: bool = False) -> str:
    """One line per pass; with ``verbose`` every option (type, default, help) under it."""
    from onnxprune.passes import REGISTRY

    width = max(len(n) for n in REGISTRY.names())
    if not verbose:
        return "\n".join(f"{name.ljust(width)}  {cls.summary()}" for name, cls in REGISTRY.items()) + "\n"
    return "\n".join(pass_help(name, header=True) for name in REGISTRY.names())


def _default(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (tuple, list)):
        return "|".join(map(str, v)) or "(empty)"
    return str(v)


def pass_help(name: str, *, header: bool = True) -> str:
    """``onnxprune help PASS``: the summary, the CLI form and every option."""
    from onnxprune.manager import option_docs
    from onnxprune.passes import REGISTRY

    cls = REGISTRY.get(name)
    docs = option_docs(cls)
    lines = [f"{name}: {cls.summary()}"] if header else []
    needs = " (needs calibration data: --calib or --data)" if getattr(cls, "needs_data", False) else ""
    if not docs:
        lines.append(f"  no options{needs}")
        return "\n".join(lines) + "\n"
    lines.append(f"  usage: {name}:key=value,key=value (lists: a|b){needs}")
    kw = max(len(d.key) for d in docs)
    tw = max(len(d.type) for d in docs)
    dw = max(len(_default(d.default)) for d in docs)
    for d in docs:
        lines.append(f"  {d.key.ljust(kw)}  {d.type.ljust(tw)}  default {_default(d.default).ljust(dw)}  "
                     f"{d.help or '(undocumented)'}".rstrip())
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, progress: Progress | None = None) -> int:
    from onnxprune.api import make_passes, prepare_data, run_passes
    from onnxprune.cost import model_cost
    from onnxprune.model import load_model, save_model
    from onnxprune.report import render, render_text, write_text
    from onnxprune.validate import check_finite, preflight

    _check_args(args)
    passes = make_passes(args.passes)  # unknown passes/keys fail before any work
    prog = progress or Progress(len(passes) + 3, enabled=False)
    prog.steps = len(passes) + 3 + (0 if args.no_validate else 1)
    t0 = time.perf_counter()
    prog.stage("loading the model")
    original = load_model(args.model)
    preflight(original, args.model)  # what onnxruntime cannot run is refused now, not after the work
    prog.stage("loading data")
    with prog.relay():
        plan = prepare_data(original, data=args.data, calib=args.calib, labels=args.labels, recipe=args.recipe,
                            calib_limit=args.calib_limit, limit=args.limit, batch_size=args.batch_size,
                            seed=args.seed, samples=args.samples, input_shapes=args.input_shape, target=args.target,
                            threads=args.threads, cache_dir=args.cache_dir, workers=args.workers,
                            progress=prog.enabled, need_eval=not args.no_validate, tokenizer=args.tokenizer)
    ctx = plan.ctx
    check_finite(ctx.calib, "calibration data")
    check_finite(plan.evaluation, "evaluation data")
    shapes = dict(ctx.input_shapes)

    def cost(m: Any) -> dict[str, Any]:
        return model_cost(m, batch=1, inputs=shapes).to_dict()

    before = cost(original)
    before["size_bytes"] = _input_size(Path(args.model))  # on disk, as the output is measured
    started: list[str] = []  # the passes begun, so that a miss can name what ran and what did not

    def stage(name: str) -> None:
        started.append(name)
        prog.stage(name)

    miss: QualityError | None = None
    try:
        result, records = run_passes(original, passes, verify_each=not args.no_verify_each, cost=cost,
                                     progress=stage, ctx=ctx)
        pass_records = [r.to_dict() for r in records]
        after = records[-1].cost_after if records and records[-1].cost_after else cost(result)
    except PassCrash as exc:
        raise _explain_crash(exc, original) from exc
    except QualityError as exc:
        if not hasattr(exc, "stats"):  # a quality error without a search behind it: nothing to report
            raise
        miss = exc
        best = getattr(exc, "best_model", None)
        if best is not None:  # built inside the search without the manager's per-pass check
            from onnxprune.verify import verify

            verify(best, original, pass_name=passes[len(started) - 1].name, previous=started[:-1])
        result = best if best is not None else original
        after = cost(result)
        pass_records = missed_records(exc, passes, started, after if best is not None else None)
    report: dict[str, Any] = {
        "tool": {"name": PROG, "version": __version__},
        "input": str(args.model),
        "output": str(args.output) if args.output else None,
        "warnings": list(plan.warnings),
        "before": before,
        "after": after,
        "shapes": _shapes_used(original, shapes, args, ctx.calib_kind, plan.evaluation),
        "context": ctx.to_dict(),
        "data": plan.report,
        "passes": pass_records,
    }
    keep = miss is not None and args.keep_best and getattr(miss, "best_model", None) is not None
    if miss is not None:
        report["target_missed"] = {"pass": passes[len(started) - 1].name, "message": str(miss),
                                   "best_point_written": keep, "exit_code": miss.exit_code}
        if not keep:
            report["output"] = None
    report["conventions"] = {"flops": "FLOPs = 2 x MACs for Conv/ConvTranspose/Gemm/MatMul, plus 1 per element for bias "
                                      "adds and elementwise ops; batch 1, inputs at " + report["shapes"]["text"]}
    if miss is not None and getattr(miss, "best_model", None) is None:
        report["validation"] = {"skipped": "the search found no point within its quality budget: nothing to validate"}
    elif plan.evaluation is not None:
        from onnxprune.validate import validate

        prog.stage("validating")
        report["validation"] = validate(original, result, plan.evaluation, threads=args.threads,
                                        latency_runs=args.latency_runs, warmup=args.warmup,
                                        progress=prog.batches if prog.enabled else False)
        report["warnings"] += quality_warnings(report["validation"])
        if miss is None:  # a missed target already fails the run (7); the gate adds nothing
            gate(report["validation"], args)
    else:
        report["validation"] = {"skipped": "--no-validate"}
    prog.stage("writing")
    write_model = bool(args.output) and (miss is None or keep)
    # the size the file will have (or the unwritten best point's), so that a renderer failure is found before
    # anything is written
    if write_model or miss is not None:
        with contextlib.suppress(Exception):  # protobuf cannot size a message over 2 GB: the file says later
            report["after"]["size_bytes"] = int(result.ByteSize())
    report["seconds"] = round(time.perf_counter() - t0, 3)
    collected = collector()
    if collected is not None and collected.messages:
        report["diagnostics"] = list(collected.messages)
    texts = {r: render(report, r) for r in args.report}
    summary = render_text(report)
    mode = None
    ours: list[Path] = []  # files this run creates, removed again if a later write fails
    if write_model:
        out = Path(args.output)
        data_file = out.with_name(out.name + ".data")
        ours = [out] + ([] if data_file.exists() else [data_file])
        save_model(result, out, external_data=True if args.external_data else None)
        report["after"]["size_bytes"] = _file_size(out)
        texts = {r: render(report, r) for r in args.report}
        summary = render_text(report)
        mode = out.stat().st_mode & 0o777
    written: list[Path] = []
    try:
        for r, text in texts.items():
            written.append(write_text(text, r, mode=mode))
    except OSError as exc:  # the disk filled up, say: leave nothing of this run behind
        for f in written + ours:
            with contextlib.suppress(OSError):
                f.unlink()
        raise UsageError(f"cannot write the report ({exc.strerror or exc}); nothing written") from exc
    prog.close()
    if not args.quiet:
        from onnxprune.report import warning_order

        for w in warning_order(report["warnings"]):
            print(f"warning: {w}")
        for d in report.get("diagnostics", []):
            print(f"note: {d}")
        print(summary, end="")
        if write_model:
            print(f"wrote {args.output}" + (" (the best point of a search that missed its target)" if keep else ""))
    if miss is not None:
        raise QualityError(miss_line(miss, keep, args, written))
    return 0


def _shapes_used(model: Any, shapes: dict[str, tuple[int, ...]], args: argparse.Namespace,
                 kind: str | None, evaluation: Any = None) -> dict[str, Any]:
    """Which input shapes cost, random data and the guard used, and where they came from;
    and the evaluation data's per-sample shapes when they differ (validation ran at those)."""
    from onnxprune.data import dynamic_dims

    dynamic = dynamic_dims(model)
    if args.input_shape:
        source = "--input-shape"
    elif shapes and kind == "data":
        source = "the data"
    elif dynamic:
        source = "none given: dynamic dims counted as 1, not the sizes the model runs at"
    else:
        source = "the model's declared shapes"
    listed = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in shapes.items())
    if not listed:  # the declared shapes, symbolic dims at 1 as the cost model counts them
        from onnxprune.data import input_specs

        listed = ", ".join(f"{sp.name} {'x'.join(str(d) if isinstance(d, int) and d > 0 else '1' for d in sp.shape)}"
                           for sp in input_specs(model))
    text = f"{listed} (from {source})" if not source.startswith("none") else f"{listed} ({source})"
    out: dict[str, Any] = {"inputs": {k: list(v) for k, v in shapes.items()}, "source": source,
                           "dynamic_dims": dynamic}
    if evaluation is not None and evaluation.batches:
        seen = {k: [1, *list(v.shape[1:])] for k, v in evaluation.batches[0].items() if getattr(v, "ndim", 0)}
        if shapes and any(list(shapes.get(k, v)) != v for k, v in seen.items()):
            out["evaluation_inputs"] = seen
            text += "; validation ran at " + ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in seen.items())
    out["text"] = text
    return out


def _explain_crash(exc: PassCrash, model: Any) -> OnnxPruneError:
    """A pass crashing on control flow it does not rewrite is an unsupported model (6); else a bug (1)."""
    from onnxprune.validate import control_flow_nodes

    flow = control_flow_nodes(model)
    if flow:
        node = flow[0]
        return UnsupportedError(f"pass {exc.pass_name!r} cannot handle this model's control flow "
                                f"({node.op_type} node {node.name!r}{f' and {len(flow) - 1} more' if len(flow) > 1 else ''}): "
                                f"{type(exc.__cause__).__name__}: {exc.__cause__}")
    return exc


def _input_size(path: Path) -> int:
    """The input model's bytes on disk: the file plus the external data files it names.

    Only a small .onnx file is parsed again for the names (a model with external data
    keeps just its graph there); a big one holds its weights itself.
    """
    import onnx

    total = path.stat().st_size
    if total > 64 << 20:
        return total
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception:  # it loaded once already; this is only the size
        return total
    names = {e.value for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
             for e in t.external_data if e.key == "location"}
    return total + sum((path.parent / n).stat().st_size for n in names if (path.parent / n).is_file())


def _file_size(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def explain(argv: Sequence[str]) -> int:
    try:
        from onnxprune.explain import main as explain_main
    except ImportError:
        raise UsageError("'explain' is not available in this build") from None
    return explain_main(list(argv))


def help_command(argv: Sequence[str]) -> int:
    """``onnxprune help [PASS ...]``: every option of the named passes (all passes without names)."""
    from onnxprune.passes import REGISTRY

    names = list(argv) or REGISTRY.names()
    print("\n".join(pass_help(n) for n in names), end="")
    return 0


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(no message)"


def _setup_logging(verbose: bool) -> None:
    logging.captureWarnings(True)  # warnings.warn (numpy, onnx) would be extra stderr lines
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, Collect) or getattr(h, "_onnxprune", False):
            root.removeHandler(h)
    handler: logging.Handler
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        handler._onnxprune = True  # type: ignore[attr-defined]
        root.setLevel(logging.INFO)
    else:
        handler = Collect()
        root.setLevel(logging.WARNING)
    root.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv or "--verbose" in argv
    _setup_logging(verbose)
    progress: Progress | None = None
    try:
        if argv and argv[0] == "explain":
            return explain(argv[1:])
        if argv and argv[0] == "sensitivity":
            from onnxprune.sensitivity_cli import main as sensitivity_main
            return sensitivity_main(argv[1:])
        if argv and argv[0] == "help":
            return help_command([a for a in argv[1:] if a not in ("-v", "--verbose")])
        args = build_parser().parse_args(argv)
        if args.list_passes:
            print(list_passes(args.verbose), end="")
            return 0
        progress = Progress(3)
        return run(args, progress)
    except OnnxPruneError as exc:
        _close(progress)
        if verbose:
            traceback.print_exc()
        print(f"{PROG}: error: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        _close(progress)
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `onnxprune ... | head`: the reader left; the files were already written
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush does not raise again
        return 0
    except Exception as exc:  # a bug: one line unless -v
        _close(progress)
        if verbose:
            traceback.print_exc()
        print(f"{PROG}: internal error: {type(exc).__name__}: {_one_line(str(exc))} (rerun with -v for the traceback)",
              file=sys.stderr)
        return 1
    finally:
        _close(progress)


def _close(progress: Progress | None) -> None:
    if progress is not None:
        progress.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
