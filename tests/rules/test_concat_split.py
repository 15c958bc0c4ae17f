"""Concat (offsets), Split (explicit/implicit, attribute/input forms), Slice."""
import numpy as np
import pytest

from conftest import assert_oracle, group_sizes
from onnxprune.graph import Model
from onnxprune.analysis import analyze
from onnxprune.testing import Net


def test_concat_offsets():
    #  x -> A(6) -.
    #  x -> B(4) --+-> Concat(10) -> relu -> C(2)
    n = Net("t", seed=1)
    x = n.input("x", ["N", 3, 5, 5])
    a = n.relu(n.bn(n.conv(x, 3, 6, 3), 6))
    b = n.relu(n.bn(n.conv(x, 3, 4, 3), 4))
    y = n.op("Concat", [a, b], axis=1)
    n.output(n.conv(y, 10, 2, 1))
    res = assert_oracle(n.build())
    assert group_sizes(res.analysis) == [(6, 6), (4, 4), (2, 0)]


def test_concat_with_graph_input_pins_that_part():
    n = Net("t", seed=2)
    x = n.input("x", ["N", 3, 5, 5])
    a = n.relu(n.conv(x, 3, 6, 3))
    y = n.op("Concat", [x, a], axis=-3)
    n.output(n.conv(y, 9, 2, 1))
    res = assert_oracle(n.build())
    assert (6, 6) in group_sizes(res.analysis)


def test_concat_on_batch_axis_unifies():
    n = Net("t", seed=3)
    x = n.input("x", ["N", 3, 5, 5])
    a = n.relu(n.conv(x, 3, 6, 3))
    b = n.relu(n.conv(x, 3, 6, 3))
    y = n.op("Concat", [a, b], axis=0)
    n.output(n.conv(y, 6, 2, 1))
    res = assert_oracle(n.build())
    assert group_sizes(res.analysis)[0] == (6, 6)


@pytest.mark.parametrize("form", ["attr11", "input13", "implicit13", "num_outputs18"])
def test_split(form):
    opset = {"attr11": 11, "input13": 13, "implicit13": 13, "num_outputs18": 18}[form]
    n = Net("t", seed=4, opset=opset)
    x = n.input("x", ["N", 3, 5, 5])
    y = n.relu(n.bn(n.conv(x, 3, 8, 3), 8))
    if form == "attr11":
        a, b = n.op("Split", [y], n_out=2, axis=1, split=[5, 3])
    elif form == "input13":
        a, b = n.op("Split", [y, n.const(np.array([5, 3], np.int64))], n_out=2, axis=1)
    elif form == "implicit13":
        a, b = n.op("Split", [y], n_out=2, axis=1)
    else:
        a, b = n.op("Split", [y], n_out=2, axis=1, num_outputs=2)
    sizes = (5, 3) if form in ("attr11", "input13") else (4, 4)
    z = n.add(n.conv(a, sizes[0], 4, 1), n.conv(b, sizes[1], 4, 1))
    n.output(n.conv(n.relu(z), 4, 2, 1))
    res = assert_oracle(n.build())
    split = next(x for x in res.pruned.graph.node if x.op_type == "Split")
    assert split is not None


@pytest.mark.parametrize("start,end", [(2, 7), (-6, -1), (3, 2**62)], ids=["pos", "neg", "to_end"])
def test_slice_channels(start, end):
    n = Net("t", seed=5)
    x = n.input("x", ["N", 3, 5, 5])
    y = n.relu(n.bn(n.conv(x, 3, 8, 3), 8))
    s = n.op("Slice", [y, n.const(np.array([start], np.int64)), n.const(np.array([end], np.int64)),
                       n.const(np.array([1], np.int64))])
    width = len(range(8)[slice(start, end)])
    z = n.add(n.conv(s, width, 4, 1), n.conv(y, 8, 4, 1))
    n.output(n.conv(n.relu(z), 4, 2, 1))
    assert_oracle(n.build())


def test_slice_step_two_is_a_barrier():
    n = Net("t", seed=6)
    x = n.input("x", ["N", 3, 5, 5])
    y = n.relu(n.conv(x, 3, 8, 3))
    s = n.op("Slice", [y, n.const(np.array([0], np.int64)), n.const(np.array([8], np.int64)),
                       n.const(np.array([1], np.int64)), n.const(np.array([2], np.int64))])
    n.output(n.conv(s, 4, 2, 1))
    an = analyze(Model(n.build()))
    assert not an.groups[0].prunable


def test_densenet_style_concat_chain():
    from onnxprune.testing.archs import densenet

    res = assert_oracle(densenet(blocks=(3,)), round_to=2)
    assert all(g.size > 0 for g in res.analysis.groups)


def test_slice_along_other_axes_with_runtime_bounds():
    # Swin's crop x[:, :H, :W] as TorchScript writes it: the bound is read from a shape at run time;
    # the slice does not touch the channel axis, so the channels pass through
    n = Net("t", seed=7)
    x = n.input("x", ["N", 3, "H", 6])
    y = n.relu(n.bn(n.conv(x, 3, 8, 1), 8))
    h = n.op("Slice", [n.op("Shape", [y]), n.const(np.array([2], np.int64)), n.const(np.array([3], np.int64))])
    end = n.op("Sub", [h, n.const(np.array([1], np.int64))])
    s = n.op("Slice", [y, n.const(np.array([0], np.int64)), end, n.const(np.array([2], np.int64))])
    n.output(n.conv(s, 8, 4, 1))
    res = assert_oracle(n.build(), feeds={"x": np.random.default_rng(0).standard_normal((2, 3, 5, 6)).astype(np.float32)})
    assert not res.analysis.barriers, res.analysis.barriers
    assert group_sizes(res.analysis)[0] == (8, 8)
