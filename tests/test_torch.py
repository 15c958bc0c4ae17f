"""The torch gradient recorder: name mapping for both exporters (with and without BatchNorm
folding), gradient transforms checked against a recording on the fused model itself, record
checks, and bad input."""
import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import onnxprune  # noqa: E402
from onnxprune import OnnxPruneError  # noqa: E402
from onnxprune.graph import load_model  # noqa: E402
from onnxprune.gradients import GradientRecord  # noqa: E402
from onnxprune.torch import export, record_gradients  # noqa: E402

EXPORTS = ["dynamo", "torchscript"]


class ConvNet(nn.Module):
    def __init__(self, bn: bool, conv_bias: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1, bias=conv_bias)
        self.bn = nn.BatchNorm2d(6) if bn else nn.Identity()
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


class SeqNet(nn.Module):  # Linear on 3-D inputs -> MatMul with a transposed weight
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 12)
        self.b = nn.Linear(12, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))).mean(dim=1)


def randomize_bn(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            with torch.no_grad():
                mod.weight.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.num_features, generator=g) * 0.3)
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.2)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    return m.eval()


def loader(shape, n_batches=3, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, *shape, generator=g), torch.randint(0, classes, (4,), generator=g)) for _ in range(n_batches)]


@pytest.mark.parametrize("exporter", EXPORTS)
@pytest.mark.parametrize("bn", [True, False], ids=["bn", "nobn"])
def test_conv_mapping_and_fold_transform(tmp_path, exporter, bn):
    torch.manual_seed(0)
    m = randomize_bn(ConvNet(bn))
    path = str(tmp_path / "m.onnx")
    data = loader((2, 4, 4))
    rec = record_gradients(m, data, onnx_path=path, exporter=exporter)
    kinds = {x.param: x.transform for x in rec.mapping}
    assert kinds["conv.weight"] == ("bn_fold" if bn else "identity")
    assert kinds["fc.weight"] in ("identity", "transpose")
    if bn:
        assert any("folded into the preceding conv" in u for u in rec.unmapped)
        # the fused conv weight's gradients equal a recording on the explicitly fused model
        s = (m.bn.weight / torch.sqrt(m.bn.running_var + m.bn.eps)).detach()
        fused = ConvNet(bn=False)
        with torch.no_grad():
            fused.conv.weight.copy_(m.conv.weight * s[:, None, None, None])
            fused.conv.bias.copy_((m.conv.bias - m.bn.running_mean) * s + m.bn.bias)
            fused.fc.load_state_dict(m.fc.state_dict())
        ref = record_gradients(fused.eval(), data, onnx_path=str(tmp_path / "fused.onnx"), exporter="torchscript")
        conv_w = next(x.onnx for x in rec.mapping if x.param == "conv.weight")
        ref_w = next(x.onnx for x in ref.mapping if x.param == "conv.weight")
        for stat in ("sum_g", "sum_g2", "sum_gw", "taylor_sq_ax0", "taylor_sq_ax1"):
            np.testing.assert_allclose(rec.record.get(conv_w, stat), ref.record.get(ref_w, stat), rtol=2e-3, atol=1e-6)
        conv_b = next(x.onnx for x in rec.mapping if x.param == "conv.bias")
        ref_b = next(x.onnx for x in ref.mapping if x.param == "conv.bias")
        np.testing.assert_allclose(rec.record.get(conv_b, "sum_g"), ref.record.get(ref_b, "sum_g"), rtol=2e-3, atol=1e-6)
    # the record fits the exported model and drives pruning
    out = str(tmp_path / "p.onnx")
    gpath = str(tmp_path / "g.npz")
    rec.save(gpath)
    res = onnxprune.prune(path, out, criterion="taylor", gradients=gpath, ratio=0.5, round_to=1)
    assert res.after.flops < res.before.flops


@pytest.mark.parametrize("exporter", EXPORTS)
def test_bn_without_conv_bias_maps_beta(tmp_path, exporter):
    m = randomize_bn(ConvNet(bn=True, conv_bias=False), seed=3)
    rec = record_gradients(m, loader((2, 4, 4)), onnx_path=str(tmp_path / "m.onnx"), exporter=exporter)
    kinds = {x.param: x.transform for x in rec.mapping}
    assert kinds["conv.weight"] == "bn_fold" and kinds["bn.bias"] == "bn_bias"


def test_unfused_dynamo_keeps_every_name(tmp_path):
    m = randomize_bn(ConvNet(bn=True))
    prog = torch.onnx.export(m, (torch.zeros(1, 2, 4, 4),), dynamo=True, optimize=False)
    proto = prog.model_proto
    proto.ir_version = min(proto.ir_version, 10)
    path = str(tmp_path / "m.onnx")
    onnx.save(proto, path)
    rec = record_gradients(m, loader((2, 4, 4)), onnx_path=path)
    assert {x.param: (x.onnx, x.transform) for x in rec.mapping}["bn.weight"] == ("bn.weight", "identity")
    assert not rec.unmapped


@pytest.mark.parametrize("exporter", EXPORTS)
def test_linear_on_3d_inputs_maps_transposed(tmp_path, exporter):
    torch.manual_seed(1)
    m = SeqNet().eval()
    data = [(torch.randn(3, 7, 8), torch.randint(0, 4, (3,))) for _ in range(2)]
    rec = record_gradients(m, data, onnx_path=str(tmp_path / "s.onnx"), exporter=exporter)
    kinds = {x.param: x for x in rec.mapping}
    a = kinds["a.weight"]
    # dynamo names it val_N, TorchScript onnx::MatMul_N; both store Wᵀ
    assert a.transform == "transpose" and a.onnx.startswith("val_" if exporter == "dynamo" else "onnx::MatMul_")
    assert not rec.unmapped
    model = load_model(str(tmp_path / "s.onnx"))
    assert rec.record.get(a.onnx, "sum_g").shape == model.const(a.onnx).shape
    # transposed stats: Σg of W.T equals (Σg of W).T, computed directly
    g = torch.zeros_like(m.a.weight)
    for x, y in data:
        m.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        g += m.a.weight.grad
    want = g.numpy().T
    np.testing.assert_allclose(rec.record.get(a.onnx, "sum_g"), want, rtol=1e-4, atol=1e-7)


def test_record_for_another_model_is_refused(tmp_path):
    m1, m2 = randomize_bn(ConvNet(True), 1), randomize_bn(ConvNet(True), 2)
    torch.manual_seed(5)
    m2.conv.weight.data += 0.1
    p1, p2 = str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx")
    rec = record_gradients(m1, loader((2, 4, 4)), onnx_path=p1)
    export(m2, torch.zeros(1, 2, 4, 4), p2)
    gpath = str(tmp_path / "a.npz")
    rec.save(gpath)
    with pytest.raises(OnnxPruneError, match="fingerprint|lacks|shapes"):
        onnxprune.prune(p2, str(tmp_path / "x.onnx"), criterion="taylor", gradients=gpath, ratio=0.5)


def test_bad_input(tmp_path):
    m = ConvNet(False).eval()
    with pytest.raises(OnnxPruneError, match="no batch"):
        record_gradients(m, [], onnx_path=str(tmp_path / "e.onnx"))
    bad = [(torch.full((2, 2, 4, 4), float("inf")), torch.tensor([0, 1]))]
    with pytest.raises(OnnxPruneError, match="non-finite gradients .*conv"):
        record_gradients(m, bad, onnx_path=str(tmp_path / "n.onnx"))
    with pytest.raises(OnnxPruneError, match="needs labels"):
        record_gradients(m, [torch.randn(2, 2, 4, 4)], onnx_path=str(tmp_path / "l.onnx"))
    # a record file with NaN is refused when loaded
    rec = record_gradients(m, loader((2, 4, 4)), onnx_path=str(tmp_path / "ok.onnx"), loss="pseudo-label")
    name = rec.mapping[0].onnx
    rec.record.stats[name]["sum_g"] = rec.record.stats[name]["sum_g"] * np.nan
    rec.save(str(tmp_path / "nan.npz"))
    with pytest.raises(OnnxPruneError, match="non-finite gradients in"):
        GradientRecord.load(str(tmp_path / "nan.npz"))


def test_clipping_and_health(tmp_path):
    m = ConvNet(False).eval()
    m.unused = nn.Parameter(torch.ones(3))
    rec = record_gradients(m, loader((2, 4, 4), n_batches=4), onnx_path=str(tmp_path / "c.onnx"),
                           clip_grad_norm=1e-6, loss="fisher")
    clip = rec.record.meta["clipping"]
    assert clip == {"mode": "norm", "max": 1e-6, "clipped_batches": 4}
    total = sum(float(np.linalg.norm(rec.record.get(x.onnx, "sum_g"))) for x in rec.mapping)
    assert total <= 4 * 1e-6 * 1.01  # clipped before accumulation
    assert "unused" not in rec.health or rec.health["unused"]["flag"] in ("zero gradient", "")


def test_sparsify_by_gradients(tmp_path, capsys):
    from onnxprune.unstructured import sparsify

    m = randomize_bn(ConvNet(bn=True))
    path = str(tmp_path / "m.onnx")
    rec = record_gradients(m, loader((2, 4, 4)), onnx_path=path)
    out = str(tmp_path / "s.onnx")
    res = sparsify(path, out, gradients=rec.record, ratio=0.5)
    assert abs(res.zeroed / res.total - 0.5) < 0.02
    assert res.file_bytes[1] == res.file_bytes[0] or abs(res.file_bytes[1] - res.file_bytes[0]) < 64
    assert res.gzip_bytes[1] < res.gzip_bytes[0]
    pruned = load_model(out)
    w = next(x.onnx for x in rec.mapping if x.param == "fc.weight")
    assert (pruned.const(w) == 0).mean() > 0.2
    with pytest.raises(OnnxPruneError, match="exactly one"):
        sparsify(path, out, gradients=rec.record, ratio=0.5, threshold=1.0)
    import json

    from onnxprune.cli import main

    grads = str(tmp_path / "m.grads.npz")
    rec.record.save(grads)
    assert main(["sparsify", path, "-o", out, "--gradients", grads, "--ratio", "0.5", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["schema_version"] == 1 and abs(d["zeroed"] / d["total"] - 0.5) < 0.02
    assert d["gzip_bytes"]["after"] < d["gzip_bytes"]["before"]
