"""Activations, per-channel constants, residual Add, SE, x·sigmoid(x), PRelu, Softmax."""
import numpy as np
import pytest

from conftest import assert_oracle, group_sizes
from onnxprune.graph import Model
from onnxprune.analysis import analyze
from onnxprune.testing import Net

ACTS = [
    ("Relu", {}), ("LeakyRelu", {"alpha": 0.1}), ("Sigmoid", {}), ("HardSigmoid", {}), ("HardSwish", {}),
    ("Tanh", {}), ("Elu", {}), ("Selu", {}), ("Softplus", {}), ("Mish", {}), ("Gelu", {}), ("Celu", {}),
    ("Softsign", {}), ("Abs", {}), ("Erf", {}), ("Identity", {}), ("Dropout", {}),
]


def conv_act_conv(act, attrs, opset=20):
    #  x -> Conv(8) -> BN -> ACT -> Conv(2)
    n = Net("t", seed=1, opset=opset)
    x = n.input("x", ["N", 3, 5, 5])
    y = n.op(act, [n.bn(n.conv(x, 3, 8, 3), 8)], **attrs)
    n.output(n.conv(y, 8, 2, 1))
    return n.build()


@pytest.mark.parametrize("act,attrs", ACTS, ids=[a for a, _ in ACTS])
def test_activation_passes_channels(act, attrs):
    res = assert_oracle(conv_act_conv(act, attrs))
    assert group_sizes(res.analysis) == [(8, 8), (2, 0)]


@pytest.mark.parametrize("opset", [9, 13])
def test_clip_relu6_attr_and_input_forms(opset):
    n = Net("t", seed=2, opset=opset)
    x = n.input("x", ["N", 3, 5, 5])
    y = n.relu6(n.bn(n.conv(x, 3, 8, 3), 8))
    n.output(n.conv(y, 8, 2, 1))
    assert_oracle(n.build())


@pytest.mark.parametrize("op", ["Add", "Mul", "Sub", "Div"])
@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1, 1)], ids=["c11", "1c11"])
def test_per_channel_constant(op, shape):
    n = Net("t", seed=3)
    x = n.input("x", ["N", 3, 5, 5])
    c = n.const(np.random.default_rng(0).uniform(0.5, 2, shape).astype(np.float32))
    y = n.relu(n.op(op, [n.conv(x, 3, 8, 3), c]))
    n.output(n.conv(y, 8, 2, 1))
    res = assert_oracle(n.build())
    dims = {t.name: list(t.dims) for t in res.pruned.graph.initializer}
    assert dims[c] == [4 if s == 8 else s for s in shape]


def test_scalar_constant_is_left_alone():
    n = Net("t", seed=4)
    x = n.input("x", ["N", 3, 5, 5])
    c = n.const(np.array(0.5, np.float32))
    y = n.relu(n.op("Mul", [n.conv(x, 3, 8, 3), c]))
    n.output(n.conv(y, 8, 2, 1))
    assert_oracle(n.build())


def test_prelu_per_channel_slope():
    n = Net("t", seed=5)
    x = n.input("x", ["N", 3, 5, 5])
    slope = n.const(np.random.default_rng(0).uniform(0, 0.3, (8, 1, 1)).astype(np.float32))
    y = n.op("PRelu", [n.bn(n.conv(x, 3, 8, 3), 8), slope])
    n.output(n.conv(y, 8, 2, 1))
    assert_oracle(n.build())


def test_residual_add_couples_groups():
    #  x -> A(8) -> relu -> B(8) ---+--> Add -> relu -> C(2)
    #              `-----------------'
    n = Net("t", seed=6)
    x = n.input("x", ["N", 3, 5, 5])
    a = n.relu(n.bn(n.conv(x, 3, 8, 3), 8))
    b = n.bn(n.conv(a, 8, 8, 3), 8)
    y = n.relu(n.add(a, b))
    n.output(n.conv(y, 8, 2, 1))
    res = assert_oracle(n.build())
    assert group_sizes(res.analysis) == [(8, 8), (2, 0)]  # A and B are one group


def test_squeeze_excitation_and_silu():
    n = Net("t", seed=7)
    x = n.input("x", ["N", 3, 6, 6])
    y = n.cbr(x, 3, 8, 3, act="silu")
    s = n.gap(y)
    s = n.relu(n.conv(s, 8, 4, 1))
    s = n.op("Sigmoid", [n.conv(s, 4, 8, 1)])
    y = n.op("Mul", [y, s])
    n.output(n.conv(y, 8, 2, 1))
    res = assert_oracle(n.build())
    # the SE expansion conv's outputs join the main group; the squeeze conv is its own group
    assert group_sizes(res.analysis) == [(8, 8), (4, 4), (2, 0)]


def test_spatial_mask_broadcast_over_channels():
    n = Net("t", seed=8)
    x = n.input("x", ["N", 3, 5, 5])
    y = n.relu(n.conv(x, 3, 8, 3))
    mask = n.op("Sigmoid", [n.conv(x, 3, 1, 3)])  # [N,1,H,W]
    n.output(n.conv(n.op("Mul", [y, mask]), 8, 2, 1))
    res = assert_oracle(n.build())
    assert (8, 8) in group_sizes(res.analysis)


def test_untracked_activation_with_channels_pins():
    n = Net("t", seed=9)
    x = n.input("x", ["N", 3, 5, 5])
    other = n.input("other", ["N", 8, 5, 5])
    y = n.relu(n.add(n.conv(x, 3, 8, 3), other))
    n.output(n.conv(y, 8, 2, 1))
    an = analyze(Model(n.build()))
    assert not an.groups[0].prunable
    assert "not a channel-tracked tensor" in an.groups[0].reasons[0]


@pytest.mark.parametrize("axis,prunable", [(1, False), (2, True)])
def test_softmax_over_channels_is_a_barrier(axis, prunable):
    n = Net("t", seed=10)
    x = n.input("x", ["N", 3, 5, 5])
    y = n.op("Softmax", [n.conv(x, 3, 8, 3)], axis=axis)
    n.output(n.conv(y, 8, 2, 1))
    proto = n.build()
    an = analyze(Model(proto))
    assert an.groups[0].prunable is prunable
    if prunable:
        assert_oracle(proto)


def test_unknown_op_is_a_barrier_with_reason():
    n = Net("t", seed=11)
    x = n.input("x", ["N", 3, 5, 5])
    y = n.op("LRN", [n.conv(x, 3, 8, 3)], size=3)
    n.output(n.conv(y, 8, 2, 1))
    an = analyze(Model(n.build()))
    assert not an.groups[0].prunable
    assert any("no rule for op LRN" in r for r in an.groups[0].reasons)


def test_tensor_read_inside_an_if_branch_is_pinned():
    from onnx import TensorProto, helper

    n = Net("t", seed=12)
    x = n.input("x", ["N", 3, 5, 5])
    cond = n.input("cond", [], TensorProto.BOOL)
    y = n.relu(n.conv(x, 3, 8, 3))
    branch_out = helper.make_tensor_value_info("b_out", TensorProto.FLOAT, None)
    then = helper.make_graph([helper.make_node("Identity", [y], ["b_out"])], "then", [], [branch_out])
    other = helper.make_graph([helper.make_node("Neg", [y], ["b_out"])], "else", [], [branch_out])
    n.nodes.append(helper.make_node("If", [cond], ["if_out"], then_branch=then, else_branch=other))
    n.outputs.append("if_out")
    graph = helper.make_graph(n.nodes, "t", n.inputs, [helper.make_tensor_value_info("if_out", TensorProto.FLOAT,
                                                                                      None)], n.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    an = analyze(Model(proto))
    assert not an.groups[0].prunable
    assert any("read inside a subgraph" in r for r in an.groups[0].reasons)


def test_nan_guard_and_mask_predicates_pass_channels():
    """SDPA exports guard the attention with ``Where(IsNaN(p), 0, p)``; masks compare and combine
    (``Equal``/``Not``/``And``): element-wise on the channel axis, so channels pass through."""
    n = Net("pred", seed=9)
    x = n.input("x", ["N", 6])
    y = n.relu(n.gemm(x, 6, 8))
    keep = n.op("Not", [n.op("IsNaN", [y])])
    big = n.op("Greater", [y, n.const(np.full(8, 0.1, np.float32))])  # per-channel threshold: sliced
    y = n.op("Where", [n.op("And", [keep, big]), y, n.const(np.zeros((), np.float32))])
    n.output(n.gemm(y, 8, 2))
    res = assert_oracle(n.build(), ratio=0.5)
    assert group_sizes(res.analysis)[0] == (8, 8)


@pytest.mark.parametrize("bias_is_output", [False, True])
def test_head_bias_gathered_from_a_constant_table_is_sliced(bias_is_output):
    # T5's relative position bias: table[buckets, heads] gathered by a bucket index, transposed to
    # [1, heads, q, k] and added to the attention scores: the table's head axis is sliced with heads
    n = Net("t", seed=7)
    x = n.input("x", ["N", 6, 8])
    heads = [n.op("Transpose", [n.op("Reshape", [n.linear(x, 8, 8), n.const(np.array([0, 0, 2, 4], np.int64))])],
                  perm=[0, 2, 1, 3]) for _ in range(3)]
    q, k, v = heads
    scores = n.op("MatMul", [q, n.op("Transpose", [k], perm=[0, 1, 3, 2])])
    buckets = n.const(np.random.default_rng(0).integers(0, 5, (6, 6)).astype(np.int64))
    table = n.weight((5, 2), 1)
    bias = n.op("Unsqueeze", [n.op("Transpose", [n.op("Gather", [table, buckets])], perm=[2, 0, 1]),
                              n.const(np.array([0], np.int64))])
    att = n.op("Softmax", [n.op("Add", [scores, bias])], axis=-1)
    y = n.op("Reshape", [n.op("Transpose", [n.op("MatMul", [att, v])], perm=[0, 2, 1, 3]),
                         n.const(np.array([0, 0, 8], np.int64))])
    n.output(n.linear(y, 8, 8))
    if bias_is_output:  # read elsewhere: slicing the table would change that output
        n.output(bias)
        an = analyze(Model(n.build()))
        assert not any(g.prunable for g in an.groups if g.kind == "heads")
        assert any("derived from a per-channel constant" in r for g in an.groups for r in g.reasons)
        return
    res = assert_oracle(n.build(), heads=1)
    assert [g.kind for g in res.analysis.groups if g.prunable] == ["heads"]
    table_axes = [p for p in res.analysis.params if p.tensor == table]
    assert [(p.axis, p.role) for p in table_axes] == [(1, "affine")]
    sliced = next(t for t in res.pruned.graph.initializer if t.name == table)
    assert list(sliced.dims) == [5, 1]
