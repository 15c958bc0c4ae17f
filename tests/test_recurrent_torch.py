"""Recurrent models as torch exports them (both exporters): a BiLSTM tagger, a GRU classifier and
a CNN + BiLSTM text recogniser (CTC head) pruned across the CNN/LSTM boundary; an unrolled
LSTMCell goes through the existing rules."""
from __future__ import annotations

import io

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

import onnxprune  # noqa: E402
from conftest import assert_oracle  # noqa: E402
from onnxprune.testing import check_oracle, run  # noqa: E402


class Tagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Linear(8, 16)
        self.lstm = torch.nn.LSTM(16, 12, batch_first=True, bidirectional=True)
        self.out = torch.nn.Linear(24, 5)

    def forward(self, x):
        y, _ = self.lstm(torch.relu(self.emb(x)))
        return self.out(y)


class GRUClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = torch.nn.GRU(8, 12, batch_first=True)
        self.out = torch.nn.Linear(12, 3)

    def forward(self, x):
        _, h = self.gru(x)
        return self.out(h[-1])


class Recogniser(torch.nn.Module):
    """[B, 1, 16, W] → CNN → [W/2, B, C·H] → BiLSTM → per-column class log-probabilities (CTC)."""

    def __init__(self, classes=11):
        super().__init__()
        self.cnn = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.MaxPool2d((2, 1)))
        self.rnn = torch.nn.LSTM(16 * 4, 16, bidirectional=True)
        self.head = torch.nn.Linear(32, classes)

    def forward(self, x):
        f = self.cnn(x)  # [B, 16, 4, W/2]
        b, c, h, w = f.shape
        f = f.permute(3, 0, 1, 2).reshape(w, b, c * h)
        y, _ = self.rnn(f)
        return torch.log_softmax(self.head(y), dim=-1)


def _export(module, x, exporter, dynamic):
    module.eval()
    torch.manual_seed(0)
    with torch.no_grad():  # BatchNorm statistics that are not trivial
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    if exporter == "dynamo":
        dims = {k: torch.export.Dim(f"d{k}", min=2, max=64) for k in dynamic}
        proto = torch.onnx.export(module, (x,), dynamo=True, input_names=["x"],
                                  dynamic_shapes={"x": dims}, verbose=False).model_proto
    else:
        buf = io.BytesIO()
        torch.onnx.export(module, (x,), buf, dynamo=False, input_names=["x"], opset_version=17,
                          dynamic_axes={"x": {k: f"d{k}" for k in dynamic}})
        proto = onnx.load_from_string(buf.getvalue())
    proto.ir_version = min(proto.ir_version, 10)
    return proto


MODELS = {
    "bilstm_tagger": (Tagger, (2, 7, 8), (0, 1), "LSTM", 12),
    "gru_classifier": (GRUClassifier, (2, 7, 8), (0, 1), "GRU", 12),
    "cnn_bilstm_ctc": (Recogniser, (2, 1, 16, 24), (0, 3), "LSTM", 16),
}


@pytest.fixture(scope="module", params=[(m, e) for m in MODELS for e in ("torchscript", "dynamo")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def exported(request):
    name, exporter = request.param
    cls, shape, dynamic, op, hidden = MODELS[name]
    torch.manual_seed(1)
    proto = _export(cls(), torch.randn(*shape), exporter, dynamic)
    return name, exporter, proto, shape, op, hidden


def _feeds(shape, seed=2, longer=False):
    shape = list(shape)
    if longer:
        shape[-1 if len(shape) == 4 else 1] += 8
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def test_pruned_at_half_valid_hidden_halved_fewer_macs(exported, tmp_path):
    name, exporter, proto, shape, op, hidden = exported
    res = assert_oracle(proto, ratio=0.5, feeds=_feeds(shape))
    node = next(n for n in res.pruned.graph.node if n.op_type == op)
    assert onnx.helper.get_attribute_value(next(a for a in node.attribute if a.name == "hidden_size")) == hidden // 2
    # the pruned model still runs at another sequence length (dynamic dims kept)
    out = run(res.pruned, _feeds(shape, longer=True))
    assert out[0].shape[0] in (shape[0], (shape[-1] + 8) // 2)
    src = str(tmp_path / "m.onnx")
    onnx.save(proto, src)
    r = onnxprune.prune(src, str(tmp_path / "p.onnx"), ratio=0.5, round_to=1)
    assert r.after.macs <= 0.7 * r.before.macs, (r.before.macs, r.after.macs)
    assert not r.before.unknown, r.before.unknown


def test_ratio_zero_is_exact(exported):
    name, exporter, proto, shape, op, hidden = exported
    feeds = _feeds(shape)
    res = check_oracle(proto, ratio=0.0, feeds=feeds)
    for a, b in zip(run(proto, feeds), run(res.pruned, feeds)):
        np.testing.assert_array_equal(a, b)


def test_cnn_lstm_boundary_is_pruned(exported):
    name, exporter, proto, shape, op, hidden = exported
    if name != "cnn_bilstm_ctc":
        pytest.skip("the CNN/LSTM boundary is in the recogniser")
    res = check_oracle(proto, ratio=0.5, feeds=_feeds(shape))
    an = res.analysis
    # the last conv's channels, read (×H) by the LSTM's input columns: one group, prunable
    boundary = [g for g in an.groups if any(an.params[k].node.op_type == "LSTM" and an.params[k].role == "in"
                                            for k in g.params)]
    assert len(boundary) == 1 and boundary[0].prunable and boundary[0].size == 16, \
        [(an.group_name(g), g.reasons) for g in an.groups]
    assert any(an.params[k].node.op_type == "Conv" and an.params[k].role == "out" for k in boundary[0].params)
    lstm = next(n for n in res.pruned.graph.node if n.op_type == "LSTM")
    w = next(t for t in res.pruned.graph.initializer if t.name == lstm.input[1])
    assert w.dims[2] == 8 * 4  # the LSTM's input columns followed the last conv's channels (16 → 8, ×H=4)


def test_unrolled_lstm_cell_through_existing_rules():
    """An LSTMCell unrolled by the exporter (MatMul/Gemm + gate split + Sigmoid/Tanh + Mul/Add)."""
    class Cell(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = torch.nn.LSTMCell(6, 8)
            self.out = torch.nn.Linear(8, 3)

        def forward(self, x):  # x [T=4, B, 6], fixed length: the loop unrolls
            h = torch.zeros(x.shape[1], 8)
            c = torch.zeros(x.shape[1], 8)
            for t in range(4):
                h, c = self.cell(x[t], (h, c))
            return self.out(h)

    for exporter in ("torchscript", "dynamo"):
        torch.manual_seed(3)
        proto = _export(Cell(), torch.randn(4, 2, 6), exporter, (1,))
        res = assert_oracle(proto, ratio=0.5, feeds={"x": np.random.default_rng(0).standard_normal((4, 2, 6))
                                                     .astype(np.float32)})
        # the gate split couples a unit's four gate slices, and the hidden weight shared by the
        # four time steps (the first reading the zero state) couples the steps: 8 units, 4 go
        an = res.analysis
        units = [g for g in an.groups if g.size == 8]
        assert len(units) == 1 and units[0].n_prunable == 8 and res.removed == 4
        assert all(g.size == 8 or not g.prunable for g in an.groups)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_gradients_map_onto_recurrent_weights(tmp_path, exporter):
    """The torch recorder maps weight_ih/weight_hh/bias_* of every direction onto ONNX W/R/B
    (gate blocks reordered, directions stacked); Σg·w is invariant under that re-layout."""
    from onnxprune.torch import record_gradients

    torch.manual_seed(4)
    model = GRUClassifier()
    model.gru = torch.nn.GRU(8, 12, batch_first=True, bidirectional=True)
    model.out = torch.nn.Linear(12, 3)
    x = torch.randn(6, 7, 8)
    y = torch.randint(0, 3, (6,))
    path = str(tmp_path / "gru.onnx")
    onnx.save(_export(model, x, exporter, (0, 1)), path)
    rec = record_gradients(model, [(x, y)], onnx_path=path, loss="cross-entropy")
    assert not [u for u in rec.unmapped if "gru" in u], rec.unmapped
    kinds = {m.transform for m in rec.mapping if m.param.startswith("gru.")}
    assert kinds == {"rnn_W", "rnn_R", "rnn_B"}
    # the same batch by hand: Σ g·w of the torch parameters equals the record's on the ONNX tensor
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for m in (m for m in rec.mapping if m.transform == "rnn_W"):
        want = sum(float((p.grad * p).sum()) for n, p in model.named_parameters() if n in m.parts)
        got = float(rec.record.stats[m.onnx]["sum_gw"].sum())
        assert abs(got - want) <= 1e-4 * max(1.0, abs(want))
    out = str(tmp_path / "p.onnx")
    rec.save(str(tmp_path / "g.npz"))
    res = onnxprune.prune(path, out, gradients=str(tmp_path / "g.npz"), criterion="taylor", ratio=0.5, round_to=1)
    assert res.plan.n_removed > 0


def test_hidden_unit_activations_scores_and_recovery(tmp_path):
    """Mean |h| of each unit, recorded through onnxruntime at the consumers of Y, ranks the units;
    least squares refits the consumer of Y and does not lose to plain removal on held-out data."""
    from onnxprune.analysis import analyze
    from onnxprune.calib import load_calibration
    from onnxprune.graph import load_model
    from onnxprune.importance import ScoreData, score_groups
    from onnxprune.record import record_for

    torch.manual_seed(5)
    path = str(tmp_path / "tagger.onnx")
    onnx.save(_export(Tagger(), torch.randn(2, 7, 8), "torchscript", (0, 1)), path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((64, 7, 8)).astype(np.float32))
    held = {"x": rng.standard_normal((32, 7, 8)).astype(np.float32)}
    m = load_model(path)
    m.infer()
    an = analyze(m)
    rec = record_for(an, load_calibration(str(tmp_path / "calib.npz"), m))
    scores = score_groups(an, "activation", data=ScoreData(activations=rec))
    lstm = next(g for g in an.groups if any(an.params[k].node.op_type == "LSTM" and an.params[k].role == "out"
                                            for k in g.params))
    s = scores[lstm.id]
    assert s.shape == (12,) and np.all(np.isfinite(s)) and np.ptp(s) > 0
    ref = run(onnx.load(path), held)[0]
    errs = {}
    for mode in ("none", "lsq"):
        out = str(tmp_path / f"{mode}.onnx")
        onnxprune.prune(path, out, ratio=0.5, criterion="activation", calib=str(tmp_path / "calib.npz"),
                        recover=mode, remove_dead=False)
        errs[mode] = float(np.mean((run(onnx.load(out), held)[0] - ref) ** 2))
    assert errs["lsq"] <= errs["none"] * 1.001, errs
