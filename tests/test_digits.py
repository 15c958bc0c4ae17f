"""The shipped trained CNN: the README's main job, checked as its user would."""
import os

import numpy as np
import onnx

from onnxprune.cli import main
from onnxprune.testing import check_oracle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "digits_cnn.onnx")
CALIB = os.path.join(os.path.dirname(MODEL), "digits_calib.npz")
DATA = os.path.join(ROOT, "models", "digits_test.npz")


def test_half_the_channels_gives_a_valid_smaller_model(tmp_path, capsys):
    """l2 at half width without recovery loses accuracy (1.00 -> 0.34): validation says so (exit 2);
    the model is still a valid, smaller one (kept with --keep-failed)."""
    out = str(tmp_path / "digits.pruned.onnx")
    code = main(["prune", MODEL, "-o", out, "--ratio", "0.5", "--round-to", "8", "--validate", "--data", DATA,
                 "--repeats", "5", "--warmup", "1", "--keep-failed"])
    text = capsys.readouterr().out
    assert code == 2 and "validation: FAILED" in text and "accuracy drop" in text
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


def test_false_green_random_95_percent_fails_by_default(tmp_path, capsys):
    """The issue's false green: 95% of the channels removed at random (accuracy 1.00 -> 0.10) used
    to pass. With the default limits it exits 2, names what failed, and leaves nothing at -o."""
    out = str(tmp_path / "r95.onnx")
    code = main(["prune", MODEL, "-o", out, "--ratio", "0.95", "--criterion", "random", "--validate",
                 "--data", DATA, "--no-latency"])
    text = capsys.readouterr().out
    assert code == 2
    assert "cosine" in text and "below 0.99" in text and "top-1 agreement" in text and "accuracy drop" in text
    assert "criteria: cosine >= 0.99" in text  # the defaults are stated
    assert not os.path.exists(out) and not os.path.exists(out + ".data")
    assert "tightest passing: --atol logits:" in text


def test_readme_job_passes_the_default_limits(tmp_path, capsys):
    """The README's main job: with calibration data and no criterion/recovery named, the measured
    best (wanda + sequential reconstruction) keeps a quarter of the FLOPs within every default
    validation limit (cosine, decisions, accuracy) on the held-out split."""
    out = str(tmp_path / "digits.pruned.onnx")
    code = main(["prune", MODEL, "-o", out, "--ratio", "0.5", "--round-to", "8", "--calib", CALIB, "--validate",
                 "--data", DATA, "--no-latency"])
    text = capsys.readouterr().out
    assert code == 0 and "validation: PASSED" in text, text
    assert os.path.getsize(out) < 0.3 * os.path.getsize(MODEL)

