"""After the passes: what the command line makes of the validation and of a missed target.

* :func:`fidelity`: the one fidelity figure of a validation (top-1 agreement,
  per-position argmax agreement, or the lowest output cosine);
* :func:`quality_warnings`: collapse warnings (top-1 down by more than 5 points,
  fidelity below 0.9 cosine / 0.5 agreement), reported whatever the flags;
* :func:`gate`: ``--max-drop`` / ``--min-fidelity``, which fail the run (exit 7,
  nothing written);
* :func:`missed_records`, :func:`miss_line`: the pass records and the one error line
  of a run whose search (the auto pass) missed its target.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from onnxprune.errors import QualityError, UsageError


def fidelity(validation: dict[str, Any]) -> tuple[str, float] | None:
    """The fidelity figure the gate and the collapse warning read: top-1 agreement for
    classifiers, else the lowest per-position argmax agreement of sequence outputs,
    else the lowest per-output cosine."""
    if validation.get("top1_agreement") is not None:
        return "top-1 agreement", float(validation["top1_agreement"])
    seq = [o["argmax_agreement"] for o in validation.get("outputs", {}).values() if "argmax_agreement" in o]
    if seq:
        return "per-position argmax agreement", float(min(seq))
    cos = [o.get("cosine") for o in validation.get("outputs", {}).values()]
    if any(c is None for c in cos):
        return "cosine", float("nan")
    return ("cosine", float(min(cos))) if cos else None


def quality_warnings(validation: dict[str, Any]) -> list[str]:
    """Warnings of a collapse (top-1 down by over 5 points, fidelity below its floor), whatever the flags."""
    out = []
    acc = validation.get("accuracy")
    if acc and acc["before"] - acc["after"] > 0.05:
        out.append(f"accuracy collapsed: top-1 {acc['before'] * 100:.2f}% -> {acc['after'] * 100:.2f}% "
                   f"on {acc['n']} evaluation samples")
    fid = fidelity(validation)
    if fid is not None:
        name, value = fid
        limit = 0.9 if name == "cosine" else 0.5
        if not value >= limit:
            out.append(f"outputs collapsed: {name} {value:.4f} (below {limit}) on the evaluation data")
    return out


def gate(validation: dict[str, Any], args: argparse.Namespace) -> None:
    """``--max-drop`` and ``--min-fidelity``: a QualityError (exit 7) when the validation misses them."""
    if args.max_drop is not None:
        acc = validation.get("accuracy")
        if not acc:
            raise UsageError("--max-drop needs labelled evaluation data (class folders, IDX labels or an npz 'labels' array)")
        drop = (acc["before"] - acc["after"]) * 100
        if drop > args.max_drop:
            raise QualityError(f"top-1 dropped {drop:.2f} points ({acc['before'] * 100:.2f}% -> "
                               f"{acc['after'] * 100:.2f}%), more than --max-drop {args.max_drop}; nothing written")
    if args.min_fidelity is not None:
        fid = fidelity(validation)
        if fid is None:
            raise UsageError("--min-fidelity: the model has no float output to compare")
        name, value = fid
        if not value >= args.min_fidelity:
            raise QualityError(f"{name} {value:.4f} is below --min-fidelity {args.min_fidelity}; nothing written")


def missed_records(exc: QualityError, passes: Sequence[Any], started: list[str],
                   cost_after: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Pass records of a run whose search missed its target: the passes before it ran (their
    own stats went down with the exception), the search's stats, and those after it, not run."""
    from onnxprune.manager import options_dict

    k = len(started) - 1
    out: list[dict[str, Any]] = []
    for i, p in enumerate(passes):
        rec: dict[str, Any] = {"name": p.name, "options": options_dict(p.options), "seconds": 0.0, "cost_after": None}
        if i < k:
            rec.update(modified=None, stats={"note": "ran before the search; its stats are not kept when a search misses"})
        elif i == k:
            stats = exc.stats  # type: ignore[attr-defined]
            rec.update(modified=getattr(exc, "best_model", None) is not None, stats=stats, cost_after=cost_after,
                       seconds=float(stats.get("search_seconds") or 0.0))
        else:
            rec.update(modified=False, stats={"note": f"not run: {passes[k].name} missed its target"})
        out.append(rec)
    return out


def miss_line(exc: QualityError, keep: bool, args: argparse.Namespace, written: list[Path]) -> str:
    """The one error line of a missed target: the search's verdict and what was written."""
    wrote = [str(p) for p in written]
    if keep:
        wrote.insert(0, f"the best point to {args.output} (--keep-best)")
    elif args.keep_best:
        wrote.insert(0, "no model (no point held the quality budget)")
    elif args.output:
        wrote.insert(0, "no model (--keep-best writes the best point)")
    what = ", ".join(wrote) if wrote else "nothing (--report writes the search's points)"
    return f"{exc}; wrote {what}"
