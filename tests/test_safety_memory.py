"""Memory on large models (issue 10): scores are computed in bounded blocks and the big-model
script's harness works (its > 2 GB run is ``python scripts/big_model.py``)."""
from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from onnxprune.importance import magnitude

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_magnitude_scores_need_a_block_not_a_float64_copy():
    w = np.ones((2048, 4096), np.float32)  # 32 MB; a float64 copy and its square would be 128 MB
    tracemalloc.start()
    try:
        s = magnitude.per_label_sq(w, 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.allclose(s, 2048)
    assert peak < 3 * magnitude._BLOCK_BYTES, peak
    assert np.allclose(magnitude.per_label_l1(w, 0), 4096)


@pytest.mark.slow
def test_big_model_script_small_variant(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "big_model.py"), "--hidden", "512",
                           "--keep", str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode in (0, 2), proc.stderr  # 2: over budget (a small model's budget is below Python's own)
    out = proc.stdout
    assert "inspect: exit 0" in out and "prune: exit 0" in out and "checker ok" in out, out
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data", "out.onnx", "out.onnx.data"]
