"""Recovery: bias compensation is exact for constant channels; least squares never makes the
refit layer worse on calibration data; dead channels go losslessly."""
import numpy as np
import onnx
import pytest

from onnxprune import rewrite
from onnxprune.graph import Model
from onnxprune.analysis import analyze
from onnxprune.calib import Calibration
from onnxprune.planner import dead_atoms
from onnxprune.record import record_for
from onnxprune.rewrite.recover import Recovery, data_free_means
from onnxprune.testing import Net, run

CONST = [1, 4, 6]  # channels made constant by γ = 0


def constant_channels_model(consumer: str, seed=0):
    #  x -> Conv(3->8) -> BN(γ=0 on CONST) -> Relu -> [consumer] -> out
    n = Net("t", seed=seed)
    x = n.input("x", ["N", 3, 6, 6])
    y = n.conv(x, 3, 8, 3)
    r = np.random.default_rng(seed)
    gamma = r.uniform(0.5, 1.5, 8).astype(np.float32)
    gamma[CONST] = 0
    beta = r.normal(0.3, 0.5, 8).astype(np.float32)
    beta[CONST] = [0.5, 0.8, 1.1]  # non-zero constants after the ReLU: removing them matters
    y = n.op("BatchNormalization", [y, n.const(gamma), n.const(beta), n.const(np.zeros(8, np.float32)),
                                    n.const(np.ones(8, np.float32))])
    y = n.relu(y)
    if consumer == "conv1x1":
        out = n.conv(y, 8, 4, 1)
    elif consumer == "conv1x1_nobias":
        out = n.conv(y, 8, 4, 1, bias=False)
    elif consumer == "gemm":
        out = n.gemm(n.flatten(y), 8 * 36, 5)
    else:  # matmul without bias, on NHWC
        t = n.op("Transpose", [y], perm=[0, 2, 3, 1])
        out = n.op("MatMul", [t, n.weight((8, 5), 8)])
    n.output(out)
    return n.build()


def calibration(proto, n=24, seed=1):
    path = f"/tmp/onnxprune-test-calib-{seed}-{n}.npz"
    np.savez(path, x=np.random.default_rng(seed).standard_normal((n, 3, 6, 6)).astype(np.float32))
    return Calibration(path, ["x"], batch_size=8)


def keep_removing(an, labels_of, positions):
    keep = np.ones(an.n_atoms, dtype=bool)
    keep[an.atom_of_label[labels_of[positions]]] = False
    return keep


@pytest.mark.parametrize("consumer", ["conv1x1", "conv1x1_nobias", "gemm", "matmul"])
@pytest.mark.parametrize("source", ["calibration", "batchnorm"])
def test_bias_compensation_exact_for_constant_channels(consumer, source):
    proto = constant_channels_model(consumer)
    m = Model(onnx.ModelProto.FromString(proto.SerializeToString()))
    an = analyze(m)
    conv_out = an.chan[m.nodes[0].outputs[0].name].labels
    keep = keep_removing(an, conv_out, CONST)
    if source == "calibration":
        rec = record_for(an, calibration(proto))
        means = {k: st.mean for k, st in rec.stats.items()}
    else:
        means = data_free_means(an)
        assert means, "BatchNorm statistics should give the means"
    res = rewrite.apply(m, an, keep, recovery=Recovery("bias", means))
    onnx.checker.check_model(res.model, full_check=True)
    feeds = {"x": np.random.default_rng(5).standard_normal((3, 3, 6, 6)).astype(np.float32)}
    a, b = run(proto, feeds)[0], run(res.model, feeds)[0]
    assert b.shape == a.shape
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)  # equal to the *unpruned* model


def test_without_compensation_the_same_removal_is_not_exact():
    proto = constant_channels_model("conv1x1")
    m = Model(onnx.ModelProto.FromString(proto.SerializeToString()))
    an = analyze(m)
    keep = keep_removing(an, an.chan[m.nodes[0].outputs[0].name].labels, CONST)
    res = rewrite.apply(m, an, keep)
    feeds = {"x": np.random.default_rng(5).standard_normal((3, 3, 6, 6)).astype(np.float32)}
    assert np.abs(run(proto, feeds)[0] - run(res.model, feeds)[0]).max() > 1e-2


def test_dead_channels_found_and_removed_losslessly():
    proto = constant_channels_model("conv1x1")
    m = Model(onnx.ModelProto.FromString(proto.SerializeToString()))
    an = analyze(m)
    rec = record_for(an, calibration(proto))
    dead = dead_atoms(an, rec)
    labels = an.chan[m.nodes[0].outputs[0].name].labels
    assert np.flatnonzero(dead[an.atom_of_label[labels]]).tolist() == CONST
    res = rewrite.apply(m, an, ~dead, recovery=Recovery("none", {k: s.mean for k, s in rec.stats.items()},
                                                          fold_atoms=dead))
    feeds = {"x": np.random.default_rng(7).standard_normal((2, 3, 6, 6)).astype(np.float32)}
    np.testing.assert_allclose(run(res.model, feeds)[0], run(proto, feeds)[0], rtol=1e-5, atol=1e-5)


def _layer_error(proto, pruned, feeds, out_name):
    return float(np.sum((run(proto, feeds)[0] - run(pruned, feeds)[0]) ** 2))


@pytest.mark.parametrize("kind", ["conv3x3", "gemm", "matmul"])
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_least_squares_never_increases_calibration_error(kind, ratio):
    #  x -> Conv(3->16) -> Relu -> [consumer = the refit layer, its output is the graph output]
    n = Net("t", seed=3)
    x = n.input("x", ["N", 3, 6, 6])
    y = n.relu(n.conv(x, 3, 16, 3))
    if kind == "conv3x3":
        n.output(n.conv(y, 16, 6, 3))
    elif kind == "gemm":
        n.output(n.gemm(n.flatten(n.gap(y)), 16, 6))
    else:
        n.output(n.op("MatMul", [n.op("Transpose", [y], perm=[0, 2, 3, 1]), n.weight((16, 6), 16)]))
    proto = n.build()
    cal = calibration(proto, n=32, seed=2)
    feeds = {"x": np.load(cal.source)["x"]}
    errors = {}
    for mode in ("none", "lsq"):
        m = Model(onnx.ModelProto.FromString(proto.SerializeToString()))
        an = analyze(m)
        labels = an.chan[m.nodes[0].outputs[0].name].labels
        keep = keep_removing(an, labels, np.arange(int(16 * ratio)))
        recovery = None
        if mode == "lsq":
            consumers = [q.node for q in an.params if q.role == "in"]
            rec = record_for(an, cal, with_grams=consumers)
            recovery = Recovery("lsq", {k: s.mean for k, s in rec.stats.items()}, rec.grams)
        res = rewrite.apply(m, an, keep, recovery=recovery)
        errors[mode] = _layer_error(proto, res.model, feeds, None)
    assert errors["lsq"] <= errors["none"] * (1 + 1e-6)
    assert errors["lsq"] < 0.9 * errors["none"]  # and it actually helps here


def test_recorder_memory_is_flat():
    import tracemalloc

    from onnxprune.testing.archs import resnet

    proto = resnet(18, image=32, width=8)
    m = Model(proto)
    an = analyze(m)
    peaks = []
    for n in (16, 160):
        path = f"/tmp/onnxprune-test-mem-{n}.npz"
        np.savez(path, input=np.random.default_rng(0).standard_normal((n, 3, 32, 32)).astype(np.float32))
        cal = Calibration(path, ["input"], batch_size=8)
        tracemalloc.start()
        rec = record_for(an, cal)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert rec.batches == n // 8
    assert peaks[1] < 1.3 * peaks[0] + (1 << 20), peaks  # 10x the batches, no growth


def test_data_free_means_match_gaussian_relu():
    from scipy.stats import norm

    proto = constant_channels_model("conv1x1")
    an = analyze(Model(proto))
    means = next(iter(data_free_means(an).values()))
    bn = [x for x in proto.graph.node if x.op_type == "BatchNormalization"][0]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    g, b = np.abs(inits[bn.input[1]]).astype(np.float64), inits[bn.input[2]].astype(np.float64)
    safe = np.maximum(g, 1e-12)
    want = np.where(g > 0, b * norm.cdf(b / safe) + g * norm.pdf(b / safe), np.maximum(b, 0))
    np.testing.assert_allclose(means, want, rtol=1e-6, atol=1e-6)


def test_bias_behind_an_identity_alias_is_compensated(tmp_path):
    """TorchScript dedupes weights into Identity aliases: a consumer's bias read through one gets
    the same compensation as a plain one."""
    import onnxprune
    from onnxprune.testing import Net

    def build(alias):
        n = Net("alias", seed=11)
        y = n.cbr(n.input("x", [1, 3, 6, 6]), 3, 8)
        n.output(n.conv(y, 8, 4, 1))
        proto = n.build()
        if alias:
            conv = [node for node in proto.graph.node if node.op_type == "Conv"][-1]
            proto.graph.node.insert(0, onnx.helper.make_node("Identity", [conv.input[2]], ["bias_alias"]))
            conv.input[2] = "bias_alias"
        return proto

    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 6, 6)).astype(np.float32)}
    outs = []
    for alias in (False, True):
        src = str(tmp_path / f"a{alias}.onnx")
        onnx.save(build(alias), src)
        res = onnxprune.prune(src, str(tmp_path / f"p{alias}.onnx"), ratio=0.5, round_to=1, recover="bias")
        assert any("bias compensation" in r for r in res.recovery), res.recovery
        outs.append(run(onnx.load(str(tmp_path / f"p{alias}.onnx")), feeds)[0])
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6, atol=1e-6)
