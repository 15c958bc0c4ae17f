"""Element-wise ops: activations (one input) and broadcasting arithmetic (several inputs).

Unary activations map channel c to channel c (``Passthrough``). Broadcasting ops
(``Add Sub Mul Div Pow Max Min Sum Mean PRelu``) align inputs NumPy-style; on the output's
channel axis each input either

1. carries the same channels (residual ``Add``, SE ``Mul``, x·sigmoid(x)): labels are unified;
2. is a constant with one entry per channel (bias ``Add``, per-channel scale ``Mul``, PRelu's
   slope): that constant axis is sliced with the channels (role ``affine``);
3. broadcasts along the channel axis (size 1: a scalar, a spatial mask): nothing to do;
   a tensor filled with one value at run time, or one gathered from a constant table (T5's
   relative position bias per head) has its shape entry rewritten / its table sliced;
4. anything else (an untracked activation with C channels, misaligned axes): the channels are
   pinned, with the reason.

Softmax/LogSoftmax/Hardmax pass channels through unless they normalise over the channel axis.
"""
from __future__ import annotations

import numpy as np

from ..graph import attr_value, inp
from .base import Passthrough, Rule, norm_axis, per_element

UNARY = (
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Gelu", "Tanh", "Elu", "Selu",
    "Softplus", "Softsign", "Mish", "Celu", "ThresholdedRelu", "Swish", "Exp", "Log", "Abs", "Neg",
    "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Erf", "Sin", "Cos", "Sign", "Identity", "Cast",
    "Clip",
)
MOVES = ("Identity", "Cast")  # no arithmetic: 0 ops
PREDICATES = ("IsNaN", "IsInf", "Not")


class BroadcastRule(Rule):
    op_types = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where",
                # predicates and selects of masks (SDPA exports: Softmax → IsNaN → Where)
                "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod")

    cost = per_element(1)

    def apply(self, ctx) -> None:
        tracked = [(k, c) for k in range(ctx.n_inputs) if (c := ctx.chan(k)) is not None]
        if not tracked:
            return
        ranks = [ctx.rank(k) for k in range(ctx.n_inputs)]
        if any(r is None for r in ranks):
            ctx.barrier("an input's rank is unknown (no shape information)")
            return
        out_rank = max(ranks)
        main_k, main = max(tracked, key=lambda kc: kc[1].labels.size)
        axis = main.axis + out_rank - ranks[main_k]
        size = main.labels.size
        for k in range(ctx.n_inputs):
            if k == main_k or not ctx.has_input(k):
                continue
            offset = out_rank - ranks[k]
            local = axis - offset  # the input's own axis aligned with the channel axis
            c = ctx.chan(k)
            if c is not None:
                if c.axis + offset == axis and c.labels.size == size:
                    ctx.unify(main.labels, c.labels)
                elif c.axis + offset == axis and c.labels.size == 1:
                    ctx.pin(c.labels, "one channel broadcast over many")
                else:
                    ctx.barrier(f"inputs {main_k} and {k} carry channels on different axes")
                    return
                continue
            shape = ctx.model.const_shape(ctx.input_name(k)) if ctx.is_const(k) else ctx.in_shape(k)
            dim = 1 if local < 0 else shape[local]
            if dim == 1:
                continue
            if ctx.is_const(k) and dim == size:
                ctx.param(k, local, main.labels, "affine")
            elif dim == size and _uniform_fill_fix(ctx, ctx.input_name(k), local, main.labels):
                continue  # zeros (or any fill) made at run time: its channel count follows the pruning
            elif dim == size and _broadcast_expand(ctx, ctx.input_name(k), local, main.labels):
                continue  # one value per position expanded over the channels (F.normalize's norm)
            elif dim == size and _const_derived_param(ctx, ctx.input_name(k), local, main.labels):
                continue  # gathered from a constant table (T5's relative position bias per head)
            else:
                ctx.pin(main.labels, f"input {k} ({ctx.input_name(k)}) has {dim} entries on the channel axis "
                                     "and is not a channel-tracked tensor")
        ctx.set_out(0, axis, main.labels)


def _uniform_fill_fix(ctx, name: str, axis: int, labels) -> bool:
    """A tensor filled with one value at run time (``ConstantOfShape`` or ``Expand`` of a scalar
    constant, through Identity/Cast — an RNN cell's zero state): declare the fix of its shape entry
    on ``axis``; its values do not depend on the channel."""
    from .reshape import target_entry_fix

    fill = uniform_fill(ctx.model, name)
    return fill is not None and target_entry_fix(ctx, fill[1], axis, lambda kept: kept, labels, node=fill[0])


def _broadcast_expand(ctx, name: str, axis: int, labels) -> bool:
    """``Expand(t, shape)`` where t has one entry on ``axis``: the same value for every channel.
    Its width follows the pruning when ``shape`` is ``Shape`` of a tensor with these channels (read
    at run time; the channels are coupled) or an entry a fix can rewrite."""
    from .reshape import target_entry_fix

    model = ctx.model
    node = model.producer(name)
    if node is None or node.op_type != "Expand" or not inp(node, 1):
        return False
    src, out_shape = model.shape(inp(node, 0)), model.shape(name)
    if src is None or out_shape is None:
        return False
    local = axis - (len(out_shape) - len(src))
    if local >= 0 and src[local] != 1:
        return False
    shp = model.producer(inp(node, 1))
    if shp is not None and shp.op_type == "Shape" and not shp.attributes:
        c = ctx.an.chan.get(inp(shp, 0))
        if c is not None and c.axis == axis and c.labels.size == labels.size and model.shape(inp(shp, 0)) is not None \
                and len(model.shape(inp(shp, 0))) == len(out_shape):
            ctx.unify(c.labels, labels)
            return True
    v = model.value(inp(node, 1))
    if v is not None and np.size(v) != len(out_shape):
        return False
    return target_entry_fix(ctx, 1, axis, lambda kept: kept, labels, node=node)
def const_source(model, name: str, axis: int, depth: int = 0):
    """(constant, its axis, the node reading it) when axis ``axis`` of ``name`` is axis ``axis`` of
    a constant carried through layout ops, a ``Gather`` on another axis, and element-wise ops whose
    other inputs broadcast along it (a T5 relative position bias: a per-head table gathered by
    bucket, transposed, plus a mask); else None."""
    node = model.producer(name)
    if node is None or depth > 12 or node.domain != "" or len(node.outputs) != 1:
        return None
    op = node.op_type
    shape = model.shape(name)
    if shape is None or axis >= len(shape):
        return None
    src_axis = None
    src = inp(node, 0)
    if op == "Transpose":
        perm = attr_value(node, "perm")
        src_axis = int(perm[axis]) if perm is not None else len(shape) - 1 - axis
    elif op in ("Identity", "Cast"):
        src_axis = axis
    elif op in ("Unsqueeze", "Squeeze"):
        axes = model.const(inp(node, 1)) if inp(node, 1) else attr_value(node, "axes")
        if axes is None:
            return None
        in_rank = len(model.shape(src) or ())
        if op == "Unsqueeze":
            axes = {norm_axis(int(a), len(shape)) for a in np.atleast_1d(axes)}
            if axis in axes:
                return None
            src_axis = axis - sum(1 for a in axes if a < axis)
        else:
            axes = sorted(norm_axis(int(a), in_rank) for a in np.atleast_1d(axes))
            src_axis = axis
            for a in axes:
                if a <= src_axis:
                    src_axis += 1
    elif op == "Gather":
        idx = model.shape(inp(node, 1))
        g = norm_axis(int(attr_value(node, "axis", 0)), len(model.shape(src) or shape))
        if idx is None:
            return None
        if axis < g:
            src_axis = axis
        elif axis >= g + len(idx):
            src_axis = axis - len(idx) + 1
        else:
            return None  # the gathered axis itself
    elif op in ("Add", "Sub", "Mul", "Div", "Where"):
        full = []
        for k in range(len(node.inputs)):
            s = model.shape(inp(node, k))
            if s is None:
                return None
            local = axis - (len(shape) - len(s))
            if local >= 0 and s[local] != 1:
                full.append((k, local))
        if len(full) != 1 or (op == "Where" and full[0][0] == 0):
            return None
        src, src_axis = inp(node, full[0][0]), full[0][1]
    else:
        return None
    if model.is_plain_const(src):
        return model.resolve(src), src_axis, node
    if len(model.uses(src)) != 1 or model.is_graph_output(src):
        return None  # an intermediate read elsewhere would change shape too
    return const_source(model, src, src_axis, depth + 1)


def _const_derived_param(ctx, name: str, axis: int, labels) -> bool:
    """Slice the constant behind ``name`` (see :func:`const_source`) with the channels: an
    ``affine`` parameter of the node reading the constant."""
    from ..analysis import ParamAxis

    found = const_source(ctx.model, name, axis)
    if found is None:
        return False
    tensor, src_axis, reader = found
    shape = ctx.model.const_shape(tensor)
    if shape is None or shape[src_axis] != labels.size:
        return False
    ctx.an.params.append(ParamAxis(tensor, src_axis, labels, reader, "affine"))
    ctx.an.derived.setdefault(name, []).append((ctx.node, labels))
    return True


def chan_or_fill(ctx, k: int, axis: int):
    """Input k's channels; for a tensor filled with one value at run time (an RNN cell's zero state
    from ``ConstantOfShape``/``Expand``) fresh labels whose count the rewrite writes into the
    fill's shape, so a weight it shares with the other time steps can still be sliced."""
    from ..analysis import Chan

    c = ctx.chan(k)
    if c is not None or not ctx.has_input(k) or uniform_fill(ctx.model, ctx.input_name(k)) is None:
        return c
    s = ctx.in_shape(k)
    if s is None or axis >= len(s) or not isinstance(s[axis], int) or s[axis] < 2:
        return None
    marks = len(ctx.an.fixes)
    labels = ctx.new_space(int(s[axis]), f"{ctx.name}:input{k} (fill)")
    if not _uniform_fill_fix(ctx, ctx.input_name(k), axis, labels):
        del ctx.an.fixes[marks:]
        ctx.pin(labels, "the fill's shape entry cannot be rewritten")
        return None
    return Chan(axis, labels)


def uniform_fill(model, name: str, through=("Identity", "Cast")):
    """(node, index of its shape input, the fill value) when ``name`` is one value broadcast to a
    run-time shape (``ConstantOfShape``, ``Expand`` of a scalar constant), reached through the
    ops ``through``; else None."""
    node = model.producer(name)
    while node is not None and node.op_type in through:
        node = model.producer(inp(node, 0))
    if node is None:
        return None
    if node.op_type == "ConstantOfShape":
        value = attr_value(node, "value")
        return node, 0, np.asarray(value).reshape(-1)[0] if value is not None else np.float32(0)
    if node.op_type == "Expand":
        v = model.const(inp(node, 0))
        if v is not None and v.size == 1:
            return node, 1, v.reshape(-1)[0]
    return None


class SoftmaxRule(Rule):
    op_types = ("Softmax", "LogSoftmax", "Hardmax")

    cost = per_element(4)

    def apply(self, ctx) -> None:
        x = ctx.chan(0)
        if x is None:
            return
        rank = ctx.rank(0)
        if rank is None:
            ctx.barrier("rank unknown")
            return
        if ctx.model.opset >= 13:
            axis = norm_axis(int(ctx.attr("axis", -1)), rank)
            mixes = x.axis == axis
        else:  # coerced to 2-D at `axis`: every axis from `axis` on is normalised together
            axis = norm_axis(int(ctx.attr("axis", 1)), rank)
            mixes = x.axis >= axis
        if mixes:
            ctx.barrier(f"{ctx.op} normalises over the channel axis")
            return
        ctx.set_out(0, x.axis, x.labels)


def activation_fn(model, node):
    """The element-wise function of an activation node, in NumPy (data-free recovery means); None if unknown."""
    op = node.op_type
    a = lambda k, d: float(model.attr(node, k, d))  # noqa: E731
    if op == "Relu":
        return lambda z: np.maximum(z, 0)
    if op == "LeakyRelu":
        al = a("alpha", 0.01)
        return lambda z: np.where(z > 0, z, al * z)
    if op == "Clip":
        lo, hi = (model.const(inp(node, 1)) if inp(node, 1) else a("min", -np.inf)), \
                 (model.const(inp(node, 2)) if inp(node, 2) else a("max", np.inf))
        return lambda z: np.clip(z, float(lo), float(hi))
    if op == "Sigmoid":
        return lambda z: 1 / (1 + np.exp(-z))
    if op == "HardSigmoid":
        al, be = a("alpha", 0.2), a("beta", 0.5)
        return lambda z: np.clip(al * z + be, 0, 1)
    if op == "HardSwish":
        return lambda z: z * np.clip(z / 6 + 0.5, 0, 1)
    if op == "Tanh":
        return np.tanh
    if op == "Elu":
        al = a("alpha", 1.0)
        return lambda z: np.where(z > 0, z, al * (np.exp(np.minimum(z, 0)) - 1))
    if op == "Softplus":
        return lambda z: np.logaddexp(0, z)
    if op in ("Identity", "Dropout"):
        return lambda z: z
    return None


RULES = (
    Passthrough(*(op for op in UNARY if op not in MOVES)),
    Passthrough(*MOVES, ops_per_element=0),
    Passthrough(*PREDICATES),
    Passthrough("Dropout", used_outputs=1, ops_per_element=0),
    BroadcastRule(),
    SoftmaxRule(),
)
