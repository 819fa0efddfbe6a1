"""``onnxprune explain MODEL``: the channel groups of a model, what can be pruned and why not.

Errors follow the CLI's codes: a model the analysis cannot handle because of control
flow (If/Loop/Scan subgraphs) is unsupported (exit 6, one line); any other crash of the
analysis is a bug (exit 1). ``--json`` is checked writable before the analysis runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn, Sequence

from onnxprune.errors import OnnxPruneError, UnsupportedError, UsageError


def explain_model(path: str, protect: Sequence[str] = ()) -> dict[str, Any]:
    from onnxprune.channels import analyze
    from onnxprune.model import Model, load_model

    proto = load_model(path)
    model = Model(proto)
    try:
        return analyze(model, protect).to_dict()
    except OnnxPruneError:
        raise
    except Exception as exc:
        from onnxprune.validate import control_flow_nodes

        flow = control_flow_nodes(proto)
        if flow:
            raise UnsupportedError(f"{path}: the channel analysis cannot handle control flow ({flow[0].op_type} node "
                                   f"{flow[0].name!r}): {type(exc).__name__}: {exc}") from exc
        raise


def render(info: dict[str, Any], show_all: bool = False) -> str:
    rows = [("group", "channels", "prunable", "sources", "blocked by")]
    for g in info["groups"]:
        if not show_all and not g["sources"]:
            continue
        src = ", ".join(g["sources"][:2]) + (f" (+{len(g['sources']) - 2})" if len(g["sources"]) > 2 else "")
        why = "; ".join(f"{b['node']}: {b['reason']}" for b in g["blocked"][:2])
        if len(g["blocked"]) > 2:
            why += f" (+{len(g['blocked']) - 2})"
        rows.append((str(g["id"]), str(g["channels"]), str(g["prunable_channels"]), src, why or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    lines.append(f"{info['n_prunable_groups']} of {info['n_groups']} groups prunable; analysis took {info['seconds']:.3f}s")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise UsageError(message)

    p = Parser(prog="onnxprune explain", description="List channel groups: layers, prunable channels, blockers.")
    p.add_argument("model")
    p.add_argument("--protect", default="", help="node-name patterns to protect, separated by |")
    p.add_argument("--json", help="also write the groups as JSON here")
    p.add_argument("--all", action="store_true", help="also list groups with no prunable source")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.json:
        from pathlib import Path

        from onnxprune.cli import check_writable

        check_writable(Path(args.json), "--json")
    info = explain_model(args.model, [s for s in args.protect.split("|") if s])
    sys.stdout.write(render(info, args.all))
    if args.json:
        from onnxprune.report import write_text

        write_text(json.dumps(info, indent=2) + "\n", args.json)
    return 0
