"""Ops without a channel rule whose cost is known: index/shape arithmetic, recurrent layers,
LayerNormalization. Each is a barrier (with its reason) when channels reach it, exactly like an
op with no rule at all; only the cost model reads more from them.

Recurrent MACs per step and direction: gates × hidden × (input + hidden), gates = 4 (LSTM),
3 (GRU), 1 (RNN).
"""
from __future__ import annotations

from ..graph import attr_value
from .base import Opaque

INDEX_OPS = ("Gather", "GatherElements", "GatherND", "ScatterND", "ScatterElements", "Range", "ConstantOfShape",
             "Tile", "NonZero", "TopK", "ArgMax", "ArgMin", "Equal", "Less", "Greater", "LessOrEqual",
             "GreaterOrEqual", "Not", "And", "Or", "Xor", "Size", "EyeLike", "OneHot", "CumSum", "Trilu",
             "SpaceToDepth", "DepthToSpace", "IsNaN", "IsInf", "NonMaxSuppression", "ReverseSequence",
             "SequenceAt", "SplitToSequence", "ConcatFromSequence", "SequenceConstruct",
             "RandomNormalLike", "RandomUniformLike", "Compress")


def _rnn_macs(model, node, shape_of):
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[node.op_type]
    x = shape_of(node.inputs[0].name)
    w = shape_of(node.inputs[1].name) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if x is None or w is None or len(x) != 3 or len(w) != 3:
        return None
    dirs, _, inp_size = w
    hidden = int(attr_value(node, "hidden_size", w[1] // gates))
    layout = int(attr_value(node, "layout", 0))
    steps_batch = x[0] * x[1]  # seq × batch in either layout
    del layout
    return int(steps_batch * dirs * gates * hidden * (inp_size + hidden))


RULES = (
    Opaque(*INDEX_OPS),
    # control flow: the cost of a subgraph run is not counted (reported as unknown)
    Opaque("If", "Loop", "Scan", why="control flow", macs=lambda model, node, shape_of: None),
    Opaque("LSTM", "GRU", "RNN", why="recurrent layer (hidden units are not pruned yet)", macs=_rnn_macs,
           ops_per_element=0),
    Opaque("LayerNormalization", why="LayerNormalization normalises over the hidden axis (hidden-size "
           "pruning is not exact)", ops_per_element=4),
)
