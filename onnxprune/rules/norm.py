"""Per-channel normalisation: BatchNormalization (unfused) and InstanceNormalization.

Both normalise each channel on its own (statistics over batch/space, never across channels),
so output channel c depends on input channel c only. Their per-channel parameters (γ, β, mean,
var) are sliced with the channels; γ is the ``scale`` member used by the ``bn`` criterion.

LayerNormalization mixes the channels it normalises over: a barrier, except in hidden-size mode
(``hidden.py``), where over the channel (last) axis it couples the residual stream: its output
has its input's channels, γ/β are sliced with them, and the node is a hidden site (removal
re-normalises over the kept channels). GroupNormalization/LRN have no rule (barriers).
"""
from __future__ import annotations

from .base import Rule, norm_axis, per_element


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


class LayerNormRule(Rule):
    op_types = ("LayerNormalization",)

    cost = per_element(4)

    WHY = ("LayerNormalization normalises over the hidden axis (hidden-size pruning is not exact: "
           "give --hidden-ratio or --hidden to prune it)")

    def apply(self, ctx) -> None:
        if not ctx.an.hidden:
            ctx.barrier(self.WHY)  # always listed, like other known-cost ops without a channel rule
            return
        if (xr := ctx.chan_and_rank()) is None:
            return
        x, rank = xr
        axis = norm_axis(int(ctx.attr("axis", -1)), rank)
        if axis != rank - 1 or x.axis != axis:
            ctx.barrier(f"normalises over axes {axis}..{rank - 1}, channels are on axis {x.axis} "
                        "(hidden-size pruning needs the channel axis alone, last)")
            return
        if any(ctx.output_used(k) for k in range(1, ctx.n_outputs)):
            ctx.barrier("mean/inv-std outputs are used")
            return
        for k in (1, 2):
            if ctx.has_input(k) and not ctx.is_const(k):
                ctx.barrier(f"input {k} (γ/β) is not a constant")
                return
            if ctx.has_input(k) and ctx.model.const_shape(ctx.input_name(k))[-1:] != (x.labels.size,):
                ctx.barrier(f"input {k} (γ/β) is not one value per channel")
                return
        from ..hidden import add_site

        for k in (1, 2):
            if ctx.has_input(k):
                ctx.param(k, len(ctx.model.const_shape(ctx.input_name(k))) - 1, x.labels, "norm")
        add_site(ctx, "layernorm", x)
        ctx.set_out(0, x.axis, x.labels)


RULES = (BatchNormRule(), InstanceNormRule(), LayerNormRule())
