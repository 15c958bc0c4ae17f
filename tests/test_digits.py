"""The shipped trained CNN: the README's main job, checked as its user would."""
import os

import numpy as np
import onnx

from onnxprune.cli import main
from onnxprune.testing import check_oracle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "digits_cnn.onnx")
DATA = os.path.join(ROOT, "models", "digits_test.npz")


def test_half_the_channels_gives_a_valid_smaller_model(tmp_path, capsys):
    out = str(tmp_path / "digits.pruned.onnx")
    code = main(["prune", MODEL, "-o", out, "--ratio", "0.5", "--round-to", "8", "--validate", "--data", DATA,
                 "--repeats", "5", "--warmup", "1"])
    text = capsys.readouterr().out
    assert code == 0
    onnx.checker.check_model(out, full_check=True)
    assert "accuracy: original 1.0000  pruned" in text
    from onnxprune.graph import load_model
    from onnxprune.cost import count

    before, after = count(load_model(MODEL)), count(load_model(out))
    assert after.flops <= 0.6 * before.flops
    assert os.path.getsize(out) < 0.5 * os.path.getsize(MODEL)


def test_oracle_on_the_trained_model():
    x = np.load(DATA)["input"][:32]
    res = check_oracle(onnx.load(MODEL), ratio=0.5, round_to=8, feeds={"input": x})
    assert res.removed > 0 and res.max_err < 1e-4 * max(1, res.scale)
