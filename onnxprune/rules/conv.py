"""Conv and ConvTranspose (1D/2D/3D; plain, grouped, depthwise).

Conv ``W[O, C/g, k...]``, ConvTranspose ``W[C, O/g, k...]``, channel axis 1 of X and Y.

Cases:
1. ``group == 1``: the output channels are a new space (W's O axis and B are producer-side);
   W's C axis is consumer-side, indexed by X's channels.
2. Depthwise (one input channel per group, ``g == C``): output channels ``c·m … c·m+m-1`` come
   from input channel ``c`` only, so they share its label; pruning removes whole groups and the
   rewrite sets ``group`` to the kept count.
3. Grouped (``1 < g < C``): every group must keep the same number of inputs and outputs, so
   position ``j`` of every group is one atom (Torch-Pruning's approach); ``group`` is unchanged
   and W's per-group axis is indexed by group 0's labels.
"""
from __future__ import annotations

import numpy as np

from ..graph import attr_value
from .base import Layout, Rule, numel


def _unify_rows(ctx, labels: np.ndarray, groups: int) -> None:
    rows = labels.reshape(groups, -1)
    for r in rows[1:]:
        ctx.unify(rows[0], r)


def _prologue(ctx):
    """(weight shape, group, input channels or None); None after a barrier."""
    if not ctx.is_const(1):
        ctx.barrier("weight is not a constant")
        return None
    if ctx.has_input(2) and not ctx.is_const(2):
        ctx.barrier("bias is not a constant")
        return None
    x = ctx.chan(0)
    if x is not None and x.axis != 1:
        ctx.pin(x.labels, "channels are not on axis 1")
        x = None
    return ctx.model.const_shape(ctx.input_name(1)), int(ctx.attr("group", 1)), x


def conv_macs(model, node, shape_of) -> int | None:
    """Conv: output elements × (C/g · kernel); ConvTranspose: input elements × (O/g · kernel)."""
    w = shape_of(node.inputs[1].name) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if w is None:
        return None
    if node.op_type in ("Conv", "QLinearConv", "ConvInteger"):
        out = shape_of(node.outputs[0].name)
        return None if out is None else numel(out) * numel(w[1:])
    x = shape_of(node.inputs[0].name)
    return None if x is None else numel(x) * numel(w[1:])


def _cost(model, node, shape_of):
    macs = conv_macs(model, node, shape_of)
    if macs is None:
        return None
    out = shape_of(node.outputs[0].name)
    has_b = len(node.inputs) > 2 and node.inputs[2] is not None
    return macs, numel(out) if has_b else 0


def _geometry(model, node, kind: str, out_axis: int, in_axis: int) -> Layout:
    w = model.const_shape(node.inputs[1].name)
    nd = len(w) - 2
    auto = attr_value(node, "auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    pads = tuple(attr_value(node, "pads", [0] * 2 * nd)) if auto in ("NOTSET", "VALID") else None
    return Layout(1, out_axis, in_axis, 2, kind, groups=int(attr_value(node, "group", 1)), kernel=tuple(w[2:]),
                  strides=tuple(attr_value(node, "strides", [1] * nd)), pads=pads,
                  dilations=tuple(attr_value(node, "dilations", [1] * nd)))


def reads_padding(node) -> bool:
    auto = attr_value(node, "auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    return any(attr_value(node, "pads", [0])) or auto not in ("NOTSET", "VALID")


class _ConvBase(Rule):
    """Cost, weight layout and padding of Conv and ConvTranspose (their channel flow differs)."""

    kind = ""
    out_axis = in_axis = 0

    def cost(self, model, node, shape_of):
        return _cost(model, node, shape_of)

    def layout(self, model, node):
        return _geometry(model, node, self.kind, self.out_axis, self.in_axis)

    def reads_padding(self, model, node):
        return reads_padding(node)


class ConvRule(_ConvBase):
    op_types = ("Conv",)
    kind, out_axis, in_axis = "conv", 0, 1

    def apply(self, ctx) -> None:
        if (pro := _prologue(ctx)) is None:
            return
        w_shape, g, x = pro
        o, cg = int(w_shape[0]), int(w_shape[1])
        has_b = ctx.has_input(2)
        if g == 1:
            y = ctx.new_space(o)
            ctx.param(1, 0, y, "out")
            if x is not None:
                ctx.param(1, 1, x.labels, "in")
        elif cg == 1:  # depthwise, channel multiplier m
            y = np.repeat(_depthwise_input(ctx, x, g), o // g)
            ctx.param(1, 0, y, "out")
        else:  # grouped
            y = ctx.new_space(o)
            _unify_rows(ctx, y, g)
            ctx.param(1, 0, y, "out")
            if x is not None:
                _unify_rows(ctx, x.labels, g)
                ctx.param(1, 1, x.labels[:cg], "in")
        if has_b:
            ctx.param(2, 0, y, "bias")
        ctx.nonempty(y)
        ctx.set_out(0, 1, y)


def _depthwise_input(ctx, x, g: int) -> np.ndarray:
    """A depthwise conv's input channels (pinned when untracked); its ``group`` follows their pruning."""
    xl = x.labels if x is not None else ctx.new_space(g, f"{ctx.name}:input")
    if x is None:
        ctx.pin(xl, "depthwise conv input carries no prunable channels")

    def set_group(rw, node=ctx.node, labels=xl):
        rw.set_attr(node, "group", int(rw.keep(labels).sum()))

    ctx.fix(set_group)
    return xl


class ConvTransposeRule(_ConvBase):
    op_types = ("ConvTranspose",)
    kind, out_axis, in_axis = "conv_transpose", 1, 0

    def apply(self, ctx) -> None:
        if (pro := _prologue(ctx)) is None:
            return
        w_shape, g, x = pro
        c, og = int(w_shape[0]), int(w_shape[1])
        if g == 1:
            y = ctx.new_space(og)
            ctx.param(1, 1, y, "out")
            if x is not None:
                ctx.param(1, 0, x.labels, "in")
        elif c == g:  # depthwise: output block c·m… comes from input c
            xl = _depthwise_input(ctx, x, g)
            y = np.repeat(xl, og)
            ctx.param(1, 0, xl, "out")
        else:
            y = ctx.new_space(og * g)
            _unify_rows(ctx, y, g)
            ctx.param(1, 1, y[:og], "out")
            if x is not None:
                _unify_rows(ctx, x.labels, g)
                ctx.param(1, 0, x.labels, "in")
        if ctx.has_input(2):
            ctx.param(2, 0, y, "bias")
        ctx.nonempty(y)
        ctx.set_out(0, 1, y)


RULES = (ConvRule(), ConvTransposeRule())
