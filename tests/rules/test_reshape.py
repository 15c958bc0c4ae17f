"""Flatten/Reshape into Gemm/MatMul (C·H·W mapping), Transpose, Squeeze/Unsqueeze, Shape."""
import numpy as np
import onnx
import pytest

from conftest import assert_oracle, group_sizes
from onnxprune.graph import Model
from onnxprune.analysis import analyze
from onnxprune.testing import Net


def head(reshape, opset=17, batch="N"):
    #  x -> Conv(8) -> BN -> ReLU -> [reshape to N, 8·4·4] -> Gemm(3)
    n = Net("t", seed=1, opset=opset)
    x = n.input("x", [batch, 3, 4, 4])
    y = n.relu(n.bn(n.conv(x, 3, 8, 3), 8))
    n.output(n.gemm(reshape(n, x, y), 8 * 16, 3))
    return n.build()


def test_flatten_into_gemm():
    res = assert_oracle(head(lambda n, x, y: n.flatten(y)))
    gemm = [t for t in res.pruned.graph.initializer if list(t.dims) == [3, 64]]
    assert gemm, "the Gemm lost 16 columns per removed channel"


@pytest.mark.parametrize("target", [[0, -1], [-1, 128], [2, 128]], ids=["copy_infer", "infer_literal", "literal"])
def test_reshape_into_gemm(target):
    res = assert_oracle(head(lambda n, x, y: n.op("Reshape", [y, n.const(np.array(target, np.int64))]),
                             batch=2 if target[0] == 2 else "N"))
    shapes = [np.frombuffer(t.raw_data, np.int64).tolist() for t in res.pruned.graph.initializer
              if t.data_type == 7 and list(t.dims) == [2]]
    if target[1] == 128:
        assert [target[0], 64] in shapes


def test_reshape_with_runtime_shape():
    # torch's x.view(x.size(0), -1): Shape -> Gather(0) -> Unsqueeze -> Concat([n, -1]) -> Reshape
    def rs(n, x, y):
        shape = n.op("Shape", [y])
        b = n.op("Gather", [shape, n.const(np.array(0, np.int64))], axis=0)
        b = n.op("Unsqueeze", [b, n.const(np.array([0], np.int64))])
        target = n.op("Concat", [b, n.const(np.array([-1], np.int64))], axis=0)
        return n.op("Reshape", [y, target])

    res = assert_oracle(head(rs))
    assert group_sizes(res.analysis)[0] == (8, 8)


def test_channel_count_read_into_a_reshape_target_is_rewritten():
    """TorchScript style: the target's channel entry is read at run time from Shape; it is a static
    channel count, so it becomes the pruned constant."""
    def rs(n, x, y):
        shape = n.op("Shape", [y])
        c = n.op("Gather", [shape, n.const(np.array([1], np.int64))], axis=0)
        target = n.op("Concat", [n.const(np.array([-1], np.int64)), c, n.const(np.array([16], np.int64))], axis=0)
        return n.flatten(n.op("Reshape", [y, target]))

    res = assert_oracle(head(rs))
    assert res.analysis.groups[0].prunable


def test_shape_reading_channels_is_a_barrier():
    """The channel count used as data (here a scale) changes with pruning: a barrier."""
    def rs(n, x, y):
        shape = n.op("Shape", [y])
        c = n.op("Gather", [shape, n.const(np.array([1], np.int64))], axis=0)
        scale = n.op("Cast", [c], to=onnx.TensorProto.FLOAT)
        return n.flatten(n.op("Mul", [y, scale]))

    an = analyze(Model(head(rs)))
    assert not an.groups[0].prunable
    assert any("channel count is read" in r for r in an.groups[0].reasons)


def test_reshape_splitting_channels_prunes_whole_groups():
    # 8 channels -> (2 groups, 4 channels) and back: channels go four at a time
    def rs(n, x, y):
        z = n.op("Reshape", [y, n.const(np.array([0, 2, 4, 16], np.int64))])
        return n.op("Reshape", [z, n.const(np.array([0, -1], np.int64))])

    res = assert_oracle(head(rs))
    g = res.analysis.groups[0]
    assert (g.size, g.kind) == (2, "heads")
    shapes = [np.frombuffer(t.raw_data, np.int64).tolist() for t in res.pruned.graph.initializer
              if t.data_type == 7 and list(t.dims) == [4]]
    assert [0, 1, 4, 16] in shapes


@pytest.mark.parametrize("merged", [[0, -1], [0, 128]], ids=["infer", "literal"])
def test_channel_shuffle_prunes_whole_shuffle_consistent_sets(merged):
    # split into (2 groups, 4), swap the axes, merge: channel j·4 + i lands at i·2 + j. Position i
    # of both groups is one atom (the pruned tensor is still 2 equal groups); the split's 4 and a
    # literal merged count are rewritten, and the shuffled positions of a removed atom are the
    # ones removed downstream.
    def rs(n, x, y):
        z = n.op("Reshape", [y, n.const(np.array([0, 2, 4, 16], np.int64))])
        z = n.op("Transpose", [z], perm=[0, 2, 1, 3])
        return n.op("Reshape", [z, n.const(np.array(merged, np.int64))])

    res = assert_oracle(head(rs), ratio=0.5)
    assert group_sizes(res.analysis)[0] == (4, 4)  # four atoms of 2 channels each
    assert int((~res.keep_atom[res.analysis.groups[0].atoms]).sum()) == 2
    assert not any(g.kind == "heads" for g in res.analysis.groups)


def test_transpose_nhwc_into_matmul():
    #  x -> Conv(8) -> ReLU -> Transpose(NHWC) -> MatMul(W[8,5]) + b -> Transpose back -> out
    n = Net("t", seed=2)
    x = n.input("x", ["N", 3, 4, 4])
    y = n.relu(n.bn(n.conv(x, 3, 8, 3), 8))
    y = n.op("Transpose", [y], perm=[0, 2, 3, 1])
    y = n.relu(n.linear(y, 8, 6))
    y = n.linear(y, 6, 5)
    n.output(n.op("Transpose", [y], perm=[0, 3, 1, 2]))
    res = assert_oracle(n.build())
    assert group_sizes(res.analysis) == [(8, 8), (6, 6), (5, 0)]


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze(opset):
    n = Net("t", seed=3, opset=opset)
    x = n.input("x", ["N", 3, 4, 4])
    y = n.gap(n.relu(n.conv(x, 3, 8, 3)))  # N,8,1,1
    if opset >= 13:
        y = n.op("Squeeze", [y, n.const(np.array([2, 3], np.int64))])
        y = n.op("Unsqueeze", [y, n.const(np.array([0], np.int64))])  # 1,N,8
        y = n.op("Squeeze", [y, n.const(np.array([0], np.int64))])
    else:
        y = n.op("Squeeze", [y], axes=[2, 3])
        y = n.op("Squeeze", [n.op("Unsqueeze", [y], axes=[0])], axes=[0])
    n.output(n.gemm(y, 8, 3))
    assert_oracle(n.build())


def test_flatten_axis_two_merges_after_channel():
    # channels before the flatten axis merge with the batch: a barrier
    n = Net("t", seed=4)
    x = n.input("x", ["N", 3, 4, 4])
    y = n.relu(n.conv(x, 3, 8, 3))
    n.output(n.op("Flatten", [y], axis=2))
    an = analyze(Model(n.build()))
    assert any("merge with the batch" in r for _, r in an.barriers)
