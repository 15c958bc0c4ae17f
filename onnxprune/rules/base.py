"""Rule protocol, and the small helpers every rule module shares.

A rule looks at one node and tells the analysis, through a :class:`~onnxprune.analysis.NodeContext`,
how channels flow through it:

* **Rule 1, inter-layer**: a weight axis indexed by an input's channels is a *consumer-side*
  parameter (``ctx.param(k, axis, in_labels, "in")``); a weight axis that defines the output
  channels is a *producer-side* one, and those channels are a new space (``ctx.new_space``).
* **Rule 2, intra-layer**: a pass-through op gives its output the input's labels
  (``ctx.set_out``), possibly re-indexed (Concat offsets, Flatten's C·H·W repeat, Transpose).
* Ops combining tensors channel by channel couple them (``ctx.unify``).
* Anything a rule cannot prove safe is pinned (``ctx.pin``) or the node is a barrier
  (``ctx.barrier``), always with a reason.

A rule declares; it never changes the graph. Attribute and shape-constant edits a pruned node
needs are declared with ``ctx.fix(fn)`` and run by the rewrite.

An op without a rule is a barrier: its tensors' channels are never pruned.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    from ..analysis import NodeContext

__all__ = ["Rule", "Passthrough", "Moves", "Opaque", "per_element", "Layout", "norm_axis", "numel", "ShapeOf"]

ShapeOf = Callable[[str], "tuple[int, ...] | None"]


def numel(shape) -> int:
    """Elements of a shape (1 for a scalar, 0 when unknown)."""
    if shape is None:
        return 0
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


@dataclass(frozen=True)
class Layout:
    """Where a consumer's weight is and how it reads its input: what recovery, recording and
    sparsify need to know of an op, declared by its rule.

    Attributes:
        weight: input index of the weight; ``bias``: of the bias (None: added after the node).
        out_axis / in_axis: weight axes indexed by output / input channels.
        kind: ``conv`` (rows = im2col patches of the input), ``conv_transpose``, or ``dense``
            (``y = alpha · x·W + beta · b`` over the input's axis ``x_axis``).
        groups, kernel, strides, pads, dilations: convolution geometry (``pads`` None with
            ``auto_pad``).
    """

    weight: int
    out_axis: int
    in_axis: int
    bias: int | None
    kind: str
    x_axis: int = 1
    alpha: float = 1.0
    beta: float = 1.0
    groups: int = 1
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] | None = ()
    dilations: tuple[int, ...] = ()



class Rule:
    """Channel rule for one or more op types of one domain.

    Attributes:
        op_types: the ops this rule handles.
        domain: their ONNX domain ("" is the default domain).
        min_opset: the oldest default-domain opset the rule understands.
        max_opset: the newest (None: no known limit).
    """

    op_types: ClassVar[tuple[str, ...]] = ()
    domain: ClassVar[str] = ""
    min_opset: ClassVar[int] = 1
    max_opset: ClassVar[int | None] = None

    def apply(self, ctx: NodeContext) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def cost(self, model, node, shape_of: ShapeOf) -> tuple[int, int] | None:
        """(MACs, other element ops) of one node at the shapes ``shape_of`` gives; None: unknown.

        The default is unknown: the cost model reports such ops instead of counting them as 0.
        """
        return None

    # Weight layout, for recovery, recording and sparsify: None when the op has no dense weight.
    def layout(self, model, node) -> Layout | None:
        return None

    def reads_padding(self, model, node) -> bool:
        """Whether the op reads implicit padding (a removed constant channel differs at borders)."""
        return False


class Passthrough(Rule):
    """Element-wise on the channel axis: output channel c depends only on input channel c.

    Only input 0 carries channels; other inputs must be constants without a channel extent
    (e.g. Clip's scalar min/max) or the node is a barrier.
    """

    def __init__(self, *op_types: str, used_outputs: int = 1, ops_per_element: int = 1) -> None:
        self.op_types = op_types  # type: ignore[misc]
        self.used_outputs = used_outputs
        self.ops_per_element = ops_per_element

    def cost(self, model, node, shape_of):
        return 0, self.ops_per_element * numel(shape_of(node.outputs[0].name)) if node.outputs else 0

    def apply(self, ctx: NodeContext) -> None:
        x = ctx.chan(0)
        if x is None:
            return
        for k in range(1, ctx.n_inputs):
            if ctx.has_input(k) and not ctx.is_scalar_const(k):
                ctx.barrier(f"input {k} of {ctx.op} is not a scalar constant")
                return
        for k in range(self.used_outputs, ctx.n_outputs):
            if ctx.output_used(k):
                ctx.barrier(f"output {k} of {ctx.op} is used")
                return
        ctx.set_out(0, x.axis, x.labels)


def per_element(ops: int):
    """A ``Rule.cost`` of ``ops`` operations per output element and no MACs."""

    def cost(self, model, node, shape_of):
        return 0, ops * numel(shape_of(node.outputs[0].name))

    return cost


class Moves(Rule):
    """Base of layout/data-movement rules (Concat, Reshape, Transpose...): no arithmetic, cost 0."""

    def cost(self, model, node, shape_of):
        return 0, 0


class Opaque(Rule):
    """Ops with no channel rule but a known cost: a barrier (with ``why``) when channels reach them."""

    def __init__(self, *op_types: str, why: str = "", domain: str = "", macs=None,
                 ops_per_element: int = 0) -> None:
        self.op_types = op_types  # type: ignore[misc]
        self.domain = domain  # type: ignore[misc]
        self.why = why
        self.macs = macs
        self.ops_per_element = ops_per_element

    def apply(self, ctx: NodeContext) -> None:
        # with a stated reason the barrier is always listed (a fully int8 QOperator model has no
        # tracked channels at all, and the user should still learn why nothing can be pruned)
        if self.why or any(ctx.chan(k) is not None for k in range(ctx.n_inputs)) or any(
                n in ctx.an.chan for n in ctx.model.captured(ctx.node)):
            ctx.barrier(self.why or f"no channel rule for {ctx.op}")

    def cost(self, model, node, shape_of):
        out = shape_of(node.outputs[0].name) if node.outputs and node.outputs[0].name else None
        macs = self.macs(model, node, shape_of) if self.macs is not None else 0
        if macs is None:
            return None
        return macs, self.ops_per_element * numel(out)


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def block_repeat(labels: np.ndarray, inner: int, outer: int = 1) -> np.ndarray:
    """Labels of an axis made by merging (outer × C × inner): C's label repeated inner times."""
    out = np.repeat(labels, inner) if inner != 1 else labels
    return np.tile(out, outer) if outer != 1 else out
