"""Ops without a channel rule whose cost is known: index/shape arithmetic, recurrent layers. Each is a barrier (with its reason) when channels reach it, exactly like an
op with no rule at all; only the cost model reads more from them.
"""
from __future__ import annotations

from .base import Opaque

INDEX_OPS = ("GatherElements", "GatherND", "ScatterND", "ScatterElements", "Range", "ConstantOfShape",
             "Tile", "NonZero", "TopK", "ArgMax", "ArgMin", "Size", "EyeLike", "OneHot", "CumSum", "Trilu",
             "SpaceToDepth", "DepthToSpace", "NonMaxSuppression", "ReverseSequence",
             "SequenceAt", "SplitToSequence", "ConcatFromSequence", "SequenceConstruct",
             "RandomNormalLike", "RandomUniformLike", "Compress")


RULES = (
    Opaque(*INDEX_OPS),
    # control flow: the cost of a subgraph run is not counted (reported as unknown)
    Opaque("If", "Loop", "Scan", why="control flow", macs=lambda model, node, shape_of: None),
)
