"""A tiny graph builder with NumPy weights, for generated test/benchmark models.

Weights are random but realistic for pruning tests: He-scaled convs, BatchNorm with spread-out
γ and non-zero β/mean (so a BatchNorm bias would leak through a ReLU if producers were zeroed
instead of consumers).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["Net"]

IR_VERSION = 8  # accepted by onnxruntime 1.31 (onnx 1.23 would default to 14)


class Net:
    """Builds an ONNX model node by node.

    Args:
        name: graph name.
        opset: default-domain opset.
        seed: weight seed.
        const_nodes: store weights as ``Constant`` nodes instead of initializers.
    """

    def __init__(self, name: str = "net", *, opset: int = 17, seed: int = 0, const_nodes: bool = False) -> None:
        self.name = name
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.const_nodes = const_nodes
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[str] = []
        self._n = 0

    # ----------------------------------------------------------------- basics
    def _name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def input(self, name: str, shape, elem_type=TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def const(self, value: np.ndarray, base: str = "c") -> str:
        name = self._name(base)
        value = np.asarray(value)
        if self.const_nodes:
            self.nodes.append(helper.make_node("Constant", [], [name], name=f"{name}_const",
                                               value=numpy_helper.from_array(value, name)))
        else:
            self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs, n_out: int = 1, name: str | None = None, **attrs):
        name = name or self._name(op_type.lower())
        outs = [f"{name}_out{k}" if n_out > 1 else f"{name}_out" for k in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs if n_out > 1 else outs[0]

    def output(self, x: str) -> str:
        self.outputs.append(x)
        return x

    def weight(self, shape, fan_in: int, base: str = "w") -> str:
        w = self.rng.normal(0, np.sqrt(2.0 / max(fan_in, 1)), size=shape).astype(np.float32)
        return self.const(w, base)

    # ----------------------------------------------------------------- layers
    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, group: int = 1, bias: bool = True,
             dims: int = 2, pad: int | None = None, name: str | None = None) -> str:
        pad = k // 2 if pad is None else pad
        name = name or self._name("conv")
        w = self.weight((cout, cin // group, *([k] * dims)), cin // group * k**dims, f"{name}.weight")
        ins = [x, w]
        if bias:
            ins.append(self.const(self.rng.normal(0, 0.1, cout).astype(np.float32), f"{name}.bias"))
        return self.op("Conv", ins, name=name, kernel_shape=[k] * dims, strides=[stride] * dims,
                       pads=[pad] * (2 * dims), group=group)

    def conv_transpose(self, x: str, cin: int, cout: int, k: int = 2, stride: int = 2, group: int = 1,
                       bias: bool = True, name: str | None = None) -> str:
        name = name or self._name("deconv")
        w = self.weight((cin, cout // group, k, k), cin * k * k // stride**2, f"{name}.weight")
        ins = [x, w]
        if bias:
            ins.append(self.const(self.rng.normal(0, 0.1, cout).astype(np.float32), f"{name}.bias"))
        return self.op("ConvTranspose", ins, name=name, kernel_shape=[k, k], strides=[stride, stride], group=group)

    def bn(self, x: str, c: int, name: str | None = None) -> str:
        name = name or self._name("bn")
        r = self.rng
        params = [
            self.const(r.uniform(0.2, 1.5, c).astype(np.float32), f"{name}.weight"),
            self.const(r.normal(0.1, 0.3, c).astype(np.float32), f"{name}.bias"),
            self.const(r.normal(0, 0.2, c).astype(np.float32), f"{name}.running_mean"),
            self.const(r.uniform(0.5, 1.5, c).astype(np.float32), f"{name}.running_var"),
        ]
        return self.op("BatchNormalization", [x, *params], name=name, epsilon=1e-5)

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def relu6(self, x: str) -> str:
        if self.opset >= 11:
            return self.op("Clip", [x, self.const(np.array(0, np.float32), "zero"), self.const(np.array(6, np.float32), "six")])
        return self.op("Clip", [x], min=0.0, max=6.0)

    def cbr(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, group: int = 1, act: str = "relu") -> str:
        y = self.bn(self.conv(x, cin, cout, k, stride, group, bias=False), cout)
        if act == "relu":
            return self.relu(y)
        if act == "relu6":
            return self.relu6(y)
        if act == "silu":
            return self.op("Mul", [y, self.op("Sigmoid", [y])])
        return y

    def gemm(self, x: str, k: int, n: int, trans_b: int = 1, name: str | None = None) -> str:
        name = name or self._name("fc")
        shape = (n, k) if trans_b else (k, n)
        w = self.weight(shape, k, f"{name}.weight")
        b = self.const(self.rng.normal(0, 0.1, n).astype(np.float32), f"{name}.bias")
        return self.op("Gemm", [x, w, b], name=name, transB=trans_b)

    def linear(self, x: str, k: int, n: int, name: str | None = None) -> str:
        """MatMul with a constant [K, N] weight, then a bias Add (as exporters write it)."""
        name = name or self._name("linear")
        w = self.weight((k, n), k, f"{name}.weight")
        y = self.op("MatMul", [x, w], name=name)
        return self.op("Add", [y, self.const(self.rng.normal(0, 0.1, n).astype(np.float32), f"{name}.bias")])

    def gap(self, x: str) -> str:
        return self.op("GlobalAveragePool", [x])

    def maxpool(self, x: str, k: int = 2, s: int = 2, pad: int = 0) -> str:
        return self.op("MaxPool", [x], kernel_shape=[k, k], strides=[s, s], pads=[pad] * 4)

    def flatten(self, x: str) -> str:
        return self.op("Flatten", [x], axis=1)

    def add(self, a: str, b: str) -> str:
        return self.op("Add", [a, b])

    # ------------------------------------------------------------------ build
    def build(self, ir_version: int = IR_VERSION) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, [], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  producer_name="onnxprune.testing")
        model.ir_version = ir_version
        inferred = onnx.shape_inference.infer_shapes(model)
        known = {v.name: v for v in inferred.graph.value_info}
        for name in self.outputs:
            v = known.get(name)
            if v is None:
                raise ValueError(f"cannot infer the type of output {name}")
            model.graph.output.append(v)
        onnx.checker.check_model(model, full_check=True)
        return model
