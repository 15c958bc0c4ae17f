"""Fixtures for issue 8 item 3: channel parameters reached through constant chains, and int8 models.

Each function returns an ``onnx.ModelProto`` (opset 13+, IR version ≤ 10 so onnxruntime 1.31
loads it). Random but realistic weights (``onnxprune.testing.Net``); nothing is trained.

(a) Caffe2-converted BatchNorm: ``Conv(no bias) → Mul(x, Unsqueeze(w, [1,2])) → Add(x, Unsqueeze(b,
    [1,2])) → Relu → Conv``, with 1-D ``w``/``b`` of C entries; variants with ``Reshape(w, [1,C,1,1])``
    and with ``w``/``b`` from ``Constant`` nodes; a ``BatchNormalization`` followed by such an affine;
    a small DenseNet-style block (pre-activation affine on the concatenated features).
(b) Weights through shape-only constant chains: ``Reshape(Transpose(Cast(w_fp16)))``,
    ``Identity(Squeeze(w))``, ``Flatten(w)``, ``Expand(w)``, ``Transpose(w)`` feeding Conv/Gemm/MatMul.
(c) int8: a generated ResNet-18-style model quantised by ``onnxruntime.quantization`` in QDQ form
    (per-channel and per-tensor weights, uint8 or int8 activations), a QOperator model (QLinearConv)
    and a dynamically quantised MLP (DynamicQuantizeLinear + MatMulInteger).

Usage: ``python scripts/make_chain_models.py --out DIR`` writes them all and runs each once.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.testing import Net

IR_VERSION = 8


def _i64(n: Net, values) -> str:
    """An int64 constant that always stays an initializer (axes/shape operands)."""
    name = n._name("shape")
    n.inits.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
    return name


def _affine_params(n: Net, c: int, base: str, via: str) -> tuple[str, str]:
    """1-D per-channel scale and shift, as initializers or (via='constant') Constant nodes."""
    w = n.rng.uniform(0.3, 1.6, c).astype(np.float32)
    b = n.rng.normal(0.2, 0.4, c).astype(np.float32)
    if via == "constant":
        names = []
        for v, suffix in ((w, "scale"), (b, "shift")):
            name = n._name(f"{base}.{suffix}")
            n.nodes.append(helper.make_node("Constant", [], [name], name=f"{name}_const",
                                            value=numpy_helper.from_array(v, name)))
            names.append(name)
        return names[0], names[1]
    return n.const(w, f"{base}.scale"), n.const(b, f"{base}.shift")


def _to_c11(n: Net, t: str, c: int, via: str) -> str:
    """Broadcastable view of a 1-D [C] tensor: [C,1,1] by Unsqueeze, or [1,C,1,1] by Reshape."""
    if via == "reshape":
        return n.op("Reshape", [t, _i64(n, [1, c, 1, 1])])
    return n.op("Unsqueeze", [t, _i64(n, [1, 2])])


def caffe2_affine(n: Net, x: str, c: int, via: str = "unsqueeze", base: str = "affine") -> str:
    """``Add(Mul(x, view(w)), view(b))``: a BatchNorm as Caffe2→ONNX converters write it."""
    w, b = _affine_params(n, c, base, via)
    view = "reshape" if via == "reshape" else "unsqueeze"
    y = n.op("Mul", [x, _to_c11(n, w, c, view)])
    return n.op("Add", [y, _to_c11(n, b, c, view)])


def caffe2_bn_net(via: str = "unsqueeze", seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    """Conv → affine → Relu → Conv → affine → Relu → Conv (1×1) → output; ``via`` in
    {'unsqueeze', 'reshape', 'constant'} (the last: Unsqueeze of Constant-node parameters)."""
    n = Net(f"caffe2_bn_{via}", opset=opset, seed=seed)
    x = n.input("input", ["N", 3, 8, 8])
    y = n.relu(caffe2_affine(n, n.conv(x, 3, 12, 3, bias=False), 12, via, "bn1"))
    y = n.relu(caffe2_affine(n, n.conv(y, 12, 16, 3, bias=False), 16, via, "bn2"))
    n.output(n.conv(y, 16, 4, 1))
    return n.build(IR_VERSION)


def bn_then_affine_net(seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    """Conv → BatchNormalization → Mul(Unsqueeze(w)) → Add(Unsqueeze(b)) → Relu → Conv → GAP → Gemm."""
    n = Net("bn_then_affine", opset=opset, seed=seed)
    x = n.input("input", ["N", 3, 8, 8])
    y = n.bn(n.conv(x, 3, 12, 3, bias=False), 12)
    y = n.relu(caffe2_affine(n, y, 12, "unsqueeze", "post"))
    y = n.relu(n.bn(n.conv(y, 12, 8, 3), 8))
    n.output(n.gemm(n.flatten(n.gap(y)), 8, 5))
    return n.build(IR_VERSION)


def caffe2_densenet(growth: int = 6, layers: int = 3, seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    """A DenseNet-style block in Caffe2 form: every layer is affine → Relu → 1×1 Conv → affine →
    Relu → 3×3 Conv on the Concat of all previous features; transition affine → Relu → 1×1 Conv →
    AveragePool; head GAP → Flatten → Gemm."""
    n = Net("caffe2_densenet", opset=opset, seed=seed)
    x = n.input("input", ["N", 3, 12, 12])
    c = 8
    feats = [n.conv(x, 3, c, 3, bias=False)]
    for i in range(layers):
        cat = feats[0] if len(feats) == 1 else n.op("Concat", feats, axis=1)
        y = n.relu(caffe2_affine(n, cat, c, "unsqueeze", f"dense{i}.bn1"))
        y = n.conv(y, c, 2 * growth, 1, bias=False)
        y = n.relu(caffe2_affine(n, y, 2 * growth, "unsqueeze", f"dense{i}.bn2"))
        feats.append(n.conv(y, 2 * growth, growth, 3, bias=False))
        c += growth
    y = n.relu(caffe2_affine(n, n.op("Concat", feats, axis=1), c, "unsqueeze", "trans.bn"))
    y = n.op("AveragePool", [n.conv(y, c, 10, 1, bias=False)], kernel_shape=[2, 2], strides=[2, 2])
    n.output(n.gemm(n.flatten(n.gap(y)), 10, 3))
    return n.build(IR_VERSION)


# ------------------------------------------------------------------------ (b) shape-only chains
def _conv_weight(n: Net, cin: int, cout: int, k: int, chain: str) -> str:
    """A Conv weight [cout, cin, k, k] produced by a constant chain."""
    w = n.rng.normal(0, np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k)).astype(np.float32)
    if chain == "cast_transpose_reshape":  # stored fp16 HWIO, flattened over H·W
        stored = n.const(w.transpose(2, 3, 1, 0).reshape(k * k, cin, cout).astype(np.float16), "w_fp16")
        t = n.op("Cast", [stored], to=TensorProto.FLOAT)
        t = n.op("Transpose", [t], perm=[2, 1, 0])  # [cout, cin, k·k]
        return n.op("Reshape", [t, _i64(n, [cout, -1, k, k])])
    if chain == "identity_squeeze":  # stored with a leading 1
        t = n.op("Squeeze", [n.const(w[None], "w_1xOIHW"), _i64(n, [0])])
        return n.op("Identity", [t])
    if chain == "expand":  # a no-op broadcast, as expand_as() exports write it
        return n.op("Expand", [n.const(w, "w"), _i64(n, [1, 1, 1, 1])])
    if chain == "transpose":  # stored IOHW
        return n.op("Transpose", [n.const(np.ascontiguousarray(w.transpose(1, 0, 2, 3)), "w_IOHW")], perm=[1, 0, 2, 3])
    raise ValueError(chain)


def _fc_weight(n: Net, k: int, m: int, chain: str) -> tuple[str, int]:
    """A Gemm weight and its transB: through Flatten of a [m, k, 1, 1] tensor (transB=1), or
    Reshape(Transpose(Cast(fp16 [k, m]))) (transB=1), or Identity(Squeeze) (transB=0)."""
    w = n.rng.normal(0, np.sqrt(2.0 / k), (m, k)).astype(np.float32)
    if chain == "flatten":
        return n.op("Flatten", [n.const(w.reshape(m, k, 1, 1), "w_mk11")], axis=1), 1
    if chain == "cast_transpose_reshape":
        t = n.op("Transpose", [n.op("Cast", [n.const(w.T.astype(np.float16), "w_fp16")], to=TensorProto.FLOAT)],
                 perm=[1, 0])
        return n.op("Reshape", [t, _i64(n, [m, k])]), 1
    if chain == "identity_squeeze":
        return n.op("Identity", [n.op("Squeeze", [n.const(w.T[None], "w_1km"), _i64(n, [0])])]), 0
    raise ValueError(chain)


CONV_CHAINS = ["cast_transpose_reshape", "identity_squeeze", "expand", "transpose"]
FC_CHAINS = ["flatten", "cast_transpose_reshape", "identity_squeeze"]


def conv_chain_net(chain: str, seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    """Conv(w₁ via chain) + bias → Relu → Conv(w₂ via chain) → Relu → 1×1 Conv: both the producer's
    output axis and the consumer's input axis of the hidden channels go through the chain."""
    n = Net(f"conv_chain_{chain}", opset=opset, seed=seed)
    x = n.input("input", ["N", 3, 8, 8])
    b = n.const(n.rng.normal(0, 0.1, 12).astype(np.float32), "b1")
    y = n.relu(n.op("Conv", [x, _conv_weight(n, 3, 12, 3, chain), b], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    y = n.relu(n.op("Conv", [y, _conv_weight(n, 12, 10, 3, chain)], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    n.output(n.conv(y, 10, 4, 1))
    return n.build(IR_VERSION)


def fc_chain_net(chain: str, seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    """Gemm(w₁ via chain) → Relu → Gemm(w₂ via chain) → Relu → MatMul(Transpose(Cast(fp16))) + bias."""
    n = Net(f"fc_chain_{chain}", opset=opset, seed=seed)
    x = n.input("input", ["N", 10])
    y = x
    for k, m in ((10, 24), (24, 16)):
        w, tb = _fc_weight(n, k, m, chain)
        y = n.relu(n.op("Gemm", [y, w, n.const(n.rng.normal(0, 0.1, m).astype(np.float32), "b")], transB=tb))
    w3 = n.rng.normal(0, 0.3, (5, 16)).astype(np.float16)  # stored [N, K] fp16, used as [K, N]
    w3 = n.op("Transpose", [n.op("Cast", [n.const(w3, "w3_fp16")], to=TensorProto.FLOAT)], perm=[1, 0])
    n.output(n.add(n.op("MatMul", [y, w3]), n.const(n.rng.normal(0, 0.1, 5).astype(np.float32), "b3")))
    return n.build(IR_VERSION)


# ----------------------------------------------------------------------------------- (c) int8
class _Reader:
    """A CalibrationDataReader over seeded random inputs."""

    def __init__(self, name: str, shape, n: int = 8, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.items = iter([{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)])

    def get_next(self):
        return next(self.items, None)

    def rewind(self):  # not needed by quantize_static, defined for newer readers
        pass


def _quantize(proto: onnx.ModelProto, input_shape, *, fmt: str = "qdq", per_channel: bool = True,
              activation: str = "uint8", dynamic: bool = False, seed: int = 0) -> onnx.ModelProto:
    import logging

    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    logging.getLogger().setLevel(logging.ERROR)  # quantize_static suggests pre-processing on stderr
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "fp32.onnx"), os.path.join(d, "q.onnx")
        onnx.save(proto, src)
        if dynamic:
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=per_channel)
        else:
            reader = _Reader(proto.graph.input[0].name, input_shape, seed=seed)
            CalibrationDataReader.register(type(reader))
            quantize_static(src, dst, reader,
                            quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                            per_channel=per_channel, weight_type=QuantType.QInt8,
                            activation_type=QuantType.QUInt8 if activation == "uint8" else QuantType.QInt8)
        q = onnx.load(dst)
    q.ir_version = min(q.ir_version, 10)
    return q


def qdq_resnet(per_channel: bool = True, activation: str = "uint8", width: int = 8, image: int = 32,
               seed: int = 0) -> onnx.ModelProto:
    """A ResNet-18-style model (``onnxprune.testing.archs.resnet``) quantised statically in QDQ form."""
    from onnxprune.testing.archs import resnet

    proto = resnet(18, image=image, width=width, seed=seed, batch=1)
    return _quantize(proto, (1, 3, image, image), per_channel=per_channel, activation=activation, seed=seed)


def small_cnn(seed: int = 0, image: int = 16) -> onnx.ModelProto:
    n = Net("small_cnn", opset=13, seed=seed)
    x = n.input("input", [1, 3, image, image])
    y = n.relu(n.conv(x, 3, 16, 3))
    y = n.relu(n.conv(y, 16, 16, 3))
    n.output(n.gemm(n.flatten(n.gap(y)), 16, 4))
    return n.build(IR_VERSION)


def qoperator_cnn(seed: int = 0) -> onnx.ModelProto:
    """A small CNN quantised in QOperator form: QuantizeLinear → QLinearConv … → DequantizeLinear."""
    return _quantize(small_cnn(seed), (1, 3, 16, 16), fmt="qoperator", per_channel=False, seed=seed)


def mlp(seed: int = 0) -> onnx.ModelProto:
    n = Net("mlp", opset=13, seed=seed)
    x = n.input("input", ["N", 12])
    y = n.relu(n.linear(x, 12, 32))
    y = n.relu(n.linear(y, 32, 16))
    n.output(n.linear(y, 16, 3))
    return n.build(IR_VERSION)


def dynamic_mlp(seed: int = 0) -> onnx.ModelProto:
    """An MLP quantised dynamically: DynamicQuantizeLinear + MatMulInteger (+ Cast, Mul by scales)."""
    return _quantize(mlp(seed), None, dynamic=True, per_channel=False, seed=seed)


def all_models() -> dict[str, onnx.ModelProto]:
    out = {f"caffe2_bn_{v}": caffe2_bn_net(v) for v in ("unsqueeze", "reshape", "constant")}
    out["bn_then_affine"] = bn_then_affine_net()
    out["caffe2_densenet"] = caffe2_densenet()
    out.update({f"conv_chain_{c}": conv_chain_net(c) for c in CONV_CHAINS})
    out.update({f"fc_chain_{c}": fc_chain_net(c) for c in FC_CHAINS})
    out["qdq_resnet_per_channel_u8"] = qdq_resnet(True, "uint8")
    out["qdq_resnet_per_tensor_s8"] = qdq_resnet(False, "int8")
    out["qoperator_cnn"] = qoperator_cnn()
    out["dynamic_mlp"] = dynamic_mlp()
    return out


def main() -> None:
    from onnxprune.testing import random_feeds, run

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/onnxprune-chains")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for name, proto in all_models().items():
        path = os.path.join(a.out, f"{name}.onnx")
        onnx.save(proto, path)
        y = run(proto, random_feeds(proto, batch=1))[0]
        ops = sorted({x.op_type for x in proto.graph.node})
        print(f"{name:30s} out {list(y.shape)}  ops {' '.join(ops)}")


if __name__ == "__main__":
    main()
