"""Bypass residual blocks: ``y = x + F(x)`` becomes ``y = x`` (F's nodes then die)."""
from __future__ import annotations

from .._ir import Model

__all__ = ["bypass"]


def bypass(model: Model, blocks) -> int:
    """Turn each block's Add into ``Identity(x)`` (keeps the output name, even a graph output).

    Dead-node removal afterwards drops F. Returns the number of blocks bypassed.
    """
    by_name = {model.node_name(i): n for i, n in enumerate(model.nodes)}
    for b in blocks:
        node = by_name[b.add]
        node.op_type = "Identity"
        del node.input[:]
        node.input.append(b.skip)
        del node.attribute[:]
    return len(blocks)
