"""Einsum: attention and linear layers written with torch.einsum (both exporters keep Einsum nodes),
heads and FFN neurons pruned with the oracle; unsupported forms are barriers with a reason."""
import numpy as np
import onnx
import pytest

from conftest import assert_oracle, group_sizes
from onnxprune.analysis import analyze
from onnxprune.graph import Model
from onnxprune.rules.einsum import parse
from onnxprune.testing import Net

torch = pytest.importorskip("torch")


def test_parse():
    assert parse("bhqd,bhkd->bhqk") == (["bhqd", "bhkd"], "bhqk")
    assert parse("ij,jk") == (["ij", "jk"], "ik")
    assert parse("...ij,jk->...ik") is None


class EinsumBlock(torch.nn.Module):
    """x + attention (q/k/v/o and both attention products as einsum) + an einsum FFN."""

    def __init__(self, dim=32, heads=4, hidden=48):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        p = lambda *s: torch.nn.Parameter(torch.randn(*s, generator=g) / s[-1] ** 0.5)  # noqa: E731
        self.heads = heads
        self.wq, self.wk, self.wv, self.wo = p(dim, dim), p(dim, dim), p(dim, dim), p(dim, dim)
        self.w1, self.b1, self.w2 = p(hidden, dim), torch.nn.Parameter(torch.randn(hidden, generator=g)), p(dim, hidden)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = (torch.einsum("bsd,ed->bse", x, w).reshape(b, s, self.heads, d // self.heads)
                   for w in (self.wq, self.wk, self.wv))
        att = torch.einsum("bqhd,bkhd->bhqk", q, k).softmax(-1)
        y = torch.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, s, d)
        x = x + torch.einsum("bse,oe->bso", y, self.wo)
        h = torch.relu(torch.einsum("bsd,hd->bsh", x, self.w1) + self.b1)
        return x + torch.einsum("bsh,oh->bso", h, self.w2)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from onnxprune.torch import export

    out = tmp_path_factory.mktemp("einsum")
    paths = {}
    for exporter in ("torchscript", "dynamo"):
        paths[exporter] = str(out / f"{exporter}.onnx")
        export(EinsumBlock().eval(), torch.randn(2, 8, 32), paths[exporter], exporter=exporter)
    return paths


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_einsum_attention_and_ffn(exported, exporter):
    proto = onnx.load(exported[exporter])
    feeds = {"input": np.random.default_rng(0).standard_normal((2, 8, 32)).astype(np.float32)}
    res = assert_oracle(proto, ratio=0.5, heads=2, feeds=feeds)
    prunable = sorted((g.kind, g.size) for g in res.analysis.groups if g.prunable)
    assert prunable == [("channels", 48), ("heads", 4)]
    assert res.removed == 24 + 2
    assert sum(n.op_type == "Einsum" for n in proto.graph.node) == 8  # both exporters keep Einsum


def _einsum_net(equation, w_shape=None):
    """relu(linear(x)) (channels on the last axis) into an Einsum with a weight, or with x."""
    n = Net("t", seed=3)
    x = n.input("x", ["N", 6, 8])
    y = n.relu(n.linear(x, 8, 8))
    n.output(n.op("Einsum", [y, n.weight(w_shape, 8) if w_shape else x], equation=equation))
    return n.build()


def test_einsum_linear_is_a_consumer():
    res = assert_oracle(_einsum_net("bni,oi->bno", (5, 8)), ratio=0.5)
    assert group_sizes(res.analysis)[0] == (8, 8)


@pytest.mark.parametrize("equation,w_shape,reason", [
    ("...i,oi->...o", (5, 8), "ellipsis"),
    ("bni,bni->bn", None, "summed over against untracked operand 1"),
])
def test_einsum_unsupported_forms_are_barriers(equation, w_shape, reason):
    an = analyze(Model(_einsum_net(equation, w_shape)))
    assert any(reason in r for _, r in an.barriers)
    assert not an.groups[0].prunable
