"""Sensitivity sweep: what each prunable group or low-rank layer costs in metric, with
the signatures that price what it saves in measured time.

**Sensitivity.** For every prunable channel group (:func:`onnxprune.channels.analyze`,
named by its first source node) and every low-rank candidate layer (MatMul/Gemm with a
constant weight: ``lowrank``; KxK Conv: ``spatial-svd`` by default), one candidate per
ladder level: the model with only that group pruned at ratio r (or only that layer
factored at rank fraction f). Each candidate is a task for
:func:`onnxprune.executor.run_tasks`; a worker builds its evaluator (and the reference
outputs) once and scores every candidate it gets on the calibration split:

    drop = 100 · (top-1(original) − top-1(candidate))      with labels (points)
    drop = cosine(original) − cosine(candidate)            without (1 = identical)

or, with ``metric="soft-accuracy"`` (``auto:sweep-metric=soft-accuracy``), the drop of
the mean true-label probability in points: continuous, but on mobilenetv2 it ranked
single-group cuts worse against evaluation top-1 than top-1 on the same samples
(Spearman 0.70 vs 0.92 over 12 cuts), so top-1 stays the default.

Pruning goes through ``prune-channels`` with ``group-ratios=SRC=R`` when that option
exists (so the chosen criterion and reconstruction apply); without it, through a small
internal per-group pruner (criterion scores, no reconstruction), and the table says so.
Results are cached as JSON (``cache_dir``) keyed by the model's hash, the calibration
data's hash and the sweep settings. The command ``onnxprune sensitivity`` is
:mod:`onnxprune.sensitivity_cli`.

The latency model that prices each candidate (compute-node signatures, per-node times,
whole-model timing) is :mod:`onnxprune.layer_latency`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from onnxprune.allocate import Choice, Knob
from onnxprune.context import Evaluator, PassContext
from onnxprune.errors import UsageError
from onnxprune.layer_latency import signatures
from onnxprune.manager import Pass, PassManager, PassResult
from onnxprune.model import Model, model_size_bytes

log = logging.getLogger(__name__)

FORMAT = 1
UNITS = {"accuracy": "points of top-1", "soft-accuracy": "points of true-label probability",
         "agreement": "points of top-1 agreement", "cosine": "cosine"}
FAMILIES = ("prune", "lowrank")


@dataclass(frozen=True)
class SweepSettings:
    """What the sweep tries. ``samples``: calibration samples used for scoring (None: all)."""

    families: tuple[str, ...] = FAMILIES
    ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    fractions: tuple[float, ...] = (0.5, 0.25)
    criterion: str = "l1"
    reconstruct: str | None = None
    round_to: int | None = None
    protect: tuple[str, ...] = ()
    conv_pass: str = "spatial-svd"
    samples: int | None = None
    #: MatMul/Gemm candidates truncate in the input-whitened space (lowrank:whiten=true, SVD-LLM):
    #: measured on MiniLM at fraction 0.5, -0.09 points of STS-B where plain SVD loses 2.56
    #: (docs/benchmarks/minilm.md); the sweep has calibration data by construction
    whiten: bool = True

    def __post_init__(self) -> None:
        bad = [f for f in self.families if f not in FAMILIES]
        if bad:
            raise UsageError(f"sensitivity: unknown family {bad[0]!r}; valid: {', '.join(FAMILIES)}")
        if any(not 0 < r < 1 for r in self.ratios) or any(not 0 < f < 1 for f in self.fractions):
            raise UsageError("sensitivity: ratios and fractions must lie in (0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SweepSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        kw: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        kw.setdefault("whiten", False)  # tables written before the field had plain-SVD candidates
        return cls(**kw)


# ---------------------------------------------------------------------------- building candidates


def pass_fields(name: str) -> set[str] | None:
    """The Options field names of a registered pass, or None when it is not registered."""
    from onnxprune.passes import REGISTRY

    if name not in REGISTRY.names():
        return None
    return {f.name for f in dataclasses.fields(REGISTRY.get(name).Options)}


class _GroupPrune(Pass):
    """Internal fallback: prune the named groups at their ratios (criterion scores, no reconstruction)."""

    name = "group-prune"

    def __init__(self, ratios: Mapping[str, float], criterion: str, round_to: int, protect: Sequence[str]) -> None:
        super().__init__()
        self.ratios, self.criterion, self.round_to, self.protect = dict(ratios), criterion, round_to, tuple(protect)

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        from onnxprune.channels import analyze, apply_removal
        from onnxprune.criteria import get_criterion

        analysis = analyze(model, self.protect)
        scores, _ = get_criterion(self.criterion).score(analysis, model, ctx)
        left = {sp.id: sp.size for sp in analysis.ctx.spaces}
        chosen: list[int] = []
        for g in analysis.groups:
            r = self.ratios.get(g.sources[0]) if g.sources else None
            prunable = [a for a in analysis.prunable_atoms(g) if not np.isnan(scores[a])]
            if not r or not prunable:
                continue
            k = len(g.atoms) - kept_channels(len(g.atoms), r, self.round_to)
            chosen += analysis.take_lowest(prunable, scores, k, left)
        if not chosen:
            return PassResult(False, {})
        apply_removal(model, analysis, chosen)
        model.refresh_shapes()
        return PassResult(True, {"channels_removed": len(chosen)})


def kept_channels(n: int, ratio: float, round_to: int) -> int:
    """Channels a group of ``n`` keeps at ``ratio``: n − ⌊ratio·n⌋, rounded up to ``round_to``."""
    keep = max(n - int(math.floor(ratio * n)), 1)
    return min(n, int(math.ceil(keep / round_to)) * round_to)


def prune_spec(ratios: Mapping[str, float], s: SweepSettings, round_to: int) -> str | Pass | None:
    """One pass pruning each named group at its ratio (None when nothing to prune)."""
    ratios = {k: v for k, v in ratios.items() if v > 0}
    if not ratios:
        return None
    fields = pass_fields("prune-channels") or set()
    if "group_ratios" in fields and not any(c in k for k in ratios for c in ",|="):
        opts = [f"ratio=0,group-ratios={'|'.join(f'{k}={v:g}' for k, v in sorted(ratios.items()))}",
                f"criterion={s.criterion}", f"round-to={round_to}", "latency-guard=false"]
        if s.reconstruct and "reconstruct" in fields:
            opts.append(f"reconstruct={s.reconstruct}")
        if s.protect:
            opts.append("protect=" + "|".join(s.protect))
        return "prune-channels:" + ",".join(opts)
    return _GroupPrune(ratios, s.criterion, round_to, s.protect)


def prune_backend(s: SweepSettings) -> str:
    fields = pass_fields("prune-channels") or set()
    if "group_ratios" in fields:
        rec = f", reconstruct={s.reconstruct}" if s.reconstruct and "reconstruct" in fields else ""
        return f"prune-channels group-ratios (criterion={s.criterion}{rec})"
    return f"internal per-group pruner (criterion={s.criterion}, no reconstruction: prune-channels has no group-ratios)"


def lowrank_spec(layer: str, op: str, fraction: float, s: SweepSettings) -> str | None:
    name = "lowrank" if op in ("MatMul", "Gemm") else s.conv_pass
    fields = pass_fields(name)
    if fields is None or "fraction" not in fields or "layers" not in fields:
        return None
    extra = ",check-latency=false" if "check_latency" in fields else ""
    if s.whiten and "whiten" in fields:
        extra += ",whiten=true"
    return f"{name}:layers={layer},fraction={fraction:g}{extra}"


def lowrank_specs(levels: Mapping[str, float], ops: Mapping[str, str], s: SweepSettings) -> list[str]:
    out = []
    for layer, f in sorted(levels.items()):
        spec = lowrank_spec(layer, ops[layer], f, s)
        if spec:
            out.append(spec)
    return out


def run_specs(proto: onnx.ModelProto, specs: Sequence[str | Pass], ctx: PassContext) -> tuple[onnx.ModelProto, list[Any]]:
    """Run passes without per-pass verification (the search verifies what it keeps): the
    result and the passes' records."""
    from onnxprune.api import make_passes

    work = Model(proto)
    records = PassManager(make_passes(list(specs))).run(work, ctx)
    return work.to_onnx(), records


def apply_specs(proto: onnx.ModelProto, specs: Sequence[str | Pass], ctx: PassContext) -> tuple[onnx.ModelProto, bool]:
    """:func:`run_specs`, and whether any pass modified the model."""
    out, records = run_specs(proto, specs, ctx)
    return out, any(r.modified for r in records)


# ---------------------------------------------------------------------------- the sweep


@dataclass(frozen=True)
class Candidate:
    family: str  # "prune" | "lowrank"
    key: str  # the group's first source node, or the layer's node name
    level: float  # ratio (prune) or rank fraction kept (lowrank)
    op: str
    channels: int = 0  # group size (prune)
    kept: int = 0  # channels kept after rounding (prune)

    @property
    def knob(self) -> str:
        return f"{self.family}:{self.key}"


def round_to_of(ctx: PassContext, s: SweepSettings) -> int:
    return s.round_to or ctx.target.vector_width


def candidates(proto: onnx.ModelProto, ctx: PassContext, s: SweepSettings,
               base_sigs: Mapping[str, Mapping[str, Any]]) -> tuple[list[Candidate], list[str]]:
    """Every (group or layer, level) the sweep measures, and notes on what was left out."""
    from onnxprune.channels import analyze

    out: list[Candidate] = []
    notes: list[str] = []
    rt = round_to_of(ctx, s)
    if "prune" in s.families:
        analysis = analyze(Model(proto), s.protect)
        for g in analysis.groups:
            n = len(g.atoms)
            if not g.sources or not analysis.prunable_atoms(g):
                continue
            seen = set()
            for r in sorted(s.ratios):
                kept = kept_channels(n, r, rt)
                if kept >= n or kept in seen:
                    continue
                seen.add(kept)
                out.append(Candidate("prune", g.sources[0], r, "group", n, kept))
        if not any(c.family == "prune" for c in out):
            notes.append(f"no group can lose channels at round-to={rt}")
    if "lowrank" in s.families:
        for name, sig in base_sigs.items():
            op, w = sig["op"], sig["consts"][0][0]
            if op in ("MatMul", "Gemm") and len(w) == 2:
                pass
            elif op == "Conv" and len(w) == 4 and max(w[2:]) > 1 and int(sig["attrs"].get("group", 1)) == 1:
                pass
            else:
                continue
            if lowrank_spec(name, op, 0.5, s) is None:
                notes.append(f"low-rank of {op} unavailable (pass missing or without layers=/fraction=)")
                continue
            out += [Candidate("lowrank", name, f, op) for f in sorted(s.fractions, reverse=True)]
    return out, sorted(set(notes))


def candidate_specs(c: Candidate, s: SweepSettings, round_to: int) -> list[str | Pass]:
    if c.family == "prune":
        spec = prune_spec({c.key: c.level}, s, round_to)
        return [spec] if spec is not None else []
    spec2 = lowrank_spec(c.key, c.op, c.level, s)
    return [spec2] if spec2 else []


def _worker_init(shared: Mapping[str, Any]) -> dict[str, Any]:
    proto = onnx.load_from_string(shared["model"])
    score_data = shared["score_data"] if shared["score_data"] is not None else shared["calib"]
    ev = Evaluator(proto, score_data, threads=shared["threads"], metric=shared["metric"])
    ctx = PassContext(calib=shared["calib"], target=shared["target"], input_shapes=shared["input_shapes"],
                      seed=shared["seed"], evaluator=ev, calib_kind=shared["calib_kind"])
    base = ev.baseline()
    return {"proto": proto, "ctx": ctx, "base": base, "scale": ev.drop_scale,
            "settings": shared["settings"], "round_to": shared["round_to"]}


def _worker_run(state: Mapping[str, Any], c: Candidate) -> dict[str, Any]:
    from onnxprune.cost import model_cost

    specs = candidate_specs(c, state["settings"], state["round_to"])
    if not specs:
        return {"ok": False, "why": "no pass can build it"}
    ctx: PassContext = state["ctx"]
    try:
        model, modified = apply_specs(state["proto"], specs, ctx)
    except Exception as exc:  # one candidate that a pass refuses is left out, the sweep goes on
        return {"ok": False, "why": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"}
    if not modified:
        return {"ok": False, "why": "the pass left the model unchanged (not cheaper)"}
    assert ctx.evaluator is not None
    score = ctx.evaluator.score(model)
    sigs = signatures(model, ctx.input_shapes)
    return {"ok": True, "score": score, "drop": state["scale"] * (state["base"] - score),
            "sigs": {k: v["key"] for k, v in sigs.items()}, "sig_defs": {v["key"]: v for v in sigs.values()},
            "size": model_size_bytes(model), "flops": model_cost(model, inputs=ctx.input_shapes).flops}


def _data_hash(ds: Any) -> str:
    from onnxprune.data import stacked

    h = hashlib.sha256()
    for k, a in sorted(stacked(ds).items()):
        h.update(k.encode())
        h.update(np.ascontiguousarray(a).tobytes())
    if ds.labels is not None:
        h.update(np.asarray(ds.labels).tobytes())
    return h.hexdigest()


def score_subset(ctx: PassContext, samples: int | None, score: Any = None) -> Any:
    """The first ``samples`` of the scoring data: ``score`` when given (data kept out of the
    candidates' fitting), else the calibration data."""
    from onnxprune.data import subset

    calib = score if score is not None else ctx.require_data("sensitivity", "the sweep")
    if samples is None or samples >= calib.n_samples:
        return calib
    return subset(calib, np.arange(samples), batch_size=calib.batch_step)


def _padded(ds: Any) -> bool:
    from onnxprune.padding import mask_name

    return bool(ds.batches) and mask_name(ds.batches[0]) is not None


def sweep(proto: onnx.ModelProto, ctx: PassContext, s: SweepSettings, *, workers: int | None = None,
          executor: str = "local", metric: str = "auto", score: Any = None) -> dict[str, Any]:
    """The sensitivity table (see the module docstring); cached under ``ctx.cache_dir``.

    ``score``: a dataset to score candidates on instead of the calibration data, which then
    only fits them (reconstruction): scores free of the fit's optimism."""
    import onnxruntime as ort

    from onnxprune.cost import model_cost
    from onnxprune.executor import run_tasks

    score_data = score_subset(ctx, s.samples, score)
    rt = round_to_of(ctx, s)
    model_bytes = proto.SerializeToString()
    ident = json.dumps({"format": FORMAT, "model": hashlib.sha256(model_bytes).hexdigest(), "data": _data_hash(score_data),
                        "calib": _data_hash(ctx.calib), "settings": s.to_dict(), "round_to": rt, "metric": metric,
                        "backend": prune_backend(s), "ort": ort.__version__, "seed": ctx.seed,
                        # padded text: fidelity leaves mask-0 positions out since 8715363; tables
                        # scored before that (padded positions included) must not be read back
                        **({"fidelity": "masked"} if _padded(score_data) else {})}, sort_keys=True)
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    path = Path(ctx.cache_dir) / f"sensitivity-{key}.json" if ctx.cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            table = json.loads(path.read_text(encoding="utf-8"))
            if table.get("key") == key:
                table["cached"] = True
                return table
        except (OSError, ValueError) as exc:
            log.warning("sensitivity cache %s unreadable (%s); measuring again", path, exc)
    base_sigs = signatures(proto, ctx.input_shapes)
    cands, notes = candidates(proto, ctx, s, base_sigs)
    # score_data None: the calibration data itself (not sent twice to every worker)
    shared = {"model": model_bytes, "calib": ctx.calib, "score_data": None if score_data is ctx.calib else score_data,
              "threads": 1, "metric": metric,
              "target": ctx.target, "input_shapes": dict(ctx.input_shapes), "seed": ctx.seed,
              "calib_kind": ctx.calib_kind, "settings": s, "round_to": rt}
    results, stats = run_tasks(_worker_run, cands, init=_worker_init, shared=shared,
                               workers=workers or ctx.workers, executor=executor)
    ev = Evaluator(proto, score_data, threads=1, metric=metric)
    baseline = ev.baseline()
    sig_defs: dict[str, Any] = {v["key"]: v for v in base_sigs.values()}
    rows = []
    for c, r in zip(cands, results):
        sig_defs.update(r.pop("sig_defs", {}))
        rows.append({**dataclasses.asdict(c), **r})
    table = {
        "format": FORMAT, "key": key, "model_sha256": hashlib.sha256(model_bytes).hexdigest(), "metric": ev.metric,
        "unit": UNITS.get(ev.metric, "cosine"),
        "baseline": baseline, "samples": score_data.n_samples, "settings": s.to_dict(), "round_to": rt,
        "backend": prune_backend(s), "notes": notes, "base": {"sigs": {k: v["key"] for k, v in base_sigs.items()},
                                                             "size": model_size_bytes(proto),
                                                             "flops": model_cost(proto, inputs=ctx.input_shapes).flops},
        "signatures": sig_defs, "candidates": rows, "sweep": stats.to_dict(), "cached": False,
    }
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(table), encoding="utf-8")
            tmp.replace(path)
        except OSError as exc:
            log.warning("cannot write sensitivity cache %s: %s", path, exc)
    return table


def load_table(path: str | Path, proto: onnx.ModelProto) -> dict[str, Any]:
    """A table written by ``onnxprune sensitivity --json`` (or the cache), for this very model."""
    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read sensitivity table {path}: {exc}") from None
    if not isinstance(table, dict) or table.get("format") != FORMAT or "candidates" not in table:
        raise UsageError(f"{path} is not a sensitivity table (format {FORMAT})")
    if table.get("model_sha256") != hashlib.sha256(proto.SerializeToString()).hexdigest():
        raise UsageError(f"sensitivity table {path} was measured on a different model")
    table["cached"] = True
    return table


OBJECTIVES = ("latency", "flops", "size")


def knobs(table: Mapping[str, Any], objective: str = "latency", times: Mapping[str, float] | None = None) -> list[Knob]:
    """The sweep as allocation knobs: loss = measured drop, gain = ms (or FLOPs, bytes) saved."""
    if objective not in OBJECTIVES:
        raise UsageError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    base = table["base"]
    if objective == "latency":
        assert times is not None
        base_t = sum(times.get(k, 0.0) for k in base["sigs"].values())
    by: dict[str, list[Choice]] = {}
    for row in table["candidates"]:
        if not row.get("ok"):
            continue
        if objective == "latency":
            assert times is not None
            gain = base_t - sum(times.get(k, 0.0) for k in row["sigs"].values())
        else:
            gain = float(base[objective] - row[objective])
        by.setdefault(f"{row['family']}:{row['key']}", []).append(Choice(float(row["level"]), float(row["drop"]), gain))
    return [Knob(k, tuple(sorted(v, key=lambda c: c.level))) for k, v in by.items()]


def curves_svg(table: Mapping[str, Any]) -> str | None:
    from onnxprune.plots import line_chart

    curves: dict[str, tuple[list[float], list[float]]] = {}
    for row in table["candidates"]:
        if row.get("ok"):
            xs, ys = curves.setdefault(f"{row['family']}:{row['key']}", ([0.0], [0.0]))
            xs.append(float(row["level"]))
            ys.append(float(row["drop"]))
    return line_chart(curves, title="sensitivity: metric drop per group/layer", xlabel="ratio pruned / rank fraction kept",
                      ylabel=f"drop ({table['unit']})")


def table_markdown(table: Mapping[str, Any], times: Mapping[str, float] | None = None) -> str:
    """One row per candidate: drop, and the latency saved when ``times`` is given."""
    base_t = sum(times.get(k, 0.0) for k in table["base"]["sigs"].values()) if times else 0.0
    lines = [f"Baseline {table['metric']} {table['baseline']:.4f} on {table['samples']} calibration samples; "
             f"drop in {table['unit']}; pruning by {table['backend']}; round-to {table['round_to']}.", "",
             "| candidate | level | channels kept | drop | layers ms saved |", "|---|---|---|---|---|"]
    for row in table["candidates"]:
        kept = f"{row['kept']}/{row['channels']}" if row["family"] == "prune" else ""
        if not row.get("ok"):
            lines.append(f"| {row['family']}:{row['key']} | {row['level']:g} | {kept} | skipped: {row.get('why', '')} | |")
            continue
        saved = f"{base_t - sum(times.get(k, 0.0) for k in row['sigs'].values()):.3f}" if times else ""
        lines.append(f"| {row['family']}:{row['key']} | {row['level']:g} | {kept} | {row['drop']:.3f} | {saved} |")
    return "\n".join(lines) + "\n"
