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

from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    from ..analysis import NodeContext

__all__ = ["Rule", "Passthrough", "norm_axis"]


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


class Passthrough(Rule):
    """Element-wise on the channel axis: output channel c depends only on input channel c.

    Only input 0 carries channels; other inputs must be constants without a channel extent
    (e.g. Clip's scalar min/max) or the node is a barrier.
    """

    def __init__(self, *op_types: str, used_outputs: int = 1) -> None:
        self.op_types = op_types  # type: ignore[misc]
        self.used_outputs = used_outputs

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


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def block_repeat(labels: np.ndarray, inner: int, outer: int = 1) -> np.ndarray:
    """Labels of an axis made by merging (outer × C × inner): C's label repeated inner times."""
    out = np.repeat(labels, inner) if inner != 1 else labels
    return np.tile(out, outer) if outer != 1 else out
