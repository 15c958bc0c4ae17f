"""The channel-rule registry: an explicit list of rule modules, keyed by (domain, op_type).

Adding an op: write a :class:`~onnxprune.rules.base.Rule` in one module (or extend one), add
it to ``_MODULES`` below, and add one test under ``tests/rules/``. An op with no rule is a
barrier: its channels are never pruned.
"""
from __future__ import annotations

from functools import cache

from . import concat_split, conv, einsum, elementwise, gemm, misc, norm, quant, recurrent, reshape, spatial
from .base import Rule

__all__ = ["Rule", "registry", "known_ops", "rule_for"]

_MODULES = (conv, gemm, einsum, norm, elementwise, spatial, concat_split, reshape, quant, recurrent, misc)


@cache
def registry() -> dict[tuple[str, str], Rule]:
    """All rules keyed by (domain, op_type); a duplicate registration is an error."""
    table: dict[tuple[str, str], Rule] = {}
    for mod in _MODULES:
        for rule in mod.RULES:
            for op in rule.op_types:
                key = (rule.domain, op)
                if key in table:
                    raise ValueError(f"rule for {key} registered twice ({mod.__name__})")
                table[key] = rule
    return table


def known_ops() -> list[str]:
    return sorted(op for _, op in registry())


def rule_for(node) -> Rule | None:
    """The rule of an onnx-ir node (its cost, weight layout and channel flow), or None."""
    return registry().get((node.domain, node.op_type))
