"""Channel dependency analysis: walk the graph with the rules and find the channel groups.

Model
-----
Every channel a weight defines gets a **label** (an integer). A tensor's channel axis is an
array of labels, one per position (``Chan``): a Conv's output gets fresh labels, a ReLU passes its
input's labels on, a Concat concatenates them, a Flatten repeats each one H·W times.
Ops that combine tensors channel by channel (residual ``Add``, SE ``Mul``) *unify* labels in a
union-find; a shared weight unifies the labels of all its uses. After the walk:

* an **atom** is one union-find class: channels that are kept or removed together;
* a **group** is a set of atoms tied by their spaces (all output channels of one Conv, a whole
  residual stream...): the unit the planner ranks within;
* a pinned atom (graph output, barrier, unknown op, protected layer) is never removed, and its
  group lists the reasons.

Removing a set of atoms means: every parameter axis (``ParamAxis``) loses the positions whose
label maps to a removed atom, and every declared fix updates attributes/shape constants.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import logging

import onnx_ir as ir

from .graph import Model, Shape, inp, one_line, out
from .errors import PlanError, UnsupportedModelError
from .rules import registry
from . import hidden as _hidden

__all__ = ["group_kind", "Analysis", "Chan", "Group", "ParamAxis", "analyze"]

log = logging.getLogger("onnxprune.analysis")


@dataclass(frozen=True)
class Chan:
    """The channel axis of a tensor and the label of each position on it."""

    axis: int
    labels: np.ndarray


@dataclass(frozen=True)
class ParamAxis:
    """An axis of a constant that is indexed by channels.

    ``role`` is one of ``out`` (producer weight: defines output channels), ``in`` (consumer
    weight), ``bias``, ``scale`` (BatchNorm/InstanceNorm γ), ``norm`` (other normalisation
    parameters) or ``affine`` (per-channel constants of Mul/Add/PRelu...).
    """

    tensor: str
    axis: int
    labels: np.ndarray
    node: ir.Node
    role: str


@dataclass(frozen=True)
class Space:
    """A run of fresh labels [start, start+size) created by one node."""

    start: int
    size: int
    node: ir.Node | None
    what: str


@dataclass(frozen=True)
class Fix:
    """An attribute/constant update run by the rewrite once the kept channels are known."""

    node: ir.Node
    fn: Callable[..., None]


@dataclass
class Group:
    """Atoms that belong together for ranking, e.g. all output channels of one Conv.

    Attributes:
        id: index in ``Analysis.groups``.
        atoms: atom ids, ordered by their first label (channel 0 of the first producer first).
        pinned: per atom, True when it must be kept.
        reasons: why atoms are pinned (empty when fully prunable).
        spaces: the label spaces (producers) merged into this group.
        params: indices into ``Analysis.params`` touching this group.
    """

    id: int
    atoms: np.ndarray
    pinned: np.ndarray
    reasons: list[str]
    spaces: list[Space]
    params: list[int] = field(default_factory=list)
    kind: str = "channels"  # or "heads": each atom is a whole attention head; or "hidden" (hidden.py)

    @property
    def size(self) -> int:
        return int(self.atoms.size)

    @property
    def n_prunable(self) -> int:
        return int((~self.pinned).sum())

    @property
    def prunable(self) -> bool:
        return self.n_prunable > 0


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self, n: int) -> int:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return start

    def find(self, a: int) -> int:
        p = self.parent
        while p[a] != a:
            p[a] = p[p[a]]
            a = p[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb

    def roots(self) -> np.ndarray:
        return np.fromiter((self.find(i) for i in range(len(self.parent))), dtype=np.int64,
                           count=len(self.parent))


class Analysis:
    """The result of :func:`analyze`: channels of every tensor, parameters, atoms and groups."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.chan: dict[str, Chan] = {}
        self.params: list[ParamAxis] = []
        self.spaces: list[Space] = []
        self.fixes: list[Fix] = []
        self.barriers: list[tuple[ir.Node, str]] = []
        self._pins: list[tuple[np.ndarray, str]] = []
        # tensors sliced through the constant they are derived from: name -> [(reader node, labels)]
        self.derived: dict[str, list[tuple[ir.Node, np.ndarray]]] = {}
        self.head_labels: list[np.ndarray] = []  # labels of attention heads (one per head)
        # hidden-size mode (hidden.py): norms/reductions across channels read the kept ones only
        self.hidden = False
        self.hidden_sites: list = []  # hidden.NormSite, one per node reading across the stream
        self.expanded_outputs: list[str] = []  # graph outputs re-expanded to full width
        self._nonempty: list[np.ndarray] = []
        self._uf = _UnionFind()
        # filled by _finish()
        self.atom_of_label = np.zeros(0, dtype=np.int64)
        self.n_atoms = 0
        self.groups: list[Group] = []
        self.group_of_atom = np.zeros(0, dtype=np.int64)
        self.pos_of_atom = np.zeros(0, dtype=np.int64)
        self.atom_pinned = np.zeros(0, dtype=bool)
        self.atom_reasons: dict[int, list[str]] = {}
        self.nonempty_sets: list[np.ndarray] = []

    # ---------------------------------------------------------------- building
    def new_space(self, n: int, node: ir.Node | None, what: str) -> np.ndarray:
        start = self._uf.add(n)
        self.spaces.append(Space(start, n, node, what))
        return np.arange(start, start + n, dtype=np.int64)

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        if a.shape != b.shape:
            raise ValueError(f"cannot unify {a.shape} with {b.shape}")
        for x, y in zip(a.tolist(), b.tolist()):
            if x != y:
                self._uf.union(x, y)

    def pin(self, labels: np.ndarray, reason: str) -> None:
        if labels.size:
            self._pins.append((labels, reason))

    # ------------------------------------------------------------------- query
    def atoms(self, labels: np.ndarray) -> np.ndarray:
        """Atom id of each label."""
        return self.atom_of_label[labels]

    def keep_mask(self, labels: np.ndarray, keep_atom: np.ndarray) -> np.ndarray:
        return keep_atom[self.atom_of_label[labels]]

    def param_label(self, p: ParamAxis) -> str:
        return f"{self.model.node_name(p.node)}:{p.tensor}[{p.axis}]"

    def group_members(self, g: Group) -> list[str]:
        out: list[str] = []
        for k in g.params:
            p = self.params[k]
            desc = f"{self.param_label(p)} {p.role}"
            if desc not in out:
                out.append(desc)
        return out

    def group_name(self, g: Group) -> str:
        """Short name: the producers of the group's spaces."""
        names = []
        for s in g.spaces:
            n = self.model.node_name(s.node) if s.node is not None else s.what
            if n not in names:
                names.append(n)
        head = ",".join(names[:3])
        return head + (f",+{len(names) - 3}" if len(names) > 3 else "")

    def signature(self) -> str:
        """A fingerprint of the group structure: plans made for another analysis are refused."""
        import hashlib

        h = hashlib.sha256()
        for g in self.groups:
            h.update(f"{g.id}:{g.size}:{self.group_name(g)};".encode())
        return h.hexdigest()[:16]

    # ----------------------------------------------------------------- finish
    def _finish(self) -> None:
        model = self.model
        # Graph outputs keep their shapes (a hidden-size stream is re-expanded with zeros instead).
        expand = _hidden.expandable_outputs(self) if self.hidden else set()
        for name in model.graph_outputs:
            c = self.chan.get(name)
            if c is not None and name in expand:
                _hidden.expand_output(self, name, c)
            elif c is not None:
                self.pin(c.labels, f"graph output '{name}' keeps its shape")
        self._check_derived()
        self._couple_shared_params()
        roots = self._uf.roots()
        uniq, atom_of_label = np.unique(roots, return_inverse=True)
        self.atom_of_label = atom_of_label.astype(np.int64)
        self.n_atoms = int(uniq.size)
        pinned = np.zeros(self.n_atoms, dtype=bool)
        reasons: dict[int, list[str]] = {}
        for labels, reason in self._pins:
            atoms = np.unique(self.atom_of_label[labels])
            pinned[atoms] = True
            for a in atoms.tolist():
                lst = reasons.setdefault(a, [])
                if reason not in lst and len(lst) < 8:
                    lst.append(reason)
        self.atom_pinned = pinned
        self.atom_reasons = reasons
        self.nonempty_sets = [np.unique(self.atom_of_label[l]) for l in self._nonempty]
        self._make_groups()

    def _check_derived(self) -> None:
        """A tensor derived from a sliced constant changes shape for every reader: each reader
        must have declared the slicing (else its channels are pinned)."""
        model = self.model
        for name, uses in self.derived.items():
            declared = {id(node) for node, _ in uses}
            if model.is_graph_output(name) or any(id(n) not in declared for n, _ in model.uses(name)):
                for _, labels in uses:
                    self.pin(labels, f"'{name}' is derived from a per-channel constant and also read elsewhere")

    def _couple_shared_params(self) -> None:
        """A constant used by several nodes is sliced once for all: couple or pin its axes."""
        model = self.model
        by_axis: dict[tuple[str, int], list[ParamAxis]] = {}
        for p in self.params:
            by_axis.setdefault((p.tensor, p.axis), []).append(p)
        for (tensor, axis), ps in by_axis.items():
            first = ps[0]
            for p in ps[1:]:
                if p.labels.shape == first.labels.shape:
                    self.unify(first.labels, p.labels)
                else:
                    self.pin(first.labels, f"constant '{tensor}' axis {axis} is indexed differently by two nodes")
                    self.pin(p.labels, f"constant '{tensor}' axis {axis} is indexed differently by two nodes")
            declared = {p.node for p in ps}
            others = model.const_users(tensor) - declared
            if others or model.const_is_output(tensor):
                who = model.node_name(next(iter(others))) if others else "the graph outputs"
                for p in ps:
                    self.pin(p.labels, f"constant '{tensor}' is also used by {who}, which does not slice axis {axis}")

    def _make_groups(self) -> None:
        n = self.n_atoms
        uf = _UnionFind()
        uf.add(n)
        space_atoms = []
        for s in self.spaces:
            atoms = np.unique(self.atom_of_label[s.start:s.start + s.size])
            space_atoms.append(atoms)
            a0 = int(atoms[0])
            for a in atoms[1:].tolist():
                uf.union(a0, a)
        root = uf.roots()
        # Order atoms by their first label, groups by their first atom.
        first_label = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first_label, self.atom_of_label, np.arange(self.atom_of_label.size))
        order = np.argsort(first_label, kind="stable")
        group_ids: dict[int, int] = {}
        members: list[list[int]] = []
        for a in order.tolist():
            r = int(root[a])
            if r not in group_ids:
                group_ids[r] = len(members)
                members.append([])
            members[group_ids[r]].append(a)
        self.group_of_atom = np.zeros(n, dtype=np.int64)
        self.pos_of_atom = np.zeros(n, dtype=np.int64)
        self.groups = []
        for gid, atoms in enumerate(members):
            arr = np.array(atoms, dtype=np.int64)
            self.group_of_atom[arr] = gid
            self.pos_of_atom[arr] = np.arange(arr.size)
            reasons: list[str] = []
            for a in atoms:
                for r in self.atom_reasons.get(a, []):
                    if r not in reasons and len(reasons) < 8:
                        reasons.append(r)
            self.groups.append(Group(gid, arr, self.atom_pinned[arr].copy(), reasons, []))
        for s, atoms in zip(self.spaces, space_atoms):
            self.groups[int(self.group_of_atom[atoms[0]])].spaces.append(s)
        for labels in self.head_labels:
            for gid in np.unique(self.group_of_atom[self.atom_of_label[labels]]).tolist():
                self.groups[gid].kind = "heads"
        for site in self.hidden_sites:
            for gid in np.unique(self.group_of_atom[self.atom_of_label[site.labels]]).tolist():
                self.groups[gid].kind = "hidden"
        for k, p in enumerate(self.params):
            if p.labels.size == 0:
                continue
            for gid in np.unique(self.group_of_atom[self.atom_of_label[p.labels]]).tolist():
                self.groups[gid].params.append(k)

    # --------------------------------------------------------------- protect
    def protect(self, patterns: Iterable[str]) -> list[str]:
        """Pin every atom touched by nodes or constants whose name matches a glob.

        Returns the patterns that matched nothing (the caller reports them).
        """
        patterns = list(patterns)
        if not patterns:
            return []
        model = self.model
        hit = {p: False for p in patterns}
        for pat in patterns:
            for p in self.params:
                if fnmatch.fnmatchcase(model.node_name(p.node), pat) or fnmatch.fnmatchcase(p.tensor, pat):
                    atoms = np.unique(self.atom_of_label[p.labels])
                    self._pin_atoms(atoms, f"protected by '{pat}'")
                    hit[pat] = True
            for node in model.graph:
                if fnmatch.fnmatchcase(model.node_name(node), pat):
                    hit[pat] = True
                    for name in [v.name for v in (*node.outputs, *node.inputs) if v is not None]:
                        c = self.chan.get(name)
                        if c is not None:
                            self._pin_atoms(np.unique(self.atom_of_label[c.labels]), f"protected by '{pat}'")
        for g in self.groups:
            g.pinned = self.atom_pinned[g.atoms].copy()
            for a in g.atoms.tolist():
                for r in self.atom_reasons.get(a, []):
                    if r not in g.reasons and len(g.reasons) < 8:
                        g.reasons.append(r)
        return [p for p, h in hit.items() if not h]

    def _pin_atoms(self, atoms: np.ndarray, reason: str) -> None:
        self.atom_pinned[atoms] = True
        for a in atoms.tolist():
            lst = self.atom_reasons.setdefault(a, [])
            if reason not in lst:
                lst.append(reason)


class NodeContext:
    """What a rule sees of one node, and how it reports channel flow. Built by :func:`analyze`."""

    def __init__(self, an: Analysis, node: ir.Node) -> None:
        self.an = an
        self.model = an.model
        self.node = node
        self.op = node.op_type
        self.name = an.model.node_name(node)
        self.n_inputs = len(node.inputs)
        self.n_outputs = len(node.outputs)

    # inputs/outputs
    def has_input(self, k: int) -> bool:
        return bool(inp(self.node, k))

    def input_name(self, k: int) -> str:
        return inp(self.node, k)

    def output_name(self, k: int) -> str:
        return out(self.node, k)

    def output_used(self, k: int) -> bool:
        name = self.output_name(k)
        return bool(name) and (bool(self.model.uses(name)) or self.model.is_graph_output(name))

    def chan(self, k: int) -> Chan | None:
        return self.an.chan.get(self.input_name(k)) if self.has_input(k) else None

    def is_const(self, k: int) -> bool:
        return self.has_input(k) and self.model.is_const(inp(self.node, k))

    def const(self, k: int) -> np.ndarray | None:
        return self.model.const(inp(self.node, k)) if self.has_input(k) else None

    def value(self, k: int) -> np.ndarray | None:
        """Input k's value if constant or computed from static shapes (shape-like operands only)."""
        return self.model.value(inp(self.node, k)) if self.has_input(k) else None

    def is_scalar_const(self, k: int) -> bool:
        v = self.const(k)
        return v is not None and v.size == 1

    def in_shape(self, k: int) -> Shape | None:
        return self.model.shape(self.input_name(k))

    def out_shape(self, k: int) -> Shape | None:
        return self.model.shape(self.output_name(k))

    def rank(self, k: int) -> int | None:
        s = self.in_shape(k)
        if s is not None:
            return len(s)
        c = self.const(k) if self.is_const(k) else None
        return None if c is None else c.ndim

    def attr(self, name: str, default=None):
        return self.model.attr(self.node, name, default)

    def chan_and_rank(self) -> tuple[Chan, int] | None:
        """Input 0's channels and rank; None when it carries none (or, after a barrier, no rank)."""
        x = self.chan(0)
        if x is None:
            return None
        rank = self.rank(0)
        if rank is None:
            self.barrier("input rank unknown (no shape information)")
            return None
        return x, rank

    def operand(self, k: int, attr: str, since_opset: int):
        """A list operand that moved from attribute ``attr`` to input ``k`` at ``since_opset``.

        Returns ``(ok, value)``: value is None when absent; ok is False (after a barrier) when
        the input is not a constant.
        """
        if self.model.opset < since_opset:
            return True, self.attr(attr)
        if not self.has_input(k):
            return True, None
        v = self.value(k)
        if v is None:
            self.barrier(f"{attr} is not a constant")
            return False, None
        return True, v

    # reporting
    def new_space(self, n: int, what: str = "") -> np.ndarray:
        return self.an.new_space(n, self.node, what or self.name)

    def set_out(self, k: int, axis: int, labels: np.ndarray) -> None:
        name = self.output_name(k)
        if name:
            self.an.chan[name] = Chan(axis, labels)

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        self.an.unify(a, b)

    def pin(self, labels: np.ndarray, reason: str) -> None:
        self.an.pin(labels, f"{self.name} ({self.op}): {reason}")

    def param(self, k: int, axis: int, labels: np.ndarray, role: str) -> None:
        name = self.model.resolve(inp(self.node, k))
        shape = self.model.const_shape(name)
        if shape is None or shape[axis] != labels.size:
            raise ValueError(f"{self.name}: param {name} axis {axis} has {shape}, labels {labels.size}")
        self.an.params.append(ParamAxis(name, axis, labels, self.node, role))

    def nonempty(self, labels: np.ndarray) -> None:
        self.an._nonempty.append(labels)

    def fix(self, fn: Callable[..., None]) -> None:
        self.an.fixes.append(Fix(self.node, fn))

    def barrier(self, reason: str) -> None:
        """Pin every channel-carrying input; outputs carry no channel information."""
        if "unknown" in reason:  # say why shapes are missing (a failed probe, a failed inference)
            why = [n for n in self.model.shape_notes if "failed" in n]
            if why:
                reason = f"{reason}; {why[0][:220]}"
        self.an.barriers.append((self.node, reason))
        for k in range(self.n_inputs):
            c = self.chan(k)
            if c is not None:
                self.pin(c.labels, reason)
        for name in self.model.captured(self.node):  # read inside If/Loop/Scan bodies
            c = self.an.chan.get(name)
            if c is not None:
                self.pin(c.labels, f"{reason} (read inside a subgraph)")
        for k in range(self.n_outputs):
            self.an.chan.pop(self.output_name(k), None)

    def chan_or_pinned(self, k: int, axis: int, why: str) -> Chan | None:
        """Input k's channels, or fresh pinned labels when it carries none (needs a static size)."""
        c = self.chan(k)
        if c is not None:
            return c
        s = self.in_shape(k)
        if s is None and self.is_const(k):
            s = self.const(k).shape
        if s is None or axis >= len(s) or not isinstance(s[axis], int):
            return None
        labels = self.new_space(int(s[axis]), f"{self.name}:input{k}")
        self.pin(labels, why)
        return Chan(axis, labels)


def _apply_rule(an: Analysis, ctx: NodeContext, rule) -> None:
    """Run one rule; an exception makes the node a barrier with the reason, never a crash.

    What the rule declared before failing is rolled back (parameters, fixes, head marks) and the
    label spaces it created are pinned, so no half-declared channel can be removed.
    """
    marks = (len(an.params), len(an.fixes), len(an.spaces), len(an.head_labels), len(an._nonempty),
             len(an.hidden_sites))
    try:
        rule.apply(ctx)
    except Exception as e:  # a rule meeting a pattern it does not understand
        log.info("rule for %s failed on %s: %s", ctx.op, ctx.name, one_line(e), exc_info=log.isEnabledFor(10))
        del an.params[marks[0]:], an.fixes[marks[1]:], an.head_labels[marks[3]:], an._nonempty[marks[4]:]
        del an.hidden_sites[marks[5]:]
        for s in an.spaces[marks[2]:]:
            an.pin(np.arange(s.start, s.start + s.size, dtype=np.int64), f"{ctx.name} ({ctx.op}): rule failed")
        for k in range(ctx.n_outputs):
            an.chan.pop(ctx.output_name(k), None)
        hint = ""
        if ctx.model.concrete and ctx.model.concrete_defaulted:
            hint = (f"; {ctx.model.concrete_note} (default sizes for dynamic dims): if that is not a valid input "
                    "size for this model, give --calib data or --dim NAME=N")
        ctx.barrier(f"not understood ({type(e).__name__}: {one_line(e)[:160]}){hint}")


_RECURRENT = {"LSTM", "GRU", "RNN", "DynamicQuantizeLSTM"}
_DENSE = {"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul"}


def group_kind(an: Analysis, g: Group) -> str:
    """What a group is, for reports: ``heads`` (attention heads), ``recurrent`` (hidden units of
    LSTM/GRU/RNN), ``ffn`` (hidden units between dense layers: a transformer's FFN, an MLP) or
    ``channels`` (anything else, e.g. Conv channels)."""
    if g.kind in ("heads", "hidden"):
        return g.kind
    ops = {s.node.op_type for s in g.spaces if s.node is not None}
    if ops & _RECURRENT:
        return "recurrent"
    consumers = {an.params[k].node.op_type for k in g.params if an.params[k].role == "in"}
    if ops and ops <= _DENSE and consumers and consumers <= _DENSE:
        return "ffn"
    return "channels"




def _refuse_zero_width(model: Model) -> None:
    """A weight (rank ≥ 2 constant) with a zero-size axis is a zero-width layer: refused by name."""
    for node in model.graph:
        tensors = [(v.name, v.const_value) for v in node.inputs if v is not None and v.const_value is not None]
        if node.op_type == "Constant" and "value" in node.attributes:
            tensors.append((node.outputs[0].name, node.attributes["value"].value))
        for name, t in tensors:
            shape = list(getattr(t, "shape", None) or [])
            if len(shape) >= 2 and 0 in shape:
                raise UnsupportedModelError(f"node '{model.node_name(node)}' ({node.op_type}): weight '{name}' has "
                                            f"shape {shape}, a zero-width layer; remove the empty layer and re-export")


def _drop_misdeclared_outputs(model: Model) -> None:
    """A graph output declared with a shape the graph does not compute (a real export, ddddocr's
    recogniser: declared [1, ?], computes [28, 1, 8210]; onnxruntime runs it with a warning) loses
    the wrong declaration, with a warning naming it: the written model declares what it computes
    (the rewrite's post-condition would otherwise blame itself for the mismatch)."""
    for v in model.graph.outputs:
        if v.shape is None:
            continue
        actual = model.sym.get(v.name) or model.shapes.get(v.name)
        if actual is None:
            continue
        declared = [d if isinstance(d, int) and d >= 0 else None for d in v.shape]
        if len(declared) != len(actual) or any(d is not None and isinstance(a, int) and d != a
                                               for d, a in zip(declared, actual)):
            log.warning("graph output '%s' is declared with shape %s but the graph computes %s; the declaration "
                        "is dropped", v.name, declared, list(actual))
            v.shape = ir.Shape([None] * len(actual))  # its rank, dims left to the runtime
            model.changed()


def analyze(model: Model, *, protect: Iterable[str] = (), hidden: bool = False) -> Analysis:
    """Find the channel groups of a model.

    Args:
        model: a loaded model (shapes are inferred here if not yet).
        protect: globs of node or constant names whose channels must be kept.
        hidden: hidden-size mode (``hidden.py``): LayerNormalization and reductions over the
            channel axis couple the residual stream into a ``hidden`` group instead of pinning it.

    Returns:
        The analysis, with ``groups`` and per-tensor ``chan`` filled.
    """
    if not model.shapes:
        model.infer()
    _refuse_zero_width(model)
    _drop_misdeclared_outputs(model)
    an = Analysis(model)
    an.hidden = hidden
    rules = registry()
    for node in model.graph:
        if node.op_type == "Constant" and node.domain == "":
            continue
        if node.outputs and all(model.is_const(o.name) for o in node.outputs if o.name):
            continue  # part of a constant chain (Unsqueeze of a weight, DequantizeLinear of int8...)
        ctx = NodeContext(an, node)
        captured = model.captured(node)
        tracked = any(ctx.chan(k) is not None for k in range(ctx.n_inputs)) or any(
            name in an.chan for name in captured)
        rule = rules.get((node.domain, node.op_type))
        if rule is None:
            if tracked:
                ctx.barrier(f"no rule for op {node.domain + '.' if node.domain else ''}{node.op_type}")
            continue
        if model.opset < rule.min_opset or (rule.max_opset is not None and model.opset > rule.max_opset):
            ctx.barrier(f"{node.op_type} rule supports opsets {rule.min_opset}..{rule.max_opset}, model has {model.opset}")
            continue
        _apply_rule(an, ctx, rule)
    an._finish()
    unmatched = an.protect(protect)
    if unmatched:
        from .options import OptionError

        raise OptionError(f"{{protect}} pattern(s) {', '.join(map(repr, unmatched))} match no node or constant; "
                          "check the names with 'onnxprune inspect'")
    return an
