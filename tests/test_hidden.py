"""Hidden-size (residual stream) pruning: analysis, the hidden-size oracle, planning, CLI."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from conftest import assert_oracle
from onnxprune.analysis import analyze
from onnxprune.graph import Model
from onnxprune.testing import Net


def transformer(c: int = 16, t: int = 5, vocab: int = 11, layers: int = 2, stream_output: bool = True,
                rms: str = "div", seed: int = 0) -> onnx.ModelProto:
    """Embeddings (token + position) → [LayerNorm → attention → +, RMSNorm → FFN → +] × layers →
    LayerNorm → head; the stream itself is also an output (re-expanded after pruning)."""
    n = Net("tiny_transformer", seed=seed, opset=18)
    rng = np.random.default_rng(seed)
    ids = n.input("ids", ["N", t], onnx.TensorProto.INT64)
    x = n.op("Gather", [n.const(rng.normal(0, 1, (vocab, c)).astype(np.float32), "tok_emb"), ids], axis=0)
    x = n.op("Add", [x, n.const(rng.normal(0, 1, (t, c)).astype(np.float32), "pos_emb")])

    def layernorm(y):
        g = n.const(rng.uniform(0.5, 1.5, c).astype(np.float32), "ln_g")
        b = n.const(rng.normal(0, 0.2, c).astype(np.float32), "ln_b")
        return n.op("LayerNormalization", [y, g, b], axis=-1)

    def rmsnorm(y):
        if rms == "mul":
            sq = n.op("Mul", [y, y])
        else:
            sq = n.op("Pow", [y, n.const(np.array(2.0, np.float32))])
        ms = n.op("ReduceMean", [sq, n.const(np.array([-1], np.int64))], keepdims=1)
        ms = n.op("Add", [ms, n.const(np.array(1e-6, np.float32))])
        if rms == "rsqrt":
            y = n.op("Mul", [y, n.op("Reciprocal", [n.op("Sqrt", [ms])])])
        else:
            y = n.op("Div", [y, n.op("Sqrt", [ms])])
        return n.op("Mul", [y, n.const(rng.uniform(0.5, 1.5, c).astype(np.float32), "rms_g")])

    for _ in range(layers):
        h = layernorm(x)
        q, k, v = (n.linear(h, c, c) for _ in range(3))
        s = n.op("Softmax", [n.op("MatMul", [q, n.op("Transpose", [k], perm=[0, 2, 1])])], axis=-1)
        x = n.add(x, n.linear(n.op("MatMul", [s, v]), c, c))
        h = rmsnorm(x)
        x = n.add(x, n.linear(n.relu(n.linear(h, c, 2 * c)), 2 * c, c))
    x = layernorm(x)
    n.output(n.linear(x, c, 3))
    if stream_output:
        n.output(x)
    return n.build()


def test_without_hidden_mode_the_stream_is_pinned():
    an = analyze(Model(transformer()))
    assert not [g for g in an.groups if g.kind == "hidden"]
    assert any("LayerNormalization normalises over the hidden axis" in r for _, r in an.barriers)


def test_hidden_mode_couples_the_stream():
    an = analyze(Model(transformer()), hidden=True)
    hidden = [g for g in an.groups if g.kind == "hidden"]
    assert len(hidden) == 1 and hidden[0].size == 16 and hidden[0].prunable
    members = an.group_members(hidden[0])
    assert any("tok_emb" in s and s.endswith(" out") for s in members)  # embedding table columns
    assert any("pos_emb" in s for s in members)
    assert sum("ln_g" in s for s in members) == 3 and sum("rms_g" in s for s in members) == 2
    assert len(an.hidden_sites) == 5  # 3 LayerNorms + 2 RMSNorm ReduceMeans


@pytest.mark.parametrize("rms", ["div", "mul", "rsqrt"])
@pytest.mark.parametrize("stream_output", [True, False])
def test_hidden_oracle_generated_transformer(rms, stream_output):
    proto = transformer(rms=rms, stream_output=stream_output)
    feeds = {"ids": np.random.default_rng(1).integers(0, 11, (3, 5)).astype(np.int64)}
    res = assert_oracle(proto, ratio=0.0, hidden_ratio=0.25, feeds=feeds)
    assert res.removed == 4
    outs = [o.name for o in res.pruned.graph.output]
    assert [o.name for o in proto.graph.output] == outs
    # plain zeroing of consumers is NOT what removal does: the norms re-normalise
    from onnxprune.testing.oracle import run, zero_consumers

    plain = run(zero_consumers(proto, res.analysis, res.keep_atom), feeds)
    assert max(float(np.abs(a - b).max()) for a, b in zip(plain, res.reference_out)) > 1e-3


def test_hidden_and_ratio_together():
    proto = transformer()
    feeds = {"ids": np.random.default_rng(1).integers(0, 11, (3, 5)).astype(np.int64)}
    res = assert_oracle(proto, ratio=0.5, hidden=8, feeds=feeds)
    kinds = {(g.kind, int((~res.keep_atom[g.atoms]).sum())) for g in res.analysis.groups if g.prunable}
    assert ("hidden", 8) in kinds and ("channels", 16) in kinds


def test_unknown_consumer_pins_the_hidden_group():
    proto = transformer(stream_output=False)
    # an op without a rule reading the stream
    g = proto.graph
    ln_out = [nd for nd in g.node if nd.op_type == "LayerNormalization"][-1].output[0]
    g.node.append(onnx.helper.make_node("Hardmax", [ln_out], ["hm"], axis=-1))
    g.node.append(onnx.helper.make_node("LpNormalization", ["hm"], ["odd"], axis=-1))
    g.output.append(onnx.helper.make_tensor_value_info("odd", onnx.TensorProto.FLOAT, None))
    an = analyze(Model(proto), hidden=True)
    (h,) = [g for g in an.groups if g.kind == "hidden"]
    assert not h.prunable and any("Hardmax" in r or "LpNormalization" in r for r in h.reasons)
    from onnxprune.errors import PlanError
    from onnxprune.importance import score_groups
    from onnxprune.planner import make_plan

    with pytest.raises(PlanError, match="no prunable hidden-size group"):
        make_plan(an, score_groups(an), criterion="l2", hidden_ratio=0.25)


# ------------------------------------------------------------------ real exports (HF, small configs)
@pytest.fixture(scope="module")
def hf_exports(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    import corpus

    out = tmp_path_factory.mktemp("hidden_hf")
    paths = {}
    for kind in ("llama", "vit"):
        for exporter in ("dynamo", "torchscript"):
            path = str(out / f"{kind}_{exporter}.onnx")
            corpus.export(corpus.Spec(kind, "hf", corpus.hf(kind)), exporter, path)
            paths[kind, exporter] = path
    return paths, corpus.make_feeds


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_hidden_oracle_small_llama(hf_exports, exporter):
    """LlamaConfig (2 layers, hidden 64, GQA 4/2): RMSNorm written as Pow → ReduceMean → Add → Sqrt."""
    paths, make_feeds = hf_exports
    proto = onnx.load(paths["llama", exporter])
    res = assert_oracle(proto, ratio=0.0, hidden_ratio=0.25, feeds=make_feeds(proto))
    (h,) = [g for g in res.analysis.groups if g.kind == "hidden"]
    assert h.size == 64 and res.removed == 16
    assert len(res.analysis.hidden_sites) == 5  # 2 layers × 2 RMSNorms + the final one
    assert res.analysis.expanded_outputs  # last_hidden_state keeps its width


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_hidden_oracle_small_vit(hf_exports, exporter):
    """ViTConfig (2 layers, hidden 64): patch-embedding Conv, class token (Expand of a constant,
    Concat), position embedding, LayerNorms. TorchScript reads the patch count at run time
    (Shape → Slice → Concat → Reshape), which follows the pruning (issue 14 item 3)."""
    paths, make_feeds = hf_exports
    proto = onnx.load(paths["vit", exporter])
    res = assert_oracle(proto, ratio=0.0, hidden_ratio=0.25, feeds=make_feeds(proto))
    (h,) = [g for g in res.analysis.groups if g.kind == "hidden"]
    assert h.size == 64 and res.removed == 16 and len(res.analysis.hidden_sites) == 5
    members = " ".join(res.analysis.group_members(h))
    assert "cls_token" in members and "position_embeddings" in members


def test_cli_hidden_ratio_end_to_end(hf_exports, tmp_path):
    """plan → JSON (hidden group reported apart) → prune --plan → validate; prune --hidden-ratio --validate."""
    from onnxprune.cli import main

    paths, make_feeds = hf_exports
    src = paths["llama", "torchscript"]
    plan = tmp_path / "plan.json"
    assert main(["plan", src, "-o", str(plan), "--hidden-ratio", "0.25", "--round-to", "8"]) == 0
    d = json.loads(plan.read_text())
    assert d["settings"]["hidden_mode"] and d["settings"]["hidden_ratio"] == 0.25
    hidden = [g for g in d["groups"] if g["kind"] == "hidden"]
    assert len(hidden) == 1 and len(hidden[0]["remove"]) == 16
    assert not any(g["remove"] for g in d["groups"] if g["kind"] != "hidden")
    out = tmp_path / "p.onnx"
    assert main(["prune", src, "-o", str(out), "--plan", str(plan)]) == 0
    np.savez(tmp_path / "data.npz", **make_feeds(onnx.load(src), batch=4))
    out2 = tmp_path / "p2.onnx"
    rc = main(["prune", src, "-o", str(out2), "--hidden-ratio", "0.25", "--ratio", "0.25", "--validate",
               "--no-latency", "--data", str(tmp_path / "data.npz"), "--min-cosine", "0.5", "--json"])
    assert rc == 0
    pruned = onnx.load(str(out2))
    # the stream is 48 wide inside, 64 at the output (re-expanded)
    emb = [i for i in pruned.graph.initializer if i.dims[:1] == [1000]]
    assert emb and emb[0].dims[1] == 48
    assert [d.dim_value for d in pruned.graph.output[0].type.tensor_type.shape.dim][-1] == 64


def test_layernorm_compensation_with_calibration_reduces_the_error(tmp_path):
    """Least-squares γ/β refits on calibration data bring the pruned model's outputs closer to the
    original's than no compensation."""
    import onnxprune
    from onnxprune.testing.oracle import run

    proto = transformer(c=32, t=6, layers=2, stream_output=False, seed=3)
    src = str(tmp_path / "t.onnx")
    onnx.save(proto, src)
    ids = np.random.default_rng(5).integers(0, 11, (64, 6)).astype(np.int64)
    np.savez(tmp_path / "c.npz", ids=ids)
    y0 = run(proto, {"ids": ids})[0]
    err = {}
    for comp in (True, False):
        out = str(tmp_path / f"p{comp}.onnx")
        res = onnxprune.prune(src, out, hidden_ratio=0.25, hidden_compensate=comp, remove_dead=False, round_to=1, criterion="l2", recover="none",
                              calib=str(tmp_path / "c.npz"))
        err[comp] = float(np.abs(run(onnx.load(out), {"ids": ids})[0] - y0).mean())
        notes = [r for r in res.norm_refits if "refitted (lsq)" in r]
        assert len(notes) == (3 if comp else 0)
    assert err[True] < err[False], err


def test_layernorm_rescale_keeps_mean_and_variance():
    """Without data the refit is a rescale: on the inputs it saw, every kept channel of the
    LayerNorm (normalised over the kept channels) has the original output's mean and variance."""
    from onnxprune.hidden import compensate
    from onnxprune.testing.oracle import run

    n = Net("ln", seed=2, opset=18)
    x = n.input("x", ["N", 8])
    h = n.linear(x, 8, 12)
    g = n.const(np.random.default_rng(1).uniform(0.5, 2, 12).astype(np.float32))
    b = n.const(np.random.default_rng(2).normal(0, 1, 12).astype(np.float32))
    y = n.op("LayerNormalization", [h, g, b], axis=-1, epsilon=1e-5)
    n.output(n.linear(y, 12, 3))
    proto = n.build()
    m = Model(proto)
    an = analyze(m, hidden=True)
    (grp,) = [gr for gr in an.groups if gr.kind == "hidden"]
    keep = np.ones(an.n_atoms, bool)
    keep[grp.atoms[[1, 4, 7]]] = False
    feeds = [{"x": np.random.default_rng(k).normal(0, 1, (50, 8)).astype(np.float32)} for k in range(3)]
    notes = compensate(m, an, keep, feeds, how="rescale")
    assert len(notes) == 1 and "rescale" in notes[0]
    kept = an.keep_mask(an.hidden_sites[0].labels, keep)
    ln = [nd for nd in proto.graph.node if nd.op_type == "LayerNormalization"][0]
    h_all = np.concatenate([run(_with_output(proto, ln.input[0]), f)[-1] for f in feeds]).astype(np.float64)
    g0, b0 = (onnx.numpy_helper.to_array(t) for t in proto.graph.initializer if t.name in ln.input[1:3])
    z = (h_all - h_all.mean(1, keepdims=True)) / np.sqrt(h_all.var(1, keepdims=True) + 1e-5)
    y_orig = (z * g0 + b0)[:, kept]
    hk = h_all[:, kept]
    zk = (hk - hk.mean(1, keepdims=True)) / np.sqrt(hk.var(1, keepdims=True) + 1e-5)
    g1, b1 = (np.asarray(m.const(ln.input[k])) for k in (1, 2))
    y_new = zk * g1[kept] + b1[kept]
    assert np.allclose(y_new.mean(0), y_orig.mean(0), atol=1e-4)
    assert np.allclose(y_new.var(0), y_orig.var(0), rtol=1e-3)
    assert not np.allclose(g1[kept], g0[kept])  # it did change something


def _with_output(proto, name):
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    p.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return p


def test_seq_is_skipped_for_hidden_size_plans(tmp_path):
    """Sequential reconstruction aims at the zeroed full-size model, which is not the pruned model
    when norms re-normalise over the kept hidden channels: with --calib's default (seq) a hidden-size
    plan gives the same model as recover none, and says so."""
    import onnxprune
    from onnxprune.testing.oracle import run

    proto = transformer(c=32, t=6, layers=2, stream_output=False, seed=3)
    src = str(tmp_path / "t.onnx")
    onnx.save(proto, src)
    ids = np.random.default_rng(5).integers(0, 11, (64, 6)).astype(np.int64)
    np.savez(tmp_path / "c.npz", ids=ids)
    outs = {}
    for rec in ("seq", "none"):
        out = str(tmp_path / f"{rec}.onnx")
        res = onnxprune.prune(src, out, hidden_ratio=0.25, remove_dead=False, round_to=1, criterion="l2",
                              recover=rec, calib=str(tmp_path / "c.npz"))
        outs[rec] = run(onnx.load(out), {"ids": ids})[0]
        if rec == "seq":
            assert "seq: skipped (hidden-size pruning)" in res.recovery, res.recovery
    np.testing.assert_allclose(outs["seq"], outs["none"], rtol=1e-5, atol=1e-5)
