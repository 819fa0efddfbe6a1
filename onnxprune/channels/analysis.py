"""The closure over channel handlers, the atoms and groups it yields, and the rewrite
that removes chosen atoms.

``analyze`` seeds one space per source (every Conv/ConvTranspose/Gemm/MatMul output
with constant weights), then follows each space to its producer and every consumer,
asking the op's handler to relate the node's other tensors. An op with no handler,
a model input or output, or a protected layer blocks the space that reaches it.
"""
from __future__ import annotations

import fnmatch
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.channels.core import HANDLERS, SOURCES, Conflict, Context, Role, Space
from onnxprune.model import Model

log = logging.getLogger(__name__)

#: ops whose channel counts pick their kernel (NCHWc blocks, depthwise fast paths): a group's
#: pieces that one of them reads or writes are rounded on their own (Analysis.parts)
PART_OPS = ("Conv", "ConvTranspose")


@dataclass
class Atom:
    id: int
    group: int
    elements: dict[int, np.ndarray]  # space id -> channel indices in that space
    prunable: bool


@dataclass
class Group:
    id: int
    spaces: list[int]
    atoms: list[int] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    blocked: list[tuple[str, str]] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return not self.blocked and bool(self.sources)


@dataclass
class Analysis:
    ctx: Context
    atoms: list[Atom]
    groups: list[Group]
    seconds: float
    atom_of: dict[int, np.ndarray]  # space id -> atom id of each channel

    def prunable_atoms(self, group: Group) -> list[int]:
        return [a for a in group.atoms if self.atoms[a].prunable]

    def take_lowest(self, candidates: list[int], scores: Any, k: int, left: dict[int, int]) -> list[int]:
        """Up to ``k`` of ``candidates``, lowest score first (ties by id), skipping any atom whose
        removal would leave a tensor with no channel; ``left`` (space id -> channels left) is
        updated for the atoms taken."""
        taken: list[int] = []
        for a in sorted(candidates, key=lambda x: (scores[x], x)):
            if len(taken) >= k:
                break
            el = self.atoms[a].elements
            if any(left[s] - len(ix) < 1 for s, ix in el.items()):
                continue
            for s, ix in el.items():
                left[s] -= len(ix)
            taken.append(a)
        return taken

    def parts(self, group: Group) -> list[list[int]]:
        """The group's atoms cut into *parts*: the common refinement of the channel sets that
        single convs read or write when that set is only a piece of the group (a Split's
        outputs feeding a mixed-kernel depthwise conv each, the Concat inputs written by
        grouped pointwise convs). Two atoms share a part when the same conv tensors carry
        them; a group without pieces is one part. Each conv's channel count is then a sum of
        whole parts, so rounding every part's kept count rounds every conv's."""
        n = len(group.atoms)
        conv_spaces = {m.space for m in self.ctx.members if m.op in PART_OPS}
        where: dict[int, list[int]] = {a: [] for a in group.atoms}
        for s in group.spaces:
            if s not in conv_spaces:
                continue
            present = np.unique(self.atom_of[s])
            if len(present) < n:
                for a in present.tolist():
                    where[a].append(s)
        cells: dict[tuple[int, ...], list[int]] = {}
        for a in group.atoms:
            cells.setdefault(tuple(where[a]), []).append(a)
        return list(cells.values())

    def round_removal(self, removed: Sequence[int], scores: Any, round_to: int,
                      parts: list[list[int]]) -> list[int]:
        """``removed`` with the kept count of every part raised to a multiple of ``round_to``
        (or to the whole part): the highest-scoring removed atoms of a part go back first.
        A subset of ``removed``, so any removal that was safe stays safe."""
        gone = set(removed)
        out: list[int] = []
        for cell in parts:
            mine = sorted((a for a in cell if a in gone), key=lambda x: (scores[x], x))
            kept = len(cell) - len(mine)
            kept = min(len(cell), -(-kept // round_to) * round_to)
            out += mine[: len(cell) - kept]
        order = {a: i for i, a in enumerate(removed)}
        return sorted(out, key=order.__getitem__)

    def to_dict(self) -> dict[str, Any]:
        groups = []
        for g in self.groups:
            groups.append({
                "id": g.id,
                "channels": len(g.atoms),
                "prunable_channels": len(self.prunable_atoms(g)),
                "sources": g.sources,
                "layers": g.layers,
                "tensors": [self.ctx.spaces[s].tensor for s in g.spaces],
                "blocked": [{"node": n, "reason": r} for n, r in g.blocked],
            })
        return {
            "groups": groups,
            "n_groups": len(groups),
            "n_prunable_groups": sum(1 for g in self.groups if self.prunable_atoms(g)),
            "not_sources": [{"node": n, "reason": r} for n, r in self.ctx.not_sources],
            "seconds": round(self.seconds, 4),
        }


def _matches(name: str, patterns: Sequence[str]) -> str | None:
    for p in patterns:
        if fnmatch.fnmatchcase(name, p):
            return p
    return None


def _body_owners(graph: gs.Graph) -> dict[int, gs.Node]:
    """id of every node inside a subgraph -> the main-graph node (If, Loop, Scan) holding it."""
    owners: dict[int, gs.Node] = {}

    def walk(g: gs.Graph, owner: gs.Node) -> None:
        for n in g.nodes:
            owners[id(n)] = owner
            for sub in _subgraphs(n):
                walk(sub, owner)

    for node in graph.nodes:
        for sub in _subgraphs(node):
            walk(sub, node)
    return owners


def _subgraphs(node: gs.Node) -> list[gs.Graph]:
    out: list[gs.Graph] = []
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            out.append(value)
        elif isinstance(value, (list, tuple)):
            out.extend(v for v in value if isinstance(v, gs.Graph))
    return out


def analyze(model: Model, protect: Sequence[str] = ()) -> Analysis:
    start = time.perf_counter()
    graph = model.graph
    ctx = Context(graph)
    tensors = graph.tensors()
    graph_inputs = {t.name for t in graph.inputs}
    # Nodes inside If/Loop/Scan bodies read outer tensors by name (onnx-graphsurgeon lists
    # them among the tensor's readers): channels reaching one are blocked, bodies are not pruned.
    body_owner = _body_owners(graph)
    for node in graph.nodes:
        seed = SOURCES.get(node.op) if not node.domain else None
        if seed is None or _matches(node.name, protect):
            continue
        try:
            seed(node, ctx)
        except Conflict as exc:
            log.info("not a source: %s: %s", node.name, exc)
    while ctx.queue:
        sp = ctx.queue.pop()
        ctx.arriving = sp
        tensor = tensors[sp.tensor]
        if sp.tensor in graph_inputs:
            ctx.block(sp, "(input)", "model input")
        if ctx.is_output(tensor):
            ctx.block(sp, "(output)", "model output")
        nodes = list(tensor.inputs) + list(tensor.outputs)
        for node in nodes:
            owner = body_owner.get(id(node))
            if owner is not None:
                ctx.block(sp, owner.name, f"read inside a subgraph of {owner.op} {owner.name} (bodies are not pruned)")
                continue
            pattern = _matches(node.name, protect)
            if pattern:
                ctx.block(sp, node.name, f"protected by pattern {pattern!r}")
                continue
            handler = HANDLERS.get(node.op) if node.domain in ("", "ai.onnx", None) else None
            if handler is None:
                ctx.block(sp, node.name, f"{node.op} has no channel handler")
                continue
            try:
                handler.analyze(node, ctx, tensor, sp.axis)
            except Conflict as exc:
                ctx.block(sp, node.name, str(exc))
            except Exception as exc:  # a handler that trips on an odd graph blocks, it must not crash the run
                log.warning("channel handler for %s failed on %s: %s", node.op, node.name, exc)
                ctx.block(sp, node.name, f"{node.op} handler failed: {type(exc).__name__}: {exc}")
    ctx.arriving = None
    return _collect(ctx, time.perf_counter() - start)


def _collect(ctx: Context, seconds: float) -> Analysis:
    roots = ctx.uf.roots()
    atom_index: dict[int, int] = {}
    atom_of: dict[int, np.ndarray] = {}
    elements: list[dict[int, list[int]]] = []
    for sp in ctx.spaces:
        ids = np.empty(sp.size, dtype=np.int64)
        for i in range(sp.size):
            r = int(roots[sp.base + i])
            a = atom_index.get(r)
            if a is None:
                a = atom_index[r] = len(elements)
                elements.append({})
            elements[a].setdefault(sp.id, []).append(i)
            ids[i] = a
        atom_of[sp.id] = ids
    # groups: spaces connected through any tie (or sharing an atom)
    parent = list(range(len(ctx.spaces)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in ctx.space_links:
        parent[find(a)] = find(b)
    for el in elements:
        spaces = list(el)
        for s in spaces[1:]:
            parent[find(s)] = find(spaces[0])
    group_of: dict[int, int] = {}
    groups: list[Group] = []
    for sp in ctx.spaces:
        r = find(sp.id)
        if r not in group_of:
            group_of[r] = len(groups)
            groups.append(Group(len(groups), []))
        groups[group_of[r]].spaces.append(sp.id)
    members_by_space: dict[int, list] = {}
    for m in ctx.members:
        members_by_space.setdefault(m.space, []).append(m)
    for g in groups:
        seen: set[str] = set()
        for s in g.spaces:
            for m in members_by_space.get(s, []):
                if m.node not in seen:
                    seen.add(m.node)
                    g.layers.append(m.node)
                if m.role is Role.SOURCE and m.node not in g.sources:
                    g.sources.append(m.node)
            for blk in ctx.blocked.get(s, []):
                if blk not in g.blocked:
                    g.blocked.append(blk)
    atoms: list[Atom] = []
    for a, el in enumerate(elements):
        spaces = list(el)
        gid = group_of[find(spaces[0])]
        prunable = any(s in ctx.source_spaces for s in spaces) and not any(s in ctx.blocked for s in spaces)
        atoms.append(Atom(a, gid, {s: np.asarray(ix) for s, ix in el.items()}, prunable))
        groups[gid].atoms.append(a)
    return Analysis(ctx, atoms, groups, seconds, atom_of)


def removal_is_safe(analysis: Analysis, atom_ids: Sequence[int]) -> bool:
    """Every space keeps at least one channel."""
    left = {sp.id: sp.size for sp in analysis.ctx.spaces}
    for a in atom_ids:
        for s, ix in analysis.atoms[a].elements.items():
            left[s] -= len(ix)
    return all(v > 0 for v in left.values())


def apply_removal(model: Model, analysis: Analysis, atom_ids: Sequence[int]) -> dict[str, int]:
    """Remove the channels of ``atom_ids`` everywhere they live; returns per-tensor removed counts."""
    ctx = analysis.ctx
    if not atom_ids:
        return {}
    bad = [a for a in atom_ids if not analysis.atoms[a].prunable]
    if bad:
        raise ValueError(f"atoms {bad[:5]} are not prunable")
    if not removal_is_safe(analysis, atom_ids):
        raise ValueError("removal would leave a tensor with no channels")
    per_space: dict[int, list[np.ndarray]] = {}
    for a in atom_ids:
        for s, ix in analysis.atoms[a].elements.items():
            per_space.setdefault(s, []).append(ix)
    removed = {ctx.spaces[s].tensor: np.unique(np.concatenate(ix)) for s, ix in per_space.items()}
    for node in ctx.touched.values():
        names = [t.name for t in list(node.inputs) + list(node.outputs)]
        mine = {n: removed[n] for n in names if n in removed}
        if mine:
            HANDLERS[node.op].apply(node, ctx, mine)
    tensors = model.graph.tensors()
    for name, r in removed.items():
        sp: Space = ctx.by_tensor[name]
        t = tensors.get(name)
        if isinstance(t, gs.Variable) and t.shape is not None and sp.axis < len(t.shape):
            shape = list(t.shape)
            if isinstance(shape[sp.axis], int):
                shape[sp.axis] -= len(r)
                t.shape = shape
    model.touch()
    return {k: int(len(v)) for k, v in removed.items()}
