"""Constants, including those reached through chains of shape-only ops, and static shape values.

A **chain** is a source constant (initializer or ``Constant`` node) followed by ops that only
re-lay or re-type it, each reading constants for its other operands:

==================  ====================================================  ===================
op                  out axis ``a`` comes from input axis                    extra
==================  ====================================================  ===================
Identity, Cast      ``a``
Unsqueeze           ``a`` minus the inserted axes before it
Squeeze             the ``a``-th axis that was not squeezed
Transpose           ``perm[a]``
DequantizeLinear    ``a``                                                   per-channel scale and
                                                                            zero-point on ``a``
Reshape, Flatten    input axis ``b`` with as many elements before it and the
                    same size (the axis stays one block), else none
Expand              (no axis map)
(no axis map)       the chain is folded into one initializer for its readers
==================  ====================================================  ===================

Caffe2-converted models scale BatchNorm outputs with ``Mul(x, Unsqueeze(w))``; int8 QDQ models
feed ``DequantizeLinear(w_int8, scale, zero_point)`` to every Conv/Gemm/MatMul. Both are chains:
the analysis sees the constant value, and the rewrite slices the int8 source with its per-channel
scales and zero-points so the model stays QDQ.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from .nodes import attr_value, inp

__all__ = ["Chain", "chain", "evaluate", "strip_identity", "is_identity", "set_plain", "slice_through",
           "zero_through", "source_axes", "partial", "CHAIN_OPS"]

log = logging.getLogger("onnxprune.graph")

CHAIN_OPS = frozenset({"Identity", "Cast", "Unsqueeze", "Squeeze", "Reshape", "Transpose", "Flatten", "Expand",
                       "DequantizeLinear"})
_MAX_STATIC = 64  # elements: shape arithmetic, not tensors


@dataclass(frozen=True)
class Chain:
    """``source`` (a plain constant's name) and the ops from it to the tensor, source side first."""

    source: str
    ops: tuple[ir.Node, ...]


def is_identity(node: ir.Node) -> bool:
    return node.op_type == "Identity" and node.domain == ""


def _plain_tensor(v: ir.Value) -> ir.TensorProtocol | None:
    if v.const_value is not None:
        return v.const_value
    p = v.producer()
    if p is None or p.op_type != "Constant" or p.domain != "":
        return None
    try:
        return ir.convenience.get_const_tensor(v)
    except ValueError:
        return None


def chain(model, name: str) -> Chain | None:
    memo = model.__dict__.setdefault("_chains", {})
    if name in memo:
        return memo[name]
    memo[name] = None  # cycles stay None
    result = None
    v = model.value_of(name)
    if v is not None:
        if _plain_tensor(v) is not None:
            result = Chain(name, ())
        else:
            p = v.producer()
            if p is not None and p.op_type in CHAIN_OPS and p.domain == "" and len(p.outputs) == 1 and \
                    p.inputs and p.inputs[0] is not None and p.graph is model.graph:
                head = chain(model, p.inputs[0].name)
                rest_const = all(x is None or model.const(x.name) is not None for x in p.inputs[1:])
                if head is not None and rest_const and not (p.op_type == "DequantizeLinear" and
                                                            int(attr_value(p, "block_size", 0) or 0) > 0):
                    result = Chain(head.source, head.ops + (p,))
    memo[name] = result
    return result


def strip_identity(model, name: str) -> str:
    seen = 0
    while name and seen < 64:
        p = model.producer(name)
        if p is None or not is_identity(p) or p.inputs[0] is None or chain(model, p.inputs[0].name) is None:
            return name
        name = p.inputs[0].name
        seen += 1
    return name


def _operand(model, node: ir.Node, k: int, attr: str, since: int):
    if model.opset < since:
        return attr_value(node, attr)
    if k < len(node.inputs) and node.inputs[k] is not None:
        return [int(x) for x in np.atleast_1d(model.const(node.inputs[k].name))]
    return None


def _apply(model, node: ir.Node, x: np.ndarray) -> np.ndarray:
    op = node.op_type
    if op == "Identity":
        return x
    if op == "Cast":
        return x.astype(onnx.helper.tensor_dtype_to_np_dtype(int(attr_value(node, "to"))))
    if op == "Unsqueeze":
        axes = _operand(model, node, 1, "axes", 13)
        out_rank = x.ndim + len(axes)
        for a in sorted(int(a) % out_rank for a in axes):
            x = np.expand_dims(x, a)
        return x
    if op == "Squeeze":
        axes = _operand(model, node, 1, "axes", 13)
        return np.squeeze(x) if axes is None else np.squeeze(x, axis=tuple(int(a) % x.ndim for a in axes))
    if op == "Transpose":
        perm = attr_value(node, "perm")
        return np.transpose(x, perm)
    if op == "Flatten":
        a = int(attr_value(node, "axis", 1)) % max(x.ndim, 1) if x.ndim else 0
        return x.reshape(int(np.prod(x.shape[:a], dtype=np.int64)), -1)
    if op == "Reshape":
        shape = [int(s) for s in model.const(node.inputs[1].name)]
        if not int(attr_value(node, "allowzero", 0)):
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return x.reshape(shape)
    if op == "Expand":
        shape = [int(s) for s in model.const(node.inputs[1].name)]
        return np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(shape))).copy()
    if op == "DequantizeLinear":
        scale = np.asarray(model.const(node.inputs[1].name))
        zp = model.const(node.inputs[2].name) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        xi = x.astype(np.int64)
        if zp is not None:
            zpi = np.asarray(zp).astype(np.int64)
        if scale.size > 1 or (zp is not None and np.asarray(zp).size > 1):
            axis = int(attr_value(node, "axis", 1)) % x.ndim
            shape = [1] * x.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
            if zp is not None:
                zpi = zpi.reshape(shape)
        if zp is not None:
            xi = xi - zpi
        return (xi.astype(np.float32) * scale.astype(np.float32)).astype(scale.dtype)
    raise ValueError(f"{op} is not a chain op")


def evaluate(model, c: Chain) -> np.ndarray:
    t = _plain_tensor(model.value_of(c.source))
    x = np.asarray(t.numpy())
    for node in c.ops:
        x = _apply(model, node, x)
    return x


def set_plain(model, name: str, value: np.ndarray) -> None:
    """Replace the value of an initializer or Constant node, keeping its element type."""
    v = model.value_of(name)
    old = _plain_tensor(v) if v is not None else None
    if old is None:
        raise KeyError(name)
    value = np.asarray(value).astype(old.dtype.numpy(), copy=False)
    value = np.ascontiguousarray(value).reshape(value.shape)  # (ascontiguousarray makes a 0-d array 1-d)
    t = ir.tensor(value, dtype=old.dtype, name=name)
    if v.const_value is not None:
        v.const_value = t
    else:
        node = v.producer()
        node.attributes.clear()
        node.attributes["value"] = ir.AttrTensor("value", t)
    v.shape = ir.Shape(value.shape)
    if v.type is None:  # a Constant node's output: give it its type so its value_info serialises
        v.type = ir.TensorType(old.dtype)
    model.values_changed()  # the one writer of constants: cached values and chains are stale now


# ----------------------------------------------------------------- slicing through chains
def _back_axis(model, node: ir.Node, a: int, in_rank: int) -> int | None:
    """The input axis that output axis ``a`` of a chain op comes from, or None."""
    op = node.op_type
    if op in ("Identity", "Cast", "DequantizeLinear"):
        return a
    if op == "Unsqueeze":
        axes = _operand(model, node, 1, "axes", 13)
        out_rank = in_rank + len(axes)
        axes = {int(x) % out_rank for x in axes}
        if a in axes:
            return None
        return a - sum(1 for x in axes if x < a)
    if op == "Squeeze":
        axes = _operand(model, node, 1, "axes", 13)
        shape = model.const_shape(node.inputs[0].name)
        if axes is None:
            kept = [i for i, d in enumerate(shape) if d != 1]
        else:
            sq = {int(x) % in_rank for x in axes}
            kept = [i for i in range(in_rank) if i not in sq]
        return kept[a] if a < len(kept) else None
    if op == "Transpose":
        perm = attr_value(node, "perm") or list(reversed(range(in_rank)))
        return int(perm[a])
    if op in ("Reshape", "Flatten"):
        # row-major: output axis a is input axis b when the elements before them and the axes
        # themselves have the same sizes (a block axis that the reshape leaves whole)
        ins = model.const_shape(node.inputs[0].name)
        outs = model.const(node.outputs[0].name).shape
        pre = int(np.prod(outs[:a], dtype=np.int64))
        for b in range(len(ins)):
            if int(np.prod(ins[:b], dtype=np.int64)) == pre and ins[b] == outs[a]:
                return b
        return None
    return None


def _exclusive(model, c: Chain, name: str) -> bool:
    """Every value from the source up to (not including) ``name`` is read only by the next op."""
    names = [c.source] + [n.outputs[0].name for n in c.ops[:-1]]
    for k, n in enumerate(names):
        v = model.value_of(n)
        if v is None or v.is_graph_output() or v.is_graph_input():
            return False
        nxt = c.ops[k]
        users = [u for u in v.uses()]
        if len(users) != 1 or users[0].node is not nxt or users[0].idx != 0:
            return False
    return True


def _map_back(model, c: Chain, axes: list[int], reshapes: list | None = None,
              dqs: list | None = None) -> list[int] | None:
    """Source axes of the tensor's ``axes``, or None when some op has no axis map.

    ``reshapes`` collects (Reshape node, output axis, index into ``axes``) for literal target
    entries that must follow the sliced count; a target entry 0 (copy) on a moved axis has no map. ``dqs``
    collects (DequantizeLinear node, the axis in *its input's* frame, that input's rank, index
    into ``axes``): per-channel scales are checked against the DQ's own axis, not the source's.
    """
    ranks = [len(model.const_shape(c.source))] + [model.const(n.outputs[0].name).ndim for n in c.ops]
    out = []
    for i, a in enumerate(axes):
        for k in range(len(c.ops) - 1, -1, -1):
            node = c.ops[k]
            b = _back_axis(model, node, a, ranks[k])
            if b is None:
                return None
            if dqs is not None and node.op_type == "DequantizeLinear":
                dqs.append((node, b, ranks[k], i))
            if node.op_type == "Reshape":
                target = [int(x) for x in model.const(node.inputs[1].name)]
                if a >= len(target) or (target[a] == 0 and b != a):
                    return None
                if reshapes is not None and target[a] > 0:
                    reshapes.append((node, a, i))
            a = b
        out.append(a)
    return out


def source_axes(model, tensor: str, axis: int) -> list[tuple[str, int]]:
    """The constants that hold ``axis`` of a chain's tensor: its source's axis, and per-channel
    DequantizeLinear scales/zero-points along it (what slicing through the chain changes); [] for
    a plain constant or a chain without an axis map."""
    c = chain(model, tensor)
    if c is None or not c.ops:
        return []
    dqs: list = []
    try:
        src = _map_back(model, c, [axis], dqs=dqs)
    except (TypeError, ValueError, AttributeError) as e:  # an intermediate that does not evaluate
        log.info("no axis map through the chain to '%s': %s", tensor, e)
        return []
    if not src:
        return []
    found = [(c.source, src[0])]
    for dq, in_axis, ndim, _ in dqs:
        for k in (1, 2):
            name = _dq_axis_param(model, dq, k, in_axis, ndim)
            if name is not None:
                found.append((name, 0))
    return found


def _dq_axis_param(model, dq: ir.Node, k: int, in_axis: int, ndim: int) -> str | None:
    """Name of DQ input k (scale 1 / zero-point 2) when it is per-channel along ``in_axis`` of the
    DQ's input (rank ``ndim``)."""
    if k >= len(dq.inputs) or dq.inputs[k] is None:
        return None
    val = model.const(dq.inputs[k].name)
    if val is None or val.size <= 1:
        return None
    if int(attr_value(dq, "axis", 1)) % ndim != in_axis:
        return None
    return dq.inputs[k].name


def _own_plain(model, node: ir.Node, k: int) -> str:
    """Input k of ``node`` as a plain constant read by this node alone (cloned when shared)."""
    name = node.inputs[k].name
    v = model.value_of(name)
    if v is not None and _plain_tensor(v) is not None and len(v.uses()) == 1 and not v.is_graph_output():
        return name
    new = model.add_initializer(name, np.asarray(model.const(name)))
    node.replace_input_with(k, model.value_of(new))
    return new


def slice_through(model, name: str, masks: dict[int, np.ndarray]) -> str:
    c = chain(model, name)
    if c is None:
        raise KeyError(name)
    if not c.ops:
        arr = evaluate(model, c)
        for axis, mask in sorted(masks.items()):
            arr = np.compress(mask, arr, axis=axis)
        model.release_pages(name)  # the source's mapped pages: no longer needed in memory
        set_plain(model, name, arr)
        return "plain"
    axes = sorted(masks)
    reshapes: list = []
    dqs: list = []
    src_axes = _map_back(model, c, axes, reshapes, dqs) if _exclusive(model, c, name) else None
    if src_axes is not None:
        # a Reshape's literal target entry on a sliced axis takes the kept count (all computed
        # before anything changes: the chain is evaluated on the original values)
        targets: dict[ir.Node, np.ndarray] = {}
        for node, a, i in reshapes:
            if node not in targets:
                targets[node] = np.array(model.const(node.inputs[1].name), copy=True)
            targets[node][a] = int(masks[axes[i]].sum())
        dq_params = []
        src = np.asarray(_plain_tensor(model.value_of(c.source)).numpy())
        for a, sa in zip(axes, src_axes):
            src = np.compress(masks[a], src, axis=sa)
        for dq, in_axis, ndim, i in dqs:
            for k in (1, 2):
                if _dq_axis_param(model, dq, k, in_axis, ndim) is not None:
                    dq_params.append((dq, k, np.compress(masks[axes[i]], np.asarray(model.const(inp(dq, k))),
                                                         axis=0)))
        for node, target in targets.items():
            set_plain(model, _own_plain(model, node, 1), target)
        for dq, k, value in dq_params:
            set_plain(model, _own_plain(model, dq, k), value)
        set_plain(model, c.source, src)
        return "through"
    arr = model.const(name)
    for axis, mask in sorted(masks.items()):
        arr = np.compress(mask, arr, axis=axis)
    _fold(model, name, arr, "folded")
    if any(n.op_type == "DequantizeLinear" for n in c.ops):
        log.warning("weight '%s' is stored de-quantized (float): its constant chain (%s) cannot be sliced at "
                    "the int8 source", name, " → ".join(n.op_type for n in c.ops))
    return "folded"


def _fold(model, name: str, value: np.ndarray, suffix: str) -> None:
    """Every reader of ``name`` reads a new initializer holding ``value`` (the chain then dies)."""
    new = model.add_initializer(name.replace("/", "_") + "_" + suffix, value)
    ir.convenience.replace_all_uses_with(model.value_of(name), model.value_of(new))
    model.values_changed()


def zero_through(model, name: str, axis: int, drop: np.ndarray) -> None:
    """Make positions ``drop`` of ``axis`` read as zero; slices the source when the chain allows."""
    c = chain(model, name)
    if c is None:
        raise KeyError(name)
    dqs: list = []
    src_axes = _map_back(model, c, [axis], dqs=dqs) if c.ops and _exclusive(model, c, name) else (
        [axis] if not c.ops else None)
    if src_axes is not None:
        sa = src_axes[0]
        src = np.array(_plain_tensor(model.value_of(c.source)).numpy(), copy=True)
        idx = [slice(None)] * src.ndim
        idx[sa] = drop
        zero = np.zeros((), src.dtype)
        dq, in_axis, ndim, _ = dqs[0] if dqs else (None, 0, 0, 0)
        if dq is not None and len(dq.inputs) > 2 and dq.inputs[2] is not None:
            zp = np.asarray(model.const(dq.inputs[2].name))
            if zp.size > 1:
                if _dq_axis_param(model, dq, 2, in_axis, ndim) is not None:
                    shape = [1] * src.ndim
                    shape[sa] = -1
                    zero = np.broadcast_to(zp.reshape(shape), src.shape)[tuple(idx)]
                else:
                    c = None  # zero-point varies along another axis: fold below
            else:
                zero = zp.reshape(()).astype(src.dtype)
        if c is not None:
            src[tuple(idx)] = zero
            set_plain(model, c.source, src)
            return
    arr = np.array(model.const(name), copy=True)
    idx = [slice(None)] * arr.ndim
    idx[axis] = drop
    arr[tuple(idx)] = 0
    _fold(model, name, arr, "zeroed")


# ------------------------------------------------------------- static shape values
def partial(model, name: str, shape_of=None, memo: dict | None = None) -> np.ndarray | None:
    """Known value of ``name``; unknown (dynamic) dims of a Shape are None in an object array.

    ``shape_of`` gives the shapes ``Shape`` ops read: the declared ones by default (values baked
    into a pruned graph), or concrete ones (to help shape inference at a concrete input).
    """
    v = model.const(name)
    if v is not None:
        return v
    if memo is None:
        memo = model._static
    if name not in memo:
        memo[name] = None  # cycles/unknowns stay None
        try:
            r = _static_eval(model, name, shape_of or model.sym_shape, memo)
        except Exception as e:  # malformed arithmetic: unknown, the rules stay conservative
            log.debug("'%s' not evaluated statically (%s: %s); treated as unknown", name, type(e).__name__, e)
            r = None
        if r is not None:
            r = np.asarray(r)
            if r.dtype == object and all(x is not None for x in r.ravel()):
                r = r.astype(np.int64)
        memo[name] = r
    return memo[name]


_ARITH = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Equal": np.equal, "Max": np.maximum,
          "Min": np.minimum, "Mod": np.mod,
          "Div": (lambda x, y: np.floor_divide(x, y) if x.dtype.kind in "iu" else np.divide(x, y))}


def _static_eval(model, name: str, shape_of, memo: dict) -> np.ndarray | None:
    node = model.producer(name)
    if node is None or node.domain != "" or len(node.outputs) != 1 or node.graph is not model.graph:
        return None
    op = node.op_type
    if op == "Shape":
        shape = shape_of(node.inputs[0].name)  # declared: static dims only, never the concrete guess
        if shape is None:
            return None
        start = int(attr_value(node, "start", 0))
        end = attr_value(node, "end")
        dims = list(shape)[start:None if end is None else int(end)]
        if all(isinstance(d, int) for d in dims):
            return np.array(dims, dtype=np.int64)
        out = np.empty(len(dims), dtype=object)
        out[:] = [d if isinstance(d, int) else None for d in dims]
        return out
    names = [x.name if x is not None else "" for x in node.inputs]
    ins = [partial(model, i, shape_of, memo) if i else None for i in names]
    if any(v is None for i, v in zip(names, ins) if i) or any(v is not None and v.size > _MAX_STATIC for v in ins):
        return None
    if op in ("Identity", "Cast"):
        v = ins[0]
        return v.astype(onnx.helper.tensor_dtype_to_np_dtype(int(attr_value(node, "to")))) if op == "Cast" and \
            v.dtype != object else v
    if op == "Gather":
        return np.take(ins[0], ins[1], axis=int(attr_value(node, "axis", 0)))
    if op == "Unsqueeze":
        axes = ins[1] if len(ins) > 1 and ins[1] is not None else attr_value(node, "axes")
        v = ins[0]
        for a in sorted(int(x) % (v.ndim + len(axes)) for x in np.atleast_1d(axes)):
            v = np.expand_dims(v, a)
        return v
    if op == "Squeeze":
        axes = ins[1] if len(ins) > 1 and ins[1] is not None else attr_value(node, "axes")
        return np.squeeze(ins[0], axis=None if axes is None else tuple(int(a) for a in np.atleast_1d(axes)))
    if op == "Concat":
        parts = [np.atleast_1d(v) for v in ins]
        if any(p.dtype == object for p in parts):
            parts = [p.astype(object) for p in parts]
        return np.concatenate(parts, axis=int(attr_value(node, "axis", 0)))
    if op in _ARITH:
        a, b = ins
        if a.dtype == object or b.dtype == object:
            if any(x is None for x in np.concatenate([np.ravel(a), np.ravel(b)])):
                return None  # arithmetic on an unknown dim
            a, b = a.astype(np.int64), b.astype(np.int64)
        return np.asarray(_ARITH[op](a, b))
    if op == "Where":
        if any(v.dtype == object for v in ins):
            return None
        return np.where(*ins)
    if op == "ConstantOfShape":
        if ins[0].dtype == object:
            return None
        t = attr_value(node, "value")
        fill = np.asarray(t).reshape(-1)[0] if t is not None else np.float32(0)
        return np.full(tuple(int(x) for x in ins[0]), fill)
    if op == "Reshape":
        if ins[1].dtype == object:
            return None
        return ins[0].reshape(tuple(int(x) for x in ins[1]))
    if op == "Slice":
        starts, ends = ins[1], ins[2]
        axes = ins[3] if len(ins) > 3 and ins[3] is not None else range(len(starts))
        steps = ins[4] if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
        sl = [slice(None)] * ins[0].ndim
        for s_, e_, a_, st_ in zip(starts, ends, axes, steps):
            sl[int(a_)] = slice(int(s_), int(e_), int(st_))
        return ins[0][tuple(sl)]
    return None
