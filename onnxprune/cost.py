"""Parameter, MAC and FLOP counts of a model, from the rules' per-op costs.

FLOPs = 2·MACs + element ops; each rule module says what one of its ops costs
(``Rule.cost``). An op whose rule gives no cost — or that has no rule — is **reported**
(``Cost.unknown``), never silently counted as 0. Shapes are the concrete ones the graph layer
inferred (``Model.shapes``: dynamic dims at the stated concrete input shape, ``Cost.at``).

The same counters serve the validator (a real model's shapes) and the planner, which asks
"what would the model cost with these channels kept?" by handing in shrunk shapes.

Parameters: every initializer or Constant tensor of a float or small-integer type (int8/uint8
weights of quantized models, int32 biases), but not int64 shape constants.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from .graph import Model, consts
from .rules import rule_for
from .rules.base import ShapeOf, numel

__all__ = ["Cost", "CostModel", "count", "node_cost"]

log = logging.getLogger("onnxprune.cost")

_PARAM_TYPES = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16,
                ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.INT16, ir.DataType.UINT16, ir.DataType.INT32,
                ir.DataType.INT4, ir.DataType.UINT4}


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int
    flops: int
    unknown: dict[str, int] = field(default_factory=dict)  # op type -> nodes whose cost is unknown
    at: dict[str, list[int]] = field(default_factory=dict)  # graph input -> the concrete shape counted

    def as_dict(self) -> dict:
        return {"params": self.params, "macs": self.macs, "flops": self.flops,
                "unknown_cost_ops": dict(self.unknown), "input_shapes": {k: list(v) for k, v in self.at.items()}}

    def ratio(self, other: Cost, what: str = "flops") -> float | None:
        """``other.what / self.what``; None when this cost is 0 (nothing countable)."""
        base = getattr(self, what)
        return None if not base else getattr(other, what) / base


def node_cost(model: Model, node: ir.Node, shape_of: ShapeOf) -> tuple[int, int] | None:
    """(MACs, other ops) of one node from its rule; None when unknown."""
    rule = rule_for(node)
    if rule is None:
        return None
    try:
        return rule.cost(model, node, shape_of)
    except Exception as e:  # a malformed node: unknown, reported in Cost.unknown
        log.debug("cost of %s (%s) unknown: %s: %s", model.node_name(node), node.op_type, type(e).__name__, e)
        return None


class CostModel:
    """Counts a model's cost, optionally as if only some channels (atoms) were kept."""

    def __init__(self, model: Model, analysis=None) -> None:
        self.model = model
        self.an = analysis
        if not model.shapes:
            model.infer()
        self._base: dict[str, tuple[int, ...]] = {}
        for name, s in model.shapes.items():
            self._base[name] = tuple(d if isinstance(d, int) else 1 for d in s)
        self._params = []
        for name, v in model.graph.initializers.items():
            if v.const_value is not None and v.const_value.dtype in _PARAM_TYPES:
                self._params.append(name)
                self._base.setdefault(name, tuple(int(d) for d in v.const_value.shape))
        for node in model.constant_nodes():
            name = node.outputs[0].name
            arr = model.const(name)
            if arr is not None and arr.size > 1 and ir.DataType.from_numpy(arr.dtype) in _PARAM_TYPES:
                self._params.append(name)
                self._base.setdefault(name, tuple(arr.shape))
        self._param_axes: dict[str, list[tuple[int, np.ndarray]]] = {}
        if analysis is not None:
            seen = set()
            for p in analysis.params:
                # a weight behind a constant chain (DequantizeLinear of int8, Unsqueeze...): its
                # source initializer is what gets sliced and counted
                for tensor, axis in [(p.tensor, p.axis), *consts.source_axes(model, p.tensor, p.axis)]:
                    if (tensor, axis) not in seen:
                        seen.add((tensor, axis))
                        self._param_axes.setdefault(tensor, []).append((axis, p.labels))
        self._nodes = [n for n in model.graph if not (n.op_type == "Constant" and n.domain == "")
                       and not all(model.is_const(o.name) for o in n.outputs if o.name)]

    def shape_fn(self, keep_atom: np.ndarray | None = None) -> ShapeOf:
        if keep_atom is None or self.an is None:
            return self._base.get
        an = self.an
        cache: dict[str, tuple[int, ...] | None] = {}

        def shape_of(name: str):
            if name in cache:
                return cache[name]
            s = self._base.get(name)
            if s is not None:
                c = an.chan.get(name)
                if c is not None and c.axis < len(s) and s[c.axis] == c.labels.size:
                    s = list(s)
                    s[c.axis] = int(an.keep_mask(c.labels, keep_atom).sum())
                    s = tuple(s)
                elif name in self._param_axes:
                    s = list(s)
                    for axis, labels in self._param_axes[name]:
                        s[axis] = int(an.keep_mask(labels, keep_atom).sum())
                    s = tuple(s)
            cache[name] = s
            return s

        return shape_of

    def node_flops(self, keep_atom: np.ndarray | None = None) -> dict:
        """FLOPs of each node whose cost is known (node -> 2·MACs + element ops)."""
        shape_of = self.shape_fn(keep_atom)
        out = {}
        for node in self._nodes:
            c = node_cost(self.model, node, shape_of)
            if c is not None:
                out[node] = 2 * c[0] + c[1]
        return out

    def count(self, keep_atom: np.ndarray | None = None) -> Cost:
        shape_of = self.shape_fn(keep_atom)
        params = sum(numel(shape_of(name)) for name in self._params)
        macs = ops = 0
        unknown: Counter[str] = Counter()
        for node in self._nodes:
            c = node_cost(self.model, node, shape_of)
            if c is None:
                unknown[f"{node.domain + '.' if node.domain else ''}{node.op_type}"] += 1
                continue
            macs += c[0]
            ops += c[1]
        return Cost(params=params, macs=macs, flops=2 * macs + ops, unknown=dict(unknown),
                    at={k: list(v) for k, v in self.model.concrete.items()})


def count(model: Model) -> Cost:
    """Cost of a model as it is (shapes are inferred if needed)."""
    return CostModel(model).count()
