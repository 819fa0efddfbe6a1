"""Data structures of the channel dependency analysis.

A *space* is one tensor's channel axis. Every channel of every space is an *element*;
handlers tie elements of different spaces that must be removed together (a union-find
over elements). After the closure, each connected set of elements is an *atom*: the
smallest unit that can be pruned. Spaces joined by any tie form a *group*, the unit the
report speaks of. An atom is prunable when it contains at least one *source* element
(a filter of a Conv/ConvTranspose, a column of a Gemm/MatMul weight) and no element of a
blocked space.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune import ir


class Role(enum.Enum):
    SOURCE = "source"      # the node writes these channels from its own weights (filters)
    CONSUMER = "consumer"  # the node reads these channels with its own weights (input channels)
    PARAM = "param"        # per-channel parameters that ride along (BN, bias constants, PRelu slopes)
    PASS = "pass"          # the node only carries the channels through (activations, Concat, pooling)


@dataclass
class Space:
    tensor: str
    axis: int
    size: int
    base: int  # index of element 0 in the union-find
    id: int = 0


@dataclass(frozen=True)
class Member:
    """A node's weight slice that one space's channels index: for importance and reporting."""

    node: str
    op: str
    space: int   # Space.id
    role: Role
    #: the weight with this space's channels first (any rank): a view, never a copy, so an
    #: analysis of a large model holds no second copy of its weights.
    rows: np.ndarray | None = None

    @property
    def weight(self) -> np.ndarray | None:
        """The weight as ``[channels, -1]`` rows, when it has one: a view where the layout
        allows (Conv outputs, MatMul), else a fresh copy that the caller does not keep."""
        return None if self.rows is None else self.rows.reshape(self.rows.shape[0], -1)


class UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self, n: int) -> int:
        base = len(self.parent)
        self.parent.extend(range(base, base + n))
        return base

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb

    def roots(self) -> np.ndarray:
        return np.fromiter((self.find(i) for i in range(len(self.parent))), dtype=np.int64, count=len(self.parent))


class Conflict(Exception):
    """A tensor was reached with two different channel axes."""


class Handler(Protocol):
    def analyze(self, node: gs.Node, ctx: "Context", tensor: gs.Tensor, axis: int) -> None: ...

    def apply(self, node: gs.Node, ctx: "Context", removed: dict[str, np.ndarray]) -> None: ...


HANDLERS: dict[str, Handler] = {}
SOURCES: dict[str, Callable[[gs.Node, "Context"], None]] = {}


def register(*ops: str) -> Callable[[type], type]:
    """Register a handler class for op types; one registration per op type."""

    def deco(cls: type) -> type:
        inst = cls()
        for op in ops:
            if op in HANDLERS:
                raise ValueError(f"channel handler for {op} registered twice")
            HANDLERS[op] = inst
            if hasattr(inst, "seed"):
                SOURCES[op] = inst.seed
        return cls

    return deco


@dataclass
class Context:
    """What handlers see and write while the closure runs."""

    graph: gs.Graph
    spaces: list[Space] = field(default_factory=list)
    by_tensor: dict[str, Space] = field(default_factory=dict)
    uf: UnionFind = field(default_factory=UnionFind)
    members: list[Member] = field(default_factory=list)
    blocked: dict[int, list[tuple[str, str]]] = field(default_factory=dict)  # space id -> [(node, reason)]
    source_spaces: set[int] = field(default_factory=set)
    touched: dict[str, gs.Node] = field(default_factory=dict)  # nodes whose apply() must run
    queue: list[Space] = field(default_factory=list)
    space_links: list[tuple[int, int]] = field(default_factory=list)
    arriving: Space | None = None  # the space whose node is being analysed
    #: (node, reason) of weight layers that could not be sources: their channels are never pruned
    not_sources: list[tuple[str, str]] = field(default_factory=list)

    # --- reading the graph -------------------------------------------------------
    @staticmethod
    def shape(tensor: gs.Tensor) -> list | None:
        if isinstance(tensor, gs.Constant):
            return list(tensor.shape)
        return None if tensor.shape is None else list(tensor.shape)

    @staticmethod
    def const(tensor: gs.Tensor) -> np.ndarray | None:
        return ir.constant_value(tensor)

    def is_output(self, tensor: gs.Tensor) -> bool:
        return ir.is_graph_output(self.graph, tensor)

    # --- building spaces -----------------------------------------------------------
    def space(self, tensor: gs.Tensor, axis: int, size: int | None = None) -> Space:
        """The space of ``tensor`` at ``axis``, created (and queued) when new."""
        rank_shape = self.shape(tensor)
        if axis < 0 and rank_shape is not None:
            axis += len(rank_shape)
        found = self.by_tensor.get(tensor.name)
        if found is not None:
            if found.axis != axis:
                raise Conflict(f"{tensor.name} carries channels on axis {found.axis} and {axis}")
            return found
        if size is None:
            dim = rank_shape[axis] if rank_shape is not None and 0 <= axis < len(rank_shape) else None
            if not isinstance(dim, int) or dim <= 0:
                raise Conflict(f"{tensor.name}: channel count on axis {axis} is not known")
            size = dim
        sp = Space(tensor.name, axis, int(size), self.uf.add(int(size)), len(self.spaces))
        self.spaces.append(sp)
        self.by_tensor[tensor.name] = sp
        self.queue.append(sp)
        return sp

    def tie(self, a: Space, ia: np.ndarray, b: Space, ib: np.ndarray) -> None:
        """Channels ``ia`` of ``a`` go together with channels ``ib`` of ``b`` (pairwise)."""
        for x, y in zip(np.asarray(ia, dtype=np.int64).tolist(), np.asarray(ib, dtype=np.int64).tolist()):
            self.uf.union(a.base + x, b.base + y)
        self.space_links.append((a.id, b.id))

    def tie_identity(self, a: Space, b: Space) -> None:
        if a.size != b.size:
            raise Conflict(f"{a.tensor} has {a.size} channels but {b.tensor} has {b.size}")
        idx = np.arange(a.size)
        self.tie(a, idx, b, idx)

    def block(self, sp: Space, node: str, reason: str) -> None:
        """Block ``sp``, and the space the analysis arrived through: a node that cannot
        relate one of its tensors cannot be trusted with the others either."""
        for target in (sp, self.arriving):
            if target is not None and (node, reason) not in self.blocked.get(target.id, []):
                self.blocked.setdefault(target.id, []).append((node, reason))

    def member(self, node: gs.Node, sp: Space, role: Role, weight: np.ndarray | None = None) -> None:
        if weight is not None:
            # a view in the weight's own dtype: a float64 copy of a VGG classifier is 784 MiB
            weight = np.asarray(weight) if weight.shape[0] == sp.size else None
        self.members.append(Member(node.name, node.op, sp.id, role, weight))
        if role is Role.SOURCE:
            self.source_spaces.add(sp.id)
        self.touched[node.name] = node
