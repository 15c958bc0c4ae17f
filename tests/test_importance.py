"""Scorers on hand-made weights: which channel goes first is known in advance."""
import numpy as np
import pytest

from onnxprune import PlanError
from onnxprune.graph import Model
from onnxprune.analysis import analyze
from onnxprune.importance import score_groups
from onnxprune.testing import Net


def two_convs(scale_out, gamma):
    #  x -> A(4) -> BN(γ) -> Relu -> B(2)   A's filter c scaled by scale_out[c]
    n = Net("t", seed=0)
    x = n.input("x", ["N", 2, 4, 4])
    w = np.ones((4, 2, 3, 3), np.float32) * np.array(scale_out, np.float32)[:, None, None, None]
    a = n.op("Conv", [x, n.const(w, "A.weight")], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    g = n.const(np.array(gamma, np.float32))
    bn = n.op("BatchNormalization", [a, g, n.const(np.zeros(4, np.float32)), n.const(np.zeros(4, np.float32)),
                                     n.const(np.ones(4, np.float32))])
    wb = np.ones((2, 4, 1, 1), np.float32)
    n.output(n.op("Conv", [n.relu(bn), n.const(wb, "B.weight")], kernel_shape=[1, 1]))
    return analyze(Model(n.build()))


def test_l1_l2_rank_by_weight_size():
    an = two_convs([1, 3, 2, 0.5], [1, 1, 1, 1])
    for c in ("l1", "l2"):
        s = score_groups(an, c)[0]
        assert list(np.argsort(s)) == [3, 0, 2, 1]


def test_bn_ranks_by_gamma_and_falls_back():
    an = two_convs([1, 1, 1, 1], [0.1, -2.0, 0.5, 1.0])
    s = score_groups(an, "bn")
    assert list(np.argsort(s[0])) == [0, 2, 3, 1]
    assert 0 not in s.notes


def test_bn_fallback_is_noted():
    n = Net("t")
    x = n.input("x", ["N", 3])
    n.output(n.gemm(n.relu(n.gemm(x, 3, 5)), 5, 2))
    an = analyze(Model(n.build()))
    s = score_groups(an, "bn")
    assert "scored with l2" in s.notes[0]


def test_normalised_and_seeded():
    an = two_convs([1, 3, 2, 0.5], [1, 1, 1, 1])
    s = score_groups(an, "l2", normalize="mean")[0]
    assert np.isclose(s.mean(), 1.0)
    r1, r2 = score_groups(an, "random", seed=1)[0], score_groups(an, "random", seed=1)[0]
    assert np.array_equal(r1, r2)


@pytest.mark.parametrize("kw", [dict(criterion="nope"), dict(reduce="median"), dict(normalize="z")])
def test_unknown_options(kw):
    an = two_convs([1, 1, 1, 1], [1, 1, 1, 1])
    kw.setdefault("criterion", "l2")
    with pytest.raises(PlanError, match="unknown"):
        score_groups(an, **kw)
