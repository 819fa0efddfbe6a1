"""The report: one dict (written as JSON), rendered as terminal text, Markdown or HTML.

Every renderer draws the same :func:`tables`; the terminal gets the summary tables, the
Markdown and HTML files also the detail: the data and split the run used, what each
pass removed where (its per-group / per-layer lists), and the cost of every layer before
and after (``report["before"]["nodes"]`` joined by node name with ``["after"]``).

Their first lines are the :func:`headline`: a search that missed its target ("TARGET
MISSED", with its best point), a collapse (top-1 or agreement fell, cosine below 0.9) and
a weak validation (random data, dynamic dims at size 1) come before any table, because
those are what a reader must not miss. The HTML embeds pictures (:mod:`onnxprune.plots`:
per-layer FLOPs before/after, a bar per channel group, and every picture a pass puts in
its ``stats["plots"]``, caption -> SVG: the auto pass's sensitivity curves, Pareto fronts
and predicted vs measured speed-up) when matplotlib is installed. Those SVG strings stay
out of the Markdown, the terminal text and the JSON: the JSON keeps only the names of the
pictures a pass drew (``"plots": ["sensitivity", ...]``), the HTML being where they are seen.

Numbers are rendered defensively: ``None`` is "-", NaN is "nan", never an exception:
a report is rendered before the model is written, and a renderer must not be what
fails a run.
"""
from __future__ import annotations

import html
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from onnxprune.errors import UsageError

REPORT_SUFFIXES = (".json", ".md", ".html", ".htm")
Table = tuple[str, list[str], list[list[str]]]

#: rows of a detail table shown in Markdown/HTML (the JSON has all of them).
DETAIL_ROWS = 60


# ---------------------------------------------------------------------------- numbers

def _num(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _si(x: Any, unit: str = "") -> str:
    v = _num(x)
    if v is None:
        return "-"
    if math.isnan(v):
        return "nan"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g} {suffix}{unit}".strip()
    return f"{v:.4g} {unit}".strip()


def _bytes(n: Any) -> str:
    v = _num(n)
    if v is None:
        return "-"
    if math.isnan(v):
        return "nan"
    for div, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if v >= div:
            return f"{v / div:.2f} {suffix}"
    return f"{int(v)} B"


def _change(before: Any, after: Any) -> str:
    b, a = _num(before), _num(after)
    if not b or a is None or math.isnan(b) or math.isnan(a):
        return "-"
    return f"{(a - b) / b * 100:+.1f}%"


def _g(x: Any, spec: str = ".4g") -> str:
    """A float with ``spec``; "-" for None, "nan"/"inf" as such."""
    v = _num(x)
    if v is None:
        return "-"
    if not math.isfinite(v):
        return str(v)
    return format(v, spec)


def _pct(x: Any) -> str:
    v = _num(x)
    if v is None:
        return "-"
    return "nan" if math.isnan(v) else f"{v * 100:.2f}%"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return _g(v)
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items()) or "none"
    if isinstance(v, list):
        return f"{len(v)} item(s)"
    return str(v)


# ---------------------------------------------------------------------------- headline

def _classify(warning: str) -> str:
    w = warning.lower()
    if "collapsed" in w:
        return "COLLAPSE"
    if "weak" in w or "random noise" in w or "dynamic input dims" in w:
        return "WEAK VALIDATION"
    return "warning"


_ORDER = {"COLLAPSE": 0, "WEAK VALIDATION": 1, "warning": 2}


def warning_order(warnings: list[str]) -> list[str]:
    """Collapses first, then weak-validation notes, then the rest (stable within each)."""
    return sorted(warnings, key=lambda w: _ORDER[_classify(w)])


def headline(report: dict[str, Any]) -> list[str]:
    """What a reader must see first: missed targets, collapses, weak-validation notes, the rest."""
    lines = missed_targets(report)
    lines += [f"{_classify(w)}: {w}" for w in warning_order(list(report.get("warnings", [])))]
    summary = _summary(report)
    return lines + ([summary] if summary else [])


_ACHIEVED = {"latency": "speedup", "flops": "flops_factor", "size": "size_factor"}


def missed_targets(report: dict[str, Any]) -> list[str]:
    """One "TARGET MISSED" line per pass whose stats say ``target_met: false`` (the auto
    search): the target, the budget, the best point found and whether it was written."""
    out = []
    missed = report.get("target_missed") or {}
    for i, p in enumerate(report.get("passes", [])):
        st = p.get("stats") or {}
        if st.get("target_met") is not False:
            continue
        objective = str(st.get("objective", "target"))
        what = (f"{p.get('name', '?')} (pass {i + 1}) did not reach {objective} x{_g(st.get('target'), 'g')} within "
                f"a drop of {_g(st.get('budget'), '.4g')} {st.get('budget_unit', '')}".rstrip())
        chosen = st.get("chosen")
        if chosen is not None and p.get("modified") is False:
            chosen = None  # the search's pick was the original itself (nothing else held the budget)
        if chosen:
            best = (f"best point: x{_g(chosen.get(_ACHIEVED.get(objective, 'speedup')), '.3f')} {objective} "
                    f"at a drop of {_g(chosen.get('drop'), '.4g')} (measured on the calibration data, "
                    f"{len(st.get('points') or [])} points evaluated)")
        else:
            best = "no evaluated point held the quality budget: the best point is the original model"
        if missed:
            tail = ("; the best point was written (--keep-best)" if missed.get("best_point_written")
                    else "; no model written" + ("" if chosen is None else " (--keep-best writes the best point)"))
            tail += f"; exit {missed.get('exit_code', 7)}"
        else:  # on-miss=best: the run went on with the best point
            tail = "; the run went on with the best point (on-miss=best)" if chosen else ""
        out.append(f"TARGET MISSED: {what}; {best}{tail}")
    return out


def _summary(report: dict[str, Any]) -> str:
    b, a = report.get("before") or {}, report.get("after") or {}
    if not b:
        return ""
    parts = [f"FLOPs {_change(b.get('flops'), a.get('flops'))} ({_si(b.get('flops'))} -> {_si(a.get('flops'))})",
             f"params {_change(b.get('params'), a.get('params'))}",
             f"size {_change(b.get('size_bytes'), a.get('size_bytes'))}"]
    v = report.get("validation") or {}
    acc = v.get("accuracy")
    if acc:
        parts.append(f"top-1 {_pct(acc.get('before'))} -> {_pct(acc.get('after'))} on {acc.get('n', '-')} "
                     "evaluation samples")
    elif v.get("top1_agreement") is not None:
        parts.append(f"top-1 agreement {_pct(v['top1_agreement'])}")
    lat = v.get("latency")
    if lat:
        parts.append(f"latency ratio {_g(lat.get('ratio'), '.3f')}")
    shapes = (report.get("shapes") or {}).get("text")
    return "; ".join(parts) + (f" (FLOPs at {shapes})" if shapes else "")


# ---------------------------------------------------------------------------- tables

def tables(report: dict[str, Any], *, detail: bool = False) -> list[Table]:
    """The report as (title, header, rows) tables; every renderer draws these.

    ``detail`` adds the data/context table, each pass's per-group/per-layer lists and the
    per-layer cost table (Markdown and HTML; the terminal gets the summary only).
    """
    out: list[Table] = []
    b, a = report.get("before") or {}, report.get("after") or {}
    rows = [
        ["FLOPs", _si(b.get("flops")), _si(a.get("flops")), _change(b.get("flops"), a.get("flops"))],
        ["MACs", _si(b.get("macs")), _si(a.get("macs")), _change(b.get("macs"), a.get("macs"))],
        ["parameters", _si(b.get("params")), _si(a.get("params")), _change(b.get("params"), a.get("params"))],
        ["size", _bytes(b.get("size_bytes")), _bytes(a.get("size_bytes")), _change(b.get("size_bytes"), a.get("size_bytes"))],
    ]
    shapes = (report.get("shapes") or {}).get("text")
    out.append(("Model" + (f" (batch 1, inputs at {shapes})" if shapes else ""), ["", "before", "after", "change"], rows))
    if detail:
        out += _data_tables(report)
    prows = []
    for p in report.get("passes", []):
        stats = {k: v for k, v in (p.get("stats") or {}).items() if k != "plots" and
                 (isinstance(v, (int, float, str)) and not isinstance(v, bool) or k in ("folded", "reverted"))}
        stats = dict(list(stats.items())[:8 if detail else 6])
        cost = p.get("cost_after") or {}
        row = [p.get("name", "?"), "yes" if p.get("modified") else "no", _si(cost.get("flops")),
               _si(cost.get("params")), f"{_g(p.get('seconds', 0), '.2f')}s", _fmt(stats)]
        if detail:
            row.insert(1, _fmt(_asked(p)) or "(defaults)")
        prows.append(row)
    if prows:
        header = ["pass", "modified", "FLOPs after", "params after", "time", "stats"]
        if detail:
            header.insert(1, "options set")
        out.append(("Passes", header, prows))
    out += _validation_tables(report)
    if detail:
        out += _pass_detail_tables(report)
        layer = layer_table(report)
        if layer is not None:
            out.append(layer)
    return out


def _asked(p: dict[str, Any]) -> dict[str, Any]:
    """The options of a pass record that differ from the pass's defaults (what the user asked)."""
    options = p.get("options") or {}
    try:
        from onnxprune.manager import option_docs
        from onnxprune.passes import REGISTRY

        defaults = {d.key.replace("-", "_"): d.default for d in option_docs(REGISTRY.get(str(p.get("name"))))}
    except Exception:  # a report of a pass this build does not know: show every option
        return dict(options)
    norm = {k: (list(v) if isinstance(v, tuple) else v) for k, v in defaults.items()}
    return {k: v for k, v in options.items() if k not in norm or norm[k] != v}


def _data_tables(report: dict[str, Any]) -> list[Table]:
    data = report.get("data") or {}
    ctx = report.get("context") or {}
    rows: list[list[str]] = []
    cal = data.get("calibration") or {}
    if cal:
        rows.append(["calibration", f"{cal.get('source', '-')} ({cal.get('n_samples', '-')} samples, {cal.get('kind', '-')})"])
    ev = data.get("evaluation")
    rows.append(["evaluation", f"{ev.get('source', '-')} ({ev.get('n_samples', '-')} samples)" if ev else "none"])
    split = data.get("split")
    if split is not None:
        rows.append(["split", _fmt(split) if isinstance(split, dict) else str(split)])
    if data.get("overlap_dropped"):
        rows.append(["left out of evaluation", f"{data['overlap_dropped']} samples also in the calibration data"])
    if "seed" in data:
        rows.append(["seed", str(data["seed"])])
    sh = report.get("shapes") or {}
    if sh:
        rows.append(["input shapes", str(sh.get("text", "-"))])
        if sh.get("dynamic_dims"):
            rows.append(["dynamic dims", ", ".join(sh["dynamic_dims"])])
    tgt = ctx.get("target") or {}
    if tgt:
        rows.append(["target", f"{tgt.get('kind', '-')} (vector width {tgt.get('vector_width', '-')}, "
                               f"vnni {tgt.get('vnni', '-')}, {tgt.get('threads', '-')} thread(s), "
                               f"{'detected' if tgt.get('detected') else 'named'}; cpu {tgt.get('cpu', '-')})"])
    if ctx.get("latency_cache"):
        rows.append(["latency cache", str(ctx["latency_cache"])])
    return [("Data and context", ["", ""], rows)] if rows else []


def _validation_tables(report: dict[str, Any]) -> list[Table]:
    v = report.get("validation") or {}
    if v.get("skipped"):
        return [("Validation", ["", ""], [["skipped", str(v["skipped"])]])]
    if not v:
        return []
    data = v.get("data") or {}
    vrows = [["data", f"{data.get('source', '-')} ({data.get('n_samples', '-')} samples)"]]
    for name, m in (v.get("outputs") or {}).items():
        text = (f"max|d|={_g(m.get('max_abs'), '.3g')}  mean|d|={_g(m.get('mean_abs'), '.3g')}  "
                f"cosine={_g(m.get('cosine'), '.6f')}")
        if m.get("argmax_agreement") is not None:
            text += f"  per-position argmax agreement={_pct(m['argmax_agreement'])}"
        if m.get("nonfinite"):
            text += f"  non-finite values={m['nonfinite']}"
        vrows.append([f"output {name}", text])
    if v.get("top1_agreement") is not None:
        vrows.append(["top-1 agreement", _pct(v["top1_agreement"])])
    acc = v.get("accuracy")
    if acc:
        d = _num(acc.get("delta"))
        delta = "nan" if d is None or math.isnan(d) else f"{d * 100:+.2f}"
        unsure = ""
        if acc.get("lost") is not None and acc.get("n"):
            from onnxprune.paired import describe

            unsure = " " + describe(acc["lost"], acc["gained"], acc["n"])
        vrows.append(["top-1 accuracy", f"{_pct(acc.get('before'))} -> {_pct(acc.get('after'))} ({delta} pts{unsure})"])
    lat = v.get("latency")
    if lat:
        vrows.append(["latency (median)", f"{_g(lat.get('before_ms'), '.3f')} ms -> {_g(lat.get('after_ms'), '.3f')} ms, "
                      f"ratio {_g(lat.get('ratio'), '.3f')} ({lat.get('threads', '-')} thread(s), "
                      f"{lat.get('runs', '-')} interleaved runs)"])
    return [("Validation", ["", ""], vrows)]


def _pass_detail_tables(report: dict[str, Any]) -> list[Table]:
    """Each list of dicts in a pass's stats (per_group, layers, blocked ...) as a table,
    also one level down (``reconstruction.layers``: per-layer error before/after refit),
    whose scalar siblings (samples used, seconds) go in the title."""
    out: list[Table] = []
    for i, p in enumerate(report.get("passes", [])):
        where = f"{p.get('name', '?')} (pass {i + 1})"
        for key, value in (p.get("stats") or {}).items():
            if key == "plots":  # pictures: the HTML draws them, no table shows SVG text
                continue
            if _is_rows(value):
                out.append(_rows_table(f"{where}: {key.replace('_', ' ')}", value))
            elif key == "chosen" and isinstance(value, dict):  # the search's pick, one row
                out.append(_rows_table(f"{where}: chosen point", [value]))
            elif isinstance(value, list) and value and all(isinstance(x, str) for x in value):
                out.append((f"{where}: {key.replace('_', ' ')}", [key.replace("_", " ")], [[x] for x in value]))
            elif isinstance(value, dict):
                scalars = {k: v for k, v in value.items()  # never an SVG in a title
                           if not isinstance(v, (list, dict)) and not (isinstance(v, str) and "<svg" in v)}
                for sub, rows in value.items():
                    if _is_rows(rows):
                        note = f" ({_fmt(scalars)})" if scalars else ""
                        out.append(_rows_table(f"{where}: {key.replace('_', ' ')} {sub.replace('_', ' ')}{note}", rows))
    return out


def _is_rows(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(x, dict) for x in value)


def _rows_table(title: str, value: list[dict[str, Any]]) -> Table:
    cols: list[str] = []
    for row in value:
        cols += [k for k in row if k not in cols]
    rows = [[_cell(row.get(c)) for c in cols] for row in value[:DETAIL_ROWS]]
    more = f", first {DETAIL_ROWS} of {len(value)}" if len(value) > DETAIL_ROWS else ""
    return (title + more, cols, rows)


def _cell(v: Any) -> str:
    if isinstance(v, list):
        text = ", ".join(map(str, v[:3])) + (f" (+{len(v) - 3})" if len(v) > 3 else "")
        return text or "-"
    if v is None:
        return "-"
    return _fmt(v)


def layer_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per layer, joined by node name: FLOPs and params before/after (None where absent)."""
    before = {n["name"]: n for n in (report.get("before") or {}).get("nodes", [])}
    after = {n["name"]: n for n in (report.get("after") or {}).get("nodes", [])}
    names = list(before) + [n for n in after if n not in before]
    rows = []
    for name in names:
        nb, na = before.get(name), after.get(name)
        op = (nb or na or {}).get("op_type", "?")
        rows.append({"name": name, "op_type": op,
                     "flops_before": nb["flops"] if nb else None, "flops_after": na["flops"] if na else None,
                     "params_before": nb["params"] if nb else None, "params_after": na["params"] if na else None})
    return rows


def layer_table(report: dict[str, Any]) -> Table | None:
    """Layers whose cost changed (removed, new or different), largest before-FLOPs first."""
    rows = layer_rows(report)
    if not rows:
        return None
    changed = [r for r in rows if (r["flops_before"], r["params_before"]) != (r["flops_after"], r["params_after"])]
    changed.sort(key=lambda r: -(r["flops_before"] or r["flops_after"] or 0))
    body = []
    for r in changed[:DETAIL_ROWS]:
        state = "removed" if r["flops_after"] is None else "new" if r["flops_before"] is None else ""
        body.append([r["name"], r["op_type"], _si(r["flops_before"]), _si(r["flops_after"]),
                     state or _change(r["flops_before"], r["flops_after"]),
                     _si(r["params_before"]), _si(r["params_after"])])
    title = f"Per-layer cost ({len(changed)} of {len(rows)} layers changed"
    title += f", largest {DETAIL_ROWS} shown)" if len(changed) > DETAIL_ROWS else ")"
    if not body:
        body = [["(no layer changed)", "", "", "", "", "", ""]]
    return (title, ["layer", "op", "FLOPs before", "FLOPs after", "change", "params before", "params after"], body)


# ---------------------------------------------------------------------------- renderers

def render_text(report: dict[str, Any]) -> str:
    lines: list[str] = []
    for title, header, rows in tables(report):
        widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
        lines.append(title)
        if any(header):
            lines.append("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
        for r in rows:
            lines.append("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _md(c: Any) -> str:
    return str(c).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# onnxprune report: {Path(str(report.get('input', ''))).name}", ""]
    lines += [f"**{_md(h)}**" if h.startswith(("TARGET MISSED", "COLLAPSE", "WEAK")) else _md(h)
              for h in headline(report)]
    lines.append("")
    if report.get("output"):
        lines += [f"Output: `{report['output']}`", ""]
    for title, header, rows in tables(report, detail=True):
        lines += [f"## {title}", "", "| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
        lines.append("")
    for d in report.get("diagnostics", []):
        lines.append(f"- note: {_md(d)}")
    return "\n".join(lines).rstrip() + "\n"


def pictures(report: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(caption, inline SVG or None when matplotlib is absent) for the HTML report."""
    from onnxprune import plots

    out: list[tuple[str, str | None]] = []
    rows = [r for r in layer_rows(report) if (r["flops_before"] or r["flops_after"])]
    rows.sort(key=lambda r: -(r["flops_before"] or r["flops_after"] or 0))
    rows = rows[:40]
    if rows:
        svg = plots.bar_chart([r["name"] for r in rows],
                              {"before": [r["flops_before"] or 0 for r in rows],
                               "after": [r["flops_after"] or 0 for r in rows]},
                              title="FLOPs per layer (largest 40), before and after", ylabel="FLOPs")
        out.append(("FLOPs per layer before and after", svg))
    for i, p in enumerate(report.get("passes", [])):
        groups = (p.get("stats") or {}).get("per_group")
        if not groups:
            continue
        groups = groups[:60]
        labels = [(", ".join(g.get("sources", [])[:1]) or f"group {k}") for k, g in enumerate(groups)]
        kept = [float(g.get("channels", 0)) - float(g.get("removed", 0)) for g in groups]
        removed = [float(g.get("removed", 0)) for g in groups]
        svg = plots.bar_chart(labels, {"kept": kept, "removed": removed},
                              title=f"{p.get('name')}: channels kept and removed per group", ylabel="channels")
        out.append((f"{p.get('name')} (pass {i + 1}): channels per group", svg))
    for i, p in enumerate(report.get("passes", [])):
        drawn = (p.get("stats") or {}).get("plots")
        if not isinstance(drawn, dict):
            continue
        for key, svg in drawn.items():
            caption = f"{p.get('name')} (pass {i + 1}): {CAPTIONS.get(str(key), str(key).replace('_', ' '))}"
            if svg is None and plots.available():
                caption += " (nothing to draw)"
            out.append((caption, svg if isinstance(svg, str) and "<svg" in svg else None))
    return out


#: captions of the pictures the auto pass draws (any other key is shown by its name)
CAPTIONS = {
    "sensitivity": "sensitivity curves: calibration drop per group / layer at each ratio or rank",
    "pareto_latency": "every evaluated point: measured speed-up vs drop (Pareto front, chosen point starred)",
    "pareto_size": "every evaluated point: size vs drop (Pareto front, chosen point starred)",
    "predicted_vs_measured": "predicted vs measured speed-up of every evaluated point",
}


def render_html(report: dict[str, Any]) -> str:
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>onnxprune report</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f4f4f4}"
             ".collapse{background:#fdd;border:1px solid #c00;padding:6px}.weak{background:#ffd;border:1px solid #cc0;"
             "padding:6px}figure{margin:1em 0}</style></head><body>",
             f"<h1>onnxprune report: {esc(Path(str(report.get('input', ''))).name)}</h1>"]
    for h in headline(report):
        cls = "collapse" if h.startswith(("COLLAPSE", "TARGET MISSED")) else "weak" if h.startswith("WEAK") else ""
        parts.append(f"<p class='{cls}'>{esc(h)}</p>" if cls else f"<p>{esc(h)}</p>")
    if report.get("output"):
        parts.append(f"<p>Output: <code>{esc(str(report['output']))}</code></p>")
    for title, header, rows in tables(report, detail=True):
        parts.append(f"<h2>{esc(title)}</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        for r in rows:
            parts.append("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>")
        parts.append("</table>")
    pics = pictures(report)
    if pics:
        parts.append("<h2>Pictures</h2>")
        for caption, svg in pics:
            if svg is None and caption.endswith("(nothing to draw)"):
                parts.append(f"<p>{esc(caption)}</p>")
            elif svg is None:
                parts.append(f"<p>{esc(caption)}: left out (install matplotlib: pip install onnxprune[plots])</p>")
            else:
                parts.append(f"<figure>{svg}<figcaption>{esc(caption)}</figcaption></figure>")
    for d in report.get("diagnostics", []):
        parts.append(f"<p>note: {esc(d)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_json(report: dict[str, Any]) -> str:
    # allow_nan=False would fail the run on a NaN metric; JSON has no NaN, so write null.
    return json.dumps(_no_nan(_plot_names(report)), indent=2, default=_json_default) + "\n"


def _plot_names(report: dict[str, Any]) -> dict[str, Any]:
    """The report with each pass's ``stats["plots"]`` (caption -> SVG) cut to the names of the
    pictures drawn: SVG text is for the HTML, not for the machine-readable record."""
    passes = report.get("passes")
    if not isinstance(passes, list) or not any(isinstance((p.get("stats") or {}).get("plots"), dict)
                                               for p in passes if isinstance(p, dict)):
        return report
    out = []
    for p in passes:
        st = p.get("stats") if isinstance(p, dict) else None
        if isinstance(st, dict) and isinstance(st.get("plots"), dict):
            st = {**st, "plots": [k for k, v in st["plots"].items() if isinstance(v, str) and "<svg" in v]}
            p = {**p, "stats": st}
        out.append(p)
    return {**report, "passes": out}


def _no_nan(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _no_nan(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_no_nan(v) for v in o]
    return o


def render(report: dict[str, Any], path: str | os.PathLike[str]) -> str:
    """The report as the text of the file ``path`` names (.json, .md, .html)."""
    suffix = check_report_path(path).suffix.lower()
    if suffix == ".json":
        return render_json(report)
    if suffix == ".md":
        return render_markdown(report)
    return render_html(report)


# ---------------------------------------------------------------------------- files

def check_report_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.suffix.lower() not in REPORT_SUFFIXES:
        raise UsageError(f"--report {p}: unknown format; use one of {', '.join(REPORT_SUFFIXES)}")
    if not (p.parent if str(p.parent) else Path(".")).is_dir():
        raise UsageError(f"--report {p}: folder does not exist")
    return p


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_text(text: str, path: str | os.PathLike[str], *, mode: int | None = None) -> Path:
    """Write ``text`` atomically (temporary file beside it, then rename) with permission
    bits ``mode`` (the model's, by the CLI; else what a plain ``open`` would give)."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent if str(p.parent) else ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, _default_mode() if mode is None else mode)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


def write_report(report: dict[str, Any], path: str | os.PathLike[str], *, mode: int | None = None) -> Path:
    """Write by suffix (.json, .md, .html), atomically."""
    return write_text(render(report, path), path, mode=mode)


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return _no_nan(o.item())
    if isinstance(o, np.ndarray):
        return _no_nan(o.tolist())
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o, key=str)
    return str(o)  # an odd stat must not fail the run after the work is done
