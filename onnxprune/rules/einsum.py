"""Einsum in the forms exporters emit: attention and linear layers written with ``torch.einsum``.

The equation gives every axis of every operand a letter. A tracked channel axis with letter L:

1. L is kept in the output (``bhqd,bhkd->bhqk`` over the heads h, a batch-like axis): the output
   axis ``out.index(L)`` carries the channels; another operand with L carries the same channels
   (unified) or broadcasts there (size 1); anything else pins them.
2. L is summed over (``bni,oi->bno``, ``bhqk,bhkd->bhqd`` over k): a constant operand with L is
   a consumer-side weight (its L axis is sliced with the channels); an activation with L must
   carry the same channels (removing a term from both sides of a sum is zeroing it on one side).
   Summing the channels against an untracked activation is a barrier.

A constant operand whose one letter is kept in the output and absent from the other operands
(``oi`` in ``bni,oi->bno``) defines new channels (producer-side). Ellipses, repeated letters in
one operand (diagonals) and more than two operands are barriers with the reason.
"""
from __future__ import annotations

import numpy as np

from .base import Rule


def parse(equation: str) -> tuple[list[str], str] | None:
    """``"bhqd,bhkd->bhqk"`` -> (["bhqd", "bhkd"], "bhqk"); implicit output (no ``->``): the letters
    used once, in alphabetical order. None for ellipses."""
    eq = equation.replace(" ", "")
    if "." in eq:
        return None
    if "->" in eq:
        lhs, out = eq.split("->")
    else:
        lhs = eq
        counts = {c: lhs.count(c) for c in set(lhs) if c.isalpha()}
        out = "".join(sorted(c for c, n in counts.items() if n == 1))
    return lhs.split(","), out


class EinsumRule(Rule):
    op_types = ("Einsum",)
    min_opset = 12

    def cost(self, model, node, shape_of):
        """MACs: the product of every letter's size (each output element sums over the rest)."""
        eq = parse(str(model.attr(node, "equation", "")))
        if eq is None:
            return None
        terms, out = eq
        sizes: dict[str, int] = {}
        for k, t in enumerate(terms):
            s = shape_of(node.inputs[k].name) if k < len(node.inputs) and node.inputs[k] is not None else None
            if s is None or len(s) != len(t):
                return None
            for c, d in zip(t, s):
                if not isinstance(d, int):
                    return None
                sizes[c] = max(sizes.get(c, 1), d)
        total = int(np.prod(list(sizes.values()), dtype=np.int64)) if sizes else 1
        if len(terms) == 1:
            return 0, total
        return total, 0

    def apply(self, ctx) -> None:
        tracked = [k for k in range(ctx.n_inputs) if ctx.chan(k) is not None]
        if not tracked and not any(ctx.is_const(k) for k in range(ctx.n_inputs)):
            return
        eq = parse(str(ctx.attr("equation", "")))
        if eq is None:
            ctx.barrier("Einsum with an ellipsis")
            return
        terms, out = eq
        if len(terms) != ctx.n_inputs or len(terms) > 2:
            ctx.barrier(f"Einsum of {len(terms)} operands")
            return
        if any(len(set(t)) != len(t) for t in terms):
            ctx.barrier("Einsum with a repeated letter in one operand (a diagonal)")
            return
        for k, t in enumerate(terms):
            r = ctx.rank(k)
            if r is None or r != len(t):
                ctx.barrier(f"Einsum operand {k} has rank {r}, the equation says {len(t)}")
                return
        out_labels = None
        for k in tracked:
            c = ctx.chan(k)
            letter = terms[k][c.axis]
            for o in range(len(terms)):
                if o == k or letter not in terms[o]:
                    continue
                a = terms[o].index(letter)
                co = ctx.chan(o)
                if co is not None:
                    if co.axis != a or co.labels.size != c.labels.size:
                        ctx.barrier(f"operands {k} and {o} carry channels on different letters")
                        return
                    ctx.unify(c.labels, co.labels)
                    continue
                dim = (ctx.model.const_shape(ctx.input_name(o)) if ctx.is_const(o) else ctx.in_shape(o))[a]
                if dim == 1:
                    continue
                if letter not in out and ctx.is_const(o) and dim == c.labels.size:
                    ctx.param(o, a, c.labels, "in")
                elif letter not in out:
                    ctx.barrier(f"channels of operand {k} are summed over against untracked operand {o}")
                    return
                else:
                    ctx.pin(c.labels, f"operand {o} has {dim} entries on the channel letter '{letter}' "
                                      "and carries no channel information")
            if letter in out:
                out_labels = (out.index(letter), c.labels)
        if out_labels is None:  # channels summed into a weight: does a constant define new ones?
            for o, t in enumerate(terms):
                if not ctx.is_const(o):
                    continue
                new = [c for c in t if c in out and not any(c in terms[p] for p in range(len(terms)) if p != o)]
                if len(new) != 1:
                    continue
                axis = t.index(new[0])
                n = int(ctx.model.const_shape(ctx.input_name(o))[axis])
                y = ctx.new_space(n)
                ctx.param(o, axis, y, "out")
                ctx.nonempty(y)
                out_labels = (out.index(new[0]), y)
                break
        if out_labels is not None:
            ctx.set_out(0, *out_labels)


RULES = (EinsumRule(),)
