"""The graph layer on onnx-ir: external-data refusals, concrete shapes for dynamic models, dynamic
dims kept in the output, costs that are never silently 0, and never a crash on a model."""
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxprune
from conftest import assert_oracle
from onnxprune import UnsupportedModelError
from onnxprune.analysis import analyze
from onnxprune.errors import BugError
from onnxprune.graph import Model, load_model
from onnxprune.testing import Net, run


def cnn(h="H", w="W", batch="N"):
    """conv-bn-relu ×2 → conv head, fully convolutional (any H×W)."""
    n = Net("fcn", seed=3)
    x = n.input("x", [batch, 3, h, w])
    y = n.relu(n.bn(n.conv(x, 3, 16, 3), 16))
    y = n.relu(n.bn(n.conv(y, 16, 16, 3), 16))
    up = n.op("Resize", [y, "", n.const(np.array([1, 1, 2, 2], np.float32), "scales")], mode="nearest")
    n.output(n.conv(up, 16, 4, 1))
    return n.build()


def save(proto, path):
    onnx.save(proto, str(path))
    return str(path)


# ----------------------------------------------------------------------------- external data
def _external(tmp_path, location="w.bin", length=None, offset=0, payload=None):
    """A one-Conv model whose weight lives in external data at ``location``."""
    w = np.random.default_rng(0).standard_normal((4, 3, 1, 1)).astype(np.float32)
    t = onnx.numpy_helper.from_array(w, "w")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length or w.nbytes))):
        t.external_data.add(key=k, value=v)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], [t])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    return str(path), (payload if payload is not None else w.tobytes())


@pytest.mark.parametrize("case,match", [
    ("dotdot", "outside the model's folder"),
    ("absolute", "outside the model's folder"),
    ("symlink", "symbolic link"),
    ("past_end", "runs past the end"),
    ("short", "needs 48"),
    ("missing", "missing"),
    ("fifo", "not a regular file"),
])
def test_external_data_refusals(tmp_path, case, match):
    sub = tmp_path / "model"
    sub.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(12, np.float32).tobytes())
    location = {"dotdot": "../secret.bin", "absolute": str(secret), "symlink": "link.bin"}.get(case, "w.bin")
    path, payload = _external(sub, location=location, length=16 if case == "short" else None,
                              offset=8 if case == "past_end" else 0)
    if case == "symlink":
        os.symlink(secret, sub / "link.bin")
    elif case == "fifo":
        os.mkfifo(sub / "w.bin")
    elif case != "missing":
        (sub / "w.bin").write_bytes(payload)
    with pytest.raises(UnsupportedModelError, match=match):
        load_model(path)


def test_external_data_is_memory_mapped_and_pruned(tmp_path):
    src = tmp_path / "ext.onnx"
    onnx.save(cnn(16, 16, 1), str(src), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    m = load_model(str(src))
    assert m.external_data
    out = tmp_path / "out.onnx"
    onnxprune.prune(str(src), str(out), ratio=0.5, round_to=1)
    assert os.path.exists(str(out) + ".data")
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)}
    assert run(onnx.load(str(out)), feeds)[0].shape == (1, 4, 32, 32)


# --------------------------------------------------------------------------- shapes and costs
def test_dynamic_model_keeps_dynamic_dims_and_runs_at_any_size(tmp_path):
    src = save(cnn(), tmp_path / "dyn.onnx")
    out = str(tmp_path / "dyn.pruned.onnx")
    res = onnxprune.prune(src, out, ratio=0.5, round_to=8)
    assert res.before.at == {"x": [1, 3, 224, 224]}  # the stated concrete shape costs were counted at
    assert res.after.flops < 0.6 * res.before.flops
    p = onnx.load(out)
    dims = [d.dim_param for d in p.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] == "N" and dims[2:] == ["H", "W"]
    for shape in ((1, 3, 8, 8), (2, 3, 20, 12)):
        y = run(p, {"x": np.zeros(shape, np.float32)})[0]
        assert y.shape == (shape[0], 4, 2 * shape[2], 2 * shape[3])


def test_costs_at_the_calibration_shape_and_dim_option(tmp_path):
    src = save(cnn(), tmp_path / "dyn.onnx")
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((4, 3, 32, 48)).astype(np.float32))
    plan = onnxprune.plan(src, ratio=0.5, calib=str(calib), remove_dead=False)
    assert plan.estimate["before"]["input_shapes"] == {"x": [1, 3, 32, 48]}
    ins = onnxprune.inspect(src, dims={"H": 64, "W": 64})
    assert ins.cost.at == {"x": [1, 3, 64, 64]}
    small = onnxprune.inspect(src, dims={"H": 32, "W": 32})
    assert small.cost.macs * 4 == ins.cost.macs  # MACs scale with H×W: not counted at 1×1


def test_literal_minus_one_in_declared_input_shape(tmp_path):
    """A PaddlePaddle export declares its input as [-1, 3, ?, ?]: no negative-dimension crash."""
    proto = cnn()
    d = proto.graph.input[0].type.tensor_type.shape.dim[0]
    d.ClearField("dim_param")
    d.dim_value = -1
    src = save(proto, tmp_path / "neg.onnx")
    res = onnxprune.prune(src, str(tmp_path / "o.onnx"), ratio=0.5, round_to=1)
    assert res.plan.n_removed > 0


def _if_model():
    """Everything inside an If: no countable cost at top level (the stateful VAD case)."""
    n = Net("inner", seed=1)
    x = n.input("x", [1, 4])
    y = n.gemm(x, 4, 4)
    then = helper.make_graph(n.nodes, "then", [], [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 4])],
                             n.inits)
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "else", [],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])])
    g = helper.make_graph([helper.make_node("If", ["c"], ["out"], then_branch=then, else_branch=other)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                           helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_unknown_costs_are_reported_never_zero_division(tmp_path):
    src = save(_if_model(), tmp_path / "if.onnx")
    out = tmp_path / "o.onnx"
    r = subprocess.run([sys.executable, "-m", "onnxprune", "prune", src, "-o", str(out), "--ratio", "0.5"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "n/a: nothing countable" in r.stdout and "cost not counted for: If×1" in r.stdout
    assert "Traceback" not in r.stderr


# ------------------------------------------------------------------------------- never a crash
def test_a_failing_rule_is_a_barrier_and_the_rest_still_prunes(monkeypatch):
    from onnxprune.rules import registry

    rule = registry()[("", "Resize")]

    def boom(ctx):
        raise RuntimeError("pattern never seen")

    monkeypatch.setattr(rule, "apply", boom)
    an = analyze(Model(cnn(16, 16, 1)))
    reasons = [r for _, r in an.barriers]
    assert any("not understood (RuntimeError: pattern never seen)" in r for r in reasons)
    assert any(g.prunable for g in an.groups)  # the first conv's channels do not reach the Resize
    assert not all(g.prunable for g in an.groups)


def test_failing_probe_is_a_barrier_not_a_crash(tmp_path, capfd):
    """A data-dependent shape whose probe run fails (wrong state input) is logged, not raised."""
    n = Net("nz", seed=2)
    x = n.input("x", ["N", 4])
    idx = n.op("NonZero", [n.op("Greater", [x, n.const(np.zeros((), np.float32))])])
    y = n.gemm(x, 4, 8)
    z = n.op("Gather", [n.op("Relu", [y]), n.op("Squeeze", [n.op("Slice", [idx, n.const(np.array([0])),
                                                                             n.const(np.array([1]))]),
                                                              n.const(np.array([0]))])])
    n.output(n.gemm(z, 8, 2))
    src = save(n.build(), tmp_path / "nz.onnx")
    m = load_model(src)
    m.infer()
    an = analyze(m)
    assert an is not None
    r = subprocess.run([sys.executable, "-m", "onnxprune", "prune", src, "-o", str(tmp_path / "o.onnx"),
                        "--ratio", "0.5"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stderr
    assert "[E:onnxruntime" not in r.stderr and "[W:onnxruntime" not in r.stderr
    assert sorted(os.listdir(tmp_path)) in (["nz.onnx"], ["nz.onnx", "o.onnx"])  # nothing else written


def test_broken_postcondition_is_a_bug_with_its_own_exit_code(tmp_path, monkeypatch):
    import onnxprune.rewrite as rw

    def broken(self, model):
        raise BugError("'w' axis 0 has 3 entries after slicing, expected 4")

    monkeypatch.setattr(rw.SliceParamsPass, "ensures", broken)
    src = save(cnn(16, 16, 1), tmp_path / "a.onnx")
    with pytest.raises(BugError, match="after slicing"):
        onnxprune.prune(src, str(tmp_path / "b.onnx"), ratio=0.5, round_to=1)
    assert not (tmp_path / "b.onnx").exists()
    from onnxprune.cli import main

    assert main(["prune", src, "-o", str(tmp_path / "c.onnx"), "--ratio", "0.5", "--round-to", "1"]) == 3
    assert not (tmp_path / "c.onnx").exists()


def test_oracle_on_a_dynamic_model():
    assert_oracle(cnn(), ratio=0.5, feeds={"x": np.random.default_rng(1).standard_normal((2, 3, 12, 20))
                                            .astype(np.float32)})


def test_block_removal_on_a_dynamic_model_keeps_the_concrete_shapes(tmp_path):
    """After bypassing blocks, the channel analysis and costs still use the calibration shape."""
    n = Net("res", opset=13, seed=1)
    y = n.cbr(n.input("x", ["N", 3, "H", "W"]), 3, 8)
    for _ in range(2):
        y = n.relu(n.add(n.bn(n.conv(n.cbr(y, 8, 8), 8, 8, bias=False), 8), y))
    y = n.cbr(y, 8, 16, stride=2)
    g = n.op("ReduceMean", [n.op("Reshape", [y, n.const(np.array([0, 0, -1], np.int64), "tgt")])], axes=[2],
             keepdims=0)
    n.output(n.gemm(g, 16, 5))
    src = save(n.build(), tmp_path / "res.onnx")
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32))
    plain = onnxprune.prune(src, str(tmp_path / "a.onnx"), ratio=0.5, round_to=1, calib=str(calib))
    blocks = onnxprune.prune(src, str(tmp_path / "b.onnx"), ratio=0.5, round_to=1, remove_blocks=1, calib=str(calib))
    assert blocks.after.at == plain.after.at == {"x": [1, 3, 16, 16]}
    # one residual block (two 3×3 convs at 16×16) fewer than channel pruning alone, not a collapse
    assert 0.3 * plain.after.macs < blocks.after.macs < plain.after.macs
    # the same groups minus the bypassed block's inner conv (8 channels, half removed): the Reshape
    # after the blocks stays prunable
    assert blocks.plan.n_removed == plain.plan.n_removed - 4


@pytest.mark.parametrize("target,prunable", [([0, -1], False), ([0, 8 * 4, -1], True)])
def test_reshape_never_bakes_a_dynamic_dim_into_the_channel_block(target, prunable):
    """[N, C, H=4, W] → [N, C·H·W]: W is dynamic, so the index map would hold at one size only
    (barrier); → [N, C·H, W] keeps W outside the channel block (prunable, any W)."""
    n = Net("rs", seed=5)
    y = n.relu(n.conv(n.input("x", ["N", 3, 4, "W"]), 3, 8, 3))
    r = n.op("Reshape", [y, n.const(np.array(target, np.int64), "tgt")])
    if len(target) == 3:
        r = n.op("Transpose", [r], perm=[0, 2, 1])
        n.output(n.linear(r, 32, 4))
    else:
        n.output(r)
    an = analyze(Model(n.build()))
    conv = next(g for g in an.groups if an.group_name(g).startswith("conv"))
    assert conv.prunable == prunable, an.barriers
    merged = [r for node, r in an.barriers if node.op_type == "Reshape" and "dynamic dim" in r]
    assert bool(merged) != prunable, an.barriers
    if prunable:
        feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 4, 9)).astype(np.float32)}
        assert_oracle(n.build(), ratio=0.5, feeds=feeds)
