"""Recurrent layers: ``LSTM``, ``GRU`` and ``RNN`` hidden units.

A hidden unit ``j`` (shared by both directions: one ``hidden_size``) owns

* its G rows of ``W [dirs, G·H, I]`` and ``R [dirs, G·H, H]`` (G = 4 LSTM gates ``i o f c``,
  3 GRU gates ``z r h``, 1 RNN), rows ``g·H + j`` — producer side (role ``out``);
* its 2·G entries of ``B [dirs, 2·G·H]`` (``Wb`` then ``Rb``) and the 3 LSTM peepholes
  ``P [dirs, 3·H]`` (role ``bias``);
* column ``j`` of ``R``: how ``h_j`` feeds every unit's gates (role ``recurrent``: consumer side,
  zeroed by the oracle like the next layer's input weights);
* entry ``j`` of constant ``initial_h``/``initial_c [dirs, batch, H]`` (role ``state``).

W's input axis is the consumer side of the layer's input channels (role ``in``). Outputs carry
the units on their last axis: ``Y [seq, dirs, batch, H]`` (layout 0) or ``[batch, seq, dirs, H]``
(layout 1), ``Y_h``/``Y_c [dirs, batch, H]`` or ``[batch, dirs, H]``.

Initial states:

1. absent: nothing to do;
2. a constant: sliced with the units;
3. zeros made at run time (``ConstantOfShape`` or ``Expand`` of a zero constant, possibly
   sliced — what both torch exporters emit for ``h0 = None``): the input is dropped, which ONNX
   defines as the same zeros;
4. a graph input, or computed otherwise: the graph input keeps its shape, so every unit stays
   (pinned, with the reason).

Removing unit ``j`` ≡ zeroing column ``j`` of R and its slice in every consumer of Y/Y_h/Y_c: the
unit's own state then influences nothing.

The rewrite sets ``hidden_size`` to the kept count.

``com.microsoft.DynamicQuantizeLSTM`` (onnxruntime's dynamically quantized LSTM) stores int8
``W [dirs, I, 4·H]`` and ``R [dirs, H, 4·H]`` transposed, with scales and zero-points per tensor
``[dirs]`` (left as they are) or per gate row ``[dirs, 4·H]`` (sliced with the units); the same
units are pruned, the weights staying int8.
"""
from __future__ import annotations

import numpy as np

from .base import Rule
from .elementwise import uniform_fill

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_STATE_PASS = ("Slice", "Identity", "Cast", "Transpose", "Unsqueeze", "Squeeze", "Reshape")  # keep a fill a fill


def rnn_macs(model, node, shape_of) -> int | None:
    """Per step and direction: gates × hidden × (input + hidden)."""
    gates = GATES.get(node.op_type, 4)
    x = shape_of(node.inputs[0].name)
    w = shape_of(node.inputs[1].name) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if x is None or w is None or len(x) != 3 or len(w) != 3:
        return None
    quant = node.op_type == "DynamicQuantizeLSTM"  # W [dirs, I, 4H]
    dirs, inp_size, rows = (w[0], w[1], w[2]) if quant else (w[0], w[2], w[1])
    hidden = rows // gates  # from the weight's shape: the cost model hands in pruned shapes
    return int(x[0] * x[1] * dirs * gates * hidden * (inp_size + hidden))


def _zero_state(model, name: str) -> bool:
    """Zeros made at run time (a fill of 0, then layout ops): the same as no initial state."""
    fill = uniform_fill(model, name, through=_STATE_PASS)
    return fill is not None and not fill[2]


class RecurrentRule(Rule):
    op_types = ("LSTM", "GRU", "RNN")
    min_opset = 7
    # axes of W and R: (gate rows, input / recurrent columns)
    row_axis, col_axis = 1, 2

    def cost(self, model, node, shape_of):
        macs = rnn_macs(model, node, shape_of)
        return None if macs is None else (macs, 0)

    def apply(self, ctx) -> None:
        gates = GATES.get(ctx.op, 4)
        for k, what in ((1, "W"), (2, "R"), (3, "B"), (7, "P"), (8, "W_scale"), (9, "W_zero_point"),
                        (10, "R_scale"), (11, "R_zero_point")):
            if ctx.has_input(k) and not ctx.is_const(k):
                ctx.barrier(f"{what} is not a constant")
                return
        ra, ca = self.row_axis, self.col_axis
        w_shape = ctx.model.const_shape(ctx.input_name(1))
        hidden = int(ctx.attr("hidden_size", w_shape[ra] // gates))
        if w_shape[ra] != gates * hidden:
            ctx.barrier(f"W has {w_shape[ra]} gate rows for {gates} gates of {hidden} units")
            return
        units = ctx.new_space(hidden, f"{ctx.name}:hidden")
        rows = np.tile(units, gates)
        ctx.param(1, ra, rows, "out")
        ctx.param(2, ra, rows, "out")
        ctx.param(2, ca, units, "recurrent")
        if ctx.has_input(3):
            ctx.param(3, 1, np.tile(units, 2 * gates), "bias")
        if ctx.has_input(7):
            ctx.param(7, 1, np.tile(units, 3), "bias")
        for k in (8, 9, 10, 11):  # per-gate-row quantization parameters go with their rows
            shape = ctx.model.const_shape(ctx.input_name(k)) if ctx.has_input(k) else None
            if shape is not None and len(shape) == 2:
                ctx.param(k, 1, rows, "affine")
        x = ctx.chan(0)
        if x is not None:
            if x.axis == 2:
                ctx.param(1, ca, x.labels, "in")
            else:
                ctx.pin(x.labels, "recurrent input channels are not on its last axis")
        drop = []
        for k in (5, 6) if ctx.op in ("LSTM", "DynamicQuantizeLSTM") else (5,):
            if not ctx.has_input(k):
                continue
            name = ctx.input_name(k)
            if ctx.is_const(k):
                ctx.param(k, 2, units, "state")
            elif _zero_state(ctx.model, name):
                drop.append(k)
            else:
                why = "is a graph input" if name in ctx.model.graph_inputs else "is computed at run time"
                ctx.pin(units, f"initial {'h' if k == 5 else 'c'} {why}: the units keep its shape")

        def fix(rw, node=ctx.node, units=units, drop=tuple(drop)):
            rw.set_attr(node, "hidden_size", int(rw.keep(units).sum()))
            for k in drop:  # zeros at run time ≡ no initial state
                node.replace_input_with(k, None)

        ctx.fix(fix)
        ctx.nonempty(units)
        ctx.set_out(0, 3, units)
        ctx.set_out(1, 2, units)
        ctx.set_out(2, 2, units)


class QuantizedLSTMRule(RecurrentRule):
    """``com.microsoft.DynamicQuantizeLSTM``: W/R stored transposed ([dirs, I|H, 4·H])."""

    op_types = ("DynamicQuantizeLSTM",)
    domain = "com.microsoft"
    min_opset = 1
    row_axis, col_axis = 2, 1


RULES = (RecurrentRule(), QuantizedLSTMRule())
