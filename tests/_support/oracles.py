"""The lossless dead-channel oracle: kill random prunable atoms, prune exactly those,
and check the outputs did not move."""
from __future__ import annotations

import numpy as np
import onnx

from onnxprune import ir
from onnxprune.channels import Role, analyze, apply_removal
from onnxprune.channels.analysis import removal_is_safe
from onnxprune.model import Model, normalize
from onnxprune.testing import random_feeds, run


def kill_atoms(model: Model, analysis, atom_ids) -> None:
    """Make the chosen atoms' channels exactly zero wherever they are produced."""
    ctx = analysis.ctx
    nodes = {n.name: n for n in model.graph.nodes}
    for a in atom_ids:
        for m in ctx.members:
            idx = analysis.atoms[a].elements.get(m.space)
            if idx is None:
                continue
            node = nodes[m.node]
            if m.role is Role.SOURCE:
                w = ir.constant_value(node.inputs[1]).copy()
                if node.op == "Conv":
                    w[idx] = 0
                elif node.op == "Gemm" and int(node.attrs.get("transB", 0)):
                    w[idx] = 0
                else:
                    w[:, idx] = 0
                ir.set_input_constant(model.graph, node, 1, w)
                if len(node.inputs) > 2 and node.inputs[2].name:
                    b = ir.constant_value(node.inputs[2]).copy()
                    b[..., idx] = 0 if b.ndim else b
                    ir.set_input_constant(model.graph, node, 2, b)
            elif m.role is Role.PARAM and node.op == "BatchNormalization":
                for i in (1, 2):
                    v = ir.constant_value(node.inputs[i]).copy()
                    v[idx] = 0
                    ir.set_input_constant(model.graph, node, i, v)
            elif m.role is Role.PARAM:
                sp = ctx.spaces[m.space]
                out_rank = len(node.outputs[0].shape)
                for i, t in enumerate(node.inputs):
                    c = ir.constant_value(t)
                    if c is None:
                        continue
                    ax = sp.axis - (out_rank - c.ndim)
                    if ax >= 0 and c.shape[ax] == sp.size:
                        c = c.copy()
                        np.moveaxis(c, ax, 0)[idx] = 0
                        ir.set_input_constant(model.graph, node, i, c)
    model.touch()


def pick_atoms(analysis, rng) -> list[int]:
    chosen: list[int] = []
    for g in analysis.groups:
        prunable = analysis.prunable_atoms(g)
        if not prunable:
            continue
        k = int(rng.integers(0, len(prunable)))
        for a in rng.permutation(prunable)[:k].tolist():
            if removal_is_safe(analysis, chosen + [a]):
                chosen.append(a)
    return chosen


def with_dead_atoms(proto: onnx.ModelProto, rng) -> tuple[onnx.ModelProto, object, list[int]]:
    """(dead model, its analysis, chosen atoms): random prunable atoms of the normalized
    ``proto`` made exactly zero."""
    model = Model(normalize(proto))
    analysis = analyze(model)
    chosen = pick_atoms(analysis, rng)
    kill_atoms(model, analysis, chosen)
    return model.to_onnx(), analysis, chosen


def dead_channel_oracle(proto: onnx.ModelProto, seed: int, *, atol: float = 1e-5) -> int:
    """Kill random prunable atoms, prune exactly those, and check outputs are unchanged.

    Returns the number of atoms removed (0 when the graph had none to prune). Raises
    AssertionError (or VerificationError) when pruning dead channels changed anything.
    """
    from onnxprune.verify import verify

    dead, analysis, chosen = with_dead_atoms(proto, np.random.default_rng(seed))
    work = Model(dead)
    analysis2 = analyze(work)
    assert [a.elements.keys() for a in analysis2.atoms] == [a.elements.keys() for a in analysis.atoms]
    apply_removal(work, analysis2, chosen)
    pruned = work.to_onnx()
    verify(pruned, dead)
    feeds = random_feeds(dead, seed=seed % 1000, batch=2)
    for want, got in zip(run(dead, feeds), run(pruned, feeds)):
        np.testing.assert_allclose(got, want, rtol=atol, atol=atol)
    if chosen:
        n_params = sum(int(np.prod(t.dims)) for t in pruned.graph.initializer)
        assert n_params < sum(int(np.prod(t.dims)) for t in dead.graph.initializer)
    return len(chosen)
