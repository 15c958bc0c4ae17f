"""Patterns both torch exporters write differently, from small torch modules exported both ways:
channel counts read at run time (TorchScript: ``Shape → Gather/Slice → Concat → Reshape``, the
chunk bounds of ``x.chunk(2, 1)``), channel shuffle, and SDPA attention. Both exporters must
expose the same groups, and pruning must pass the oracle."""
import numpy as np
import onnx
import pytest

from conftest import assert_oracle

torch = pytest.importorskip("torch")
nn = torch.nn
EXPORTERS = ("torchscript", "dynamo")


def channel_shuffle(x, groups: int):
    # as torchvision writes it: the channel count is read from the tensor at run time
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    return torch.transpose(x, 1, 2).contiguous().view(b, c, h, w)


class ShuffleBlock(nn.Module):
    """ShuffleNetV2's stride-1 unit: chunk, a branch on one half, concat, channel shuffle."""

    def __init__(self, c=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        h = c // 2
        self.branch = nn.Sequential(nn.Conv2d(h, h, 1), nn.BatchNorm2d(h), nn.ReLU(),
                                    nn.Conv2d(h, h, 3, padding=1, groups=h), nn.BatchNorm2d(h),
                                    nn.Conv2d(h, h, 1), nn.BatchNorm2d(h), nn.ReLU())
        self.head = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        x1, x2 = x.chunk(2, dim=1)
        x = channel_shuffle(torch.cat((x1, self.branch(x2)), dim=1), 2)
        return self.head(x)


class PvtMlp(nn.Module):
    """PVT-v2's MLP: tokens → image (C read at run time) → depth-wise conv → tokens (flatten(2))."""

    def __init__(self, c=16, hidden=32, hw=4):
        super().__init__()
        self.hw = hw
        self.embed = nn.Conv2d(3, c, 1)
        self.fc1, self.fc2 = nn.Linear(c, hidden), nn.Linear(hidden, c)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)  # B, N, C
        y = self.fc1(x)
        b, n, c = y.shape
        y = y.transpose(1, 2).view(b, c, self.hw, self.hw)
        y = torch.nn.functional.gelu(self.dw(y)).flatten(2).transpose(1, 2)
        return x + self.fc2(y)


class SdpaAttention(nn.Module):
    """q/k/v projections, heads split from the run-time batch and sequence, torch's SDPA."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = (p(x).view(b, s, self.heads, d // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return x + self.o(y.transpose(1, 2).reshape(b, s, d))


class FusedQkv(nn.Module):
    """One q/k/v projection, split as timm writes it (``reshape(B, N, 3, H, D)``, permute, unbind)
    or as torch's multi-head attention does (``unflatten(-1, (3, E))`` then ``[0]``/``[1]``/``[2]``,
    a dynamo ``select``: Gather along the stack axis)."""

    def __init__(self, dim=32, heads=4, style="timm"):
        super().__init__()
        self.heads, self.style = heads, style
        self.qkv, self.o = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        h = self.heads
        if self.style == "timm":
            q, k, v = self.qkv(x).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            p = self.qkv(x).unflatten(-1, (3, d)).unsqueeze(0).transpose(0, -2).squeeze(-2)
            q, k, v = (p[i].view(b, n, h, d // h).transpose(1, 2) for i in range(3))
        att = (q @ k.transpose(-2, -1) / (d // h) ** 0.5).softmax(-1)
        return x + self.o((att @ v).transpose(1, 2).reshape(b, n, d))


class TorchMha(nn.Module):
    """torch's ``nn.MultiheadAttention`` after a class token, as torchvision's ViT uses it. TorchScript
    writes ``q.view(S, B·H, D)`` (batch merged into the heads, ``Mul(B read at run time, H)``) and
    ``view(B, H, S, D)`` back; the class token's ``expand`` loses the batch symbol."""

    def __init__(self, dim=32, heads=4, need_weights=False, norm=False):
        super().__init__()
        self.need_weights = need_weights
        self.embed, self.head = nn.Linear(dim, dim), nn.Linear(dim, 10)
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()  # pre-norm: a hidden-size stream
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.att = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x):
        x = self.embed(x)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        y = self.norm(x)
        y, w = self.att(y, y, y, need_weights=self.need_weights)
        y = self.head(x + y)
        return (y, w) if self.need_weights else y


MODELS = {
    "mha": (TorchMha, (3, 8, 32)),  # batch 3: the merged B·H axis is checked at B > 1
    "mha_weights": (lambda: TorchMha(need_weights=True), (3, 8, 32)),
    "mha_norm": (lambda: TorchMha(norm=True), (3, 8, 32)),
    "qkv_timm": (lambda: FusedQkv(style="timm"), (2, 8, 32)),
    "qkv_select": (lambda: FusedQkv(style="select"), (2, 8, 32)),
    "shuffle": (ShuffleBlock, (2, 3, 8, 8)),
    "pvt_mlp": (PvtMlp, (2, 3, 4, 4)),
    "sdpa": (SdpaAttention, (2, 8, 32)),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from onnxprune.torch import export

    out = tmp_path_factory.mktemp("shape_reads")
    paths = {}
    for name, (cls, shape) in MODELS.items():
        torch.manual_seed(0)
        module = cls().eval()
        for mod in module.modules():  # non-trivial BN statistics: the oracle is not vacuous
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 1.5)
        for exporter in EXPORTERS:
            paths[name, exporter] = str(out / f"{name}.{exporter}.onnx")
            export(module, torch.randn(*shape), paths[name, exporter], exporter=exporter)
    return paths


def _feeds(name):
    return {"input": np.random.default_rng(1).standard_normal(MODELS[name][1]).astype(np.float32)}


def _prunable(res):
    return sorted((g.kind, g.size, g.n_prunable) for g in res.analysis.groups if g.prunable)


@pytest.mark.parametrize("name,heads", [("shuffle", None), ("pvt_mlp", None), ("sdpa", 2), ("qkv_timm", 2),
                                        ("qkv_select", None), ("mha", 2)])
def test_both_exporters_expose_the_same_groups(exported, name, heads):
    found = {}
    for exporter in EXPORTERS:
        proto = onnx.load(exported[name, exporter])
        res = assert_oracle(proto, ratio=0.5, heads=heads, feeds=_feeds(name))
        assert not [r for _, r in res.analysis.barriers], res.analysis.barriers
        found[exporter] = _prunable(res)
    assert found["torchscript"] == found["dynamo"], found
    if name == "shuffle":  # the shuffled pair (x1 | branch) keeps position i of both halves together
        assert ("channels", 8, 8) in found["dynamo"]
    if name in ("sdpa", "qkv_timm", "mha"):
        assert ("heads", 4, 4) in found["dynamo"]
    if name == "qkv_select":  # channel i of q, k and v together, then whole heads after the split
        assert [g[0] for g in found["dynamo"]] == ["heads"]


def test_torchscript_shuffle_reads_are_rewritten(exported, tmp_path):
    import onnxprune

    out = str(tmp_path / "pruned.onnx")
    onnxprune.prune(exported["shuffle", "torchscript"], out, ratio=0.5, round_to=1)
    pruned = onnx.load(out)
    shapes = [onnx.numpy_helper.to_array(t).tolist() for t in pruned.graph.initializer if t.data_type == 7]
    assert [4] in shapes, "the shuffle's channels per group (8 -> 4) became a constant"


def test_mha_merged_batch_heads_rewritten(exported):
    """TorchScript's nn.MultiheadAttention: the H of ``Mul(B, H)`` and of ``view(B, H, S, D)`` become
    the kept head count, and the pruned model runs at batch sizes other than the analysed 1."""
    import onnxruntime as ort

    from onnxprune.testing import check_oracle

    proto = onnx.load(exported["mha", "torchscript"])
    for batch in (1, 5):
        feeds = {"input": np.random.default_rng(batch).standard_normal((batch, 8, 32)).astype(np.float32)}
        res = check_oracle(proto, ratio=0.5, heads=2, feeds=feeds)
        assert res.removed > 0 and res.max_err <= 1e-4 * max(1.0, res.scale), (batch, res.max_err)
        sess = ort.InferenceSession(res.pruned.SerializeToString(), providers=["CPUExecutionProvider"])
        assert sess.run(None, feeds)[0].shape == (batch, 9, 10)
    ints = [onnx.numpy_helper.to_array(t).tolist() for t in res.pruned.graph.initializer if t.data_type == 7]
    ints += [onnx.numpy_helper.to_array(n.attribute[0].t).tolist() for n in res.pruned.graph.node
             if n.op_type == "Constant" and n.attribute[0].t.data_type == 7]
    assert 2 in ints or [2] in ints, "the H of Mul(B, H) and of view(B, H, S, D) is the kept head count"
    assert 4 not in ints and [4] not in ints, "no head count of 4 is left"


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_mha_attention_weights_pin_heads_with_a_reason(exported, exporter):
    """need_weights=True averages the attention weights over the heads: those heads stay, and (in
    TorchScript) the barrier names the node that reads the merged B·H axis."""
    from onnxprune.analysis import analyze
    from onnxprune.graph import Model

    an = analyze(Model(onnx.load(exported["mha_weights", exporter])))
    heads = [g for g in an.groups if g.kind == "heads"]
    assert all(not g.prunable for g in heads)
    if exporter == "torchscript":
        reasons = " ".join(r for g in heads for r in g.reasons)
        assert "the batch merges into the head axis" in reasons and "before it is split back" in reasons, reasons


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_mha_heads_and_hidden_size(exported, exporter):
    """--hidden-ratio with nn.MultiheadAttention: TorchScript computes the head size as E // H from the
    hidden size at run time; it stays the constant head size (before: a Reshape/Gemm size mismatch)."""
    from conftest import TOL

    from onnxprune.testing import check_oracle

    proto = onnx.load(exported["mha_norm", exporter])
    res = check_oracle(proto, ratio=0.5, heads=2, hidden_ratio=0.5, feeds=_feeds("mha_norm"))
    assert res.removed > 0 and res.max_err <= TOL * max(1.0, res.scale), res.max_err
    kinds = {g.kind: (g.size, g.n_prunable) for g in res.analysis.groups if g.prunable}
    assert kinds.get("hidden") == (32, 32) and kinds.get("heads") == (4, 4), kinds
