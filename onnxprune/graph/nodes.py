"""Small readers of onnx-ir nodes shared by the graph layer, the rules and the rewrite."""
from __future__ import annotations

import onnx_ir as ir

__all__ = ["attr_value", "inp", "out"]


def attr_value(node: ir.Node, name: str, default=None):
    """A node attribute as a plain Python value (lists for INTS/FLOATS, numpy for tensors)."""
    a = node.attributes.get(name)
    if a is None or a.is_ref():
        return default
    v = a.value
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, ir.TensorProtocol):
        return v.numpy()
    return v


def inp(node: ir.Node, k: int) -> str:
    """Name of input k of ``node`` ("" when absent)."""
    if k >= len(node.inputs) or node.inputs[k] is None:
        return ""
    return node.inputs[k].name or ""


def out(node: ir.Node, k: int = 0) -> str:
    """Name of output k of ``node`` ("" when absent)."""
    return (node.outputs[k].name or "") if k < len(node.outputs) else ""
