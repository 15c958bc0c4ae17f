"""Apply a plan: the only layer that changes graphs.

Passes, in order (each a function of the model, the analysis and the kept atoms):

0. ``recover`` (optional, ``rewrite/recover.py``): bias compensation or least-squares refits of
   the consumers, on the full-size weights.
1. ``slice_params``: every constant axis indexed by channels keeps only the kept positions
   (``np.compress``), once per (constant, axis) — shared constants were coupled by the analysis.
2. ``run_fixes``: the rules' declared fixes (Conv ``group``, Reshape targets, Split sizes,
   Slice starts/ends, Resize sizes); a constant shared with another node is cloned first.
3. ``remove_dead``: nodes whose outputs nobody reads, and constants nobody uses.
4. ``toposort``: a bias ``Add`` appended by recovery moves after its MatMul.
5. ``refresh_shapes``: stale ``value_info`` is cleared and re-inferred.

Post-conditions (``ensure``): each sliced axis has the kept count; inferred graph output shapes
equal the declared ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .._ir import Model, Use, value_infos
from ..analysis import Analysis
from ..errors import ValidationError
from .recover import Recovery, recover

__all__ = ["RewriteResult", "apply", "RewriteContext", "Recovery"]


@dataclass(frozen=True)
class RewriteResult:
    model: onnx.ModelProto
    modified: bool
    sliced: int
    removed_nodes: int
    recovery: tuple[str, ...] = ()


class RewriteContext:
    """What a rule's fix may do to the graph (handed to ``Fix.fn``)."""

    def __init__(self, model: Model, an: Analysis, keep_atom: np.ndarray) -> None:
        self.model = model
        self.an = an
        self.keep_atom = keep_atom

    def keep(self, labels: np.ndarray) -> np.ndarray:
        return self.an.keep_mask(labels, self.keep_atom)

    def set_attr(self, node: onnx.NodeProto, name: str, value) -> None:
        self.model.set_attr(node, name, value)

    def const_input(self, node_index: int, k: int) -> np.ndarray:
        """Input k's value (a constant, or computed from static shapes before the rewrite)."""
        return np.asarray(self.model.value(self.model.nodes[node_index].input[k]))

    def set_input_const(self, node_index: int, k: int, value: np.ndarray) -> None:
        """Set input k of a node to ``value``; a constant other nodes also read is cloned."""
        m = self.model
        node = m.nodes[node_index]
        name = node.input[k]
        old = m.const(name)
        if old is not None and old.shape == value.shape and np.array_equal(old, value):
            return
        if old is not None and m.const_users(name) == {node_index} and not m.const_is_output(name):
            m.set_const(name, value.astype(old.dtype))
            return
        new = m.add_initializer(name, value.astype(old.dtype) if old is not None else value)
        node.input[k] = new
        m.consumers[name] = [u for u in m.uses(name) if not (u.node == node_index and u.index == k)]
        m.consumers[new] = [Use(node_index, k)]


def slice_params(model: Model, an: Analysis, keep_atom: np.ndarray) -> int:
    axes: dict[str, dict[int, np.ndarray]] = {}
    for p in an.params:
        axes.setdefault(p.tensor, {}).setdefault(p.axis, p.labels)
    n = 0
    for tensor, by_axis in axes.items():
        arr = model.const(tensor)
        changed = False
        for axis, labels in sorted(by_axis.items()):
            mask = an.keep_mask(labels, keep_atom)
            if not mask.all():
                arr = np.compress(mask, arr, axis=axis)
                changed = True
        if changed:
            model.set_const(tensor, arr)
            n += 1
    return n


def run_fixes(model: Model, an: Analysis, keep_atom: np.ndarray) -> None:
    rw = RewriteContext(model, an, keep_atom)
    for fix in an.fixes:
        fix.fn(rw)


def remove_dead(model: Model) -> int:
    """Drop nodes whose outputs are unused (iteratively) and constants nobody reads."""
    g = model.graph
    removed = 0
    while True:
        used = {name for n in g.node for name in n.input if name}
        for n in g.node:  # names read by subgraphs
            for a in n.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    used |= {name for sn in sub.node for name in sn.input}
        used |= {v.name for v in g.output}
        dead = [i for i, n in enumerate(g.node)
                if n.output and not any(o in used for o in n.output if o)]
        if not dead:
            break
        for i in reversed(dead):
            del g.node[i]
        removed += len(dead)
    used = {name for n in g.node for name in n.input if name} | {v.name for v in g.output}
    keep_inits = [t for t in g.initializer if t.name in used]
    if len(keep_inits) != len(g.initializer):
        inputs = {v.name for v in g.input}
        dropped = {t.name for t in g.initializer} - {t.name for t in keep_inits}
        del g.initializer[:]
        g.initializer.extend(keep_inits)
        kept_inputs = [v for v in g.input if not (v.name in dropped and v.name in inputs)]
        del g.input[:]
        g.input.extend(kept_inputs)
    return removed


def toposort(model: Model) -> None:
    """Order nodes so each comes after its inputs' producers (stable: keeps the given order)."""
    g = model.graph
    nodes = list(g.node)
    produced = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [{produced[x] for x in n.input if x in produced and produced[x] != i} for i, n in enumerate(nodes)]
    if all(all(d < i for d in ds) for i, ds in enumerate(deps)):
        return
    users: dict[int, list[int]] = {}
    for i, ds in enumerate(deps):
        for d in ds:
            users.setdefault(d, []).append(i)
    import heapq

    pending = [len(ds) for ds in deps]
    ready = [i for i, k in enumerate(pending) if k == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, []):
            pending[u] -= 1
            if pending[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise AssertionError("rewrite made the graph cyclic")
    del g.node[:]
    g.node.extend(nodes[i] for i in order)


def refresh_shapes(model: Model) -> None:
    """Clear stale value_info, infer shapes once, store them in the model and in ``model.shapes``."""
    g = model.graph
    del g.value_info[:]
    model.infer()
    g.value_info.extend(value_infos(model))


def ensure(model: Model, an: Analysis, keep_atom: np.ndarray) -> None:
    """Post-conditions of the rewrite; a failure here is a bug in a rule, not a user error."""
    for p in an.params:
        shape = model.const_shape(p.tensor)
        want = int(an.keep_mask(p.labels, keep_atom).sum())
        if shape is None or shape[p.axis] != want:
            raise AssertionError(f"rewrite post-condition: {p.tensor} axis {p.axis} has "
                                 f"{None if shape is None else shape[p.axis]}, expected {want}")
    for v in model.graph.output:
        declared = [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        actual = model.shape(v.name)
        if actual is None or not v.type.tensor_type.HasField("shape"):
            continue
        for d, a in zip(declared, actual):
            if d is not None and isinstance(a, int) and d != a:
                raise ValidationError(f"graph output '{v.name}' would change shape from {declared} to "
                                      f"{list(actual)}; this is a bug, please report it with the model")


def apply(model: Model, an: Analysis, keep_atom: np.ndarray, *, recovery: Recovery | None = None) -> RewriteResult:
    """Remove the channels whose atoms are not kept. Changes ``model`` in place.

    Args:
        model: the model the analysis was made on (its proto is edited in place).
        an: the analysis.
        keep_atom: boolean mask over ``an``'s atoms (see ``planner.keep_atoms``).
        recovery: bias compensation / least-squares settings and data (default: none).
    """
    if keep_atom.all():
        return RewriteResult(model.proto, False, 0, 0)
    report = recover(model, an, keep_atom, recovery) if recovery is not None else []
    sliced = slice_params(model, an, keep_atom)
    run_fixes(model, an, keep_atom)
    removed = remove_dead(model)
    toposort(model)
    model.reindex()
    refresh_shapes(model)
    ensure(model, an, keep_atom)
    return RewriteResult(model.proto, True, sliced, removed, tuple(report))
