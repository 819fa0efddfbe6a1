"""The report: one dict (written as JSON), rendered as terminal text, Markdown or HTML."""
from __future__ import annotations

import html
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from onnxprune.errors import UsageError

REPORT_SUFFIXES = (".json", ".md", ".html", ".htm")


def _si(x: float | int | None, unit: str = "") -> str:
    if x is None:
        return "-"
    x = float(x)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g} {suffix}{unit}".strip()
    return f"{x:.4g} {unit}".strip()


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for div, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= div:
            return f"{n / div:.2f} {suffix}"
    return f"{n} B"


def _change(before: float | None, after: float | None) -> str:
    if not before or after is None:
        return "-"
    return f"{(after - before) / before * 100:+.1f}%"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    if isinstance(v, list):
        return f"{len(v)} item(s)"
    return str(v)


def tables(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report as (title, header, rows) tables; every renderer draws these."""
    out: list[tuple[str, list[str], list[list[str]]]] = []
    b, a = report.get("before", {}), report.get("after", {})
    rows = [
        ["FLOPs", _si(b.get("flops")), _si(a.get("flops")), _change(b.get("flops"), a.get("flops"))],
        ["MACs", _si(b.get("macs")), _si(a.get("macs")), _change(b.get("macs"), a.get("macs"))],
        ["parameters", _si(b.get("params")), _si(a.get("params")), _change(b.get("params"), a.get("params"))],
        ["size", _bytes(b.get("size_bytes")), _bytes(a.get("size_bytes")), _change(b.get("size_bytes"), a.get("size_bytes"))],
    ]
    out.append(("Model", ["", "before", "after", "change"], rows))
    prows = []
    for p in report.get("passes", []):
        stats = {k: v for k, v in p.get("stats", {}).items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) or k == "folded" or k == "reverted"}
        stats = dict(list(stats.items())[:6])
        cost = p.get("cost_after") or {}
        prows.append([p["name"], "yes" if p["modified"] else "no", _si(cost.get("flops")), _si(cost.get("params")),
                      f"{p.get('seconds', 0):.2f}s", _fmt(stats)])
    if prows:
        out.append(("Passes", ["pass", "modified", "FLOPs after", "params after", "time", "stats"], prows))
    v = report.get("validation") or {}
    if v.get("skipped"):
        out.append(("Validation", ["", ""], [["skipped", str(v["skipped"])]]))
    elif v:
        data = v.get("data", {})
        vrows = [["data", f"{data.get('source', '-')} ({data.get('n_samples', '-')} samples)"]]
        for name, m in (v.get("outputs") or {}).items():
            vrows.append([f"output {name}", f"max|d|={m.get('max_abs', 0):.3g}  mean|d|={m.get('mean_abs', 0):.3g}  cosine={m.get('cosine', 0):.6f}"])
        if "top1_agreement" in v and v["top1_agreement"] is not None:
            vrows.append(["top-1 agreement", f"{v['top1_agreement'] * 100:.2f}%"])
        acc = v.get("accuracy")
        if acc:
            vrows.append(["top-1 accuracy", f"{acc['before'] * 100:.2f}% -> {acc['after'] * 100:.2f}% ({acc['delta'] * 100:+.2f} pts)"])
        lat = v.get("latency")
        if lat:
            vrows.append(["latency (median)", f"{lat['before_ms']:.3f} ms -> {lat['after_ms']:.3f} ms, ratio {lat['ratio']:.3f} "
                          f"({lat['threads']} thread(s), {lat['runs']} interleaved runs)"])
        out.append(("Validation", ["", ""], vrows))
    return out


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


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# onnxprune report: {Path(report.get('input', '')).name}", ""]
    if report.get("output"):
        lines += [f"Output: `{report['output']}`", ""]
    for title, header, rows in tables(report):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def render_html(report: dict[str, Any]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>onnxprune report</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f4f4f4}</style></head><body>",
             f"<h1>onnxprune report: {html.escape(Path(report.get('input', '')).name)}</h1>"]
    for title, header, rows in tables(report):
        parts.append(f"<h2>{html.escape(title)}</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        for r in rows:
            parts.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def check_report_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.suffix.lower() not in REPORT_SUFFIXES:
        raise UsageError(f"--report {p}: unknown format; use one of {', '.join(REPORT_SUFFIXES)}")
    if not (p.parent if str(p.parent) else Path(".")).is_dir():
        raise UsageError(f"--report {p}: folder does not exist")
    return p


def write_report(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write by suffix (.json, .md, .html), atomically."""
    p = check_report_path(path)
    suffix = p.suffix.lower()
    if suffix == ".json":
        text = json.dumps(report, indent=2, default=_json_default) + "\n"
    elif suffix == ".md":
        text = render_markdown(report)
    else:
        text = render_html(report)
    fd, tmp = tempfile.mkstemp(prefix=".onnxprune-", dir=p.parent if str(p.parent) else ".")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, p)
    return p


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
