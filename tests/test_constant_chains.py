"""Issue 8 item 3: channel parameters reached through constant chains, and int8 models.

Fixtures come from ``scripts/make_chain_models.py``:
(a) Caffe2-style BatchNorm as ``Mul(x, Unsqueeze(w)) → Add(x, Unsqueeze(b))`` (also Reshape and
    Constant-node variants, after a real BatchNormalization, and in a DenseNet-style block);
(b) Conv/Gemm/MatMul weights through shape-only chains (Cast fp16→fp32, Transpose, Reshape,
    Squeeze, Identity, Flatten, Expand);
(c) int8: a QDQ ResNet (per-channel and per-tensor), a QOperator CNN (QLinearConv) and a
    dynamically quantised MLP (MatMulInteger).
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from conftest import assert_oracle
from onnxprune.graph import Model
from onnxprune.analysis import analyze
from onnxprune.testing import check_oracle, random_feeds, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("make_chain_models", os.path.join(ROOT, "scripts", "make_chain_models.py"))
mcm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mcm)

# name -> (builder, prunable channels expected: every hidden channel; only the output's are kept)
FLOAT_MODELS = {
    "caffe2_bn_unsqueeze": (lambda: mcm.caffe2_bn_net("unsqueeze", seed=1), 12 + 16),
    "caffe2_bn_reshape": (lambda: mcm.caffe2_bn_net("reshape", seed=2), 12 + 16),
    "caffe2_bn_constant": (lambda: mcm.caffe2_bn_net("constant", seed=3), 12 + 16),
    "bn_then_affine": (lambda: mcm.bn_then_affine_net(seed=4), 12 + 8),
    "caffe2_densenet": (lambda: mcm.caffe2_densenet(seed=5), 8 + 3 * 12 + 3 * 6 + 10),
    **{f"conv_chain_{c}": ((lambda c=c: mcm.conv_chain_net(c, seed=6)), 12 + 10) for c in mcm.CONV_CHAINS},
    **{f"fc_chain_{c}": ((lambda c=c: mcm.fc_chain_net(c, seed=7)), 24 + 16) for c in mcm.FC_CHAINS},
}


def _copy(proto):
    c = onnx.ModelProto()
    c.CopyFrom(proto)
    return c


def _cos(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


# ------------------------------------------------------------------ (a), (b): float chains
@pytest.mark.parametrize("name", sorted(FLOAT_MODELS))
def test_chain_does_not_pin_groups(name):
    build, expected = FLOAT_MODELS[name]
    an = analyze(Model(build()))
    assert not an.barriers, f"barriers: {an.barriers}"
    pinned = [(an.group_name(g), g.reasons[:1]) for g in an.groups if g.n_prunable < g.size]
    assert sum(g.n_prunable for g in an.groups) == expected, f"pinned groups: {pinned}"


@pytest.mark.parametrize("name", sorted(FLOAT_MODELS))
def test_chain_oracle_half(name):
    assert_oracle(FLOAT_MODELS[name][0](), ratio=0.5)


@pytest.mark.parametrize("name", sorted(FLOAT_MODELS))
def test_chain_ratio0_is_exact(name):
    proto = FLOAT_MODELS[name][0]()
    res = check_oracle(proto, ratio=0.0)
    assert res.removed == 0
    feeds = random_feeds(proto, seed=1)
    for a, b in zip(run(proto, feeds), run(res.pruned, feeds)):
        np.testing.assert_array_equal(a, b)


def test_fp16_chain_keeps_storage_and_slices_reshape():
    """The fp16 weight stays fp16 (sliced, not folded to float32) and the Reshape target follows."""
    proto = mcm.conv_chain_net("cast_transpose_reshape", seed=8)
    res = assert_oracle(proto, ratio=0.5)
    inits = {t.name: t for t in res.pruned.graph.initializer}
    fp16 = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    for t in fp16:
        assert t.name in inits and inits[t.name].data_type == onnx.TensorProto.FLOAT16, t.name
    assert any(list(inits[t.name].dims) != list(t.dims) for t in fp16), "no fp16 weight was sliced"


# ------------------------------------------------------------------------------- (c) QDQ
@pytest.fixture(scope="module", params=[(True, "uint8"), (False, "int8")], ids=["per_channel_u8", "per_tensor_s8"])
def qdq(request):
    per_channel, act = request.param
    return per_channel, mcm.qdq_resnet(per_channel=per_channel, activation=act)


def _int_inits(proto):
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer
            if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)}


def _weight_dqs(proto):
    """DequantizeLinear nodes whose x is an integer initializer with ndim ≥ 2 (weights)."""
    ints = _int_inits(proto)
    return [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in ints
            and ints[n.input[0]].ndim >= 2]


@pytest.fixture(scope="module")
def qdq_pruned(qdq):
    per_channel, proto = qdq
    res = check_oracle(_copy(proto), ratio=0.5, batch=1)
    return per_channel, proto, res


def test_qdq_resnet_prunes_and_matches_reference(qdq_pruned):
    _, proto, res = qdq_pruned
    assert res.removed > 0, "nothing was removed"
    feeds = random_feeds(proto, batch=1, seed=0)
    new = run(res.pruned, feeds)
    for a, b in zip(res.reference_out, new):
        assert _cos(a, b) > 0.999, _cos(a, b)
    # quantised activations: a rounding tie may flip one step; far below the output scale
    assert res.max_err <= 0.05 * max(1.0, res.scale), (res.max_err, res.scale)


def test_qdq_stays_quantized(qdq_pruned):
    _, proto, res = qdq_pruned
    before, after = _weight_dqs(proto), _weight_dqs(res.pruned)
    assert len(after) == len(before) > 0, f"{len(before)} weight DequantizeLinear before, {len(after)} after"
    floats = {t.name for t in res.pruned.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    for n in res.pruned.graph.node:
        if n.op_type in ("Conv", "Gemm"):
            assert n.input[1] not in floats, f"{n.name}: weight {n.input[1]} was de-quantized to float"
    assert any(list(t.dims) != list(o.dims) for t in res.pruned.graph.initializer for o in proto.graph.initializer
               if t.name == o.name and t.data_type == onnx.TensorProto.INT8), "no int8 weight was sliced"


def test_qdq_scales_and_zero_points_sliced_with_weights(qdq_pruned):
    from onnx import numpy_helper

    per_channel, proto, res = qdq_pruned
    an = res.analysis
    o_init = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    p_init = {t.name: numpy_helper.to_array(t) for t in res.pruned.graph.initializer}
    p_nodes = {n.name: n for n in res.pruned.graph.node}
    sliced = 0
    for n in _weight_dqs(proto):
        x, s = n.input[0], n.input[1]
        zp = n.input[2] if len(n.input) > 2 else None
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        pn = p_nodes[n.name]
        w_new, s_new = p_init[pn.input[0]], p_init[pn.input[1]]
        if o_init[s].size > 1:  # per-channel: scale (and zero point) follow the weight's axis
            assert s_new.shape == (w_new.shape[axis],), (n.name, s_new.shape, w_new.shape)
            if zp:
                assert p_init[pn.input[2]].shape == s_new.shape
        # the de-quantized pruned weight is the original de-quantized weight, sliced on the kept channels
        def deq(w, sc, z):
            shape = [1] * w.ndim
            if sc.size > 1:
                shape[axis] = sc.size
            return (w.astype(np.float64) - (0 if z is None else z.reshape(shape))) * sc.reshape(shape)
        old = deq(o_init[x], o_init[s], o_init.get(zp) if zp else None)
        new = deq(w_new, s_new, p_init.get(pn.input[2]) if zp else None)
        idx = [slice(None)] * old.ndim
        for p in an.params:
            if p.tensor in (x, n.output[0]):
                idx[p.axis] = np.flatnonzero(an.keep_mask(p.labels, res.keep_atom))
        ref = old[np.ix_(*[np.arange(d)[i] for d, i in zip(old.shape, idx)])]
        assert new.shape == ref.shape, (n.name, new.shape, ref.shape)
        np.testing.assert_array_equal(new, ref)
        sliced += new.shape != old.shape
    assert sliced > 0, "no quantized weight was sliced"
    if per_channel:
        assert any(p_init[p_nodes[n.name].input[1]].size < o_init[n.input[1]].size for n in _weight_dqs(proto))


def test_qdq_pruned_runs_in_onnxruntime_optimized(qdq_pruned):
    """With graph optimisations on, ORT fuses the QDQ pairs into integer kernels."""
    import onnxruntime as ort

    _, proto, res = qdq_pruned
    feeds = random_feeds(proto, batch=1, seed=3)
    outs = []
    for m in (res.reference, res.pruned):
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        outs.append(s.run(None, feeds)[0])
    assert outs[1].shape == outs[0].shape
    assert _cos(outs[0], outs[1]) > 0.99, _cos(outs[0], outs[1])


def test_qdq_ratio0_exact_and_close_to_float():
    from onnxprune.testing.archs import resnet

    proto = mcm.qdq_resnet(per_channel=True, activation="uint8", seed=1)
    res = check_oracle(_copy(proto), ratio=0.0, batch=1)
    assert res.removed == 0
    feeds = random_feeds(proto, batch=1, seed=2)
    q = run(proto, feeds)[0]
    np.testing.assert_array_equal(q, run(res.pruned, feeds)[0])
    f = run(resnet(18, image=32, width=8, seed=1, batch=1), feeds)[0]
    assert _cos(q, f) > 0.95, f"the quantized fixture drifts from its float model: cosine {_cos(q, f)}"


# ---------------------------------------------------------- (c) QOperator, dynamic: barriers
INT_MODELS = {
    "qoperator_cnn": (mcm.qoperator_cnn, {"QLinearConv", "QGemm", "QLinearGlobalAveragePool"}),
    "dynamic_mlp": (mcm.dynamic_mlp, {"MatMulInteger", "DynamicQuantizeLinear"}),
}


@pytest.fixture(scope="module", params=sorted(INT_MODELS))
def int_model(request, tmp_path_factory):
    build, ops = INT_MODELS[request.param]
    proto = build()
    path = str(tmp_path_factory.mktemp("int") / f"{request.param}.onnx")
    onnx.save(proto, path)
    return request.param, proto, path, ops


def test_integer_ops_are_barriers_with_reasons(int_model):
    name, proto, _, ops = int_model
    an = analyze(Model(_copy(proto)))
    barrier_ops = {n.op_type for n, r in an.barriers if r}
    assert barrier_ops & ops, f"{name}: no barrier at {sorted(ops)}; barriers: {an.barriers}"
    for g in an.groups:
        if g.n_prunable < g.size:
            assert g.reasons, f"group {an.group_name(g)} pinned without a reason"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxprune", *args], capture_output=True, text=True, timeout=120)


def test_integer_models_prune_cleanly_from_cli(int_model, tmp_path):
    name, proto, path, _ = int_model
    out = str(tmp_path / "out.onnx")
    r = _cli("prune", path, "-o", out, "--ratio", "0.5")
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.returncode in (0, 1), (r.returncode, r.stderr[-500:])
    if r.returncode == 1:
        assert r.stderr.strip(), "exit 1 without a reason"
        assert not os.path.exists(out)
    else:
        feeds = random_feeds(proto, batch=1)
        assert run(onnx.load(out), feeds)[0].shape == run(proto, feeds)[0].shape


def test_integer_weights_are_counted_as_parameters(int_model):
    name, proto, path, _ = int_model
    r = _cli("inspect", path, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    params = json.loads(r.stdout)["cost"]["params"]
    int_weights = sum(a.size for a in _int_inits(proto).values() if a.ndim >= 2)
    assert int_weights > 0
    assert params >= int_weights, f"{name}: {params} parameters counted, {int_weights} integer weights"


@pytest.mark.parametrize("name", ["caffe2_densenet", "qdq_resnet"])
def test_reported_costs_after_pruning_match_the_written_model(tmp_path, name):
    """The cost model's 'after' (estimated through chains: int8 sources, per-channel scales) equals
    a count on the pruned file."""
    import onnxprune
    from onnxprune.cost import count
    from onnxprune.graph import load_model

    proto = mcm.caffe2_densenet() if name == "caffe2_densenet" else mcm.qdq_resnet(per_channel=True)
    src = str(tmp_path / "m.onnx")
    onnx.save(proto, src)
    res = onnxprune.prune(src, str(tmp_path / "p.onnx"), ratio=0.5, round_to=8)
    written = count(load_model(str(tmp_path / "p.onnx")))
    assert res.plan.n_removed > 0
    assert (res.after.params, res.after.macs, res.after.flops) == (written.params, written.macs, written.flops)
    assert res.after.params < 0.8 * res.before.params


# ---------------------------------------------------------- regressions found in review
def _dq_after_transpose(k=8, n_out=8):
    """int8 weight stored [N, K] → Transpose → DequantizeLinear(axis=1: per-N scale/zero-point) → MatMul."""
    from onnxprune.testing import Net

    n = Net("dq_t", opset=13, seed=3)
    x = n.input("x", [2, 5])
    h = n.relu(n.linear(x, 5, k))
    w = n.rng.normal(0, .3, (k, n_out)).astype(np.float32)
    sc = ((np.abs(w).max(axis=0) + 1e-6) / 127).astype(np.float32)
    q = np.clip(np.round(w / sc[None, :]), -127, 127).astype(np.int8)
    t = n.op("Transpose", [n.const(np.ascontiguousarray(q.T), "wq")], perm=[1, 0])
    d = n.op("DequantizeLinear", [t, n.const(sc, "scale"), n.const((np.arange(n_out) % 3 - 1).astype(np.int8), "zp")],
             axis=1, name="dq")
    n.output(n.linear(n.relu(n.op("MatMul", [h, d], name="mm")), n_out, 3))
    return n.build()


@pytest.mark.parametrize("k,n_out", [(8, 8), (8, 6)])
def test_dequantize_after_transpose_slices_scales_on_its_own_axis(k, n_out):
    res = assert_oracle(_dq_after_transpose(k, n_out), ratio=0.5)
    inits = {t.name.rsplit("_", 1)[0]: t for t in res.pruned.graph.initializer}
    assert inits["wq"].data_type == onnx.TensorProto.INT8  # still int8 at the source
    assert list(inits["scale"].dims) == [inits["wq"].dims[0]] == list(inits["zp"].dims)  # sliced with N


def _ir3(net):
    p = net.build()
    p.ir_version = 3
    for t in p.graph.initializer:
        p.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return p


def test_ir3_models_list_new_initializers_as_inputs(tmp_path):
    """IR < 4: a folded chain and a bias added by recovery are graph inputs too (checker-valid)."""
    import onnxprune
    from onnxprune.testing import Net

    n = Net("a", opset=9, seed=2)
    y = n.relu(n.conv(n.input("x", [1, 3, 8, 8]), 3, 8, 3))
    t = n.op("Transpose", [n.weight((8, 6, 3, 3), 72)], perm=[1, 0, 2, 3])
    n.output(n.conv(n.relu(n.op("Conv", [y, t], kernel_shape=[3, 3], pads=[1] * 4)), 6, 4, 1))
    assert_oracle(_ir3(n), ratio=0.5)
    n = Net("b", opset=9, seed=3)
    n.output(n.conv(n.cbr(n.input("x", [1, 3, 8, 8]), 3, 8), 8, 4, 1, bias=False))
    src = str(tmp_path / "b.onnx")
    onnx.save(_ir3(n), src)
    onnxprune.prune(src, str(tmp_path / "b.out.onnx"), ratio=0.5, recover="bias")
    onnx.checker.check_model(str(tmp_path / "b.out.onnx"), full_check=True)
