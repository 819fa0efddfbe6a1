"""Safe graph edits over onnx-graphsurgeon, shared by every pass.

Each edit checks its preconditions first and only then changes the graph, so a failed
edit leaves the graph as it was. Edits that change the graph bump the model's version
(``Model.touch``) through the caller; helpers here work on a ``gs.Graph``.
"""
from __future__ import annotations

import itertools
from typing import Iterable, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.errors import OnnxPruneError


class EditError(OnnxPruneError):
    """An edit's precondition does not hold; the graph is unchanged."""

    exit_code = 1


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a tensor known at compile time (initializer or Constant node), else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
    return None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    return list(tensor.outputs)


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.outputs)


def readers_elsewhere(graph: gs.Graph, tensor: gs.Tensor, node: gs.Node) -> bool:
    """True when something other than ``node`` reads ``tensor`` (another node or a graph output)."""
    if is_graph_output(graph, tensor):
        return True
    return any(n is not node for n in tensor.outputs)


def unique_name(graph: gs.Graph, base: str) -> str:
    taken = set(graph.tensors().keys()) | {n.name for n in graph.nodes}
    if base not in taken:
        return base
    for k in itertools.count(1):
        cand = f"{base}_{k}"
        if cand not in taken:
            return cand
    raise AssertionError("unreachable")


def set_input_constant(graph: gs.Graph, node: gs.Node, index: int, values: np.ndarray, *, name: str | None = None) -> gs.Constant:
    """Give ``node`` its own constant ``values`` at input ``index``.

    Exporters share initializers (identical zero biases, tied weights); writing into a
    shared one would change other nodes too, so a new Constant is always made unless the
    node is its only reader.
    """
    if index > len(node.inputs):
        raise EditError(f"node {node.name}: cannot set input {index}, it has {len(node.inputs)}")
    values = np.ascontiguousarray(values)
    old = node.inputs[index] if index < len(node.inputs) else None
    if isinstance(old, gs.Constant) and not readers_elsewhere(graph, old, node) and sum(t is old for t in node.inputs) == 1:
        old.values = values
        return old
    const = gs.Constant(unique_name(graph, name or f"{node.name}_in{index}"), values)
    if old is None:
        node.inputs.append(const)
    else:
        node.inputs[index] = const
    return const


def reroute_output(graph: gs.Graph, new_producer: gs.Node, old_node: gs.Node, out_index: int = 0) -> None:
    """Make ``new_producer`` write ``old_node``'s output tensor, and drop ``old_node``.

    Used when a node becomes redundant (BatchNorm folded into its Conv): the tensor name
    the rest of the graph (and the graph outputs) know stays the same.
    Precondition: ``new_producer``'s current output is read only by ``old_node``.
    """
    mid = new_producer.outputs[0]
    if readers_elsewhere(graph, mid, old_node):
        raise EditError(f"{new_producer.name}: its output is read by more than {old_node.name}")
    target = old_node.outputs[out_index]
    old_node.inputs.clear()
    old_node.outputs.clear()
    new_producer.outputs[0] = target
    graph.nodes.remove(old_node)


def insert_chain_after(graph: gs.Graph, tensor: gs.Variable, nodes: Sequence[gs.Node], chain_out: gs.Variable) -> None:
    """Rewire every reader of ``tensor`` to read ``chain_out`` instead, then add ``nodes``.

    ``nodes`` must read ``tensor`` and produce ``chain_out``. A graph output is kept by name
    by swapping names.
    """
    for node in list(tensor.outputs):
        if node in nodes:
            continue
        for i, t in enumerate(node.inputs):
            if t is tensor:
                node.inputs[i] = chain_out
    graph.nodes.extend(nodes)
    for i, t in enumerate(graph.outputs):
        if t is tensor:
            graph.outputs[i] = chain_out
            tensor.name, chain_out.name = chain_out.name, tensor.name


def replace_node(graph: gs.Graph, old: gs.Node, chain: Sequence[gs.Node]) -> None:
    """Replace ``old`` by ``chain`` whose first node reads old's inputs and whose last writes old's outputs.

    The caller builds the chain with the same input tensors and the original output tensor
    objects (so tensor names, and graph outputs, stay the same).
    """
    outs = list(old.outputs)
    produced = {id(t) for n in chain for t in n.outputs}
    for t in outs:
        if id(t) not in produced:
            raise EditError(f"replacement of {old.name} does not produce {t.name}")
    old.inputs.clear()
    old.outputs.clear()
    graph.nodes.remove(old)
    graph.nodes.extend(chain)


def remove_nodes(graph: gs.Graph, nodes: Iterable[gs.Node]) -> None:
    """Remove nodes whose outputs nobody reads; raises before touching anything otherwise."""
    nodes = list(nodes)
    doomed = {id(n) for n in nodes}
    for n in nodes:
        for t in n.outputs:
            if is_graph_output(graph, t) or any(id(r) not in doomed for r in t.outputs):
                raise EditError(f"cannot remove {n.name}: {t.name} is still read")
    for n in nodes:
        n.inputs.clear()
        n.outputs.clear()
        graph.nodes.remove(n)
