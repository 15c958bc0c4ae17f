"""Gemm (transB 0/1, transA), MatMul with a constant weight, bias Add, and barriers."""
import numpy as np
import pytest

from conftest import assert_oracle, group_sizes
from onnxprune.graph import Model
from onnxprune.analysis import analyze
from onnxprune.testing import Net


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_mlp(trans_b):
    #  x[N,12] -> Gemm(16) -> Relu -> Gemm(16) -> Relu -> Gemm(3)
    n = Net("mlp", seed=4)
    x = n.input("x", ["N", 12])
    y = n.relu(n.gemm(x, 12, 16, trans_b=trans_b))
    y = n.relu(n.gemm(y, 16, 16, trans_b=trans_b))
    n.output(n.gemm(y, 16, 3, trans_b=trans_b))
    res = assert_oracle(n.build())
    assert group_sizes(res.analysis) == [(16, 16), (16, 16), (3, 0)]


def test_gemm_trans_a():
    n = Net("t", seed=5)
    x = n.input("x", [6, "N"])
    w = n.weight((6, 10), 6)
    y = n.relu(n.op("Gemm", [x, w], transA=1))  # [N, 10]
    n.output(n.gemm(y, 10, 2))
    res = assert_oracle(n.build())
    assert group_sizes(res.analysis)[0] == (10, 10)


def test_gemm_bias_shapes():
    n = Net("t", seed=6)
    x = n.input("x", [2, 5])
    w1 = n.weight((5, 8), 5)
    b1 = n.const(np.random.default_rng(0).normal(size=(1, 8)).astype(np.float32))
    y = n.relu(n.op("Gemm", [x, w1, b1]))
    w2 = n.weight((8, 3), 8)
    n.output(n.op("Gemm", [y, w2, n.const(np.array([0.5], np.float32))]))
    res = assert_oracle(n.build())
    assert group_sizes(res.analysis)[0] == (8, 8)


def test_matmul_on_3d_input_with_bias_add():
    #  x[N,S,8] -> MatMul(W[8,16]) + b -> Gelu -> MatMul(W[16,8]) + b -> out
    n = Net("ffn", seed=7, opset=20)
    x = n.input("x", ["N", 5, 8])
    y = n.op("Gelu", [n.linear(x, 8, 16)])
    n.output(n.linear(y, 16, 8))
    res = assert_oracle(n.build())
    assert group_sizes(res.analysis) == [(16, 16), (8, 0)]


def test_matmul_contracting_channels_is_a_barrier():
    n = Net("t", seed=8)
    x = n.input("x", ["N", 4, 4])
    y = n.linear(x, 4, 4)
    n.output(n.op("MatMul", [y, n.op("Transpose", [y], perm=[0, 2, 1])]))
    an = analyze(Model(n.build()))
    assert any("summed over by the MatMul" in r for _, r in an.barriers)
    assert not an.groups[0].prunable
