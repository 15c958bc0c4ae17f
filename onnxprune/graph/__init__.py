"""The graph seam over onnx-ir: what the analysis reads and the rewrite may change.

onnx-ir (the ONNX project's IR, under torch.onnx and onnxscript) keeps the graph: use-def
(``Value.uses()``, ``Value.producer()``), constants (``ir.convenience.get_const_tensor``),
subgraph captures, sorting and dead-node removal (its passes), and memory-mapped external data.
:class:`Model` adds only what pruning needs on top:

* lookups by tensor name (the analysis keys channels by name; ONNX names are SSA);
* **constants through chains**: a weight that reaches its consumer through shape-only ops on
  constants (``Identity Cast Unsqueeze Squeeze Reshape Transpose Flatten Expand`` and
  ``DequantizeLinear`` with constant scale/zero-point) is a constant to the analysis
  (:mod:`.consts`);
* shapes at a **concrete input shape** plus the declared (symbolic) shapes (:mod:`.shapes`);
* values of small shape-arithmetic subgraphs over static dims (``Shape → Gather → Concat``).

Only ``rewrite/`` calls the mutating methods (``slice_const``, ``set_const``, ``set_attr``,
``add_initializer``...).
"""
from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Iterable

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.analysis

from . import consts as _consts
from . import shapes as _shapes
from .io import MIN_OPSET, load_ir, one_line, save_ir
from .nodes import attr_value, inp, out
from .shapes import Dim, Shape

__all__ = ["Model", "load_model", "save_model", "Dim", "Shape", "MIN_OPSET", "one_line", "attr_value", "inp", "out"]

log = logging.getLogger("onnxprune.graph")


class Model:
    """A model held in onnx-ir, with name lookups, constants, and shapes for the analysis.

    Args:
        model: an ``onnx_ir.Model`` (owned and edited in place by the rewrite) or an
            ``onnx.ModelProto`` (converted).
        path: the file it came from, for messages.
    """

    def __init__(self, model: ir.Model | onnx.ModelProto, path: str | None = None) -> None:
        if isinstance(model, onnx.ModelProto):
            model = ir.serde.deserialize_model(model)
        self.ir = model
        self.graph = model.graph
        self.path = path
        self.opset = int(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1)))
        self.external_data = False
        self.shapes: dict[str, Shape] = {}      # at the concrete input shape
        self.sym: dict[str, Shape] = {}         # as declared: dynamic dims are names or None
        self.dtypes: dict[str, int] = {}
        self.concrete: dict[str, tuple[int, ...]] = {}  # graph input -> the concrete shape used
        self.concrete_defaulted = False  # some dynamic dim took a default size
        self.varying: dict[str, frozenset[int]] = {}  # tensor -> axes that change with the input size
        self.shape_notes: list[str] = []
        self._const_cache: dict[str, np.ndarray | None] = {}
        self._static: dict[str, np.ndarray | None] = {}
        self._names: dict[str, ir.Value] | None = None
        self._captures: dict[str, list[ir.Node]] | None = None  # top-level value -> nodes whose subgraphs read it
        self._unnamed: dict[int, str] = {}
        for i, node in enumerate(self.graph):
            if not node.name:
                self._unnamed[id(node)] = f"{node.op_type}_{i}"

    # ------------------------------------------------------------------ lookups
    @property
    def nodes(self) -> list[ir.Node]:
        """Top-level nodes in graph order (a snapshot list)."""
        return list(self.graph)

    def node_name(self, node: ir.Node) -> str:
        """A readable, stable name: the node's name, or ``OpType_i`` from its load-time position."""
        if node.name:
            return node.name
        return self._unnamed.setdefault(id(node), f"{node.op_type}_{len(self._unnamed)}")

    def _index(self) -> dict[str, ir.Value]:
        if self._names is None:
            names: dict[str, ir.Value] = {}
            for v in self.graph.inputs:
                names[v.name] = v
            for name, v in self.graph.initializers.items():
                names[name] = v
            for node in self.graph:
                for o in node.outputs:
                    if o.name:
                        names[o.name] = o
            self._names = names
        return self._names

    def changed(self) -> None:
        """Forget lookups and cached values after nodes were added, removed or rewired."""
        self._names = None
        self._captures = None
        self.values_changed()

    def take_over(self, old: ir.Value, new: ir.Value, suffix: str, uses=(), *, keep_old_shape: bool = True) -> None:
        """``new`` (a node output put after ``old``) takes ``old``'s name, type, shape and graph-output
        slots, and the readers ``uses`` (``(node, input index)`` pairs); ``old`` is renamed
        ``name + suffix`` (made unique)."""
        name = old.name
        old.name = self.unique_name(name + suffix)
        new.name = name
        new.type, new.shape = old.type, old.shape
        if not keep_old_shape:
            old.shape = None
        for user, idx in uses:
            user.replace_input_with(idx, new)
        outs = self.graph.outputs
        for k, o in enumerate(outs):
            if o is old:
                outs[k] = new
        self.changed()

    def values_changed(self) -> None:
        """Forget cached constant and shape values after constants were edited or added (names stay:
        ``add_initializer`` registers its own)."""
        self._const_cache.clear()
        self._static.clear()
        self.__dict__.pop("_chains", None)

    def value_of(self, name: str) -> ir.Value | None:
        return self._index().get(name) if name else None

    def producer(self, name: str) -> ir.Node | None:
        v = self.value_of(name)
        return None if v is None else v.producer()

    def _captured_by(self) -> dict[str, list[ir.Node]]:
        """Top-level value name -> the top-level nodes whose subgraphs read it (onnx-ir's
        implicit-usage analysis, nested subgraphs included)."""
        if self._captures is None:
            implicit = ir.analysis.analyze_implicit_usage(self.graph)
            table: dict[str, list[ir.Node]] = {}
            for node in self.graph:
                for g in _subgraphs(node):
                    for v in implicit.get(g, ()):
                        if v.graph is self.graph and v.name and node not in table.setdefault(v.name, []):
                            table[v.name].append(node)
            self._captures = table
        return self._captures

    def uses(self, name: str) -> list[tuple[ir.Node, int]]:
        """(node, input index) of each top-level use; a read inside a subgraph is (owner, -1)."""
        v = self.value_of(name)
        if v is None:
            return []
        out = [(u.node, u.idx) for u in v.uses() if u.node.graph is self.graph]
        return out + [(owner, -1) for owner in self._captured_by().get(name, ())]

    def captured(self, node: ir.Node) -> set[str]:
        """Names of top-level values that ``node``'s subgraphs read."""
        if not _subgraphs(node):
            return set()
        return {name for name, owners in self._captured_by().items() if node in owners}

    @property
    def graph_inputs(self) -> list[str]:
        return [v.name for v in self.graph.inputs if v.const_value is None]

    @property
    def graph_outputs(self) -> list[str]:
        return [v.name for v in self.graph.outputs]

    def is_graph_output(self, name: str) -> bool:
        v = self.value_of(name)
        return v is not None and v.is_graph_output()

    # ---------------------------------------------------------------- constants
    def chain(self, name: str) -> _consts.Chain | None:
        """How a constant-valued tensor is made: a source constant and shape-only ops on it."""
        return _consts.chain(self, name)

    def is_const(self, name: str) -> bool:
        return bool(name) and self.chain(name) is not None

    def is_plain_const(self, name: str) -> bool:
        """An initializer or Constant node output (no ops in between; Identity aliases resolved)."""
        c = self.chain(self.resolve(name))
        return c is not None and not c.ops

    def resolve(self, name: str) -> str:
        """The tensor behind ``Identity`` aliases of a constant (exporters dedupe weights so)."""
        return _consts.strip_identity(self, name)

    def const(self, name: str) -> np.ndarray | None:
        """The value of a constant-valued tensor (through chains), else None."""
        if not name:
            return None
        name = self.resolve(name)
        if name in self._const_cache:
            return self._const_cache[name]
        c = self.chain(name)
        arr = None
        if c is not None:
            try:
                arr = _consts.evaluate(self, c)
            except Exception as e:  # malformed chain: not a constant to us
                log.info("constant chain to '%s' not evaluated: %s", name, one_line(e))
                arr = None
        self._const_cache[name] = arr
        return arr

    def release_pages(self, name: str) -> None:
        """Drop the resident pages of a memory-mapped external tensor behind ``name`` (read again
        from the page cache on the next access): reading every weight of a multi-GB model once
        then costs the largest tensors read together, not the whole file."""
        v = self.value_of(self.resolve(name))
        t = None if v is None else v.const_value
        raw = getattr(t, "raw", None) if isinstance(t, ir.ExternalTensor) else None
        if raw is not None and hasattr(raw, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            try:
                raw.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):  # closed or not supported: nothing to release
                pass

    def const_shape(self, name: str) -> tuple[int, ...] | None:
        v = self.value_of(self.resolve(name))
        if v is not None and v.const_value is not None:
            return tuple(int(d) for d in v.const_value.shape)
        arr = self.const(name)
        return None if arr is None else tuple(arr.shape)

    def const_users(self, name: str) -> set[ir.Node]:
        """Nodes reading a constant directly or through Identity aliases (the aliases excluded)."""
        users: set[ir.Node] = set()
        for n in self._aliases(name):
            for node, _ in self.uses(n):
                if not (_consts.is_identity(node) and node.outputs and node.outputs[0].name in self._aliases(name)):
                    users.add(node)
        return users

    def _aliases(self, name: str) -> list[str]:
        """The constant behind ``name`` and every Identity alias of it."""
        root = self.resolve(name)
        out, stack = [root], [root]
        while stack:
            n = stack.pop()
            for node, _ in self.uses(n):
                if _consts.is_identity(node) and node.outputs and node.outputs[0].name not in out \
                        and self.resolve(node.outputs[0].name) == root:
                    out.append(node.outputs[0].name)
                    stack.append(node.outputs[0].name)
        return out

    def const_is_output(self, name: str) -> bool:
        return any(self.is_graph_output(n) for n in self._aliases(name))

    def value(self, name: str) -> np.ndarray | None:
        """A constant's value, or the value of a small integer subgraph over static dims.

        Exporters compute shape operands at run time (``Shape → Gather → Add → Concat``); when
        every dim such a subgraph reads is static *as declared*, its value is known. Rules read
        shape-like operands (Reshape targets, Slice bounds, Split sizes, Expand shapes) so; a
        rewrite that changes such an operand replaces it with a constant.
        """
        v = self.const(name)
        if v is not None or not name:
            return v
        v = _consts.partial(self, name)
        if v is None or (v.dtype == object and any(x is None for x in v.ravel())):
            return None
        return v.astype(np.int64) if v.dtype == object else v

    # ------------------------------------------------------------- mutation
    def set_const(self, name: str, value: np.ndarray) -> None:
        """Replace a plain constant's value (initializer or Constant node), keeping its dtype."""
        _consts.set_plain(self, self.resolve(name), value)

    def slice_const(self, name: str, masks: dict[int, np.ndarray]) -> str:
        """Keep ``mask`` positions of each axis of a constant-valued tensor.

        Plain constants are sliced in place. Chains are sliced at their source (with per-channel
        quantization scales and zero-points) when every op maps the axis back and nothing else
        reads the chain; otherwise the chain is folded into one new initializer for the readers
        of ``name``. Returns how it was done ("plain", "through", "folded").
        """
        return _consts.slice_through(self, self.resolve(name), masks)

    def zero_const(self, name: str, axis: int, drop: np.ndarray) -> None:
        """Make the ``drop`` positions of ``axis`` read as 0 (for the oracle's reference)."""
        _consts.zero_through(self, self.resolve(name), axis, drop)

    def add_initializer(self, base: str, value: np.ndarray) -> str:
        """Add an initializer with a unique name derived from ``base``; return the name."""
        name = self.unique_name(base)
        v = ir.Value(name=name, shape=ir.Shape(value.shape), type=ir.TensorType(ir.DataType.from_numpy(value.dtype)),
                     const_value=ir.tensor(np.ascontiguousarray(value), name=name))
        self.graph.register_initializer(v)
        if self.ir.ir_version < 4:  # IR < 4: every initializer is also listed as a graph input
            self.graph.inputs.append(v)
        if self._names is not None:
            self._names[name] = v
        return name

    def unique_name(self, base: str) -> str:
        taken = self._index()
        i = 0
        while f"{base}__p{i}" in taken:
            i += 1
        return f"{base}__p{i}"

    def attr(self, node: ir.Node, name: str, default=None):
        return attr_value(node, name, default)

    def set_attr(self, node: ir.Node, name: str, value) -> None:
        node.attributes[name] = ir.convenience.convert_attribute(name, value)

    # ------------------------------------------------------------------ shapes
    def infer(self, concrete: dict[str, tuple[int, ...]] | None = None, dims: dict[str, int] | None = None,
              declared_only: bool = False) -> None:
        """Shapes at a concrete input shape (see :mod:`.shapes`), plus the declared ones."""
        _shapes.infer(self, concrete=concrete, dims=dims, declared_only=declared_only)

    def shape(self, name: str) -> Shape | None:
        return self.shapes.get(name)

    def sym_shape(self, name: str) -> Shape | None:
        return self.sym.get(name)

    def is_dynamic_dim(self, name: str, axis: int) -> bool:
        """Whether dim ``axis`` of ``name`` follows a dynamic input dim (inferred as a symbol when
        the model is analysed as declared). Index maps must not bake such a dim in."""
        s = self.sym.get(name)
        if s is not None and axis < len(s) and isinstance(s[axis], str):
            return True
        return axis in self.varying.get(name, ())

    @property
    def concrete_note(self) -> str:
        """Where the concrete input shape came from, for messages."""
        return f"analysed at input {_shapes.format_shapes(self.concrete)}" if self.concrete else ""

    # ----------------------------------------------------------------- output
    def to_proto(self) -> onnx.ModelProto:
        return ir.serde.serialize_model(self.ir)

    def serialized_with_outputs(self, names: Iterable[str], *, only: bool = False) -> bytes:
        """A serialised copy whose graph also outputs ``names`` (only those with ``only``).

        The one way intermediates are exposed (recording, block ranking, shape probes): the live
        model is never changed.
        """
        proto = self.to_proto()
        if only:
            del proto.graph.output[:]
        have = {o.name for o in proto.graph.output} | set(self.graph_inputs)
        for n in names:
            if n not in have:
                proto.graph.output.append(onnx.helper.make_tensor_value_info(
                    n, self.dtypes.get(n, onnx.TensorProto.FLOAT), None))
                have.add(n)
        return proto.SerializeToString()

    def constant_nodes(self) -> Iterable[ir.Node]:
        return (n for n in self.graph if n.op_type == "Constant" and n.domain == "")


def _subgraphs(node: ir.Node) -> list[ir.Graph]:
    subs: list[ir.Graph] = []
    for a in node.attributes.values():
        if a.is_ref():
            continue
        if a.type == ir.AttributeType.GRAPH:
            subs.append(a.value)
        elif a.type == ir.AttributeType.GRAPHS:
            subs.extend(a.value)
    return subs


def load_model(path: str | os.PathLike) -> Model:
    """Load a model (external data memory-mapped, references checked first).

    Raises:
        UnsupportedModelError: missing/unreadable file, not ONNX, checker failure, opset < 9,
            external data outside the model folder.
    """
    model, external = load_ir(path)
    m = Model(model, os.fspath(path))
    m.external_data = external
    return m


def save_model(model: Model | ir.Model | onnx.ModelProto, path: str | os.PathLike, *,
               external_data: bool | None = None, check: bool = True, avoid=frozenset()) -> None:
    """Write a model atomically (checked, then renamed into place); see :func:`.io.save_ir`."""
    if isinstance(model, Model):
        model = model.ir
    elif isinstance(model, onnx.ModelProto):
        model = ir.serde.deserialize_model(model)
    save_ir(model, path, external_data=external_data, check=check, avoid=avoid)
