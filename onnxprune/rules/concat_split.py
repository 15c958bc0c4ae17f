"""Concat, Split and Slice: index offsets on the channel axis.

1. ``Concat`` on the channel axis: the output's labels are the inputs' labels one after the
   other (offsets follow automatically when inputs shrink). An input without channel
   information gets fresh pinned labels. Concat on another axis unifies the inputs' channels.
2. ``Split`` on the channel axis: output k gets its segment of labels; explicit split sizes are
   rewritten to the kept counts; an implicit equal split is written out with explicit sizes
   (``num_outputs`` dropped), so its segments are pruned independently.
3. ``Slice`` on the channel axis (step 1): the output gets ``labels[start:end]``; start/end are
   rewritten to the kept counts before and inside the range (pruning keeps order, so the kept
   channels of a contiguous range stay contiguous).
"""
from __future__ import annotations

import numpy as np

from .base import Moves, norm_axis


class ConcatRule(Moves):
    op_types = ("Concat",)

    def apply(self, ctx) -> None:
        chans = [ctx.chan(k) for k in range(ctx.n_inputs)]
        if all(c is None for c in chans):
            return
        rank = ctx.rank(0) or next(c for c in chans if c is not None).axis + 1
        axis = norm_axis(int(ctx.attr("axis", 1)), ctx.rank(0) or rank)
        tracked = [c for c in chans if c is not None]
        if any(c.axis == axis for c in tracked):
            parts = []
            for k in range(ctx.n_inputs):
                c = ctx.chan_or_pinned(k, axis, "concatenated with a tensor whose channels are not tracked")
                if c is None or c.axis != axis:
                    ctx.barrier(f"input {k} does not carry channels on the concat axis")
                    return
                parts.append(c.labels)
            ctx.set_out(0, axis, np.concatenate(parts))
            return
        first = tracked[0]
        for k, c in enumerate(chans):
            if c is None and _const_rows(ctx, k, first.axis, first.labels):
                continue  # a constant (ViT's class token), sliced with the channels
            if c is None:
                ctx.pin(first.labels, f"concatenated (axis {axis}) with untracked input {k}")
            elif c.axis != first.axis or c.labels.size != first.labels.size:
                ctx.barrier("inputs carry channels on different axes")
                return
            else:
                ctx.unify(first.labels, c.labels)
        ctx.set_out(0, first.axis, first.labels)


def _const_rows(ctx, k: int, axis: int, labels: np.ndarray) -> bool:
    """Input k of a Concat along another axis is a constant with one entry per channel on
    ``axis``, or ``Expand`` of one whose target leaves that axis alone (entry 1, ViT's
    ``cls_token.expand(B, -1, -1)``): declare the constant's axis as a producer parameter."""
    from ..analysis import ParamAxis
    from ..graph import inp

    model = ctx.model
    if not ctx.has_input(k):
        return False
    rank = ctx.rank(k)
    if ctx.is_const(k):
        shape = model.const_shape(ctx.input_name(k))
        if shape is None or rank is None or len(shape) != rank or shape[axis] != labels.size:
            return False
        ctx.param(k, axis, labels, "out")
        return True
    node = model.producer(ctx.input_name(k))
    if node is None or node.op_type != "Expand" or not model.is_const(inp(node, 0)) or rank is None:
        return False
    src = model.const_shape(inp(node, 0))
    local = axis - (rank - len(src)) if src is not None else -1
    entry = _shape_entry(model, inp(node, 1), axis)
    if local < 0 or src[local] != labels.size or entry not in (1, labels.size):
        return False
    marks = len(ctx.an.fixes)
    if entry != 1:  # an explicit width: written after slicing
        from .reshape import target_entry_fix

        if not target_entry_fix(ctx, 1, axis, lambda kept: kept, labels, node=node):
            del ctx.an.fixes[marks:]
            return False
    ctx.an.params.append(ParamAxis(model.resolve(inp(node, 0)), local, labels, node, "out"))
    return True


def _shape_entry(model, name: str, j: int, depth: int = 0):
    """Entry j of a 1-D shape vector computed at run time, when it does not depend on a dynamic
    dim (``Concat`` of pieces, torch's ``Where(Equal(v, -1), 1, v)``); None when unknown."""
    from ..graph import attr_value, inp

    v = model.value(name)
    if v is not None:
        v = np.asarray(v).reshape(-1)
        return int(v[j]) if v.size > j else (int(v[0]) if v.size == 1 else None)
    node = model.producer(name)
    if node is None or depth > 8:
        return None
    op = node.op_type
    if op == "Concat":
        pos = 0
        for k in range(len(node.inputs)):
            s = model.shape(inp(node, k))
            size = s[0] if s is not None and len(s) == 1 and isinstance(s[0], int) else None
            if size is None:
                return None
            if pos <= j < pos + size:
                return _shape_entry(model, inp(node, k), j - pos, depth + 1)
            pos += size
        return None
    if op in ("Reshape", "Identity", "Cast") and (model.shape(name) or (None,))[0] == (model.shape(inp(node, 0)) or (0,))[-1]:
        return _shape_entry(model, inp(node, 0), j, depth + 1)
    if op == "ConstantOfShape":
        value = attr_value(node, "value")
        return int(np.asarray(value).reshape(-1)[0]) if value is not None else 0
    if op == "Where":
        c = _shape_entry(model, inp(node, 0), j, depth + 1)
        return None if c is None else _shape_entry(model, inp(node, 1 if c else 2), j, depth + 1)
    if op == "Equal":
        a, b = (_shape_entry(model, inp(node, k), j, depth + 1) for k in (0, 1))
        return None if a is None or b is None else int(a == b)
    return None


class SplitRule(Moves):
    op_types = ("Split",)

    def apply(self, ctx) -> None:
        x = ctx.chan(0)
        if x is None:
            return
        rank = ctx.rank(0)
        axis = norm_axis(int(ctx.attr("axis", 0)), rank or x.axis + 1)
        if x.axis != axis:
            for k in range(ctx.n_outputs):
                ctx.set_out(k, x.axis, x.labels)
            return
        in_attr = ctx.model.opset < 13
        ok, sizes = ctx.operand(1, "split", 13)
        if not ok:
            return
        c = x.labels.size
        n = ctx.n_outputs
        if sizes is None or len(sizes) == 0:
            if c % n:
                ctx.barrier(f"implicit uneven split of {c} channels into {n}")
                return
            sizes = [c // n] * n  # written out by the fix: the segments may then lose different channels
        bounds = np.concatenate([[0], np.cumsum(np.asarray(sizes, dtype=np.int64))])
        segments = [x.labels[bounds[k]:bounds[k + 1]] for k in range(len(sizes))]

        def fix_split(rw, node=ctx.node, segments=segments, in_attr=in_attr):
            new = np.array([int(rw.keep(s).sum()) for s in segments], dtype=np.int64)
            if in_attr:
                rw.set_attr(node, "split", new.tolist())
                return
            if len(node.inputs) < 2 or node.inputs[1] is None:  # implicit equal split: made explicit
                node.attributes.pop("num_outputs", None)
                if len(node.inputs) < 2:
                    node.resize_inputs(2)
            rw.set_input_const(node, 1, new)

        ctx.fix(fix_split)
        for k, seg in enumerate(segments):
            ctx.nonempty(seg)
            ctx.set_out(k, x.axis, seg)


class SliceRule(Moves):
    op_types = ("Slice",)

    def apply(self, ctx) -> None:
        if (xr := ctx.chan_and_rank()) is None:
            return
        x, rank = xr
        in_attr = ctx.model.opset < 10
        if in_attr:
            starts, ends = ctx.attr("starts"), ctx.attr("ends")
            axes, steps = ctx.attr("axes"), None
        else:
            axes = ctx.value(3) if ctx.has_input(3) else None
            if axes is not None and len(axes) and x.axis not in [norm_axis(int(a), rank) for a in axes]:
                # along other axes only: bounds read at run time (Swin's crop x[:, :H, :W]) do not matter
                ctx.set_out(0, x.axis, x.labels)
                return
            for k in range(1, 5):
                if ctx.has_input(k) and ctx.value(k) is None:
                    ctx.barrier(f"slice input {k} is not a constant")
                    return
            starts, ends = ctx.value(1), ctx.value(2)
            axes = ctx.value(3) if ctx.has_input(3) else None
            steps = ctx.value(4) if ctx.has_input(4) else None
        starts = np.asarray(starts, dtype=np.int64)
        axes = list(range(len(starts))) if axes is None or len(axes) == 0 else [norm_axis(int(a), rank) for a in axes]
        if x.axis not in axes:
            ctx.set_out(0, x.axis, x.labels)
            return
        i = axes.index(x.axis)
        if steps is not None and int(steps[i]) != 1:
            ctx.barrier("slices the channel axis with a step other than 1")
            return
        c = x.labels.size
        s, e = int(starts[i]), int(np.asarray(ends, dtype=np.int64)[i])
        s = min(max(s + c if s < 0 else s, 0), c)
        e = min(max(e + c if e < 0 else e, 0), c)
        out = x.labels[s:max(s, e)]

        def fix_slice(rw, node=ctx.node, i=i, s=s, e=e, labels=x.labels, in_attr=in_attr):
            keep = rw.keep(labels)
            new_s = int(keep[:s].sum())
            new_e = new_s + int(keep[s:e].sum())
            if in_attr:
                st, en = list(rw.model.attr(node, "starts")), list(rw.model.attr(node, "ends"))
                st[i], en[i] = new_s, new_e
                rw.set_attr(node, "starts", st)
                rw.set_attr(node, "ends", en)
            else:
                for k, v in ((1, new_s), (2, new_e)):
                    arr = rw.const_input(node, k).copy()
                    arr[i] = v
                    rw.set_input_const(node, k, arr)

        ctx.fix(fix_slice)
        ctx.nonempty(out)
        ctx.set_out(0, x.axis, out)


class GatherRule(Moves):
    """``Gather`` along a non-channel axis with constant indices (``h_n[-1]``, a select of q/k/v):
    the channel axis moves by the indices' rank minus one when the gathered axis is before it.
    Gathering along the channel axis is a barrier; a Gather whose indices carry channels too."""

    op_types = ("Gather",)

    def apply(self, ctx) -> None:
        if ctx.chan(1) is not None:
            ctx.barrier("the indices carry channels")
            return
        if ctx.chan(0) is None and ctx.an.hidden:
            self._embedding(ctx)
            return
        if (xr := ctx.chan_and_rank()) is None:
            return
        x, rank = xr
        axis = norm_axis(int(ctx.attr("axis", 0)), rank)
        if axis == x.axis:
            ctx.barrier("gathers along the channel axis")
            return
        idx = ctx.value(1)
        if idx is None:
            ctx.barrier("indices are not a constant")
            return
        ctx.set_out(0, x.axis + (np.ndim(idx) - 1 if axis < x.axis else 0), x.labels)


    @staticmethod
    def _embedding(ctx) -> None:
        """Hidden-size mode: rows of a constant [V, C] table picked by run-time ids (token, position,
        token-type embeddings) produce C channels on the output's last axis."""
        if not ctx.is_const(0) or ctx.is_const(1) or int(ctx.attr("axis", 0)) != 0:
            return
        shape = ctx.model.const_shape(ctx.input_name(0))
        rank = ctx.rank(1)
        if shape is None or len(shape) != 2 or rank is None:
            return
        labels = ctx.new_space(int(shape[1]), f"{ctx.name} (embedding)")
        ctx.param(0, 1, labels, "out")
        ctx.nonempty(labels)
        ctx.set_out(0, rank, labels)


RULES = (ConcatRule(), SplitRule(), SliceRule(), GatherRule())
