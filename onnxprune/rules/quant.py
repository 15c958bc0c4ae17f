"""Quantization ops.

1. ``QuantizeLinear``/``DequantizeLinear`` on activations (QDQ models): element-wise on the channel
   axis. A per-tensor scale/zero-point passes channels through; a per-axis one along the channel
   axis is sliced with the channels (role ``affine``); per-axis along another axis passes through;
   blocked quantization (``block_size``) is a barrier. ``DequantizeLinear`` of an int8 *weight* is
   not seen here: it is part of a constant chain (``graph/consts.py``), sliced at the int8 source
   with its per-channel scales, so the model stays QDQ.
2. QOperator-format ops (``QLinearConv``, ``QLinearMatMul``, ``ConvInteger``, ``MatMulInteger``,
   ``com.microsoft`` ``QLinear*``) keep their weights, scales and zero-points in one node: they are
   barriers with a reason (quantize to QDQ instead); their costs are counted.
"""
from __future__ import annotations

import numpy as np

from .base import Opaque, Rule, norm_axis, numel, per_element
from .conv import conv_macs
from .gemm import matmul_macs


class QDQRule(Rule):
    op_types = ("QuantizeLinear", "DequantizeLinear")
    min_opset = 10

    cost = per_element(2)

    def apply(self, ctx) -> None:
        if (xr := ctx.chan_and_rank()) is None:
            return
        x, rank = xr
        if int(ctx.attr("block_size", 0) or 0) > 0:
            ctx.barrier("blocked quantization")
            return
        for k in (1, 2):
            if ctx.has_input(k) and not ctx.is_const(k):
                ctx.barrier(f"{'scale' if k == 1 else 'zero-point'} is not a constant")
                return
        scale = np.asarray(ctx.const(1))
        if scale.size > 1:
            axis = norm_axis(int(ctx.attr("axis", 1)), rank)
            if axis == x.axis:
                if scale.size != x.labels.size:
                    ctx.barrier(f"per-axis scale has {scale.size} entries for {x.labels.size} channels")
                    return
                ctx.param(1, 0, x.labels, "affine")
                if ctx.has_input(2):
                    ctx.param(2, 0, x.labels, "affine")
        ctx.set_out(0, x.axis, x.labels)


_WHY = "quantized operator (QOperator format) holds weights and scales in one node; quantize to QDQ to prune"


def _qconv(model, node, shape_of):
    # QLinearConv: x, x_scale, x_zp, w, ...; ConvInteger: x, w, ...
    w_index = 3 if node.op_type == "QLinearConv" else 1
    out = shape_of(node.outputs[0].name)
    w = shape_of(node.inputs[w_index].name) if len(node.inputs) > w_index and node.inputs[w_index] else None
    return None if out is None or w is None else numel(out) * numel(w[1:])


def _qmatmul(model, node, shape_of):
    out = shape_of(node.outputs[0].name)
    a = shape_of(node.inputs[0].name)
    return None if out is None or a is None or not len(a) else numel(out) * int(a[-1])


RULES = (
    QDQRule(),
    Opaque("QLinearConv", "ConvInteger", why=_WHY, macs=_qconv),
    Opaque("QLinearMatMul", "MatMulInteger", why=_WHY, macs=_qmatmul),
    Opaque("DynamicQuantizeLinear", why="dynamic quantization of activations", ops_per_element=2),
    Opaque("QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearGlobalAveragePool",
           "QLinearConcat", "QLinearAveragePool", domain="com.microsoft", why=_WHY, ops_per_element=1),
    Opaque("QGemm", domain="com.microsoft", why=_WHY, macs=lambda m, n, s: _qmatmul(m, n, s)),
    Opaque("DynamicQuantizeMatMul", "MatMulIntegerToFloat", domain="com.microsoft", why=_WHY, macs=_qmatmul),
)

__all__ = ["QDQRule", "RULES", "conv_macs", "matmul_macs"]
