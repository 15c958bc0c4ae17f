"""Parameter, MAC and FLOP counts, per op, from tensor shapes.

FLOPs = 2·MACs (Conv, ConvTranspose, Gemm, MatMul) + one op per output element for
element-wise work (activations, BatchNorm counts 2, pooling counts its window). Dynamic dims
count as 1 (per-sample figures).

The same counters serve the validator (shapes of a real model) and the planner, which asks
"what would the model cost with these channels kept?" by handing in shrunk shapes.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from ._ir import Model

__all__ = ["Cost", "CostModel", "count"]

ShapeOf = Callable[[str], tuple[int, ...] | None]

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}
_UNARY_1 = {"Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Softplus",
            "Softsign", "Mish", "Celu", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Abs", "Neg", "Reciprocal",
            "Clip", "PRelu", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Swish"}


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int
    flops: int

    def as_dict(self) -> dict[str, int]:
        return {"params": self.params, "macs": self.macs, "flops": self.flops}


def _n(shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape is not None and len(shape) else (0 if shape is None else 1)


def node_cost(model: Model, node: onnx.NodeProto, shape_of: ShapeOf) -> tuple[int, int]:
    """(MACs, other ops) of one node."""
    op = node.op_type
    out = shape_of(node.output[0]) if node.output else None
    if out is None:
        return 0, 0
    if op == "Conv":
        w = shape_of(node.input[1])
        if w is None:
            return 0, 0
        return _n(out) * _n(w[1:]), (_n(out) if len(node.input) > 2 and node.input[2] else 0)
    if op == "ConvTranspose":
        w, x = shape_of(node.input[1]), shape_of(node.input[0])
        if w is None or x is None:
            return 0, 0
        return _n(x) * _n(w[1:]), (_n(out) if len(node.input) > 2 and node.input[2] else 0)
    if op == "Gemm":
        a = shape_of(node.input[0])
        if a is None or len(a) != 2:
            return 0, 0
        k = a[0] if model.attr(node, "transA", 0) else a[1]
        return _n(out) * k, (_n(out) if len(node.input) > 2 and node.input[2] else 0)
    if op == "MatMul":
        a = shape_of(node.input[0])
        if a is None or not len(a):
            return 0, 0
        return _n(out) * a[-1], 0
    if op == "BatchNormalization":
        return 0, 2 * _n(out)
    if op in ("InstanceNormalization", "LayerNormalization", "Softmax", "LogSoftmax"):
        return 0, 4 * _n(out)
    if op in ("MaxPool", "AveragePool", "LpPool"):
        k = model.attr(node, "kernel_shape", [])
        return 0, _n(out) * _n(k)
    if op in ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool") or op.startswith("Reduce"):
        x = shape_of(node.input[0])
        return 0, _n(x)
    if op in _UNARY_1:
        return 0, _n(out)
    return 0, 0


class CostModel:
    """Counts a model's cost, optionally as if only some channels (atoms) were kept."""

    def __init__(self, model: Model, analysis=None) -> None:
        self.model = model
        self.an = analysis
        self._base: dict[str, tuple[int, ...]] = {}
        for name, s in model.shapes.items():
            self._base[name] = tuple(d if isinstance(d, int) else 1 for d in s)
        self._params = []
        for name, t in model.initializers.items():
            if t.data_type in _FLOAT_TYPES:
                self._params.append(name)
        for name, i in model.constant_nodes.items():
            v = model.const(name)
            if v is not None and v.dtype.kind == "f":
                self._params.append(name)
                self._base.setdefault(name, tuple(v.shape))
        self._param_axes: dict[str, list[tuple[int, np.ndarray]]] = {}
        if analysis is not None:
            seen = set()
            for p in analysis.params:
                if (p.tensor, p.axis) not in seen:
                    seen.add((p.tensor, p.axis))
                    self._param_axes.setdefault(p.tensor, []).append((p.axis, p.labels))
        self._nodes = [n for n in model.nodes if n.op_type != "Constant"]

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

    def count(self, keep_atom: np.ndarray | None = None) -> Cost:
        shape_of = self.shape_fn(keep_atom)
        params = sum(_n(shape_of(name)) for name in self._params)
        macs = ops = 0
        for node in self._nodes:
            m, o = node_cost(self.model, node, shape_of)
            macs += m
            ops += o
        return Cost(params=params, macs=macs, flops=2 * macs + ops)


def count(model: Model) -> Cost:
    """Cost of a model as it is (shapes are inferred if needed)."""
    if not model.shapes:
        model.infer()
    return CostModel(model).count()
