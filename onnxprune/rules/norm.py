"""Per-channel normalisation: BatchNormalization (unfused) and InstanceNormalization.

Both normalise each channel on its own (statistics over batch/space, never across channels),
so output channel c depends on input channel c only. Their per-channel parameters (γ, β, mean,
var) are sliced with the channels; γ is the ``scale`` member used by the ``bn`` criterion.

LayerNormalization/GroupNormalization/LRN mix channels and have no rule here (barriers).
"""
from __future__ import annotations

from .base import Rule, per_element


class BatchNormRule(Rule):
    op_types = ("BatchNormalization",)

    cost = per_element(2)

    def apply(self, ctx) -> None:
        x = ctx.chan(0)
        if x is None:
            return
        if any(ctx.output_used(k) for k in range(1, ctx.n_outputs)):
            ctx.barrier("training-mode outputs (running mean/var) are used")
            return
        if x.axis != 1:
            ctx.barrier("channels are not on axis 1")
            return
        for k in range(1, 5):
            if not ctx.is_const(k):
                ctx.barrier(f"parameter input {k} is not a constant")
                return
        ctx.param(1, 0, x.labels, "scale")
        for k in (2, 3, 4):
            ctx.param(k, 0, x.labels, "norm")
        ctx.set_out(0, 1, x.labels)


class InstanceNormRule(Rule):
    op_types = ("InstanceNormalization",)

    cost = per_element(4)

    def apply(self, ctx) -> None:
        x = ctx.chan(0)
        if x is None:
            return
        if x.axis != 1 or not (ctx.is_const(1) and ctx.is_const(2)):
            ctx.barrier("needs channels on axis 1 and constant scale/bias")
            return
        ctx.param(1, 0, x.labels, "scale")
        ctx.param(2, 0, x.labels, "norm")
        ctx.set_out(0, 1, x.labels)


RULES = (BatchNormRule(), InstanceNormRule())
