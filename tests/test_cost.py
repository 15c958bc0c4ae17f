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
