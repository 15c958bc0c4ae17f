"""Apply a plan: the only layer that changes graphs.

Every change is an onnx-ir pass (``ir.passes.InPlacePass``: ``requires`` checks what it needs,
``call`` edits, ``ensures`` checks what it promised), run by one ``ir.passes.PassManager``. A plan
runs

0. ``RecoverPass`` (optional, ``rewrite/recover.py``): bias compensation or least-squares refits
   of the consumers, on the full-size weights;
1. ``SliceParamsPass``: every constant axis indexed by channels keeps only the kept positions,
   once per (constant, axis) — through constant chains (``graph/consts.py``); ensures each
   sliced axis has the kept count;
2. ``RunFixesPass``: the rules' declared fixes (Conv ``group``, Reshape targets, Split sizes,
   Slice starts/ends, Resize sizes); a constant shared with another node is cloned first;

and block removal runs ``BypassBlocksPass`` (``rewrite/blocks.py``) instead. Both then finish
with the same sequence, :data:`FINISH`:

3. onnx-ir's ``RemoveUnusedNodesPass`` (dead nodes and initializers) and our
   ``DropUnusedInputInitializersPass`` (IR < 4 initializers listed as graph inputs);
4. onnx-ir's ``TopologicalSortPass`` (a bias ``Add`` appended by recovery moves after its MatMul);
5. ``RefreshShapesPass``: stale shapes are cleared and re-inferred as declared (the concrete
   pass and probe are not repeated: costs after the rewrite are counted by the planner's cost
   model on the analysis); ensures every graph output keeps its declared shape.

A failed ``requires``/``ensures`` is a bug (:class:`~onnxprune.errors.BugError`), never a user
error.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes import common as ir_common

from ..analysis import Analysis
from ..errors import BugError, OnnxPruneError, ValidationError
from ..graph import Model, inp
from .recover import Recovery, recover

__all__ = ["RewriteResult", "apply", "finish", "RewriteContext", "Recovery", "ModelPass"]


@dataclass(frozen=True)
class RewriteResult:
    facade: Model
    modified: bool
    sliced: int
    removed_nodes: int
    recovery: tuple[str, ...] = ()

    @property
    def model(self) -> onnx.ModelProto:
        """The rewritten model, serialised."""
        return self.facade.to_proto()


class RewriteContext:
    """What a rule's fix may do to the graph (handed to ``Fix.fn``)."""

    def __init__(self, model: Model, an: Analysis, keep_atom: np.ndarray) -> None:
        self.model = model
        self.an = an
        self.keep_atom = keep_atom

    def keep(self, labels: np.ndarray) -> np.ndarray:
        return self.an.keep_mask(labels, self.keep_atom)

    def set_attr(self, node: ir.Node, name: str, value) -> None:
        self.model.set_attr(node, name, value)

    def const_input(self, node: ir.Node, k: int) -> np.ndarray:
        """Input k's value (a constant, or computed from static shapes before the rewrite)."""
        return np.asarray(self.model.value(inp(node, k)))

    def set_input_const(self, node: ir.Node, k: int, value: np.ndarray) -> None:
        """Set input k of a node to ``value``; a constant other nodes also read is cloned."""
        m = self.model
        name = inp(node, k)
        old = m.const(name)
        if old is not None and old.shape == value.shape and np.array_equal(old, value):
            return
        value = value.astype(old.dtype) if old is not None else value.astype(np.int64)
        if old is not None and m.is_plain_const(name) and m.const_users(name) == {node} \
                and not m.const_is_output(name):
            m.set_const(name, value)
            return
        new = m.add_initializer(name or "shape", value)
        node.replace_input_with(k, m.value_of(new))


class ModelPass(ir.passes.InPlacePass):
    """A pass over the facade :class:`~onnxprune.graph.Model`; failed checks are bugs."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.m = model

    def requires(self, model: ir.Model) -> None:
        if model is not self.m.ir:
            raise BugError(f"{type(self).__name__} runs on another model than its facade")


class RecoverPass(ModelPass):
    def __init__(self, model: Model, an: Analysis, keep_atom: np.ndarray, recovery: Recovery) -> None:
        super().__init__(model)
        self.an, self.keep_atom, self.recovery = an, keep_atom, recovery
        self.report: list[str] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.report = recover(self.m, self.an, self.keep_atom, self.recovery)
        return ir.passes.PassResult(model, modified=True)

    def ensures(self, model: ir.Model) -> None:
        # only tensors written in this process are ir.Tensor (loaded ones are TensorProtoTensor or
        # memory-mapped ExternalTensor): no pass over the untouched weights
        for name, v in model.graph.initializers.items():
            t = v.const_value
            if type(t) is ir.Tensor and t.dtype.is_floating_point() and not np.all(np.isfinite(t.numpy())):
                raise ValidationError(f"recovery computed non-finite values for '{name}' (calibration "
                                      "statistics overflow float32?); nothing was written; rescale the data or use "
                                      "--recover none")


class SliceParamsPass(ModelPass):
    def __init__(self, model: Model, an: Analysis, keep_atom: np.ndarray) -> None:
        super().__init__(model)
        self.an, self.keep_atom = an, keep_atom
        self.sliced = 0
        self._want: list[tuple[str, int, int]] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        an, m = self.an, self.m
        axes: dict[str, dict[int, np.ndarray]] = {}
        for p in an.params:
            axes.setdefault(p.tensor, {}).setdefault(p.axis, p.labels)
        self.readers: dict[str, list[tuple[ir.Node, int]]] = {}
        for tensor, by_axis in axes.items():
            masks = {axis: an.keep_mask(labels, self.keep_atom) for axis, labels in by_axis.items()}
            masks = {a: k for a, k in masks.items() if not k.all()}
            # where the tensor is read now: a folded chain is replaced by a new initializer
            self.readers[tensor] = [(n, i) for n, i in m.uses(tensor)]
            for axis, mask in masks.items():
                self._want.append((tensor, axis, int(mask.sum())))
            if masks:
                m.slice_const(tensor, masks)
                self.sliced += 1
        return ir.passes.PassResult(model, modified=self.sliced > 0)

    def ensures(self, model: ir.Model) -> None:
        m = self.m
        for tensor, axis, want in self._want:
            names = {inp(n, i) for n, i in self.readers.get(tensor, []) if i >= 0} or {tensor}
            for name in names:
                shape = m.const_shape(name)
                if shape is None or shape[axis] != want:
                    raise BugError(f"'{name}' axis {axis} has {None if shape is None else shape[axis]} "
                                   f"entries after slicing, expected {want}")


class RunFixesPass(ModelPass):
    def __init__(self, model: Model, an: Analysis, keep_atom: np.ndarray) -> None:
        super().__init__(model)
        self.an, self.keep_atom = an, keep_atom

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        rw = RewriteContext(self.m, self.an, self.keep_atom)
        for fix in self.an.fixes:
            fix.fn(rw)
            self.m.values_changed()  # fixes edit or add constants; no value is renamed or removed
        return ir.passes.PassResult(model, modified=bool(self.an.fixes))


class DropUnusedInputInitializersPass(ModelPass):
    """IR < 4 lists initializers as graph inputs; unused ones go from both lists."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        g = model.graph
        dead = [v for v in g.inputs if v.const_value is not None and not v.uses() and not v.is_graph_output()]
        for v in dead:
            g.inputs.remove(v)
            g.initializers.pop(v.name, None)
        return ir.passes.PassResult(model, modified=bool(dead))


class _Counted(ir.passes.InPlacePass):
    """onnx-ir's dead-node removal, counting what it removed."""

    def __init__(self) -> None:
        super().__init__()
        self.removed = 0

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph))
        result = ir_common.RemoveUnusedNodesPass()(model)
        self.removed += before - sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph))
        return result


class RefreshShapesPass(ModelPass):
    """Clear stale shapes, infer the declared ones again and store them on the values (value_info)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        m = self.m
        m.changed()
        m.infer(declared_only=True)
        outputs = {id(v) for v in model.graph.outputs}
        for node in model.graph:
            for v in node.outputs:
                if id(v) in outputs or not v.name:
                    continue
                s = m.sym.get(v.name)
                v.shape = None if s is None else ir.Shape([d if isinstance(d, (int, str)) else None for d in s])
                if v.type is None and v.name in m.dtypes:
                    v.type = ir.TensorType(ir.DataType(m.dtypes[v.name]))
        return ir.passes.PassResult(model, modified=True)

    def ensures(self, model: ir.Model) -> None:
        for v in model.graph.outputs:
            if v.shape is None:
                continue
            actual = self.m.sym.get(v.name)
            if actual is None:
                continue
            declared = [d if isinstance(d, int) and d >= 0 else None for d in v.shape]
            for d, a in zip(declared, actual):
                if d is not None and isinstance(a, int) and d != a:
                    raise BugError(f"graph output '{v.name}' would change shape from {declared} to {list(actual)}")


def run_passes(model: Model, passes: list) -> None:
    """Run passes in one PassManager; a failure inside is re-raised as its cause (bugs as BugError)."""
    try:
        ir.passes.PassManager(passes)(model.ir)
    except (ir.passes.PassError, ir.passes.InvariantError) as e:
        cause: BaseException = e
        while cause.__cause__ is not None and isinstance(cause, (ir.passes.PassError, ir.passes.InvariantError)):
            cause = cause.__cause__
        if isinstance(cause, (OnnxPruneError, BugError)):
            raise cause from None
        raise BugError(f"rewrite failed: {type(cause).__name__}: {cause}") from cause
    finally:
        model.changed()


def finish(model: Model) -> int:
    """The sequence every rewrite ends with; returns the number of nodes removed."""
    dce = _Counted()
    run_passes(model, [dce, DropUnusedInputInitializersPass(model), ir_common.TopologicalSortPass(),
                       RefreshShapesPass(model)])
    return dce.removed


def apply(model: Model, an: Analysis, keep_atom: np.ndarray, *, recovery: Recovery | None = None) -> RewriteResult:
    """Remove the channels whose atoms are not kept. Changes ``model`` in place.

    Args:
        model: the model the analysis was made on (edited in place).
        an: the analysis.
        keep_atom: boolean mask over ``an``'s atoms (see ``planner.keep_atoms``).
        recovery: bias compensation / least-squares settings and data (default: none).

    Raises:
        BugError: a pass's pre- or post-condition failed.
    """
    if keep_atom.all():
        return RewriteResult(model, False, 0, 0)
    passes: list[ir.passes.PassBase] = []
    rec_pass = RecoverPass(model, an, keep_atom, recovery) if recovery is not None else None
    if rec_pass is not None:
        passes.append(rec_pass)
    slicer = SliceParamsPass(model, an, keep_atom)
    passes += [slicer, RunFixesPass(model, an, keep_atom)]
    run_passes(model, passes)
    removed = finish(model)
    return RewriteResult(model, True, slicer.sliced, removed,
                         tuple(rec_pass.report) if rec_pass is not None else ())
