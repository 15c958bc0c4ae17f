"""Quantization after pruning (int8 static QDQ / dynamic, fp16) and pruning a quantized model."""
import os

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune import OnnxPruneError
from onnxprune.cli import main
from onnxprune.quantize import fp32_path, quantize
from onnxprune.validate.runtime import make_session

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "digits_cnn.onnx")
CALIB = os.path.join(ROOT, "models", "digits_calib.npz")
DATA = os.path.join(ROOT, "models", "digits_test.npz")


def accuracy(path: str) -> float:
    d = np.load(DATA)
    sess = make_session(path, "cpu")
    name = sess.get_inputs()[0].name
    logits = sess.run(None, {name: d["input"]})[0]
    return float(np.mean(logits.argmax(1) == d["labels"]))


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("q") / "digits.pruned.onnx")
    onnxprune.prune(MODEL, out, ratio=0.25, round_to=8, recover="bias")
    return out


def test_int8_after_pruning_keeps_accuracy_at_a_third_of_the_size(pruned, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    folder = tmp_path / "out"
    folder.mkdir()
    out = str(folder / "digits.int8.onnx")
    res = quantize(pruned, out, "int8", calib=CALIB)
    assert res.method == "static-qdq"
    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    onnx.checker.check_model(out, full_check=True)
    a_fp32, a_int8 = accuracy(pruned), accuracy(out)
    assert a_fp32 > 0.9, a_fp32  # the pruned model is worth quantizing
    assert a_int8 >= a_fp32 - 0.01, (a_fp32, a_int8)
    assert os.path.getsize(out) <= 0.35 * os.path.getsize(pruned)
    # onnxruntime's quantizer wrote nothing in the working directory nor left files next to the output
    assert os.listdir(cwd) == []
    assert os.listdir(folder) == ["digits.int8.onnx"]


def test_fp16_and_dynamic(pruned, tmp_path):
    half = str(tmp_path / "h.onnx")
    res = quantize(pruned, half, "fp16")
    assert res.method == "fp16" and res.bytes_after < 0.6 * res.bytes_before
    assert abs(accuracy(half) - accuracy(pruned)) <= 0.01
    dyn = str(tmp_path / "d.onnx")
    assert quantize(pruned, dyn, "int8", method="dynamic").method == "dynamic"
    assert accuracy(dyn) >= accuracy(pruned) - 0.05
    assert quantize(pruned, str(tmp_path / "a.onnx"), "int8").method == "dynamic"  # no calibration data
    with pytest.raises(OnnxPruneError, match="needs calibration data"):
        quantize(pruned, str(tmp_path / "s.onnx"), "int8", method="static")
    with pytest.raises(OnnxPruneError, match="unknown quantization"):
        quantize(pruned, str(tmp_path / "s.onnx"), "int4")


def test_quantized_model_prunes(tmp_path):
    """Quantize → prune: the QDQ graph onnxruntime writes is pruned through its int8 weights."""
    q = str(tmp_path / "digits.int8.onnx")
    quantize(MODEL, q, "int8", calib=CALIB)
    out = str(tmp_path / "digits.int8.pruned.onnx")
    res = onnxprune.prune(q, out, ratio=0.25, round_to=8)
    assert res.plan.n_removed > 0 and res.after.macs < 0.8 * res.before.macs
    onnx.checker.check_model(out, full_check=True)
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert "DequantizeLinear" in ops and "QuantizeLinear" in ops  # still QDQ
    assert accuracy(out) > 0.3  # runs and still classifies (l2 pruning without recovery)


def test_cli_prune_quantize_validates_three_models(tmp_path, capsys):
    out = str(tmp_path / "d.int8.onnx")
    code = main(["prune", MODEL, "-o", out, "--ratio", "0.25", "--round-to", "8", "--calib", CALIB,
                 "--recover", "bias", "--quantize", "int8", "--validate", "--data", DATA, "--repeats", "3",
                 "--warmup", "1", "--max-accuracy-drop", "0.03", "--min-cosine", "0.95",
                 "--min-agreement", "0.97"])  # the three-model table is what this test is about
    text = capsys.readouterr().out
    assert code == 0, text
    assert os.path.exists(out) and os.path.exists(fp32_path(out))
    assert "pruned+int8" in text and "[cpu] accuracy" in text and "validation: PASSED" in text
    assert sorted(os.listdir(tmp_path)) == ["d.int8.fp32.onnx", "d.int8.onnx"]
