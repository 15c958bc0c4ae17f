"""Layout ops: Transpose, Squeeze/Unsqueeze, Flatten, Reshape, and Shape.

1. ``Transpose`` moves the channel axis to ``perm.index(axis)``.
2. ``Squeeze``/``Unsqueeze`` shift it (squeezing the channel axis itself is a barrier).
3. ``Flatten``/``Reshape`` that merge the channel axis with the axes after it (C·H·W into a
   Gemm/MatMul) give the merged axis the labels ``repeat(labels, H·W)``, tiled when static axes
   before C are merged too (a bidirectional RNN's ``[seq, batch, dirs, H] → [seq, batch,
   dirs·H]``). Dynamic dims are never merged into the channel block. A Reshape's literal target size on that axis is rewritten to the kept count
   times H·W; 0 (copy) and -1 (infer) entries need no change.
4. Reshapes that *split* the channel axis: (heads, head_dim) makes each head one atom, carried
   by the head axis; (stack, heads, head_dim) of a fused q/k/v projection makes head i of q, k and
   v one atom; (g, C/g) followed by a Transpose swapping the two axes (channel shuffle) or by a
   Gather/Split along g (a stacked q/k/v selected one by one) makes position i of every group one
   atom, carried by the C/g axis, so the pruned tensor still has g equal groups. TorchScript's
   ``nn.MultiheadAttention`` merges the dynamic batch into the heads (``view(S, B·H, D)``, the
   entry ``Mul(B, H)``): followed at the analysed batch 1 when only Transposes move the merged axis
   into a Reshape that splits it back into (B, H); both H constants are rewritten. Other static
   entries of a run-time target become constants (``E // H`` read from the hidden size).
5. Target entries read at run time (TorchScript's ``Shape → Gather/Slice → Unsqueeze → Concat``,
   through ``Where(s == -1, 1, s)`` and ``Reshape(s, [-1])`` of ``expand()``): an entry that reads
   the channel count of a tensor with the same channels follows the pruning by itself (the
   labels are unified); a static count (also arithmetic on it) is replaced by the pruned constant.
6. ``Shape`` reads channel counts: it is allowed when only dims other than the channel axis are
   read (``start``/``end``, or every consumer a ``Gather`` of constant indices), or when the read
   only feeds Reshape/Expand targets (rules 3–5) or the bounds of a Slice of the same tensor along
   its channel axis (``x.chunk(2, 1)``: the Slice rule writes them as constants).
"""
from __future__ import annotations

import logging

import numpy as np

from ..graph import inp
from .base import Moves, block_repeat, norm_axis

log = logging.getLogger("onnxprune.rules.reshape")


def _prod(dims) -> int:
    return int(np.prod(dims, dtype=np.int64)) if len(dims) else 1


class TransposeRule(Moves):
    op_types = ("Transpose",)

    def apply(self, ctx) -> None:
        x = ctx.chan(0)
        if x is None:
            return
        perm = ctx.attr("perm")
        if perm is None:
            rank = ctx.rank(0)
            if rank is None:
                ctx.barrier("rank unknown")
                return
            perm = list(reversed(range(rank)))
        ctx.set_out(0, list(perm).index(x.axis), x.labels)


class SqueezeRule(Moves):
    op_types = ("Squeeze", "Unsqueeze")

    def apply(self, ctx) -> None:
        if (xr := ctx.chan_and_rank()) is None:
            return
        x, rank = xr
        ok, axes = ctx.operand(1, "axes", 13)
        if not ok:
            return
        if axes is None:
            ctx.barrier("axes not given")
            return
        if ctx.op == "Squeeze":
            axes = {norm_axis(int(a), rank) for a in np.atleast_1d(axes)}
            if x.axis in axes:
                ctx.barrier("squeezes the channel axis")
                return
            ctx.set_out(0, x.axis - sum(1 for a in axes if a < x.axis), x.labels)
        else:
            out_rank = rank + len(np.atleast_1d(axes))
            axes = sorted(norm_axis(int(a), out_rank) for a in np.atleast_1d(axes))
            pos = x.axis
            for a in axes:
                if a <= pos:
                    pos += 1
            ctx.set_out(0, pos, x.labels)


class FlattenRule(Moves):
    op_types = ("Flatten",)

    def apply(self, ctx) -> None:
        x = ctx.chan(0)
        if x is None:
            return
        shape = ctx.in_shape(0)
        if shape is None:
            ctx.barrier("input shape unknown")
            return
        a = norm_axis(int(ctx.attr("axis", 1)), len(shape))
        if x.axis < a:
            ctx.barrier("channels would merge with the batch axis")
            return
        tail = shape[x.axis + 1:]
        head = shape[a:x.axis]
        dynamic = any(ctx.model.is_dynamic_dim(ctx.input_name(0), k) for k in (*range(a, x.axis),
                                                                                  *range(x.axis + 1, len(shape))))
        if dynamic or not all(isinstance(d, int) for d in (*tail, *head)):
            ctx.barrier("spatial dims after the channel axis are not static")
            return
        ctx.set_out(0, 1, block_repeat(x.labels, _prod(tail), _prod(head)))


class ReshapeRule(Moves):
    op_types = ("Reshape",)

    def apply(self, ctx) -> None:
        self._apply(ctx)
        out = ctx.an.chan.get(ctx.output_name(0))
        if out is not None and ctx.model.const(ctx.input_name(1)) is None:
            _freeze_static_entries(ctx, out.axis, out.labels)

    def _apply(self, ctx) -> None:
        x = ctx.chan(0)
        if x is None:
            return
        ins, outs = ctx.in_shape(0), ctx.out_shape(0)
        if ins is None or outs is None:
            ctx.barrier("input or output shape unknown")
            return
        ca, c = x.axis, x.labels.size
        entries = _target_entries(ctx)
        if any(not isinstance(d, int) for d in outs[ca:]) and entries is not None:
            outs = _resolve_target(ins, entries, int(ctx.attr("allowzero", 0))) or outs
        tail = ins[ca + 1:]
        if not all(isinstance(d, int) for d in tail):
            ctx.barrier("dims after the channel axis are not static")
            return
        s = _prod(tail)
        j, outer = _merged_axis(outs, c, s), 1
        first = ca
        if j is None:  # axes before the channel axis merged in too ([.., dirs, H] -> [.., dirs·H])
            for k in range(ca - 1, -1, -1):
                if not all(isinstance(d, int) for d in ins[k:ca]):
                    break
                outer = _prod(ins[k:ca])
                j = _merged_axis(outs, outer * c, s)
                if j is not None and _prod(outs[:j]) == _prod(ins[:k]):
                    first = k
                    break
                j, outer = None, 1
        split = _split_axis(outs, c, s) if j is None else None
        stacked = _stacked_axis(outs, c, s) if j is None and split is None else None
        if stacked is not None:  # fused q/k/v: [.., 3·C] -> [.., 3, heads, head_dim]
            if not _dynamic_dims_stay_outside(ctx, ca, stacked + 3):
                ctx.barrier("a dynamic dim would be merged into the channel axis (the index map "
                            "would hold at the analysed input size only)")
                return
            _split_stacked_heads(ctx, x.labels, stacked, [int(d) for d in outs[stacked:stacked + 3]], entries)
            return
        if j is None and split is None:
            ctx.barrier(f"reshape {list(ins)} -> {list(outs)} splits or reorders the channel axis")
            return
        if not _dynamic_dims_stay_outside(ctx, ca, split + 2 if split is not None else j + 1) or any(
                ctx.model.is_dynamic_dim(ctx.input_name(0), k) for k in range(first, ca)):
            ctx.barrier("a dynamic dim would be merged into the channel axis (the index map "
                        "would hold at the analysed input size only)")
            return
        if split is not None:
            if _is_shuffle(ctx, split) or _selects_along(ctx.model, ctx.output_name(0), split):
                _split_groups(ctx, x.labels, split, int(outs[split]), int(outs[split + 1]), entries)
            else:
                _split_heads(ctx, x.labels, split, int(outs[split]), int(outs[split + 1]), entries)
            return
        t = _prod(outs[j + 1:])
        inner = s // t
        allowzero = int(ctx.attr("allowzero", 0))
        entry = entries[j] if entries is not None and j < len(entries) else None
        if inner == 1 and outer == 1 and _reads_channels(ctx, entry, x.labels):
            pass  # read at run time from a tensor with these channels: follows the pruning
        elif _fixable(entry):
            if not target_entry_fix(ctx, 1, j, lambda kept, inner=inner, outer=outer: outer * kept * inner, x.labels):
                ctx.barrier("the channel entry of the shape cannot be rewritten")
                return
        elif entry == 0:
            if allowzero or j != ca or inner != 1 or outer != 1:
                ctx.barrier("shape entry 0 on the channel axis does not copy the channel count")
                return
        elif entry != -1:
            ctx.barrier("the shape's channel entry is computed at run time")
            return
        ctx.set_out(0, j, block_repeat(x.labels, inner, outer))


def _freeze_static_entries(ctx, axis: int, labels) -> None:
    """Entries of a run-time target other than the channel axis keep their size after pruning, but
    one computed from a read of a channel count (``E // H`` in nn.MultiheadAttention's views, read
    from the hidden stream) would change with it: each static one becomes the constant it is.
    Entries that cannot be located are left as they are (logged)."""
    entries = _target_entries(ctx)
    if entries is None:
        return
    for j, e in enumerate(entries):
        if isinstance(e, tuple):  # a read of a static dim (of a channel axis, maybe)
            e = e[1]
        if j == axis or not (isinstance(e, int) and e > 0):
            continue
        if not target_entry_fix(ctx, 1, j, lambda kept, e=e: e, labels):
            log.debug("%s: shape entry %d (%d) left as computed", ctx.name, j, e)


def _dynamic_dims_stay_outside(ctx, ca: int, after: int) -> bool:
    """Dims after the channel axis that are dynamic (declared) must reappear after output axis
    ``after - 1`` (the channel block): then the block's size does not depend on them."""
    m, x, y = ctx.model, ctx.input_name(0), ctx.output_name(0)
    ins = ctx.in_shape(0) or ()
    dyn = [k for k in range(ca + 1, len(ins)) if m.is_dynamic_dim(x, k)]
    if not dyn:
        return True
    outs = ctx.out_shape(0) or ()
    # each dynamic input dim must be matched by a dynamic output dim of the same size after the block
    rest = [k for k in range(after, len(outs)) if m.is_dynamic_dim(y, k)]
    for k in dyn:
        match = next((r for r in rest if outs[r] == ins[k]), None)
        if match is None:
            return False
        rest.remove(match)
    return True


def _split_axis(outs, c: int, s: int) -> int | None:
    """The output axis h where the channel axis splits into (heads, head_dim): outs[h]·outs[h+1] = C."""
    for h in range(len(outs) - 1):
        rest = outs[h:]
        if not all(isinstance(d, int) for d in rest):
            continue
        if rest[0] > 1 and rest[1] > 1 and rest[0] * rest[1] == c and _prod(rest[2:]) == s:
            return h
    return None


def _split_heads(ctx, labels, h: int, heads: int, head_dim: int, entries) -> None:
    """Channels → (heads, head_dim): a head's channels are one atom; the head axis carries them.

    Removing a channel then always removes its whole head; ``head_dim`` never changes. The
    rewrite sets the head count in the target shape.
    """
    rows = labels.reshape(heads, head_dim)
    for k in range(1, head_dim):
        ctx.unify(rows[:, 0], rows[:, k])
    ctx.an.head_labels.append(rows[:, 0].copy())
    entry = entries[h] if entries is not None and h < len(entries) else None
    if _reads_channels(ctx, entry, rows[:, 0]):
        pass
    elif _fixable(entry):
        if not target_entry_fix(ctx, 1, h, lambda kept: kept, rows[:, 0]):
            ctx.barrier("the head count in the shape cannot be rewritten")
            return
    elif entry is None and (why := _batch_merged_heads(ctx, h, heads, rows[:, 0])) is not None:
        if why:
            ctx.barrier(why)
            return
    elif entry != -1:
        ctx.barrier("the head count of the shape is computed at run time")
        return
    if not _const_head_size(ctx, entries, h + 1, head_dim, rows[:, 0]):
        return
    ctx.set_out(0, h, rows[:, 0].copy())


def _const_head_size(ctx, entries, j: int, head_dim: int, labels) -> bool:
    """The head size entry j of a run-time target becomes a constant: TorchScript computes it as
    ``E // H`` from a read of the hidden size (nn.MultiheadAttention), which pruning the hidden
    stream would change. False (after a barrier) when it cannot be located."""
    if entries is None or j >= len(entries) or entries[j] == -1 or ctx.model.const(ctx.input_name(1)) is not None:
        return True
    if _fixable(entries[j]) and target_entry_fix(ctx, 1, j, lambda kept, d=head_dim: d, labels):
        return True
    ctx.barrier("the head size in the shape is computed at run time")
    return False


_MERGE_PASS = ("Transpose", "Identity")


def _batch_merged_heads(ctx, h: int, heads: int, first) -> str | None:
    """``nn.MultiheadAttention`` as TorchScript exports it: ``q.view(S, B·H, D)`` merges the dynamic
    batch B (input axis h, just before the channel axis) into the head axis, with the entry computed
    as ``Mul(B read at run time, H)``, and a later ``view(B, H, S, D)`` splits it back.

    At the analysed input B is 1, so the merged axis holds the H heads; for any B it holds B blocks of
    H heads (b-major), and removing heads is the same in every block as long as nothing but
    Transposes moves the merged axis before a Reshape splits it back into (B, H) (checked here; that
    Reshape's rule rewrites its H entry). The product's constant H is rewritten to the kept count.
    Returns None when the entry is not such a product, "" when the pattern holds (fix declared),
    else the reason for a barrier."""
    model, x = ctx.model, ctx.input_name(0)
    c = ctx.chan(0)
    ins, outs = ctx.in_shape(0), ctx.out_shape(0)
    mul = _batch_times_heads(ctx, h)
    if mul is None:
        return None
    node, k_const, sym, _ = mul
    if int(np.asarray(model.value(inp(node, k_const))).reshape(-1)[0]) != heads:
        return None
    tag = "the batch merges into the head axis (nn.MultiheadAttention's view(S, B·H, D))"
    sym_in = model.sym_shape(x) or ()
    if not (h == c.axis - 1 and len(ins) == len(outs) and model.is_dynamic_dim(x, h) and ins[h] == 1
            and _is_batch_read(model, mul[3], sym_in[h] if h < len(sym_in) else None)
            and _prod(ins[:h]) == _prod(outs[:h])):
        return f"{tag}, but not from the axis just before the channels"
    bad = _unmerge_problem(model, ctx.output_name(0), h, sym, heads, 0)
    if bad:
        return f"{tag}, and {bad} before it is split back into (B, H)"
    # every Reshape whose target reads the same product must prune the same heads
    for user in _product_readers(model, node.outputs[0].name):
        if user is None:
            return f"{tag}, and the product B·H is also read by something other than a Reshape's shape"
        if user is ctx.node:
            continue
        other = ctx.an.chan.get(inp(user, 0))
        if other is None or other.labels.size != c.labels.size:
            return f"{tag}, and the product B·H also shapes '{model.node_name(user)}', whose channels differ"
        ctx.unify(first, other.labels.reshape(heads, -1)[:, 0])

    def fix(rw, node=node, k=k_const, labels=first):
        old = np.asarray(rw.const_input(node, k))
        rw.set_input_const(node, k, np.full(old.shape, int(rw.keep(labels).sum()), dtype=old.dtype))

    ctx.fix(fix)
    return ""


def _batch_times_heads(ctx, h: int):
    """Entry h of the Reshape target as ``Mul(B, H)``: (the Mul node, index of its constant input, B's
    declared symbol or None, B's dim read) when B is a run-time read of a dynamic dim, else None."""
    model = ctx.model
    node = _target_concat(model, ctx.input_name(1))
    found = _concat_entry(model, node, h) if node is not None else None
    if found is None or found[2] != 1:
        return None
    name = inp(node, found[0])
    prod = model.producer(name)
    while prod is not None and prod.op_type in ("Unsqueeze", "Cast", "Identity", "Squeeze"):
        prod = model.producer(inp(prod, 0))
    if prod is None or prod.op_type != "Mul":
        return None
    for k in (0, 1):
        v = model.const(inp(prod, k))
        if v is None or v.size != 1:
            continue
        reads = dim_reads(model, inp(prod, 1 - k))
        if reads and len(reads) == 1 and isinstance(reads[0], tuple) and _is_batch_read(model, reads[0], None):
            return prod, k, reads[0][1], reads[0]
    return None


def _is_batch_read(model, read, sym) -> bool:
    """Whether a run-time dim read ("dim", declared, t, axis) reads the merged batch: the same symbol
    as ``sym`` when both are named, else a dynamic dim that is 1 at the analysed input (the element
    count of the Reshape then makes it the batch of its input)."""
    if not isinstance(read, tuple):
        return False
    if isinstance(read[1], str) and isinstance(sym, str):
        return read[1] == sym
    shape = model.shape(read[2]) or ()
    return model.is_dynamic_dim(read[2], read[3]) and read[3] < len(shape) and shape[read[3]] == 1


def _product_readers(model, name: str, depth: int = 0):
    """The Reshapes whose shape operand ``name`` (B·H) reaches through Unsqueeze/Cast/Concat; None in
    the list for any other reader."""
    found = []
    for user, k in model.uses(name):
        if user.op_type == "Reshape" and k == 1:
            found.append(user)
        elif user.op_type in ("Unsqueeze", "Squeeze", "Cast", "Identity", "Concat") and depth < 8 and \
                not model.is_graph_output(user.outputs[0].name):
            found.extend(_product_readers(model, user.outputs[0].name, depth + 1))
        else:
            found.append(None)
    return found if not model.is_graph_output(name) else [None]


def _unmerge_problem(model, name: str, axis: int, sym: str, heads: int, depth: int) -> str:
    """Why the merged (B·H) axis of ``name`` is not only moved by Transposes into Reshapes that split
    it back into (B, H) with B read at run time and H a constant; "" when it is."""
    if model.is_graph_output(name):
        return f"'{name}' is a graph output"
    if depth > 8:
        return "the path is too long"
    for node, k in model.uses(name):
        what = f"'{model.node_name(node)}' ({node.op_type}) reads it"
        if k != 0:
            return what
        if node.op_type in _MERGE_PASS:
            perm = model.attr(node, "perm") if node.op_type == "Transpose" else None
            if node.op_type == "Transpose" and perm is None:
                return what
            bad = _unmerge_problem(model, node.outputs[0].name, list(perm).index(axis) if perm is not None else axis,
                                   sym, heads, depth + 1)
            if bad:
                return bad
            continue
        if node.op_type == "Shape":  # reading the other dims (the key length of k) is harmless
            rank = len(model.shape(name) or ())
            start = norm_axis(int(model.attr(node, "start", 0)), rank)
            end = model.attr(node, "end")
            end = rank if end is None else norm_axis(int(end), rank)
            if start <= axis < end and not all(j == 0 and _reads_other_dims(model, u, axis - start, end - start)
                                               for u, j in model.uses(node.outputs[0].name)):
                return what
            continue
        if node.op_type != "Reshape":
            return what
        ins, outs = model.shape(name), model.shape(node.outputs[0].name)
        entries = dim_reads(model, inp(node, 1))
        if ins is None or outs is None or entries is None or len(entries) != len(outs):
            return what
        ok = False
        for p in range(len(outs) - 1):
            e_b, e_h = entries[p], entries[p + 1]
            if (_is_batch_read(model, e_b, sym) and e_h == heads and outs[p] == 1 and outs[p + 1] == heads
                    and _prod(ins[:axis]) == _prod(outs[:p]) and _prod(ins[axis + 1:]) == _prod(outs[p + 2:])):
                ok = True
                break
        if not ok:
            return what
    return ""


def _stacked_axis(outs, c: int, s: int) -> int | None:
    """The output axis h where the channel axis splits into (stack, heads, head_dim), all > 1."""
    for h in range(len(outs) - 2):
        rest = outs[h:]
        if not all(isinstance(d, int) for d in rest):
            continue
        if min(rest[:3]) > 1 and _prod(rest[:3]) == c and _prod(rest[3:]) == s:
            return h
    return None


def _split_stacked_heads(ctx, labels, h: int, dims: list[int], entries) -> None:
    """Channels → (stack, heads, head_dim), a fused q/k/v projection: head i of every stacked
    tensor (q, k and v) is one atom, carried by the heads axis h+1; the stack axis keeps its size
    (a later ``Gather``/``Split`` along it selects q, k and v). The rewrite sets the head count."""
    stack, heads, head_dim = dims
    cube = labels.reshape(stack, heads, head_dim)
    first = cube[0, :, 0]
    for k in range(stack):
        for d in range(head_dim):
            if k or d:
                ctx.unify(first, cube[k, :, d])
    ctx.an.head_labels.append(first.copy())
    entry = entries[h + 1] if entries is not None and h + 1 < len(entries) else None
    if entries is not None and 0 in (entries[h:h + 1] + entries[h + 2:h + 3]):
        ctx.barrier("shape entry 0 copies an input dim into the stacked heads")
        return
    if _fixable(entry):
        if not target_entry_fix(ctx, 1, h + 1, lambda kept: kept, first):
            ctx.barrier("the head count in the shape cannot be rewritten")
            return
    elif entry != -1:
        ctx.barrier("the head count of the shape is computed at run time")
        return
    if not _const_head_size(ctx, entries, h + 2, head_dim, first):
        return
    ctx.set_out(0, h + 1, first.copy())


def _is_shuffle(ctx, h: int) -> bool:
    """Whether the split (g, C/g) at output axes h, h+1 is a channel shuffle: every reader is a
    Transpose swapping exactly those two axes (``Reshape → Transpose → Reshape``, ShuffleNet)."""
    model, y = ctx.model, ctx.output_name(0)
    uses = model.uses(y)
    if not uses or model.is_graph_output(y):
        return False
    for node, k in uses:
        perm = model.attr(node, "perm") if node.op_type == "Transpose" else None
        if perm is None or k != 0:
            return False
        perm = list(perm)
        want = list(range(len(perm)))
        want[h], want[h + 1] = h + 1, h
        if perm != want:
            return False
    return True


def _selects_along(model, name: str, axis: int, depth: int = 0) -> bool:
    """Whether every reader of ``name`` ends, through Unsqueeze/Squeeze/Transpose moving ``axis``,
    in a ``Gather`` of constant indices or a ``Split`` along it: a stacked q/k/v tensor
    (``unflatten(-1, (3, E))`` then ``[0]``, ``[1]``, ``[2]``) whose stack axis is not a channel axis."""
    uses = model.uses(name)
    if not uses or model.is_graph_output(name) or depth > 8:
        return False
    rank = len(model.shape(name) or ())
    for node, k in uses:
        op = node.op_type
        if k != 0:
            return False
        if op == "Gather":
            if norm_axis(int(model.attr(node, "axis", 0)), rank) != axis or model.const(inp(node, 1)) is None:
                return False
            continue
        if op == "Split":
            if norm_axis(int(model.attr(node, "axis", 0)), rank) != axis:
                return False
            continue
        if op == "Transpose":
            perm = model.attr(node, "perm")
            if perm is None:
                return False
            nxt = list(perm).index(axis)
        elif op in ("Unsqueeze", "Squeeze"):
            axes = model.const(inp(node, 1)) if inp(node, 1) else model.attr(node, "axes")
            if axes is None:
                return False
            out_rank = rank + (len(np.atleast_1d(axes)) if op == "Unsqueeze" else -len(np.atleast_1d(axes)))
            axes = sorted(norm_axis(int(a), out_rank if op == "Unsqueeze" else rank) for a in np.atleast_1d(axes))
            if op == "Squeeze":
                if axis in axes:
                    return False
                nxt = axis - sum(1 for a in axes if a < axis)
            else:
                nxt = axis
                for a in axes:
                    if a <= nxt:
                        nxt += 1
        elif op in ("Identity", "Contiguous"):
            nxt = axis
        else:
            return False
        if not _selects_along(model, node.outputs[0].name, nxt, depth + 1):
            return False
    return True


def _split_groups(ctx, labels, h: int, groups: int, per_group: int, entries) -> None:
    """Channels → (groups, C/groups) of a channel shuffle: channel ``j·C/g + i`` (group j, position i)
    is kept or removed with the same position i of every other group, so the pruned tensor is still
    g equal groups. The position axis h+1 carries the channels; the rewrite sets its size."""
    rows = labels.reshape(groups, per_group)
    for k in range(1, groups):
        ctx.unify(rows[0], rows[k])
    head = entries[h] if entries is not None and h < len(entries) else None
    entry = entries[h + 1] if entries is not None and h + 1 < len(entries) else None
    if not (head == -1 or (isinstance(head, int) and head == groups) or (
            isinstance(head, tuple) and head[1] == groups)):
        ctx.barrier("the group count of the channel shuffle is not a constant")
        return
    if _fixable(entry):
        if not target_entry_fix(ctx, 1, h + 1, lambda kept: kept, rows[0]):
            ctx.barrier("the channels per group in the shape cannot be rewritten")
            return
    elif entry != -1 or head == -1:
        ctx.barrier("the channels per group of the shuffle are computed at run time")
        return
    ctx.set_out(0, h + 1, rows[0].copy())


def _fixable(entry) -> bool:
    """A literal size, or a size read at run time from a static dim (then made a constant)."""
    return (isinstance(entry, int) and entry > 0) or (isinstance(entry, tuple) and isinstance(entry[1], int))


def target_entry_fix(ctx, k: int, j: int, value, labels, node=None) -> bool:
    """Declare a fix setting entry j of shape input k (of ``node``, default the rule's) to
    ``value(kept count of labels)``.

    The target may be a constant, or a ``Concat`` whose piece holding entry j is a constant or a
    one-element ``Unsqueeze(Gather(Shape(t), i))`` read of a static dim (replaced by a constant:
    the size it reads no longer matches the pruned tensor). Returns False when entry j cannot be
    located.
    """
    model = ctx.model
    owner = ctx.node if node is None else node
    name = inp(owner, k)
    if model.value(name) is not None:
        def fix(rw, node=owner, k=k, j=j, labels=labels):
            new = rw.const_input(node, k).copy()
            new[j] = value(int(rw.keep(labels).sum()))
            rw.set_input_const(node, k, new)

        ctx.fix(fix)
        return True
    node = _target_concat(model, name)
    found = _concat_entry(model, node, j) if node is not None else None
    if found is None:
        return False
    piece, off, size = found
    name_k = inp(node, piece)
    v = model.value(name_k)
    if v is None and not (size == 1 and _fixable(_shape_read(model, name_k, chan_shape_of(ctx)))):
        return False

    def fix(rw, node=node, piece=piece, off=off, labels=labels, is_const=v is not None):
        new = np.atleast_1d(rw.const_input(node, piece)).copy() if is_const else np.zeros(1, np.int64)
        new[off] = value(int(rw.keep(labels).sum()))
        rw.set_input_const(node, piece, new)

    ctx.fix(fix)
    return True


def _concat_entry(model, concat, j: int) -> tuple[int, int, int] | None:
    """Which input of a shape-building ``Concat`` holds entry ``j`` of its 1-D output: (input index,
    offset in it, its length); None when a length before it is unknown."""
    pos = 0
    for piece in range(len(concat.inputs)):
        name = inp(concat, piece)
        v, shape = model.value(name), model.shape(name)
        size = int(np.atleast_1d(v).size) if v is not None else (
            shape[0] if shape and len(shape) == 1 else (1 if shape == () else None))
        if not isinstance(size, int):
            return None
        if pos <= j < pos + size:
            return piece, j - pos, size
        pos += size
    return None


def _target_concat(model, name: str):
    """The ``Concat`` that builds a run-time shape vector ``name``, through shape wrappers
    (TorchScript's expand(): ``Where(s == -1, 1, s)``); None when it is not built by one."""
    node = model.producer(name)
    while node is not None and _is_shape_wrapper(model, node):
        node = model.producer(inp(node, 2 if node.op_type == "Where" else 0))
    return node if node is not None and node.op_type == "Concat" else None


def _is_shape_wrapper(model, node) -> bool:
    """Ops that pass a 1-D shape vector on element by element: ``Reshape(s, [-1])``, and
    ``Where(Equal(s, negative), _, s)`` (a size read from a shape is never negative)."""
    if node.op_type == "Reshape":
        t = model.const(inp(node, 1))
        return t is not None and t.size == 1 and int(t.reshape(-1)[0]) == -1 and len(model.shape(inp(node, 0)) or ()) == 1
    if node.op_type != "Where":
        return False
    cond = model.producer(inp(node, 0))
    if cond is None or cond.op_type != "Equal" or inp(cond, 0) != inp(node, 2):
        return False
    neg = model.value(inp(cond, 1))
    return neg is not None and neg.size > 0 and bool(np.all(neg < 0))


def _merged_axis(outs, c: int, s: int) -> int | None:
    """The output axis holding C·(S/T) where T is the product of the static dims after it.

    The input's channel axis (C channels, S elements after it) maps to output axis j when the
    output dims from j on hold the same elements (prod(outs[j:]) == C·S, so the dims before
    match too) and channel c covers a whole block of axis j: outs[j] == C·S/T, T | S.
    """
    for j in range(len(outs)):
        rest = outs[j:]
        if not all(isinstance(d, int) for d in rest):
            continue
        t = _prod(rest[1:])
        if _prod(rest) == c * s and t and s % t == 0 and rest[0] == c * (s // t):
            return j
    return None


def _target_entries(ctx) -> list | None:
    """The Reshape target as a list: ints, dims read from a Shape (int or symbol), or None.

    Handles a constant target and one built at run time by ``Concat`` of constants and
    ``Unsqueeze(Gather(Shape(t), i))`` pieces (torch's ``x.view(x.size(0), -1)``).
    """
    model = ctx.model
    name = ctx.input_name(1)
    v = model.value(name)
    if v is not None:
        return [int(e) for e in np.atleast_1d(v)]
    return dim_reads(model, name, shape_of=chan_shape_of(ctx))


def _shape_read(model, name: str, shape_of=None):
    """A one-element read of a dim (``Unsqueeze(Gather(Shape(t), i))`` & co.) -> ("dim", t's declared
    dim i, t, i), or its static value; anything else -> None."""
    reads = dim_reads(model, name, shape_of=shape_of)
    return reads[0] if reads is not None and len(reads) == 1 else None


def chan_shape_of(ctx):
    """Declared shapes where a tracked channel axis counts as static (it is: weights define it),
    also when shape inference lost it (a ``-1`` next to a dynamic batch)."""
    model, chan = ctx.model, ctx.an.chan

    def shape_of(name):
        s = model.sym_shape(name)
        c = chan.get(name)
        if s is not None and c is not None and c.axis < len(s) and not isinstance(s[c.axis], int):
            s = (*s[:c.axis], int(c.labels.size), *s[c.axis + 1:])
        return s

    return shape_of


def dim_reads(model, name: str, depth: int = 0, shape_of=None) -> list | None:
    """Where each element of a 1-D shape vector comes from: ("dim", declared dim, t, axis) for a
    run-time read of tensor t's dim ``axis`` (``Shape`` with start/end, then ``Slice``/``Gather`` of
    constant positions, ``Concat``, ``Unsqueeze``/``Squeeze``, ``Cast``/``Identity``), an int for a
    value known statically (a constant, arithmetic on static dims), None for any other element.
    None when the vector's length is not known."""
    v = model.const(name)
    if v is not None:
        return [int(e) for e in np.atleast_1d(v)] if v.ndim <= 1 and v.dtype.kind in "iu" else None
    node = model.producer(name)
    if node is None or depth > 16 or node.domain != "":
        return None
    op = node.op_type
    if op == "Shape":
        t = inp(node, 0)
        shape = (shape_of or model.sym_shape)(t)  # declared dims: a dynamic dim must stay read at run time
        if shape is None:
            return None
        rank = len(shape)
        start = norm_axis(int(model.attr(node, "start", 0)), rank)
        end = model.attr(node, "end")
        end = rank if end is None else norm_axis(int(end), rank)
        start, end = max(0, min(start, rank)), max(0, min(end, rank))
        return [("dim", shape[k], t, k) for k in range(start, end)]
    if op in ("Identity", "Cast") or (op in ("Unsqueeze", "Squeeze") and model.shape(name) is not None
                                       and len(model.shape(name)) <= 1):
        return dim_reads(model, inp(node, 0), depth + 1, shape_of)
    if _is_shape_wrapper(model, node):  # TorchScript's expand(): Where(Equal(s, -1), ones, s) is s here
        return dim_reads(model, inp(node, 2 if op == "Where" else 0), depth + 1, shape_of)
    if op == "Concat":
        out: list = []
        for k in range(len(node.inputs)):
            part = dim_reads(model, inp(node, k), depth + 1, shape_of)
            if part is None:
                return None
            out.extend(part)
        return out
    if op in ("Gather", "Slice"):
        src = dim_reads(model, inp(node, 0), depth + 1, shape_of)
        if src is None:
            return None
        if op == "Gather":
            idx = model.const(inp(node, 1))
            if idx is None or idx.ndim > 1 or int(model.attr(node, "axis", 0)) != 0:
                return None
            return [src[int(i)] for i in np.atleast_1d(idx)] if all(-len(src) <= int(i) < len(src)
                                                                     for i in np.atleast_1d(idx)) else None
        bounds = [model.value(inp(node, k)) if inp(node, k) else None for k in range(1, 5)]
        if bounds[0] is None or bounds[1] is None or bounds[0].size != 1 or any(
                inp(node, k) and b is None for k, b in zip(range(3, 5), bounds[2:])):
            return None
        if bounds[2] is not None and int(bounds[2].reshape(-1)[0]) not in (0, -1):
            return None
        step = int(bounds[3].reshape(-1)[0]) if bounds[3] is not None else 1
        return src[slice(int(bounds[0].reshape(-1)[0]), int(bounds[1].reshape(-1)[0]), step)]
    v = model.value(name)  # arithmetic on static dims
    if v is None and shape_of is not None:
        from ..graph.consts import partial

        v = partial(model, name, shape_of, {})
        v = None if v is None or v.dtype == object else v
    if v is not None:
        return [int(e) for e in np.atleast_1d(v)] if v.ndim <= 1 and v.dtype.kind in "iu" else None
    shape = model.shape(name)  # arithmetic on a dynamic dim: unknown elements of a known count
    if shape is not None and len(shape) <= 1 and all(isinstance(d, int) for d in shape):
        return [None] * (shape[0] if shape else 1)
    return None


def _reads_channels(ctx, entry, labels) -> bool:
    """Whether a target entry is a run-time read of the channel count of a tracked tensor with as
    many channels as ``labels``: then it follows the pruning by itself; the labels are unified (the
    entry must keep matching the reshaped count)."""
    if not (isinstance(entry, tuple) and len(entry) == 4):
        return False
    c = ctx.an.chan.get(entry[2])
    if c is None or c.axis != entry[3] or c.labels.size != labels.size:
        return False
    ctx.unify(labels, c.labels)
    return True


def _resolve_target(ins, entries, allowzero: int):
    """Output dims from the target entries: 0 copies, -1 is inferred with symbols cancelling."""
    outs: list = []
    infer = None
    for k, e in enumerate(entries):
        if isinstance(e, tuple):
            outs.append(e[1])
        elif e == 0 and not allowzero:
            if k >= len(ins):
                return None
            outs.append(ins[k])
        elif e == -1:
            infer = k
            outs.append(None)
        elif isinstance(e, int) and e > 0:
            outs.append(e)
        else:
            return None
    if infer is not None:
        num = [d for d in ins]
        den = [d for k, d in enumerate(outs) if k != infer]
        for d in list(den):
            if not isinstance(d, int) and d in num:
                num.remove(d)
                den.remove(d)
        if not all(isinstance(d, int) for d in num + den) or _prod(den) == 0:
            return None
        outs[infer] = _prod(num) // _prod(den)
    return tuple(outs)


class ShapeRule(Moves):
    op_types = ("Shape",)

    def apply(self, ctx) -> None:
        if (xr := ctx.chan_and_rank()) is None:
            return
        x, rank = xr
        start = norm_axis(int(ctx.attr("start", 0)), rank)
        end = ctx.attr("end")
        end = rank if end is None else norm_axis(int(end), rank)
        if not (start <= x.axis < end):
            return
        model = ctx.model
        name = ctx.output_name(0)
        if model.is_graph_output(name):
            ctx.barrier("the channel count is a graph output")
            return
        pos = x.axis - start
        for node, index in model.uses(name):
            if index == 0 and _reads_other_dims(model, node, pos, end - start):
                continue
            if _only_shape_targets(model, node, index, src=(ctx.input_name(0), x.axis)):
                continue  # the Reshape/Expand rules rewrite those entries as constants
            ctx.barrier("the channel count is read at run time")
            return


_ARITH = {"Slice", "Gather", "Mul", "Add", "Sub", "Div", "Squeeze", "Unsqueeze", "Concat", "Cast", "Identity",
          "Reshape", "Where"}


def _reads_other_dims(model, node, pos: int, n: int) -> bool:
    """A Gather or Slice of the shape vector that does not read position ``pos``."""
    if node.op_type == "Gather" and int(model.attr(node, "axis", 0)) == 0:
        idx = model.const(inp(node, 1))
        return idx is not None and pos not in {norm_axis(int(i), n) for i in np.atleast_1d(idx)}
    if node.op_type == "Slice" and len(node.inputs) >= 3:
        st, en = model.const(inp(node, 1)), model.const(inp(node, 2))
        steps = model.const(inp(node, 4)) if inp(node, 4) else None
        if st is None or en is None or st.size != 1 or (steps is not None and int(steps.reshape(-1)[0]) != 1):
            return False
        s, e = (max(min(int(v) + n if int(v) < 0 else int(v), n), 0) for v in (st.reshape(-1)[0], en.reshape(-1)[0]))
        return not (s <= pos < e)
    return False


def _only_shape_targets(model, node, index: int, depth: int = 0, src=None) -> bool:
    """Whether a value read from a shape flows, through shape arithmetic, only into the shape
    operand of Reshape/Expand nodes (whose rules replace a static channel entry by a constant), or
    into the start/end of a Slice of the read tensor ``src`` = (name, channel axis) along its
    channel axis (``x.chunk(2, 1)`` in TorchScript: the Slice rule rewrites both as constants)."""
    if node.op_type in ("Reshape", "Expand") and index == 1:
        return True
    if node.op_type == "Slice" and index in (1, 2) and src is not None and inp(node, 0) == src[0]:
        axes = model.const(inp(node, 3)) if inp(node, 3) else None
        rank = len(model.shape(src[0]) or ())
        return axes is not None and axes.size == 1 and norm_axis(int(axes.reshape(-1)[0]), rank) == src[1]
    if node.op_type == "Shape":
        return True  # the length of a shape vector, not the count read into it
    if node.op_type == "Equal":  # s == -1 (TorchScript's expand): false for any count read from a shape
        other = model.value(inp(node, 1 - index)) if index in (0, 1) else None
        return other is not None and bool(np.all(other < 0))
    if node.op_type == "Where" and index == 0:
        return False
    if node.op_type not in _ARITH or depth > 12 or (node.op_type == "Reshape" and index != 0):
        return False
    for out in node.outputs:
        if model.is_graph_output(out.name):
            return False
        for user, k in model.uses(out.name):
            if not _only_shape_targets(model, user, k, depth + 1, src):
                return False
    return True


class ExpandRule(Moves):
    """``Expand(x, shape)``: broadcasting keeps channel c in place; a literal channel count in the
    shape is rewritten (1 keeps the input's count). Used by grouped-query attention."""

    op_types = ("Expand",)

    def apply(self, ctx) -> None:
        if (xr := ctx.chan_and_rank()) is None:
            return
        x, rank = xr
        entries = _target_entries(ctx)
        if entries is None:
            ctx.barrier("the expanded shape is computed at run time")
            return
        out_rank = max(rank, len(entries))
        axis = x.axis + out_rank - rank
        e = entries[axis - (out_rank - len(entries))] if axis >= out_rank - len(entries) else 1
        if isinstance(e, tuple):
            if not _reads_channels(ctx, e, x.labels):
                ctx.barrier("the expanded shape reads the channel count at run time")
                return
            ctx.set_out(0, axis, x.labels)
            return
        if e not in (1, x.labels.size):
            ctx.barrier(f"expands the channel axis from {x.labels.size} to {e}")
            return
        if e == x.labels.size and e != 1:
            j = axis - (out_rank - len(entries))
            if not target_entry_fix(ctx, 1, j, lambda kept: kept, x.labels):
                ctx.barrier("the channel entry of the expanded shape cannot be rewritten")
                return
        ctx.set_out(0, axis, x.labels)


RULES = (TransposeRule(), SqueezeRule(), FlattenRule(), ReshapeRule(), ShapeRule(), ExpandRule())
