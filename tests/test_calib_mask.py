"""Padded positions (``--calib-mask``): left out of statistics, Grams and refits."""
import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.analysis import analyze
from onnxprune.calib import Calibration, load_calibration, set_row_mask
from onnxprune.errors import OnnxPruneError
from onnxprune.graph import Model
from onnxprune.record import consumer_inputs, record_for
from onnxprune.testing import Net, run

N, S = 12, 10


def _mlp():
    """x [N, S, 8] -> Linear 16 -> Relu -> Linear 16 -> Relu -> Linear 4, the padded positions zeroed at the end."""
    n = Net("masked_mlp", seed=1)
    x = n.input("x", ["N", "S", 8])
    m = n.input("attention_mask", ["N", "S"], onnx.TensorProto.INT64)
    y = n.relu(n.linear(x, 8, 16))
    y = n.relu(n.linear(y, 16, 16))
    y = n.linear(y, 16, 4)
    keep = n.op("Unsqueeze", [n.op("Cast", [m], to=onnx.TensorProto.FLOAT), n.const(np.array([-1], np.int64))])
    n.output(n.op("Mul", [y, keep]))
    return n.build()


def _data(rng, garbage: float):
    x = rng.standard_normal((N, S, 8)).astype(np.float32)
    lengths = rng.integers(3, S + 1, N)
    mask = (np.arange(S)[None, :] < lengths[:, None]).astype(np.int64)
    x[mask == 0] = garbage * rng.standard_normal((int((mask == 0).sum()), 8)).astype(np.float32)
    return x, mask


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    d = tmp_path_factory.mktemp("mask")
    path = str(d / "mlp.onnx")
    onnx.save(_mlp(), path)
    x, mask = _data(np.random.default_rng(0), 50.0)
    files = {}
    for name, xs in (("garbage", x), ("zeros", np.where(mask[..., None] == 1, x, 0).astype(np.float32))):
        files[name] = str(d / f"{name}.npz")
        np.savez(files[name], x=xs, attention_mask=mask)
    return path, files, mask, d


def test_statistics_leave_out_padded_positions(mlp):
    path, files, mask, _ = mlp
    m = Model(onnx.load(path), path)
    m.infer()
    an = analyze(m)
    cal = load_calibration(files["garbage"], m, batch_size=5)
    assert cal.mask_input == "attention_mask"
    consumers = [node for node in m.graph if node.op_type == "MatMul"]
    rec = record_for(an, cal, with_grams=consumers)
    name = next(iter(consumer_inputs(an)))
    assert rec.stats[name].count[0] == mask.sum()
    assert all(g.rows == mask.sum() for g in rec.grams.values())
    cal_all = load_calibration(files["garbage"], m, batch_size=5, mask="none")
    assert cal_all.mask_input is None
    rec_all = record_for(an, cal_all)
    assert rec_all.stats[name].count[0] == mask.size
    assert rec_all.stats[name].max.max() > rec.stats[name].max.max()  # the garbage was seen only without the mask


@pytest.mark.parametrize("recover", ["seq", "lsq"])
def test_refits_ignore_what_padded_positions_hold(mlp, recover):
    """Two calibration sets differing only where the mask is 0 give the same pruned model."""
    path, files, mask, d = mlp
    outs = {}
    for how in ("auto", "none"):
        for name, f in files.items():
            out = str(d / f"{recover}_{how}_{name}.onnx")
            onnxprune.prune(path, out, ratio=0.5, criterion="wanda", recover=recover, calib=f, calib_batch=4,
                            calib_mask=how, round_to=1, allow_slower=True)
            outs[how, name] = [onnx.numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer]
    for a, b in zip(outs["auto", "garbage"], outs["auto", "zeros"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert any(a.shape != b.shape or not np.allclose(a, b, rtol=1e-3)
               for a, b in zip(outs["none", "garbage"], outs["none", "zeros"]))
    x, m = _data(np.random.default_rng(7), 0.0)
    y = run(onnx.load(str(d / f"{recover}_auto_garbage.onnx")), {"x": x, "attention_mask": m})[0]
    assert np.isfinite(y).all()


def test_mask_input_is_checked(mlp, tmp_path):
    path, files, mask, _ = mlp
    m = Model(onnx.load(path), path)
    m.infer()
    with pytest.raises(OnnxPruneError, match="--calib-mask nope: no such model input"):
        load_calibration(files["zeros"], m, mask="nope")
    with pytest.raises(OnnxPruneError, match="--calib-mask x: the input 'x' is not"):
        load_calibration(files["zeros"], m, mask="x")
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, x=np.zeros((2, S, 8), np.float32), attention_mask=np.full((2, S), 2, np.int64))
    assert load_calibration(bad, m).mask_input is None  # auto: not a 0/1 mask, every position kept
    with pytest.raises(OnnxPruneError, match="not a \\[samples, positions\\] array of 0/1"):
        load_calibration(bad, m, mask="attention_mask")
    plain = Calibration(files["zeros"], ["x", "attention_mask"])
    assert plain.row_mask({"attention_mask": mask}) is None and set_row_mask(plain, "auto") == "attention_mask"
    assert plain.row_mask({"attention_mask": mask}).sum() == mask.sum()


def test_cli_flag(mlp, tmp_path):
    from onnxprune.cli import main

    path, files, _, _ = mlp
    out = str(tmp_path / "o.onnx")
    assert main(["prune", path, "-o", out, "--ratio", "0.5", "--calib", files["garbage"], "--calib-mask", "none",
                 "--round-to", "1"]) == 0
    assert main(["prune", path, "-o", str(tmp_path / "o2.onnx"), "--ratio", "0.5", "--calib", files["garbage"],
                 "--calib-mask", "nope", "--round-to", "1"]) == 1
    assert not (tmp_path / "o2.onnx").exists()
    with pytest.raises(OnnxPruneError, match="padding mask applies to calibration data: give"):
        onnxprune.prune(path, str(tmp_path / "o3.onnx"), ratio=0.5, calib_mask="none")
