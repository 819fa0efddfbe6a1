"""The networkx view of a graph, for analysis only (nothing mutates it).

Nodes of the DiGraph are ONNX node names; an edge u→v carries the tensor names that
u writes and v reads. Graph inputs and initializers are not nodes.
"""
from __future__ import annotations

from collections import defaultdict

import networkx as nx
import onnx


def build_dag(graph: onnx.GraphProto) -> nx.DiGraph:
    dag: nx.DiGraph = nx.DiGraph()
    producer: dict[str, str] = {}
    for node in graph.node:
        dag.add_node(node.name, op_type=node.op_type)
        for out in node.output:
            if out:
                producer[out] = node.name
    for node in graph.node:
        for name in node.input:
            src = producer.get(name)
            if src is None:
                continue
            if dag.has_edge(src, node.name):
                dag.edges[src, node.name]["tensors"].append(name)
            else:
                dag.add_edge(src, node.name, tensors=[name])
    return dag


def producers_of(graph: onnx.GraphProto) -> dict[str, list[str]]:
    """Tensor name → names of every node writing it (more than one is a broken graph)."""
    out: dict[str, list[str]] = defaultdict(list)
    for node in graph.node:
        for name in node.output:
            if name:
                out[name].append(node.name)
    return dict(out)


def consumers_of(graph: onnx.GraphProto) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                out[name].append(node.name)
    return dict(out)


def find_cycle(dag: nx.DiGraph) -> list[str] | None:
    try:
        return [u for u, _ in nx.find_cycle(dag)]
    except nx.NetworkXNoCycle:
        return None


def topological_order(dag: nx.DiGraph) -> list[str]:
    return list(nx.topological_sort(dag))
