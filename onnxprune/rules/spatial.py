"""Ops that act on spatial axes only: pooling, reductions, Resize/Upsample, Pad.

Each passes channels through when the channel axis is not touched:

1. pooling (``MaxPool AveragePool LpPool Global*Pool``): channels on axis 1 (NCHW);
2. ``Reduce*``: the channel axis is not reduced (it moves left when ``keepdims=0``); in hidden-size
   mode a reduction over the channel axis alone is a hidden site (``hidden.py``);
3. ``Resize``/``Upsample``: scale 1 on the channel axis; a constant ``sizes`` entry for the
   channel axis is rewritten to the kept count;
4. ``Pad``: zero padding on the channel axis.
"""
from __future__ import annotations

import numpy as np

from ..graph import attr_value
from .base import Rule, norm_axis, numel
from .conv import reads_padding

POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
REDUCES = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


class PoolRule(Rule):
    op_types = POOLS

    def reads_padding(self, model, node):
        return node.op_type in ("AveragePool", "MaxPool") and reads_padding(node)

    def cost(self, model, node, shape_of):
        if node.op_type.startswith("Global"):
            return 0, numel(shape_of(node.inputs[0].name))
        return 0, numel(shape_of(node.outputs[0].name)) * numel(attr_value(node, "kernel_shape", []))

    def apply(self, ctx) -> None:
        x = ctx.chan(0)
        if x is None:
            return
        if x.axis != 1:
            ctx.barrier("pooling needs channels on axis 1")
            return
        if ctx.output_used(1):
            ctx.barrier("MaxPool indices output is used (indices count channels)")
            return
        ctx.set_out(0, 1, x.labels)


class ReduceRule(Rule):
    op_types = REDUCES

    def cost(self, model, node, shape_of):
        return 0, numel(shape_of(node.inputs[0].name))

    def apply(self, ctx) -> None:
        if (xr := ctx.chan_and_rank()) is None:
            return
        x, rank = xr
        ok, axes = ctx.operand(1, "axes", 13 if ctx.op == "ReduceSum" else 18)
        if not ok:
            return
        if axes is None or len(np.atleast_1d(axes)) == 0:
            ctx.barrier("reduces over all axes")
            return
        axes = {norm_axis(int(a), rank) for a in np.atleast_1d(axes)}
        if x.axis in axes and ctx.an.hidden and axes == {x.axis}:
            from ..hidden import add_site

            add_site(ctx, "reduce", x)  # reads the kept channels only (a mean re-normalises)
            return
        if x.axis in axes:
            ctx.barrier("reduces over the channel axis" + ("" if ctx.an.hidden else
                        " (in a hidden-size stream: give --hidden-ratio or --hidden)"))
            return
        keep = int(ctx.attr("keepdims", 1))
        out_axis = x.axis if keep else x.axis - sum(1 for a in axes if a < x.axis)
        ctx.set_out(0, out_axis, x.labels)


class _Moves(Rule):
    """Data movement: no arithmetic."""

    def cost(self, model, node, shape_of):
        return 0, 0


class ResizeRule(_Moves):
    op_types = ("Resize", "Upsample")

    def apply(self, ctx) -> None:
        if (xr := ctx.chan_and_rank()) is None:
            return
        x, rank = xr
        axes = ctx.attr("axes")
        axes = [norm_axis(int(a), rank) for a in axes] if axes else list(range(rank))
        if x.axis not in axes:
            ctx.set_out(0, x.axis, x.labels)
            return
        pos = axes.index(x.axis)
        if ctx.op == "Upsample" or ctx.model.opset < 11:
            scales = ctx.value(1) if ctx.has_input(1) else np.array(ctx.attr("scales", []), dtype=np.float32)
            if scales is None or len(scales) <= pos or float(scales[pos]) != 1.0:
                ctx.barrier("scale on the channel axis is not a constant 1")
                return
            ctx.set_out(0, x.axis, x.labels)
            return
        if ctx.has_input(3):  # sizes
            sizes = ctx.value(3)
            if sizes is None:
                ctx.barrier("sizes is not a constant")
                return

            def fix_sizes(rw, node=ctx.node, pos=pos, labels=x.labels):
                new = rw.const_input(node, 3).copy()
                new[pos] = int(rw.keep(labels).sum())
                rw.set_input_const(node, 3, new)

            ctx.fix(fix_sizes)
        else:
            scales = ctx.value(2)
            if scales is None or len(scales) <= pos or float(scales[pos]) != 1.0:
                ctx.barrier("scale on the channel axis is not a constant 1")
                return
        ctx.set_out(0, x.axis, x.labels)


class PadRule(_Moves):
    op_types = ("Pad",)

    def reads_padding(self, model, node):
        return True

    def apply(self, ctx) -> None:
        if (xr := ctx.chan_and_rank()) is None:
            return
        x, rank = xr
        ok, pads = ctx.operand(1, "pads", 11)
        ok2, axes = ctx.operand(3, "axes", 18) if ok else (False, None)
        if not (ok and ok2):
            return
        pads = np.asarray(pads if pads is not None else [], dtype=np.int64)
        axes = list(range(rank)) if axes is None else [norm_axis(int(a), rank) for a in axes]
        if len(pads) != 2 * len(axes):
            ctx.barrier("pads do not match the input rank")
            return
        if x.axis in axes:
            i = axes.index(x.axis)
            if pads[i] != 0 or pads[i + len(axes)] != 0:
                ctx.barrier("pads the channel axis")
                return
        ctx.set_out(0, x.axis, x.labels)


RULES = (PoolRule(), ReduceRule(), ResizeRule(), PadRule())
