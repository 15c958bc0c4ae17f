"""The FLOP counter on layers whose cost is known by hand."""
from onnxprune.graph import Model
from onnxprune.cost import count
from onnxprune.testing import Net


def test_conv_gemm_counts():
    n = Net("t")
    x = n.input("x", [1, 3, 8, 8])
    y = n.conv(x, 3, 4, 3)  # 4·8·8 outputs × 3·3·3 MACs, + bias
    y = n.relu(y)  # 256 ops
    n.output(n.gemm(n.flatten(y), 256, 10))  # 256·10 MACs + 10 bias
    c = count(Model(n.build()))
    macs = 4 * 64 * 27 + 2560
    assert c.macs == macs
    assert c.flops == 2 * macs + 256 + 256 + 10
    assert c.params == 4 * 27 + 4 + 2560 + 10


def test_depthwise_and_dynamic_batch():
    n = Net("t")
    x = n.input("x", ["N", 8, 4, 4])
    n.output(n.conv(x, 8, 8, 3, group=8, bias=False))
    assert count(Model(n.build())).macs == 8 * 16 * 9  # per sample


def test_every_rule_states_a_cost():
    """A new op is one rule module: its cost lives there too (the base class says 'unknown')."""
    from onnxprune.rules import registry
    from onnxprune.rules.base import Rule

    missing = sorted(op for (_, op), rule in registry().items() if type(rule).cost is Rule.cost)
    assert not missing, f"rules without a cost: {missing}"


def test_an_op_without_a_cost_is_reported_not_counted_as_zero():
    from onnx import helper

    n = Net("custom", seed=0)
    x = n.input("x", ["N", 4])
    y = n.gemm(x, 4, 8)
    n.output(n.gemm(n.relu(y), 8, 2))
    proto = n.build()
    relu = next(node for node in proto.graph.node if node.op_type == "Relu")
    relu.op_type, relu.domain = "FancyOp", "com.example"  # an op nobody knows
    proto.opset_import.append(helper.make_opsetid("com.example", 1))
    c = count(Model(proto))
    # the unknown op, and the Gemm after it whose input shape inference could not reach
    assert c.unknown == {"com.example.FancyOp": 1, "Gemm": 1}
    assert c.macs == 4 * 8  # the first Gemm is still counted
