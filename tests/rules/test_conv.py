"""Conv / ConvTranspose: plain, grouped, depthwise (multiplier 1 and 2), 1D/2D/3D.

Each graph:  input -> Conv A -> BN -> ReLU -> Conv B (rule under test) -> ... -> Conv C -> output
"""
import pytest

from conftest import assert_oracle, group_sizes
from onnxprune.testing import Net


def chain(mid, dims=2, image=6):
    n = Net("t", seed=1)
    x = n.input("x", ["N", 4, *([image] * dims)])
    y = n.relu(n.bn(n.conv(x, 4, 8, 3, dims=dims), 8))
    y = mid(n, y)
    n.output(n.conv(y, 8, 3, 1, dims=dims))
    return n.build()


@pytest.mark.parametrize("dims", [1, 2, 3], ids=["conv1d", "conv2d", "conv3d"])
def test_plain_conv(dims):
    res = assert_oracle(chain(lambda n, y: n.relu(n.conv(y, 8, 8, 3, dims=dims)), dims=dims, image=5))
    assert group_sizes(res.analysis) == [(8, 8), (8, 8), (3, 0)]


def test_depthwise_shares_groups_with_its_input():
    res = assert_oracle(chain(lambda n, y: n.relu(n.bn(n.conv(y, 8, 8, 3, group=8), 8))))
    # the depthwise conv adds no group of its own: its channels are its input's
    assert group_sizes(res.analysis) == [(8, 8), (3, 0)]
    conv = [x for x in res.pruned.graph.node if x.op_type == "Conv"][1]
    group = next(a.i for a in conv.attribute if a.name == "group")
    assert group == 4


def test_depthwise_multiplier_two():
    n = Net("t", seed=1)
    x = n.input("x", ["N", 4, 6, 6])
    y = n.relu(n.bn(n.conv(x, 4, 8, 3), 8))
    y = n.relu(n.conv(y, 8, 16, 3, group=8))
    n.output(n.conv(y, 16, 3, 1))
    res = assert_oracle(n.build())
    assert group_sizes(res.analysis) == [(8, 8), (3, 0)]
    w = [t for t in res.pruned.graph.initializer if t.name.startswith("conv_") and len(t.dims) == 4]
    assert any(list(t.dims)[:2] == [8, 1] for t in w)  # 4 kept groups × multiplier 2


def test_grouped_conv_keeps_groups_uniform():
    res = assert_oracle(chain(lambda n, y: n.relu(n.conv(y, 8, 8, 3, group=2))))
    conv = [x for x in res.pruned.graph.node if x.op_type == "Conv"][1]
    assert next(a.i for a in conv.attribute if a.name == "group") == 2
    # in-group positions are tied across groups: 8 channels in 2 groups = 4 atoms
    assert group_sizes(res.analysis)[0] == (4, 4)


@pytest.mark.parametrize("group,cout", [(1, 6), (2, 6), (8, 8)], ids=["plain", "grouped", "depthwise"])
def test_conv_transpose(group, cout):
    def mid(n, y):
        y = n.relu(n.conv_transpose(y, 8, cout, group=group))
        return n.conv(y, cout, 8, 3)

    res = assert_oracle(chain(mid))
    deconv = next(x for x in res.pruned.graph.node if x.op_type == "ConvTranspose")
    g = next(a.i for a in deconv.attribute if a.name == "group")
    assert g == (4 if group == 8 else group)


def test_conv_without_bias_and_with_constant_nodes():
    n = Net("t", seed=2, const_nodes=True)
    x = n.input("x", ["N", 3, 6, 6])
    y = n.relu(n.bn(n.conv(x, 3, 8, 3, bias=False), 8))
    n.output(n.conv(y, 8, 2, 1))
    res = assert_oracle(n.build())
    assert not res.pruned.graph.initializer  # weights stayed Constant nodes
    consts = [x for x in res.pruned.graph.node if x.op_type == "Constant"]
    assert any(list(c.attribute[0].t.dims) == [4, 3, 3, 3] for c in consts)


def test_shared_conv_weight_is_coupled():
    n = Net("t", seed=3)
    x = n.input("x", ["N", 3, 6, 6])
    w = n.weight((8, 3, 3, 3), 27, "shared")
    a = n.op("Conv", [x, w], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    b = n.op("Conv", [n.op("Neg", [x]), w], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = n.relu(n.op("Concat", [a, b], axis=1))
    n.output(n.conv(y, 16, 2, 1))
    res = assert_oracle(n.build())
    # one group of 8: both convs' outputs are the same weight's channels
    assert group_sizes(res.analysis)[0] == (8, 8)
    assert [list(t.dims) for t in res.pruned.graph.initializer if t.name == "shared_1"] == [[4, 3, 3, 3]]


def test_weight_not_constant_is_a_barrier():
    n = Net("t")
    x = n.input("x", ["N", 3, 6, 6])
    w = n.input("w", [8, 8, 3, 3])
    y = n.relu(n.conv(x, 3, 8, 3))
    n.output(n.op("Conv", [y, w], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    from onnxprune.graph import Model
    from onnxprune.analysis import analyze

    proto = n.build()
    an = analyze(Model(proto))
    assert any("weight is not a constant" in r for _, r in an.barriers)
    assert not any(g.prunable for g in an.groups)
