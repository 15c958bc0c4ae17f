"""BatchNormalization (unfused, 2-D and 4-D), InstanceNormalization; LayerNorm is a barrier."""
import numpy as np

from conftest import assert_oracle, group_sizes
from onnxprune.graph import Model
from onnxprune.analysis import analyze
from onnxprune.testing import Net


def test_batchnorm_leaks_bias_so_consumers_are_zeroed():
    n = Net("t", seed=1)
    x = n.input("x", ["N", 3, 5, 5])
    y = n.relu(n.bn(n.conv(x, 3, 8, 3), 8))
    n.output(n.conv(y, 8, 2, 1))
    res = assert_oracle(n.build())
    bn = next(x for x in res.pruned.graph.node if x.op_type == "BatchNormalization")
    dims = {t.name: list(t.dims) for t in res.pruned.graph.initializer}
    assert all(dims[i] == [4] for i in bn.input[1:])


def test_batchnorm_1d_after_gemm():
    n = Net("t", seed=2)
    x = n.input("x", ["N", 6])
    y = n.relu(n.bn(n.gemm(x, 6, 10), 10))
    n.output(n.gemm(y, 10, 2))
    res = assert_oracle(n.build())
    assert group_sizes(res.analysis)[0] == (10, 10)
    members = res.analysis.group_members(res.analysis.groups[0])
    assert any(m.endswith("scale") for m in members)


def test_instance_norm():
    n = Net("t", seed=3)
    x = n.input("x", ["N", 3, 5, 5])
    y = n.conv(x, 3, 6, 3)
    s = n.const(np.random.default_rng(0).uniform(0.5, 1.5, 6).astype(np.float32))
    b = n.const(np.random.default_rng(1).normal(0, 0.5, 6).astype(np.float32))
    y = n.relu(n.op("InstanceNormalization", [y, s, b]))
    n.output(n.conv(y, 6, 2, 1))
    assert_oracle(n.build())


def test_layernorm_over_channels_is_a_barrier():
    n = Net("t", seed=4)
    x = n.input("x", ["N", 6])
    y = n.gemm(x, 6, 8)
    g = n.const(np.ones(8, np.float32))
    y = n.op("LayerNormalization", [y, g], axis=-1)
    n.output(n.gemm(y, 8, 2))
    an = analyze(Model(n.build()))
    assert an.barriers and "LayerNormalization normalises over the hidden axis" in an.barriers[0][1]
    assert not an.groups[0].prunable
    assert "LayerNormalization" in an.groups[0].reasons[0]
