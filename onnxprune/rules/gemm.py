"""Gemm and MatMul with a constant weight.

``Gemm(A, B, C)``: ``Y[M, N] = A' · B' + C`` with ``A' = A`` or ``Aᵀ`` (transA), ``B' = B`` or
``Bᵀ`` (transB). The K axis of B' is consumer-side (indexed by A's channels: axis 1 of A, or
axis 0 when transA), the N axis producer-side (a new space on Y's axis 1); C is sliced where
its last axis has N entries.

``MatMul(X, W)`` with a constant 2-D ``W[K, N]``: X's channels must be on its last axis; Y's
last axis is a new space. A MatMul of two activations (attention) is a barrier here.
"""
from __future__ import annotations

from ..graph import attr_value
from .base import Layout, Rule, numel
from .elementwise import chan_or_fill


def matmul_macs(model, node, shape_of) -> int | None:
    """Output elements × K (A's last axis; Gemm: K of A' after transA)."""
    out = shape_of(node.outputs[0].name)
    a = shape_of(node.inputs[0].name)
    if out is None or a is None or not len(a):
        return None
    if node.op_type == "Gemm":
        if len(a) != 2:
            return None
        return numel(out) * int(a[0] if attr_value(node, "transA", 0) else a[1])
    return numel(out) * int(a[-1])


class GemmRule(Rule):
    op_types = ("Gemm",)

    def cost(self, model, node, shape_of):
        macs = matmul_macs(model, node, shape_of)
        has_c = len(node.inputs) > 2 and node.inputs[2] is not None
        return None if macs is None else (macs, numel(shape_of(node.outputs[0].name)) if has_c else 0)

    def layout(self, model, node):
        t = int(attr_value(node, "transB", 0))
        return Layout(1, 0 if t else 1, 1 if t else 0, 2, "dense", x_axis=0 if attr_value(node, "transA", 0) else 1,
                      alpha=float(attr_value(node, "alpha", 1.0)), beta=float(attr_value(node, "beta", 1.0)))

    def apply(self, ctx) -> None:
        if not ctx.is_const(1):
            ctx.barrier("B is not a constant")
            return
        if ctx.has_input(2) and not ctx.is_const(2):
            ctx.barrier("C is not a constant")
            return
        trans_a = int(ctx.attr("transA", 0))
        trans_b = int(ctx.attr("transB", 0))
        k_axis_b, n_axis_b = (1, 0) if trans_b else (0, 1)
        n = int(ctx.model.const_shape(ctx.input_name(1))[n_axis_b])
        a = chan_or_fill(ctx, 0, 0 if trans_a else 1)
        if a is not None:
            if a.axis == (0 if trans_a else 1):
                ctx.param(1, k_axis_b, a.labels, "in")
            else:
                ctx.pin(a.labels, "channels of A are on its M axis")
        y = ctx.new_space(n)
        ctx.param(1, n_axis_b, y, "out")
        if ctx.has_input(2):
            c_shape = ctx.model.const_shape(ctx.input_name(2))
            if len(c_shape) and c_shape[-1] == n and n > 1:
                ctx.param(2, len(c_shape) - 1, y, "bias")
            elif len(c_shape) and c_shape[-1] not in (1, n):
                ctx.pin(y, f"C has shape {list(c_shape)}")
        ctx.nonempty(y)
        ctx.set_out(0, 1, y)


class MatMulRule(Rule):
    op_types = ("MatMul",)

    def cost(self, model, node, shape_of):
        macs = matmul_macs(model, node, shape_of)
        return None if macs is None else (macs, 0)

    def layout(self, model, node):
        return Layout(1, 1, 0, None, "dense", x_axis=-1)

    def apply(self, ctx) -> None:
        if not ctx.is_const(0) and not ctx.is_const(1):
            self._dynamic(ctx)
            return
        if not ctx.is_const(1) or ctx.is_const(0):
            ctx.barrier("MatMul needs a dynamic A and a constant 2-D B to be pruned")
            return
        w_shape = ctx.model.const_shape(ctx.input_name(1))
        if len(w_shape) != 2:
            ctx.barrier(f"constant B has rank {len(w_shape)}, expected 2")
            return
        x_rank = ctx.rank(0)
        x = chan_or_fill(ctx, 0, x_rank - 1) if x_rank else ctx.chan(0)
        if x is not None:
            if x_rank is not None and x.axis == x_rank - 1:
                ctx.param(1, 0, x.labels, "in")
            else:
                ctx.pin(x.labels, "channels of A are not on its last axis")
        if x_rank is None:
            ctx.barrier("rank of A is unknown (no shape information)")
            return
        y = ctx.new_space(int(w_shape[1]))
        ctx.param(1, 1, y, "out")
        ctx.nonempty(y)
        ctx.set_out(0, x_rank - 1 if x_rank >= 2 else 0, y)


    @staticmethod
    def _dynamic(ctx) -> None:
        """Both operands are activations (attention: Q·Kᵀ, P·V).

        Channels on a batch axis (attention heads) pass through, and both operands' heads are
        unified; channels on A's rows or B's columns pass to the output's; channels on the
        contracted axis would be summed over: a barrier.
        """
        ra, rb = ctx.rank(0), ctx.rank(1)
        if ra is None or rb is None or ra < 2 or rb < 2:
            ctx.barrier("MatMul of activations with unknown or 1-D operands")
            return
        ro = max(ra, rb)
        axes = []
        for k, r in ((0, ra), (1, rb)):
            c = ctx.chan(k)
            if c is None:
                continue
            contracted = r - 1 if k == 0 else r - 2
            if c.axis == contracted:
                ctx.barrier(f"channels of input {k} are summed over by the MatMul")
                return
            out = (ro - 2 if k == 0 else ro - 1) if c.axis >= r - 2 else c.axis + ro - r
            axes.append((k, out, c))
        if not axes:
            return
        if len(axes) == 2:
            (_, oa, ca), (_, ob, cb) = axes
            if oa != ob or ca.labels.size != cb.labels.size:
                ctx.barrier("both operands carry channels on different output axes")
                return
            ctx.unify(ca.labels, cb.labels)
        k, out, c = axes[0]
        other = 1 - k
        if len(axes) == 1 and out < ro - 2:  # a batch axis: the other operand must broadcast there
            shape = ctx.in_shape(other)
            r_other = len(shape)
            local = out - (ro - r_other)
            if local >= 0 and shape[local] != 1:
                ctx.pin(c.labels, f"the other operand has {shape[local]} entries on the channel axis "
                                  "and carries no channel information")
        ctx.set_out(0, out, c.labels)


RULES = (GemmRule(), MatMulRule())
