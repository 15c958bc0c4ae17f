"""Bypass residual blocks: ``y = x + F(x)`` becomes ``y = Identity(x)`` (F's nodes then die)."""
from __future__ import annotations

import onnx_ir as ir

from ..graph import Model

__all__ = ["bypass", "BypassBlocksPass"]


def bypass(model: Model, blocks) -> int:
    """Turn each block's Add into ``Identity(x)`` (keeps the output value, even a graph output).

    Dead-node removal afterwards drops F. Returns the number of blocks bypassed.
    """
    by_name = {model.node_name(n): n for n in model.graph}
    for b in blocks:
        node = by_name[b.add]
        skip = model.value_of(b.skip)
        node.op_type = "Identity"
        node.attributes.clear()
        node.replace_input_with(0, skip)
        node.resize_inputs(1)
    model.changed()
    return len(blocks)


class BypassBlocksPass(ir.passes.InPlacePass):
    """:func:`bypass` as a pass; ensures every bypassed Add is now an Identity of its skip input."""

    def __init__(self, model: Model, blocks) -> None:
        super().__init__()
        self.m, self.blocks = model, list(blocks)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        n = bypass(self.m, self.blocks)
        return ir.passes.PassResult(model, modified=n > 0)

    def ensures(self, model: ir.Model) -> None:
        by_name = {self.m.node_name(n): n for n in model.graph}
        for b in self.blocks:
            node = by_name.get(b.add)
            if node is None or node.op_type != "Identity" or node.inputs[0].name != b.skip:
                raise AssertionError(f"block '{b.add}' was not bypassed")
