"""Loading and saving: old opsets, initializers as inputs, Constant weights, external data,
metadata and IR version kept, stale value_info refreshed, atomic writes, bad input."""
import hashlib
import os

import numpy as np
import onnx
import pytest

import onnxprune
from conftest import assert_oracle
from onnxprune import UnsupportedModelError, ValidationError
from onnxprune.testing import Net, random_feeds, run
from onnxprune.testing.archs import resnet


def small(opset=13, const_nodes=False, seed=0):
    n = Net("small", opset=opset, seed=seed, const_nodes=const_nodes)
    x = n.input("input", ["N", 3, 8, 8])
    y = n.relu(n.bn(n.conv(x, 3, 16, 3), 16))
    y = n.relu(n.bn(n.conv(y, 16, 16, 3), 16))
    n.output(n.gemm(n.flatten(n.gap(y)), 16, 4))
    return n.build()


def save(proto, path):
    onnx.save(proto, str(path))
    return str(path)


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_opset9_initializers_listed_as_inputs(tmp_path):
    proto = small(opset=9)
    proto.ir_version = 3
    for t in proto.graph.initializer:
        proto.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    src = save(proto, tmp_path / "old.onnx")
    out = str(tmp_path / "old.pruned.onnx")
    onnxprune.prune(src, out, ratio=0.5)
    pruned = onnx.load(out)
    assert pruned.ir_version == 3 and pruned.opset_import[0].version == 9
    declared = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in pruned.graph.input}
    for t in pruned.graph.initializer:
        assert declared[t.name] == list(t.dims), t.name  # the input declarations follow the slices
    onnx.checker.check_model(pruned, full_check=True)
    feeds = {"input": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    assert run(pruned, feeds)[0].shape == (2, 4)


def test_constant_node_weights_end_to_end(tmp_path):
    src = save(small(const_nodes=True), tmp_path / "c.onnx")
    out = str(tmp_path / "c.pruned.onnx")
    res = onnxprune.prune(src, out, ratio=0.5, round_to=1)
    assert res.after.params < 0.5 * res.before.params
    assert not onnx.load(out).graph.initializer


def test_oracle_with_constant_nodes():
    assert_oracle(small(const_nodes=True, seed=3))


def test_external_data_round_trip(tmp_path):
    proto = small()
    src = str(tmp_path / "ext.onnx")
    copy = onnx.ModelProto.FromString(proto.SerializeToString())  # saving externalises in place
    onnx.save(copy, src, save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    out = str(tmp_path / "ext.pruned.onnx")
    onnxprune.prune(src, out, ratio=0.5, round_to=1)
    assert os.path.exists(out + ".data")
    pruned = onnx.load(out)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in
               onnx.load(out, load_external_data=False).graph.initializer)
    feeds = random_feeds(proto)
    assert run(pruned, feeds)[0].shape == run(proto, feeds)[0].shape


def test_metadata_ir_and_opset_kept(tmp_path):
    proto = small(opset=17)
    proto.ir_version = 8
    proto.producer_name, proto.producer_version, proto.doc_string = "exporter", "1.2", "doc"
    e = proto.metadata_props.add()
    e.key, e.value = "license", "MIT"
    src = save(proto, tmp_path / "m.onnx")
    out = str(tmp_path / "m.pruned.onnx")
    onnxprune.prune(src, out, ratio=0.25)
    p = onnx.load(out)
    assert (p.ir_version, p.opset_import[0].version, p.producer_name, p.producer_version, p.doc_string) == \
        (8, 17, "exporter", "1.2", "doc")
    props = {m.key: m.value for m in p.metadata_props}
    assert props.pop("license") == "MIT"  # the user's metadata is kept; onnxprune adds its provenance
    assert sorted(props) == ["onnxprune.options", "onnxprune.plan_digest", "onnxprune.source", "onnxprune.version"]


def test_stale_value_info_is_refreshed(tmp_path):
    proto = onnx.shape_inference.infer_shapes(small())
    assert proto.graph.value_info
    src = save(proto, tmp_path / "v.onnx")
    out = str(tmp_path / "v.pruned.onnx")
    onnxprune.prune(src, out, ratio=0.5, round_to=1)
    p = onnx.load(out)
    conv_out = p.graph.node[0].output[0]
    vi = next(v for v in p.graph.value_info if v.name == conv_out)
    assert vi.type.tensor_type.shape.dim[1].dim_value == 8


def test_input_never_modified_and_output_must_differ(tmp_path):
    src = save(small(), tmp_path / "a.onnx")
    before = sha(src)
    onnxprune.prune(src, str(tmp_path / "b.onnx"), ratio=0.5)
    assert sha(src) == before
    with pytest.raises(onnxprune.OnnxPruneError, match="is the input model"):
        onnxprune.prune(src, src, ratio=0.5)
    assert sha(src) == before


def test_nothing_written_when_the_checker_rejects(tmp_path, monkeypatch):
    src = save(small(), tmp_path / "a.onnx")
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous result")
    import onnxprune.rewrite as rw

    real = rw.apply

    def broken(model, an, keep, **kw):
        r = real(model, an, keep, **kw)
        import onnx_ir as ir

        model.graph[0].replace_input_with(1, ir.Value(name="no_such_tensor"))  # an invalid graph
        return r

    monkeypatch.setattr(rw, "apply", broken)
    with pytest.raises(ValidationError, match="nothing was written"):
        onnxprune.prune(src, str(out), ratio=0.5)
    assert out.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".onnxprune-")] == []


@pytest.mark.parametrize("content,match", [
    (None, "no such file"),
    (b"\x00\x01garbage" * 10, "cannot be read as an ONNX model|has no nodes"),
])
def test_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UnsupportedModelError, match=match):
        onnxprune.inspect(str(path))


def test_opset_too_old(tmp_path):
    proto = small(opset=9)
    proto.opset_import[0].version = 7
    proto.graph.node[-1].attribute.pop()  # drop transB-free attrs irrelevant; keep valid-ish
    src = save(proto, tmp_path / "o7.onnx")
    with pytest.raises(UnsupportedModelError, match="opset 7|checker"):
        onnxprune.inspect(src)


def test_full_size_resnet_layout_loads(tmp_path):
    # torchvision-like layout at a small width: groups per stage plus the stem
    an = onnxprune.inspect(save(resnet(50, image=32, width=8), tmp_path / "r.onnx")).analysis
    assert sum(g.prunable for g in an.groups) == 1 + 4 + 2 * 16
