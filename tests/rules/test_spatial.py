"""Pooling, reductions, Resize/Upsample, Pad."""
import numpy as np
import pytest

from conftest import assert_oracle
from onnxprune.graph import Model
from onnxprune.analysis import analyze
from onnxprune.testing import Net


def wrap(mid, opset=17, image=6):
    n = Net("t", seed=1, opset=opset)
    x = n.input("x", ["N", 3, image, image])
    y = n.relu(n.bn(n.conv(x, 3, 8, 3), 8))
    y = mid(n, y)
    n.output(n.conv(y, 8, 2, 1))
    return n.build()


POOLS = [
    ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    ("LpPool", {"kernel_shape": [2, 2]}),
    ("GlobalAveragePool", {}), ("GlobalMaxPool", {}), ("GlobalLpPool", {}),
]


@pytest.mark.parametrize("op,attrs", POOLS, ids=[p for p, _ in POOLS])
def test_pooling(op, attrs):
    assert_oracle(wrap(lambda n, y: n.op(op, [y], **attrs)))


@pytest.mark.parametrize("opset", [13, 18])
def test_reduce_mean_over_space(opset):
    def mid(n, y):
        if opset >= 18:
            return n.op("ReduceMean", [y, n.const(np.array([2, 3], np.int64))], keepdims=1)
        return n.op("ReduceMean", [y], axes=[2, 3], keepdims=1)

    assert_oracle(wrap(mid, opset=opset))


def test_reduce_over_channels_is_a_barrier():
    proto = wrap(lambda n, y: n.op("Add", [y, n.op("ReduceMean", [y], axes=[1], keepdims=1)]), opset=13)
    an = analyze(Model(proto))
    assert not an.groups[0].prunable


@pytest.mark.parametrize("form", ["scales", "sizes", "upsample9"])
def test_resize(form):
    def mid(n, y):
        if form == "scales":
            return n.op("Resize", [y, "", n.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
        if form == "sizes":
            return n.op("Resize", [y, "", "", n.const(np.array([2, 8, 12, 12], np.int64))], mode="linear")
        return n.op("Upsample", [y, n.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")

    res = assert_oracle(wrap(mid, opset=9 if form == "upsample9" else 17))
    if form == "sizes":
        sizes = [t for t in res.pruned.graph.initializer if t.dims == [4] and t.data_type == 7]
        assert any(np.frombuffer(t.raw_data, np.int64)[1] == 4 for t in sizes)


@pytest.mark.parametrize("opset", [9, 13])
def test_pad_spatial_only(opset):
    def mid(n, y):
        if opset < 11:
            return n.op("Pad", [y], pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="reflect")
        return n.op("Pad", [y, n.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))], mode="edge")

    assert_oracle(wrap(mid, opset=opset))


def test_pad_on_channels_is_a_barrier():
    proto = wrap(lambda n, y: n.op("Slice", [n.op("Pad", [y, n.const(np.array([0, 1, 0, 0, 0, 0, 0, 0], np.int64))]),
                                             n.const(np.array([0], np.int64)), n.const(np.array([8], np.int64)),
                                             n.const(np.array([1], np.int64))]))
    an = analyze(Model(proto))
    assert not an.groups[0].prunable
    assert any("pads the channel axis" in r for r in an.groups[0].reasons)
