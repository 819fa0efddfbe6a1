"""Passes, their registry and the PassManager that runs them in order.

A pass is a small class with a ``name`` (the CLI word), an ``Options`` frozen dataclass
and ``run(model) -> PassResult``. On the command line a pass is one argument,
``name`` or ``name:key=value,key=value``; list values are separated by ``|``.
"""
from __future__ import annotations

import dataclasses
import enum
import logging
import math
import time
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import onnx

from onnxprune.context import PassContext
from onnxprune.errors import ModelError, OnnxPruneError, PassCrash, UsageError, VerificationError
from onnxprune.model import Model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassResult:
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NoOptions:
    pass


class Pass(ABC):
    """Base class of every pass. Subclasses set ``name`` and ``Options`` and implement ``run``."""

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any | None = None) -> None:
        self.options = options if options is not None else self.Options()

    def requires(self, model: Model) -> None:
        """Raise when the model is not in a state this pass can work on."""

    def ensures(self, model: Model) -> None:
        """Raise when the pass did not leave the model as it promised."""

    #: whether the pass cannot work without calibration data (it then refuses with one line).
    needs_data: ClassVar[bool] = False

    #: whether the pass works on quantized graphs (QDQ / QLinear ops); others refuse them with one line.
    accepts_quantized: ClassVar[bool] = False

    @abstractmethod
    def run(self, model: Model, ctx: PassContext) -> PassResult: ...

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


class Registry:
    """Name → pass class, from one explicit list; duplicates are rejected."""

    def __init__(self, passes: Sequence[type[Pass]]) -> None:
        self._passes: dict[str, type[Pass]] = {}
        for cls in passes:
            if cls.name in self._passes:
                raise ValueError(f"pass name {cls.name!r} registered twice")
            self._passes[cls.name] = cls

    def names(self) -> list[str]:
        return list(self._passes)

    def get(self, name: str) -> type[Pass]:
        try:
            return self._passes[name]
        except KeyError:
            raise UsageError(f"unknown pass {name!r}; valid passes: {', '.join(self._passes)}"
                             f"{did_you_mean(name, self._passes)}") from None

    def items(self) -> list[tuple[str, type[Pass]]]:
        return list(self._passes.items())

    def create(self, spec: str) -> Pass:
        name, raw = parse_pass_spec(spec)
        cls = self.get(name)
        return cls(build_options(cls, raw))


def parse_pass_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``'prune-channels:ratio=0.3,criterion=l1'`` → ``('prune-channels', {'ratio': '0.3', ...})``."""
    name, colon, rest = spec.partition(":")
    name = name.strip()
    if not name:
        raise UsageError(f"empty pass name in {spec!r}")
    if not colon and ("=" in name or "," in name):
        head = name.split(",", 1)[0].split("=", 1)[0]
        raise UsageError(f"pass spec {spec!r}: options follow a ':' (e.g. '{head}:{name[len(head) + 1:]}')")
    raw: dict[str, str] = {}
    if rest.strip():
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key:
                raise UsageError(f"pass {name}: expected key=value, got {item!r}")
            if key in raw:
                raise UsageError(f"pass {name}: option {key!r} given twice")
            raw[key] = value.strip()
    return name, raw


def build_options(cls: type[Pass], raw: dict[str, str]) -> Any:
    """Coerce string values to the Options fields' types; unknown keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}
    hints = typing.get_type_hints(cls.Options)
    kwargs: dict[str, Any] = {}
    for key, text in raw.items():
        cli_key = key.replace("-", "_")
        if cli_key not in fields:
            valid = ", ".join(k.replace("_", "-") for k in fields) or "(none)"
            hint = did_you_mean(key.replace("_", "-"), [k.replace("_", "-") for k in fields])
            raise UsageError(f"pass {cls.name}: unknown option {key!r}; valid options: {valid}{hint}")
        kwargs[cli_key] = _coerce(cls.name, key, text, hints[cli_key])
    try:
        return cls.Options(**kwargs)
    except UsageError:
        raise
    except (TypeError, ValueError) as exc:
        raise UsageError(f"pass {cls.name}: {exc}") from exc


def _coerce(pass_name: str, key: str, text: str, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        non_none = [a for a in args if a is not type(None)]
        if text.lower() in ("none", "") and type(None) in args:
            return None
        errors = []
        for a in non_none:
            try:
                return _coerce(pass_name, key, text, a)
            except UsageError as exc:
                errors.append(str(exc))
        raise UsageError(errors[-1] if errors else f"pass {pass_name}: bad value for {key}: {text!r}")
    if origin is tuple:
        inner = args[0] if args else str
        return tuple(_coerce(pass_name, key, part, inner) for part in text.split("|") if part != "")
    if origin is typing.Literal:
        if text not in args:
            raise UsageError(f"pass {pass_name}: {key} must be one of {', '.join(map(str, args))}, got {text!r}")
        return text
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(text)
        except ValueError:
            valid = ", ".join(str(m.value) for m in hint)
            raise UsageError(f"pass {pass_name}: {key} must be one of {valid}, got {text!r}") from None
    try:
        if hint is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            return int(text)
        if hint is float:
            number = float(text)
            if not math.isfinite(number):  # nan slips through every range check
                return _not_finite(pass_name, key, text)
            return number
        if hint is str:
            return text
    except UsageError:
        raise
    except ValueError:
        kind = getattr(hint, "__name__", str(hint))
        raise UsageError(f"pass {pass_name}: {key} must be {kind}, got {text!r}") from None
    raise UsageError(f"pass {pass_name}: option {key} cannot be set from the command line")


def _not_finite(pass_name: str, key: str, text: str) -> Any:
    raise UsageError(f"pass {pass_name}: {key} must be a finite number, got {text!r}")


def check_range(pass_name: str, key: str, value: float, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> None:
    """Raise UsageError unless lo <= value <= hi (open ends as asked)."""
    bad = value != value or value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi)
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise UsageError(f"pass {pass_name}: {key}={value} is out of range {left}{lo}, {hi}{right}")


def options_dict(options: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(options):
        v = getattr(options, f.name)
        if isinstance(v, enum.Enum):
            v = v.value
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


@dataclass
class PassRecord:
    name: str
    options: dict[str, Any]
    modified: bool
    stats: dict[str, Any]
    seconds: float
    cost_after: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


Verifier = Callable[[onnx.ModelProto, str, list[str]], None]
CostFn = Callable[[onnx.ModelProto], dict[str, Any]]


class PassManager:
    """Runs passes in order; after each, verification (when a verifier is given) and cost."""

    def __init__(self, passes: Sequence[Pass], *, verifier: Verifier | None = None, cost: CostFn | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.passes = list(passes)
        self.verifier = verifier
        self.cost = cost
        self.progress = progress

    def run(self, model: Model, ctx: PassContext | None = None) -> list[PassRecord]:
        ctx = ctx if ctx is not None else PassContext()
        records: list[PassRecord] = []
        done: list[str] = []
        last_cost: dict[str, Any] | None = None
        for p in self.passes:
            if self.progress:
                self.progress(p.name)
            start = time.perf_counter()
            if not p.accepts_quantized:
                from onnxprune.quantized import refuse_if_quantized

                refuse_if_quantized(model, p.name, _after(done))
            try:
                p.requires(model)
                result = p.run(model, ctx)
                p.ensures(model)
            except ModelError as exc:  # onnxruntime refused a model the pass built: the pass broke it (5), not the input (3)
                raise VerificationError(f"pass {p.name!r}{_after(done)} built a model onnxruntime refuses: {exc}") from exc
            except OnnxPruneError:
                raise
            except Exception as exc:  # a bug inside a pass (exit 1), not a broken graph: name it
                raise PassCrash(
                    f"pass {p.name!r} failed{_after(done)}: {type(exc).__name__}: {exc}", p.name
                ) from exc
            if not result.modified:
                # Nothing changed: no export, verification or costing to redo.
                if last_cost is None and self.cost is not None:
                    last_cost = self.cost(model.to_onnx())
                seconds = time.perf_counter() - start
                records.append(PassRecord(p.name, options_dict(p.options), False, result.stats, round(seconds, 3),
                                          last_cost))
                log.info("pass %s: not modified (%.2fs)", p.name, seconds)
                done.append(p.name)
                continue
            model.touch()
            try:
                proto = model.to_onnx()
            except Exception as exc:  # gs refuses to export a broken graph (cycles, dangling tensors)
                raise VerificationError(
                    f"pass {p.name!r}{_after(done)} broke the graph: {type(exc).__name__}: {str(exc).strip()[:200]}"
                ) from exc
            if self.verifier is not None:
                self.verifier(proto, p.name, list(done))
            seconds = time.perf_counter() - start
            cost = self.cost(proto) if self.cost else None
            last_cost = cost
            records.append(PassRecord(p.name, options_dict(p.options), result.modified, result.stats, round(seconds, 3), cost))
            log.info("pass %s: modified=%s in %.2fs", p.name, result.modified, seconds)
            done.append(p.name)
        return records


def _after(done: list[str]) -> str:
    return f" (after {', '.join(done)})" if done else ""


def did_you_mean(word: str, choices: Sequence[str] | Any) -> str:
    """``"; did you mean 'fold-bn'?"`` for the closest of ``choices``, or ``""``."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


@dataclass(frozen=True)
class OptionDoc:
    """One pass option as ``--list-passes -v`` and ``onnxprune help PASS`` print it."""

    key: str  # the CLI spelling (``round-to``)
    type: str
    default: Any
    help: str


def option_docs(cls: type[Pass]) -> list[OptionDoc]:
    """Every option of a pass: CLI key, type, default and one line of help.

    The help line comes from the field's ``metadata={"help": "..."}`` when present,
    else from a ``key: text`` line in the Options class docstring (``round_to:`` or
    ``round-to:``), else it is empty (a test lists the options still undocumented).
    """
    import re

    lines: dict[str, str] = {}
    for klass in cls.Options.__mro__:  # a shared base (the low-rank passes') documents its fields once
        doc = klass.__dict__.get("__doc__") or ""
        if doc.startswith(klass.__name__ + "("):  # dataclass's generated signature, not prose
            continue
        for line in doc.splitlines():
            m = re.match(r"\s*([A-Za-z_][\w-]*)\s*:\s*(\S.*)$", line)
            if m:
                lines.setdefault(m.group(1).replace("-", "_"), m.group(2).strip())
    hints = typing.get_type_hints(cls.Options)
    out = []
    for f in dataclasses.fields(cls.Options):
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        if isinstance(default, enum.Enum):
            default = default.value
        text = str(f.metadata.get("help", "")) or lines.get(f.name, "")
        out.append(OptionDoc(f.name.replace("_", "-"), _type_name(hints.get(f.name, f.type)), default, text))
    return out


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Literal:
        return "|".join(map(str, args))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        parts = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or none" if type(None) in args else "")
    if origin is tuple:
        return f"list of {_type_name(args[0]) if args else 'str'} (a|b)"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "|".join(str(m.value) for m in hint)
    return getattr(hint, "__name__", str(hint))
